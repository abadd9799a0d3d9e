"""Training qfx models: quantization-aware training with learned binary points, and PTQ.

:func:`fit` trains any ``nn.Module`` (a model from :func:`qfx.convert`, or a
float model for a baseline) for classification:

- **Deterministic**: ``seed`` seeds torch, NumPy and ``random`` and re-seeds
  the training loader's generator (``DataLoader(generator=...)`` and its
  sampler's), so the same call on the same machine gives the same bits.
- **Calibration**: learnable binary points not yet calibrated are calibrated
  before the first step on ``calibrate_batches`` training batches (in the
  mode training runs in, no gradient; largest magnitude seen, see
  :meth:`qfx.nn.TensorQuantizer.calibrate`). Under ``torch.distributed`` the
  ranks agree on it (max over ranks).
- **Bits penalty** (``bits_penalty``, default 0): the word lengths are fixed
  by the config, so what training can economise is range. The loss gets
  ``bits_penalty * sum_q mean(W_q - frac_bits_q)``, the integer bits of every
  learnable quantizer ``q`` (a per-channel binary point counts as the mean
  of its channels). Its gradient pushes each binary point right (smaller
  range, finer steps) against the task loss, whose LSQ/TQT gradient pushes
  it left where values saturate. ``history[i]["int_bits"]`` reports the sum
  of the rounded integer bits.
- **Checkpoints** (``checkpoint_dir``): after every epoch
  ``epoch_NNNN.pt`` is written atomically (temporary file + ``os.replace``)
  with the model, optimizer and LR-schedule state, the epoch, the metrics
  history and the RNG states (torch, NumPy, ``random``, loader generators).
  ``resume=True`` continues from the newest one; the result is the same as
  an uninterrupted run.
- **Freezing**: at the end the learned binary points are rounded and fixed
  (:func:`qfx.nn.freeze`), and the validation metrics in ``final`` are
  measured with the frozen model: the evaluated formats are the exported ones.
- **Compiled steps** (``compile=True`` / ``"auto"``): forward and loss run as one
  ``torch.compile(fullgraph=True)`` graph (its backward compiled with it by AOTAutograd), with the
  layers' value-dependent choices made before each step by
  :func:`qfx.nn.refresh_compile_plan` (outside the graph). The same bits as the eager step:
  forward values and weight gradients identical, the binary points' gradients up to their
  summation order (``tests/test_compile_train.py``). A batch whose shape differs from the first
  (the last, partial one) runs eagerly, without a recompilation. ``True`` raises
  :class:`CompileUnavailable` where the backend cannot compile here (e.g. no C++ compiler for
  Inductor); ``"auto"`` then warns once and trains eagerly.
- **DistributedDataParallel**: pass the DDP-wrapped model; calibration is
  synchronised, buffers (BatchNorm statistics, calibration state) are
  broadcast from rank 0 at the end, only rank 0 writes checkpoints and shows
  a progress bar. Use a ``DistributedSampler`` (``set_epoch`` is called).
  After ``fit`` use ``model.module``: freezing turns the learned binary
  points into buffers, so the DDP wrapper is stale. Drop the wrapper
  (``del ddp``) before ``torch.distributed.destroy_process_group()``: a DDP
  reducer that holds the last reference to a gloo group destroys it under
  the GIL, and torch (2.13) can deadlock there (``tests/test_train_ddp.py``).

:func:`ptq` is the post-training baseline: calibrate the binary points on
data, freeze, no training. :func:`evaluate` gives loss and accuracy.
"""

from __future__ import annotations

import functools
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .nn import TensorQuantizer
from .nn import freeze as _freeze

__all__ = [
    "fit",
    "ptq",
    "evaluate",
    "calibrate",
    "int_bits",
    "learnable_quantizers",
    "FitResult",
    "seed_everything",
    "latest_checkpoint",
    "load_checkpoint",
    "CheckpointError",
    "CompileUnavailable",
    "compile_unavailable",
]

_CKPT_RE = re.compile(r"^epoch_(\d{4,})\.pt$")


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _dist() -> tuple[bool, int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def learnable_quantizers(model: nn.Module) -> list[TensorQuantizer]:
    """The quantizers of ``model`` whose binary point is being learned (not frozen)."""
    return [m for m in _unwrap(model).modules() if isinstance(m, TensorQuantizer) and m.learnable]


def int_bits(model: nn.Module, *, differentiable: bool = False) -> torch.Tensor:
    """Sum over learnable quantizers of their mean integer bits ``W - frac_bits``.

    ``differentiable=True``: from the float ``frac_bits`` (the penalty term of
    :func:`fit`); else from the rounded binary points (what is in force).
    """
    total = torch.zeros((), dtype=torch.float64)
    for q in learnable_quantizers(model):
        f = q.frac_bits if differentiable else torch.round(q.frac_bits.detach())
        total = total + (q.fmt.width - f.double()).mean().cpu()
    return total


def seed_everything(seed: int) -> None:
    """Seed torch, NumPy and Python's ``random``."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """The distinct torch.Generators a DataLoader draws from (its own, its sampler's)."""
    gens: list[torch.Generator] = []
    for obj in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
                getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        g = getattr(obj, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not h for h in gens):
            gens.append(g)
    return gens


def _rng_state(loader: Any) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        # plain data, not the ndarray get_state() holds: checkpoints load with weights_only=True
        "numpy": _plain_numpy_state(np.random.get_state()),
        "random": random.getstate(),
        "loader": [g.get_state() for g in _loader_generators(loader)],
    }


def _set_rng_state(state: dict[str, Any], loader: Any) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    random.setstate(state["random"])
    gens = _loader_generators(loader)
    if len(gens) != len(state["loader"]):
        raise ValueError(
            f"the checkpoint holds {len(state['loader'])} loader generator state(s), the training loader "
            f"has {len(gens)}: resume with a loader built the same way"
        )
    for g, s in zip(gens, state["loader"]):
        g.set_state(s)


def _plain_numpy_state(state: tuple) -> tuple:
    kind, keys, pos, has_gauss, cached = state
    return (str(kind), [int(k) for k in keys], int(pos), int(has_gauss), float(cached))


class CheckpointError(ValueError):
    """A checkpoint qfx refuses to read: unreadable, or holding more than tensors and plain data."""


def load_checkpoint(path: "str | Path", map_location: Any = "cpu") -> Any:
    """Read a checkpoint written by qfx (:func:`_atomic_save`) with ``torch.load(weights_only=True)``.

    Checkpoints hold only tensors and plain data (dicts, lists, tuples, str, numbers, None), so
    nothing in them can run code; a file holding anything else (a pickled object, e.g. a planted
    payload) is refused with :class:`CheckpointError` and nothing of it is executed.
    """
    import pickle

    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: refused: the checkpoint holds more than tensors and plain data ({first[:300]}); qfx reads "
            "checkpoints with torch.load(weights_only=True) and never runs code from them. Use a checkpoint "
            "written by this qfx version (rerun the training, e.g. qfx train --force)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        if isinstance(err, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {str(err)[:300]}); "
                              "rerun the training that wrote it") from None


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def latest_checkpoint(checkpoint_dir: "str | Path") -> "Path | None":
    """The newest ``epoch_NNNN.pt`` in ``checkpoint_dir`` (None if there is none)."""
    d = Path(checkpoint_dir)
    if not d.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT_RE.match(p.name))]
    return max(found)[1] if found else None


def _batch_to(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError("qfx.train expects batches of (inputs, targets)")
    return batch[0].to(device), batch[1].to(device)


# ---------------------------------------------------------------------------
# Evaluation, calibration, PTQ
# ---------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    loss_fn: "Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None" = None,
) -> dict[str, float]:
    """``{"loss", "accuracy", "n"}`` of a classifier over ``loader`` in eval mode (mode restored)."""
    net = _unwrap(model)
    loss_fn = loss_fn or F.cross_entropy
    was_training = net.training
    net.eval()
    device = _device_of(net)
    total, correct, loss_sum = 0, 0, 0.0
    try:
        for batch in loader:
            x, y = _batch_to(batch, device)
            out = net(x)
            loss_sum += float(loss_fn(out.float(), y)) * len(y)
            correct += int((out.argmax(dim=1) == y).sum())
            total += len(y)
    finally:
        net.train(was_training)
    if total == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return {"loss": loss_sum / total, "accuracy": correct / total, "n": total}


@torch.no_grad()
def calibrate(
    model: nn.Module,
    loader: Iterable,
    *,
    batches: "int | None" = None,
    quantizers: "list[TensorQuantizer] | None" = None,
    reset: bool = False,
) -> int:
    """Calibrate learnable binary points on data: largest magnitude over ``batches`` batches.

    Runs ``model`` (in its current train/eval mode, no gradient) on the first
    ``batches`` batches (all if None). ``quantizers`` defaults to the
    learnable quantizers not yet calibrated (all of them with ``reset``).
    Under ``torch.distributed`` the maxima are reduced over ranks so that
    every rank gets the same binary points. Returns the number of batches used.
    """
    net = _unwrap(model)
    if reset:
        for q in learnable_quantizers(net):
            q.reset_calibration()
    if quantizers is None:
        quantizers = [q for q in learnable_quantizers(net) if not bool(q.calibrated)]
    if not quantizers:
        return 0
    device = _device_of(net)
    used = 0
    for i, batch in enumerate(loader):
        if batches is not None and i >= batches:
            break
        for q in quantizers:
            q.calibrated.fill_(False)  # calibrate again on this batch; max_abs accumulates
        x, _ = _batch_to(batch, device)
        net(x)
        used += 1
    if used == 0:
        raise ValueError("calibrate: the loader yielded no batches")
    is_dist, _, world = _dist()
    if is_dist and world > 1:
        import torch.distributed as dist

        for q in quantizers:
            dist.all_reduce(q.max_abs, op=dist.ReduceOp.MAX)
            q.calibrate(torch.zeros_like(q.max_abs))  # recompute frac_bits from the common maximum
    return used


def ptq(
    model: nn.Module,
    calib_loader: Iterable,
    *,
    batches: "int | None" = None,
    freeze: bool = True,
) -> nn.Module:
    """Post-training quantization: calibrate every learnable binary point, freeze; no training.

    The model is calibrated in eval mode (BatchNorm uses its running
    statistics, as after training) over ``batches`` batches of
    ``calib_loader`` (all if None), previous calibrations discarded.
    Returns ``model`` (modified in place), frozen if ``freeze``.
    """
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    try:
        calibrate(net, calib_loader, batches=batches, reset=True)
    finally:
        net.train(was_training)
    if freeze:
        _freeze(net)
    return model


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    history : list of dict
        One entry per epoch (all epochs, also those of a resumed run):
        ``epoch`` (1-based), ``train_loss``, ``train_accuracy``, ``val_loss``,
        ``val_accuracy`` (with a val loader), ``int_bits``, ``lr``, ``seconds``.
    final : dict
        Validation ``loss``/``accuracy`` of the frozen model (empty without a val loader).
    epochs_run : int
        Epochs trained by this call.
    resumed_from : int or None
        The epoch of the checkpoint resumed from.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    epochs_run: int = 0
    resumed_from: "int | None" = None


def _make_optimizer(net: nn.Module, name: str, lr: float, frac_lr: float, weight_decay: float) -> torch.optim.Optimizer:
    frac, other = [], []
    for n, p in net.named_parameters():
        if not p.requires_grad:
            continue
        (frac if n.endswith("frac_bits") else other).append(p)
    groups = [{"params": other, "lr": lr, "weight_decay": weight_decay}]
    if frac:
        groups.append({"params": frac, "lr": frac_lr, "weight_decay": 0.0})
    name = name.lower()
    # The fused Adam kernel updates every parameter in one call: a converted model has a learned
    # binary point per tensor (42 parameters for the demo CNN's 11), and the per-parameter loop
    # took 1.0 ms of a 8.5 ms compiled step (fused: 0.37 ms).
    fused = _fused_optimizer_ok(other + frac)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd', not {name!r}")


def _fused_optimizer_ok(params: list) -> "bool | None":
    """True where torch's fused Adam applies to ``params`` (floating point, all on CPU or all on
    one CUDA device), else None (torch's default implementation)."""
    if not params:
        return None
    devices = {p.device for p in params}
    if len(devices) != 1 or next(iter(devices)).type not in ("cpu", "cuda"):
        return None
    if not all(p.is_floating_point() for p in params):
        return None
    return True


def _make_schedule(opt: torch.optim.Optimizer, schedule: str, epochs: int):
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    raise ValueError(f"schedule must be 'cosine' or 'constant', not {schedule!r}")


class CompileUnavailable(RuntimeError):
    """``torch.compile`` with the asked backend does not work here (the message says why)."""


@functools.lru_cache(maxsize=16)
def compile_unavailable(backend: str = "inductor") -> "str | None":
    """None when ``torch.compile(..., backend=backend)`` compiles and runs a tiny function here, else
    the reason in one line (cached per backend for the process). The function carries a fresh constant, so that no cached kernel hides a
    missing or broken compiler (Inductor's C++ compiler: ``CXX`` / ``torch._inductor.config.cpp.cxx``)."""
    c = random.Random().random() + 1.0  # a private generator: the global one stays as seeded
    ns: dict[str, Any] = {}
    exec(f"def probe(a):\n    return a * {c!r} + 1.0\n", ns)  # a new code object: nothing cached for it
    probe = ns["probe"]
    try:
        got = torch.compile(probe, backend=backend, fullgraph=True, dynamic=False)(torch.ones(3))
        if not torch.equal(got, torch.ones(3) * c + 1.0):
            return f"torch.compile (backend {backend!r}) computed a wrong result for a probe"
    except Exception as err:  # noqa: BLE001 - every failure means: no compiled training here
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        text = next((ln for ln in lines if "rror" in ln), lines[0] if lines else type(err).__name__)
        return f"torch.compile (backend {backend!r}) does not work here: {text[:300]}"
    return None


def _check_compile(compile: "bool | str", backend: str, warn: "Callable[[str], None] | None" = None) -> bool:
    """Whether fit compiles its steps: ``compile`` validated, the backend probed; ``"auto"`` reports
    a failure through ``warn`` (default: a RuntimeWarning)."""
    if compile is False or compile is None:
        return False
    if compile not in (True, "auto"):
        raise ValueError(f"compile must be False, True or 'auto', not {compile!r}")
    if not isinstance(backend, str) or not backend:
        raise ValueError(f"compile_backend must be a torch.compile backend name such as 'inductor', not {backend!r}")
    reason = compile_unavailable(backend)
    if reason is None:
        return True
    if compile == "auto":
        msg = f"{reason}; training eagerly (same results, slower)"
        if warn is not None:
            warn(msg)
        else:
            import warnings

            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return False
    raise CompileUnavailable(
        f"{reason}. Install a C++ compiler (g++; or point CXX at one) for Inductor, choose another backend, "
        "or use compile='auto' (--compile auto) to fall back to eager training"
    )


class _CompiledStep:
    """Forward and loss of one training step as one compiled graph; the plan refreshed before each call."""

    def __init__(self, model: nn.Module, net: nn.Module, loss_fn: Callable, bits_penalty: float, backend: str) -> None:
        from .nn.plan import refresh_compile_plan

        self._refresh = refresh_compile_plan
        self.net = net
        self.shapes: "tuple | None" = None

        def forward_loss(x: torch.Tensor, y: torch.Tensor):
            out = model(x)
            loss = loss_fn(out.float(), y)
            total = loss
            if bits_penalty:
                total = loss + bits_penalty * int_bits(net, differentiable=True).to(loss.device, loss.dtype)
            return out, loss, total

        self.eager = forward_loss
        from .nn.plan import compile_options

        self.compiled = torch.compile(forward_loss, **compile_options(backend, dynamic=False))

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        key = (tuple(x.shape), x.dtype, tuple(y.shape), y.dtype)
        if self.shapes is None:
            self.shapes = key
        if key != self.shapes:  # a partial batch: eager, same bits, no recompilation
            return self.eager(x, y)
        with torch.backends.nnpack.flags(enabled=False):  # as the eager convolution does
            self._refresh(self.net)
            return self.compiled(x, y)


def fit(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: "Iterable | None" = None,
    *,
    epochs: int,
    lr: float,
    seed: int = 0,
    bits_penalty: float = 0.0,
    frac_lr: "float | None" = None,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    loss_fn: "Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None" = None,
    calibrate_batches: int = 4,
    checkpoint_dir: "str | Path | None" = None,
    resume: bool = False,
    keep_checkpoints: "int | None" = 2,
    freeze: bool = True,
    freeze_bn_stats: bool = False,
    progress: bool = True,
    on_epoch_end: "Callable[[int, dict[str, float]], None] | None" = None,
    compile: "bool | str" = False,
    compile_backend: str = "inductor",
) -> FitResult:
    """Train ``model`` (in place) for classification; see the module docstring.

    Parameters
    ----------
    model : nn.Module
        A qfx model (or a float one), or a ``DistributedDataParallel`` wrapping one.
    train_loader, val_loader : iterables of ``(inputs, targets)``
        Usually DataLoaders. The training loader's generator(s) are
        re-seeded from ``seed``.
    epochs : int
        Total epochs (a resumed run trains the remaining ones).
    lr : float
        Learning rate of the weights (and of everything but the binary points).
    seed : int
        Seeds torch, NumPy, ``random`` and the loader generators.
    bits_penalty : float
        Weight of the integer-bits penalty (0: off).
    frac_lr : float, optional
        Learning rate of the learned binary points (``frac_bits``; default ``lr``).
    optimizer : {"adam", "adamw", "sgd"}
    weight_decay : float
        For the weights only (never the binary points).
    schedule : {"cosine", "constant"}
        Learning-rate schedule over epochs.
    loss_fn : callable, optional
        ``loss_fn(outputs, targets)``; default cross entropy.
    calibrate_batches : int
        Batches used to calibrate uncalibrated binary points before training.
    checkpoint_dir : path, optional
        Where ``epoch_NNNN.pt`` checkpoints go (none without it).
    resume : bool
        Continue from the newest checkpoint in ``checkpoint_dir`` (starts
        fresh if there is none).
    keep_checkpoints : int or None
        Keep this many newest checkpoints (None: all).
    freeze : bool
        Freeze the binary points at the end (:func:`qfx.nn.freeze`).
    freeze_bn_stats : bool
        Keep BatchNorm layers in eval mode while training: they normalise
        with their running statistics (e.g. those of a pre-trained float
        model) and do not update them, so training sees what inference
        computes (usual for quantization-aware fine-tuning).
    progress : bool
        tqdm progress bar (rank 0 only).
    on_epoch_end : callable, optional
        ``on_epoch_end(epoch, metrics)`` after each epoch's checkpoint; an
        exception raised there interrupts training (the checkpoint exists).
    compile : False, True or "auto"
        Compile each training step (see the module docstring): ``True`` raises
        :class:`CompileUnavailable` where ``compile_backend`` cannot compile here, ``"auto"``
        warns and trains eagerly.
    compile_backend : str
        The ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` needs no C++ compiler).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if bits_penalty < 0:
        raise ValueError(f"bits_penalty must be >= 0, got {bits_penalty!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir")
    use_compile = _check_compile(compile, compile_backend)
    loss_fn = loss_fn or F.cross_entropy
    net = _unwrap(model)
    device = _device_of(net)
    is_dist, rank, world = _dist()
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None and rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    seed_everything(seed)
    for g in _loader_generators(train_loader):
        g.manual_seed(int(seed))

    opt = _make_optimizer(net, optimizer, float(lr), float(frac_lr if frac_lr is not None else lr), weight_decay)
    sched = _make_schedule(opt, schedule, epochs)
    result = FitResult()
    start = 0
    ckpt = latest_checkpoint(ckpt_dir) if (resume and ckpt_dir is not None) else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, map_location=device)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        _set_rng_state(state["rng"], train_loader)
        start = int(state["epoch"])
        result.history = list(state["history"])
        result.resumed_from = start
    else:
        _train_mode(net, freeze_bn_stats)  # calibrate in the mode training runs in
        calibrate(net, train_loader, batches=calibrate_batches)
    if is_dist and world > 1:
        _broadcast_state(net)

    show = progress and rank == 0
    step_fn = _CompiledStep(model, net, loss_fn, bits_penalty, compile_backend) if use_compile else None
    for epoch in range(start, epochs):
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        model.train()
        _train_mode(net, freeze_bn_stats)
        t0 = time.perf_counter()
        n, correct, loss_sum = 0, 0, 0.0
        bar = _progress(train_loader, show, f"epoch {epoch + 1}/{epochs}")
        for batch in bar:
            x, y = _batch_to(batch, device)
            opt.zero_grad(set_to_none=True)
            if step_fn is not None:
                out, loss, total = step_fn(x, y)
            else:
                out = model(x)
                loss = loss_fn(out.float(), y)
                total = loss
                if bits_penalty:
                    total = loss + bits_penalty * int_bits(net, differentiable=True).to(loss.device, loss.dtype)
            total.backward()
            opt.step()
            with torch.no_grad():
                loss_sum += float(loss) * len(y)
                correct += int((out.argmax(dim=1) == y).sum())
                n += len(y)
            if show:
                bar.set_postfix(loss=f"{loss_sum / n:.4f}", acc=f"{correct / n:.3f}", refresh=False)
        if show and hasattr(bar, "close"):
            bar.close()
        lr_now = opt.param_groups[0]["lr"]
        sched.step()
        if n == 0:
            raise ValueError("fit: the training loader yielded no samples")
        metrics: dict[str, float] = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / n,
            "train_accuracy": correct / n,
            "int_bits": float(int_bits(net)),
            "lr": lr_now,
        }
        if is_dist and world > 1:
            _broadcast_buffers(net)
        if val_loader is not None:
            v = evaluate(net, val_loader, loss_fn=loss_fn)
            metrics["val_loss"], metrics["val_accuracy"] = v["loss"], v["accuracy"]
        metrics["seconds"] = time.perf_counter() - t0
        result.history.append(metrics)
        result.epochs_run += 1
        if ckpt_dir is not None:
            if rank == 0:
                _atomic_save(
                    {
                        "model": net.state_dict(),
                        "optimizer": opt.state_dict(),
                        "schedule": sched.state_dict(),
                        "rng": _rng_state(train_loader),
                        "epoch": epoch + 1,
                        "history": result.history,
                        "fit_args": {"epochs": epochs, "lr": lr, "seed": seed, "bits_penalty": bits_penalty},
                    },
                    ckpt_dir / f"epoch_{epoch + 1:04d}.pt",
                )
                _prune(ckpt_dir, keep_checkpoints)
            if is_dist and world > 1:
                import torch.distributed as dist

                dist.barrier()
        if show:
            _print_epoch(metrics, bool(learnable_quantizers(net)))
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics)

    if is_dist and world > 1:
        _broadcast_buffers(net)
    net.eval()
    if freeze:
        _freeze(net)
    if val_loader is not None:
        result.final = {k: v for k, v in evaluate(net, val_loader, loss_fn=loss_fn).items() if k != "n"}
    return result


def _train_mode(net: nn.Module, freeze_bn_stats: bool) -> None:
    net.train()
    if freeze_bn_stats:
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _progress(loader: Iterable, show: bool, desc: str):
    if not show:
        return loader
    # tqdm.std, not tqdm.auto: tqdm.auto's asyncio class calls iter(loader) in its constructor, an
    # extra DataLoader iterator that draws from the loader's generator and so changed the shuffle
    # (a run with a progress bar trained on other batches than the same run with progress=False).
    from tqdm.std import tqdm

    # disable=None: no bar when stderr is not a terminal (logs get the per-epoch lines only)
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None)


def _print_epoch(m: dict[str, float], quantized: bool) -> None:
    from tqdm.auto import tqdm

    parts = [f"epoch {int(m['epoch'])}", f"loss {m['train_loss']:.4f}", f"acc {m['train_accuracy']:.4f}"]
    if "val_accuracy" in m:
        parts.append(f"val_acc {m['val_accuracy']:.4f}")
    if quantized:
        parts.append(f"int_bits {m['int_bits']:.0f}")
    tqdm.write("  ".join(parts))


def _prune(ckpt_dir: Path, keep: "int | None") -> None:
    if keep is None:
        return
    found = sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _CKPT_RE.match(p.name)))
    for _, p in found[: max(len(found) - max(int(keep), 1), 0)]:
        p.unlink(missing_ok=True)


def _broadcast_state(net: nn.Module) -> None:
    with torch.no_grad():
        for t in list(net.parameters()) + list(net.buffers()):
            _broadcast(t.data)


def _broadcast_buffers(net: nn.Module) -> None:
    with torch.no_grad():
        for b in net.buffers():
            _broadcast(b)


def _broadcast(t: torch.Tensor) -> None:
    """Broadcast from rank 0 in place (bool tensors via uint8: not every backend takes bool)."""
    import torch.distributed as dist

    if t.dtype == torch.bool:
        tmp = t.to(torch.uint8)
        dist.broadcast(tmp, src=0)
        t.copy_(tmp.bool())
    else:
        dist.broadcast(t, src=0)
