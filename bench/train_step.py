"""Time of one training step of the demo CNN: qfx model vs float model, measured in the same run.

    python bench/train_step.py [--model digits_cnn|resnet8] [--batch 64 [256 ...]] [--steps 30] [--threads 1]
                               [--config W8|W4|khot] [--no-compile] [--backend inductor] [--json OUT]

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

Compiled steps (issue 16; ``--compile``, default on): ``float, compiled`` and ``qfx, compiled``
run forward + loss as one ``torch.compile(fullgraph=True)`` graph (backend ``--backend``,
default Inductor; its backward compiled with it), the qfx one through
:func:`qfx.nn.compile_model` (the compile plan refreshed before every step, outside the graph),
the Adam step eager for all (torch's fused Adam, as :func:`qfx.train.fit` uses it, for every
contender). The qfx one compiles with :data:`qfx.nn.plan.INDUCTOR_OPTIONS` (Inductor's layout
optimisation off), the float one with Inductor's defaults (what a user gets); ``float, compiled
(layout opt off)`` shows the float step with the same options. ``compile_s`` is the wall time of the first compiled step (tracing
and code generation of forward and backward); ``graphs`` / ``graph_breaks`` come from
``torch._dynamo.explain`` of the qfx forward + loss. Ratios are against the float step of the
same mode (eager / compiled) and, for the compiled qfx step, also against the eager float step.

``--model resnet8``: a CIFAR-10-sized ResNet-8 (16-32-64 channels, three basic blocks, 1x1
shortcuts where the shape changes, global average pool; ``[N, 3, 32, 32]`` random inputs), the
same W8 config; peers and brevitas are run for the demo CNN only.
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


def _step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, compiled=None):
    """One training step; ``compiled``: the compiled forward (+ the model's parameters for Adam)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # as qfx.train.fit: one kernel call
    fwd = compiled if compiled is not None else model

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(fwd(x).float(), y)
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


class _Basic(torch.nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1, self.relu1 = nn.BatchNorm2d(cout), nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU()
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        s = x if self.short is None else self.short(x)
        return self.relu2(s + y)


class ResNet8(torch.nn.Module):
    """CIFAR-10-sized ResNet-8: stem conv, three basic blocks (16, 32, 64 channels), pool, dense."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        self.layer1, self.layer2, self.layer3 = _Basic(16, 16, 1), _Basic(16, 32, 2), _Basic(32, 64, 2)
        self.pool, self.flatten, self.fc = nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def _data(model: str, batch: int):
    if model == "resnet8":
        g = torch.Generator().manual_seed(0)
        return torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)
    from qfx.data import digits_splits

    data = digits_splits(0).train
    return data.tensors[0][:batch], data.tensors[1][:batch]


def _float_model(model: str) -> torch.nn.Module:
    if model == "resnet8":
        torch.manual_seed(0)
        return ResNet8().train()
    return build_model("digits_cnn", seed=0).train()


def _graphs(qmodel: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> "tuple[int, int]":
    """``(graphs, graph breaks)`` of the qfx forward + loss (``torch._dynamo.explain``)."""
    from qfx.nn import refresh_compile_plan

    def forward_loss(a, b):
        return F.cross_entropy(qmodel(a).float(), b)

    with torch.backends.nnpack.flags(enabled=False):
        refresh_compile_plan(qmodel)
        e = torch._dynamo.explain(forward_loss)(x, y)
    torch._dynamo.reset()
    return e.graph_count, e.graph_break_count


def run_one(args: argparse.Namespace, batch: int) -> dict:
    """The interleaved timing of every contender at one batch size."""
    import copy

    x, y = _data(args.model, batch)
    fmodel = _float_model(args.model)
    cfg = {"W8": word_length_config(8), "W4": word_length_config(4), "khot": khot_config(fmodel)}[args.config]
    qmodel = qfx.convert(fmodel, cfg).train()
    qtrain.calibrate(qmodel, [(x, y)])
    steps = {"float": _step_fn(fmodel, x, y), "qfx": _step_fn(qmodel, x, y)}
    compile_s: dict[str, float] = {}
    graphs = None
    if args.compile:
        graphs = _graphs(qmodel, x, y)
        fc = copy.deepcopy(fmodel)
        qc = copy.deepcopy(qmodel)
        steps["float, compiled"] = _step_fn(fc, x, y, torch.compile(fc, fullgraph=True, backend=args.backend))
        steps["qfx, compiled"] = _step_fn(qc, x, y, qfx.nn.compile_model(qc, backend=args.backend))
        if args.backend == "inductor":
            fl = copy.deepcopy(fmodel)
            steps["float, compiled (layout opt off)"] = _step_fn(
                fl, x, y, torch.compile(fl, **qfx.nn.plan.compile_options(args.backend)))
        for k in [k for k in steps if "compiled" in k]:
            t0 = time.perf_counter()
            steps[k]()  # trace + compile forward and backward
            compile_s[k] = time.perf_counter() - t0
    if not args.no_peers and args.model == "digits_cnn":
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

    def base(k: str) -> str:
        return "float, compiled" if "compiled" in k else "float"

    rows = {
        k: {"ms": 1e3 * med[k], "ratio": med[k] / med[base(k)], "cpu_ms": 1e3 * cpu[k], "cpu_ratio": cpu[k] / cpu[base(k)]}
        for k in steps
    }
    if "qfx, compiled" in rows:
        rows["qfx, compiled"]["ratio_vs_eager_float"] = med["qfx, compiled"] / med["float"]
    result = {
        "model": args.model,
        "config": args.config,
        "batch": batch,
        "threads": args.threads,
        "backend": args.backend if args.compile else None,
        "steps_per_model": len(times["float"]),
        "float_ms": 1e3 * med["float"],
        "qfx_ms": 1e3 * med["qfx"],
        "ratio": med["qfx"] / med["float"],
        "float_cpu_ms": 1e3 * cpu["float"],
        "qfx_cpu_ms": 1e3 * cpu["qfx"],
        "cpu_ratio": cpu["qfx"] / cpu["float"],
        "contenders": rows,
        "compile_s": compile_s,
        "graphs": None if graphs is None else {"graphs": graphs[0], "graph_breaks": graphs[1]},
        "torch": torch.__version__,
    }
    print(f"{args.model} train step, batch {batch}, {args.threads} thread(s), config {args.config}"
          + (f", backend {args.backend}" if args.compile else "") + ":")
    for k, v in rows.items():
        extra = f", {v['ratio_vs_eager_float']:.2f}x eager float" if "ratio_vs_eager_float" in v else ""
        print(f"  {k}: {v['ms']:.2f} ms, {v['ratio']:.2f}x {base(k)}{extra} "
              f"(thread CPU {v['cpu_ms']:.2f} ms, {v['cpu_ratio']:.2f}x)")
    if compile_s:
        print("  compile (first step): " + ", ".join(f"{k} {v:.1f} s" for k, v in compile_s.items()))
    if graphs is not None:
        print(f"  torch._dynamo.explain of the qfx forward + loss: {graphs[0]} graph(s), {graphs[1]} break(s)")
    return result


def main(argv: "list[str] | None" = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("digits_cnn", "resnet8"), default="digits_cnn")
    p.add_argument("--batch", type=int, nargs="+", default=[64])
    p.add_argument("--steps", type=int, default=30, help="timed steps per model")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (steps split across them)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--config", choices=("W8", "W4", "khot"), default="W8")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="eager contenders only")
    p.add_argument("--backend", default="inductor", help="torch.compile backend of the compiled contenders")
    p.add_argument("--json", help="write the result here")
    p.add_argument("--no-peers", action="store_true", help="no frozen / fake-quant floor / brevitas contenders")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = [run_one(args, b) for b in args.batch]
    if args.json:
        Path(args.json).write_text(json.dumps(results if len(results) > 1 else results[0], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
