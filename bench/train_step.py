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
    for s in steps.values():  # warm-up (allocations, lazy imports)
        _time(s, 3)
    per_round = max(1, args.steps // args.rounds)
    times: dict[str, list[tuple[float, float]]] = {"float": [], "qfx": []}
    for _ in range(args.rounds):
        for name, s in steps.items():
            times[name] += _time(s, per_round)
    med = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    ratio = med["qfx"] / med["float"]
    cpu_ratio = cpu["qfx"] / cpu["float"]
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
        "torch": torch.__version__,
    }
    print(
        f"digits_cnn train step, batch {args.batch}, {args.threads} thread(s), config {args.config}: "
        f"float {result['float_ms']:.2f} ms, qfx {result['qfx_ms']:.2f} ms, ratio qfx/float = {ratio:.2f}x "
        f"(thread CPU time: float {result['float_cpu_ms']:.2f} ms, qfx {result['qfx_cpu_ms']:.2f} ms, "
        f"ratio {cpu_ratio:.2f}x)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
