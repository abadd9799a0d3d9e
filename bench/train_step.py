"""Time of one training step of the demo CNN: qfx model vs float model, measured in the same run.

    python bench/train_step.py [--batch 64] [--steps 30] [--threads 1] [--config W8|W4|khot] [--json OUT]

One step = forward, cross-entropy, backward, Adam step, on a fixed batch of
8x8 digits. Both models are the same float-pre-initialised ``digits_cnn``;
the qfx one is ``qfx.convert``-ed with the demo config (learned binary
points, so the step includes the binary-point gradients) and calibrated
first. Timings alternate between the two models (interleaved rounds) so that
load changes on a shared machine hit both alike; the median per-step time
of each is reported, and their ratio (qfx / float); the same for the thread's
CPU time per step (``time.thread_time``), which time slices lost to other
processes do not inflate.

Three more contenders put the ratio in context, timed in the same interleaved rounds:

``qfx, binary points frozen``
    The same qfx model after :func:`qfx.nn.freeze` (formats fixed, nothing learned
    but the weights): what learning the binary points costs.

``eager fake-quant floor``
    The float model with the cheapest possible eager cast (an ``autograd.Function``
    doing ``round(x * 2**F)`` clamped, straight-through backward, one learnable
    scalar per tensor for Adam) at the same 31 tensors qfx casts. Not ap_fixed
    (one rounding mode, no exactness checks, BatchNorm's scale and shift stood in
    for by its weight and bias): a lower bound for any design that casts each
    tensor in an eager Python-level op.
``brevitas``
    The same network in brevitas (``QuantConv2d``, ``QuantReLU``, ``QuantLinear``,
    ``QuantIdentity`` around the residual add; 8-bit per-tensor learned scales,
    brevitas' defaults), BatchNorm left in float (brevitas does not quantize it as
    its own layer). Skipped when brevitas is not installed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import qfx  # noqa: E402
from qfx import train as qtrain  # noqa: E402
from qfx.demo.accuracy import khot_config, word_length_config  # noqa: E402
from qfx.demo.models import build_model  # noqa: E402


class _FakeQuant(torch.autograd.Function):
    """round(x * 2**5) clamped to int8, straight-through; a sum as the scalar's gradient."""

    @staticmethod
    def forward(ctx, x, frac):  # type: ignore[override]
        return torch.round(x * 32.0).clamp_(-128, 127).mul_(1.0 / 32.0)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return g, g.sum().reshape(())


class _Cast(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frac = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FakeQuant.apply(x, self.frac)


class _FloorCNN(torch.nn.Module):
    """A copy of ``digits_cnn`` with a ``_Cast`` at each tensor qfx casts: conv input/weight/
    output, BatchNorm input/weight/bias/output, ReLU output, add inputs and output, dense
    input/weight/bias/output (31)."""

    def __init__(self, float_model: torch.nn.Module) -> None:
        super().__init__()
        import copy

        self.m = copy.deepcopy(float_model)
        names = ("conv1", "bn1", "relu1", "b_conv1", "b_bn1", "b_relu1", "b_conv2", "b_bn2", "add", "b_relu2", "fc")
        counts = (3, 4, 1, 3, 4, 1, 3, 4, 3, 1, 4)
        self.q = torch.nn.ModuleDict({n: torch.nn.ModuleList(_Cast() for _ in range(c)) for n, c in zip(names, counts)})

    def _conv(self, name: str, conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        qi, qw, qo = self.q[name]
        return qo(F.conv2d(qi(x), qw(conv.weight), None, conv.stride, conv.padding))

    def _bn(self, name: str, bn: torch.nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
        qi, qw, qb, qo = self.q[name]
        return qo(F.batch_norm(qi(x), bn.running_mean, bn.running_var, qw(bn.weight), qb(bn.bias), self.training))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, b = self.m, self.m.block
        x = self.q["relu1"][0](F.relu(self._bn("bn1", m.bn1, self._conv("conv1", m.conv1, x))))
        y = self.q["b_relu1"][0](F.relu(self._bn("b_bn1", b.bn1, self._conv("b_conv1", b.conv1, x))))
        y = self._bn("b_bn2", b.bn2, self._conv("b_conv2", b.conv2, y))
        qa, qb, qo = self.q["add"]
        x = self.q["b_relu2"][0](F.relu(qo(qa(x) + qb(y))))
        qi, qw, qbias, qout = self.q["fc"]
        x = torch.flatten(F.max_pool2d(x, 2), 1)
        return qout(F.linear(qi(x), qw(m.fc.weight), qbias(m.fc.bias)))


def _brevitas_cnn(channels: int = 8) -> "torch.nn.Module | None":
    """The demo CNN in brevitas (8-bit learned per-tensor scales, float BatchNorm), or None."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import brevitas.nn as qnn
            from brevitas.quant import Int8ActPerTensorFloat, Int16Bias, Uint8ActPerTensorFloat
    except ImportError:
        return None
    nn = torch.nn

    class BrevitasCNN(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat)
            self.conv1 = qnn.QuantConv2d(1, c, 3, padding=1, bias=False)
            self.bn1, self.relu1 = nn.BatchNorm2d(c), qnn.QuantReLU(act_quant=Uint8ActPerTensorFloat)
            self.b_conv1 = qnn.QuantConv2d(c, c, 3, padding=1, bias=False)
            self.b_bn1, self.b_relu1 = nn.BatchNorm2d(c), qnn.QuantReLU()
            self.b_conv2 = qnn.QuantConv2d(c, c, 3, padding=1, bias=False)
            self.b_bn2 = nn.BatchNorm2d(c)
            self.qa, self.qb, self.qo = qnn.QuantIdentity(), qnn.QuantIdentity(), qnn.QuantIdentity()
            self.b_relu2 = qnn.QuantReLU()
            self.fc = qnn.QuantLinear(c * 16, 10, bias=True, bias_quant=Int16Bias,
                                      input_quant=Int8ActPerTensorFloat, output_quant=Int8ActPerTensorFloat)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.relu1(self.bn1(self.conv1(self.inp(x))))
            y = self.b_bn2(self.b_conv2(self.b_relu1(self.b_bn1(self.b_conv1(x)))))
            x = self.b_relu2(self.qo(self.qa(x) + self.qb(y)))
            return self.fc(torch.flatten(F.max_pool2d(x, 2), 1))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return BrevitasCNN(channels)


def _step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()

    return step


def _time(step, n: int) -> list[tuple[float, float]]:
    """(wall, thread CPU) seconds of each of ``n`` steps."""
    out = []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.thread_time()
        step()
        out.append((time.perf_counter() - t0, time.thread_time() - c0))
    return out


def main(argv: "list[str] | None" = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=30, help="timed steps per model")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (steps split across them)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--config", choices=("W8", "W4", "khot"), default="W8")
    p.add_argument("--json", help="write the result here")
    p.add_argument("--no-peers", action="store_true", help="time float and qfx only")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from qfx.data import digits_splits

    data = digits_splits(0).train
    x, y = data.tensors[0][: args.batch], data.tensors[1][: args.batch]
    fmodel = build_model("digits_cnn", seed=0).train()
    cfg = {"W8": word_length_config(8), "W4": word_length_config(4), "khot": khot_config(fmodel)}[args.config]
    qmodel = qfx.convert(fmodel, cfg).train()
    qtrain.calibrate(qmodel, [(x, y)])
    steps = {"float": _step_fn(fmodel, x, y), "qfx": _step_fn(qmodel, x, y)}
    if not args.no_peers:
        import copy

        frozen = qfx.nn.freeze(copy.deepcopy(qmodel)).train()
        steps["qfx, binary points frozen"] = _step_fn(frozen, x, y)
        steps["eager fake-quant floor"] = _step_fn(_FloorCNN(fmodel).train(), x, y)
        bmodel = _brevitas_cnn()
        if bmodel is not None:
            steps["brevitas"] = _step_fn(bmodel.train(), x, y)
    for s in steps.values():  # warm-up (allocations, lazy imports)
        _time(s, 3)
    per_round = max(1, args.steps // args.rounds)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for name, s in steps.items():
            times[name] += _time(s, per_round)
    med = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    ratio = med["qfx"] / med["float"]
    cpu_ratio = cpu["qfx"] / cpu["float"]
    peers = {
        k: {"ms": 1e3 * med[k], "ratio": med[k] / med["float"], "cpu_ms": 1e3 * cpu[k], "cpu_ratio": cpu[k] / cpu["float"]}
        for k in steps
        if k not in ("float", "qfx")
    }
    result = {
        "model": "digits_cnn",
        "config": args.config,
        "batch": args.batch,
        "threads": args.threads,
        "steps_per_model": len(times["float"]),
        "float_ms": 1e3 * med["float"],
        "qfx_ms": 1e3 * med["qfx"],
        "ratio": ratio,
        "float_cpu_ms": 1e3 * cpu["float"],
        "qfx_cpu_ms": 1e3 * cpu["qfx"],
        "cpu_ratio": cpu_ratio,
        "peers": peers,
        "torch": torch.__version__,
    }
    print(
        f"digits_cnn train step, batch {args.batch}, {args.threads} thread(s), config {args.config}: "
        f"float {result['float_ms']:.2f} ms, qfx {result['qfx_ms']:.2f} ms, ratio qfx/float = {ratio:.2f}x "
        f"(thread CPU time: float {result['float_cpu_ms']:.2f} ms, qfx {result['qfx_cpu_ms']:.2f} ms, "
        f"ratio {cpu_ratio:.2f}x)"
    )
    for k, v in peers.items():
        print(f"  {k}: {v['ms']:.2f} ms, {v['ratio']:.2f}x float (thread CPU {v['cpu_ms']:.2f} ms, {v['cpu_ratio']:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
