"""Demo accuracy table: float vs PTQ vs qfx-trained (learned binary points), 8x8 digits.

``python -m qfx.demo.accuracy [--out DIR] [--seeds 0 1 2] [--quick]``
(or ``qfx demo-accuracy ...``) trains, for each demo model (``digits_mlp``,
``digits_cnn``) and each seed:

1. the float model (Adam, cosine schedule) -> **float** test accuracy;
2. for each word length W in 8, 6, 4 (see :func:`word_length_config`):
   **PTQ-W**: the float model converted, binary points calibrated on training
   batches and frozen, no training (:func:`qfx.train.ptq`);
   **qfx-W**: the converted float model, calibrated as for PTQ, then trained
   with learned binary points (:func:`qfx.train.fit`; BatchNorm statistics
   kept from the float model, ``freeze_bn_stats``), then frozen;
3. **K-hot** (k = 2, 8-bit base): weights ``khot<2,ap_fixed<8,I>>`` with
   ``I`` chosen per layer from the float weights (K-hot has no learnable
   binary point), everything else as W = 8; PTQ and trained.

All accuracies are on the held-out test split (fixed by ``split_seed=0``; the
seed changes initialisation and batch order), averaged over the seeds, and
written to ``DIR/accuracy.json`` and ``DIR/accuracy.md``.

What W covers (``word_length_config``): layer inputs, weights, outputs,
BatchNorm scale and shift, residual-add operands and outputs (every
activation and element-wise tensor) are W bits; biases are 2W bits;
accumulators are ``auto`` (exact). Inputs of Linear/Conv2d layers and ReLU
outputs are unsigned (``ap_ufixed``: in these models they are never
negative); rounding ``AP_RND`` (weights ``AP_RND_CONV``), overflow
``AP_SAT``. Every binary point is learned (PTQ: calibrated only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import train as qtrain
from ..conversion import convert
from ..data import digits_loaders
from .models import build_model

__all__ = ["word_length_config", "khot_config", "run", "to_markdown", "main", "SETTINGS", "QUICK"]

#: Hyper-parameters of the full table.
SETTINGS: dict[str, Any] = {
    "models": ("digits_mlp", "digits_cnn"),
    "seeds": (0, 1, 2),
    "widths": (8, 6, 4),
    "khot": True,
    "batch_size": 64,
    "float_epochs": {"digits_mlp": 30, "digits_cnn": 15},
    "float_lr": 1e-2,
    "qat_epochs": {"digits_mlp": 10, "digits_cnn": 8},
    "qat_lr": 1e-3,
    "frac_lr": 3e-2,
    "freeze_bn_stats": True,
    "calib_batches": 8,
}
#: A reduced run for tests (seconds).
QUICK: dict[str, Any] = {
    **SETTINGS,
    "seeds": (0,),
    "widths": (8, 4),
    "float_epochs": {"digits_mlp": 6, "digits_cnn": 3},
    "qat_epochs": {"digits_mlp": 2, "digits_cnn": 1},
}


def word_length_config(width: int) -> dict[str, Any]:
    """The qfx config applying word length ``width`` to weights, activations and element-wise layers."""
    w = int(width)
    act = f"ap_fixed<{w},3,AP_RND,AP_SAT>"
    uact = f"ap_ufixed<{w},3,AP_RND,AP_SAT>"
    return {
        "default": {
            "input": act,
            "weight": f"ap_fixed<{w},1,AP_RND_CONV,AP_SAT>",
            "bias": f"ap_fixed<{2 * w},4,AP_RND,AP_SAT>",
            "accum": "auto",
            "output": act,
            "learn_binary_point": True,
        },
        "types": {
            "Linear": {"input": uact},
            "Conv2d": {"input": uact},
            "ReLU": {"output": uact},
            "BatchNorm2d": {"scale": f"ap_fixed<{w},2,AP_RND_CONV,AP_SAT>", "shift": act},
        },
    }


def _khot_int_bits(weight: torch.Tensor, base_width: int) -> int:
    """Smallest I such that ``ap_fixed<base_width, I>`` holds max|w| (within half an lsb)."""
    m = float(weight.detach().abs().max())
    i = 1
    while m > 2.0 ** (i - 1) - 2.0 ** (i - base_width) / 2 and i < base_width:
        i += 1
    return i


def khot_config(float_model: torch.nn.Module, k: int = 2, base_width: int = 8) -> dict[str, Any]:
    """W = 8 everywhere, weights ``khot<k,ap_fixed<base_width,I>>`` with I per layer from ``float_model``."""
    cfg = word_length_config(base_width)
    layers: dict[str, Any] = {}
    for name, m in float_model.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            i = _khot_int_bits(m.weight, base_width)
            layers[name] = {"weight": f"khot<{k},ap_fixed<{base_width},{i},AP_RND_CONV,AP_SAT>>"}
    cfg["layers"] = layers
    return cfg


def _test_accuracy(model: torch.nn.Module, loader) -> float:
    return qtrain.evaluate(model, loader)["accuracy"]


def run(settings: "dict[str, Any] | None" = None, *, progress: bool = True, log=print) -> dict[str, Any]:
    """Run the table; returns ``{"settings", "results": {model: {row: [acc per seed]}}, "seconds"}``."""
    s = {**SETTINGS, **(settings or {})}
    t_start = time.perf_counter()
    results: dict[str, dict[str, list[float]]] = {}
    for name in s["models"]:
        rows: dict[str, list[float]] = {}
        for seed in s["seeds"]:
            t0 = time.perf_counter()
            train, val, test = digits_loaders(s["batch_size"], seed=seed)
            fmodel = build_model(name, seed=seed)
            qtrain.fit(fmodel, train, val, epochs=s["float_epochs"][name], lr=s["float_lr"], seed=seed, progress=False)
            fmodel.eval()
            rows.setdefault("float", []).append(_test_accuracy(fmodel, test))
            variants = [(f"W={w}", word_length_config(w)) for w in s["widths"]]
            if s["khot"]:
                variants.append(("K-hot k=2 (8-bit base)", khot_config(fmodel)))
            for label, cfg in variants:
                p = convert(fmodel, cfg)
                qtrain.ptq(p, train, batches=s["calib_batches"])
                rows.setdefault(f"PTQ {label}", []).append(_test_accuracy(p, test))
                q = convert(fmodel, cfg)
                # calibrate as PTQ does (eval mode: BatchNorm running statistics), then train
                qtrain.calibrate(q, train, batches=s["calib_batches"])
                qtrain.fit(
                    q, train, val, epochs=s["qat_epochs"][name], lr=s["qat_lr"], frac_lr=s["frac_lr"],
                    freeze_bn_stats=s["freeze_bn_stats"], seed=seed, progress=False,
                )
                rows.setdefault(f"qfx {label}", []).append(_test_accuracy(q, test))
            if progress:
                log(f"{name} seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in rows.items())
                    + f"  ({time.perf_counter() - t0:.1f} s)")
        results[name] = rows
    jsonable = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, tuple) else v) for k, v in s.items()}
    return {"settings": jsonable, "results": results, "seconds": time.perf_counter() - t_start}


def _order(rows: dict[str, list[float]]) -> list[str]:
    keys = ["float"]
    labels = [k[4:] for k in rows if k.startswith("PTQ ")]
    for label in labels:
        keys += [f"PTQ {label}", f"qfx {label}"]
    return [k for k in keys if k in rows]


def to_markdown(report: dict[str, Any]) -> str:
    """The table: one row per configuration, a column per model (mean ± std over seeds, %)."""
    res = report["results"]
    models = list(res)
    seeds = report["settings"]["seeds"]
    lines = [
        f"Test accuracy (%) on the held-out digits test split, mean ± std over seeds {list(seeds)}.",
        "",
        "| configuration | " + " | ".join(models) + " |",
        "|---|" + "---:|" * len(models),
    ]
    for key in _order(res[models[0]]):
        cells = []
        for m in models:
            v = [100 * a for a in res[m].get(key, [])]
            if not v:
                cells.append("")
                continue
            sd = statistics.pstdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.fmean(v):.2f} ± {sd:.2f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "PTQ: binary points calibrated (max |x| over training batches), frozen, no training. "
        "qfx: the converted float model trained with learned binary points, then frozen. "
        "W applies to weights, layer inputs/outputs, BatchNorm scale/shift and residual adds; "
        "biases 2W bits, exact accumulators. "
        f"Run time {report['seconds']:.0f} s.",
    ]
    checks = targets(report)
    if checks:
        lines += ["", "Targets: " + "; ".join(f"{k}: {'met' if ok else 'NOT met'} ({why})" for k, (ok, why) in checks.items())]
    return "\n".join(lines) + "\n"


def _mean(report: dict[str, Any], model: str, key: str) -> "float | None":
    v = report["results"][model].get(key)
    return 100 * statistics.fmean(v) if v else None


def targets(report: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    """The demo's targets per model: qfx W=8 within 1 point of float; qfx W=4 >= PTQ W=4 + 5 (or PTQ W=4 within 1 of float)."""
    out: dict[str, tuple[bool, str]] = {}
    for m in report["results"]:
        f = _mean(report, m, "float")
        q8 = _mean(report, m, "qfx W=8")
        if f is not None and q8 is not None:
            out[f"{m} 8-bit"] = (q8 >= f - 1.0, f"qfx {q8:.2f} vs float {f:.2f}")
        q4, p4 = _mean(report, m, "qfx W=4"), _mean(report, m, "PTQ W=4")
        if f is not None and q4 is not None and p4 is not None:
            ok = q4 >= p4 + 5.0 or p4 >= f - 1.0
            out[f"{m} 4-bit"] = (ok, f"qfx {q4:.2f} vs PTQ {p4:.2f}, float {f:.2f}")
    return out


def main(argv: "Sequence[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(prog="qfx demo-accuracy", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_cli(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", "-o", default="demo-accuracy", help="output folder (accuracy.json, accuracy.md)")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2)")
    parser.add_argument("--models", nargs="+", choices=SETTINGS["models"], help="models (default both)")
    parser.add_argument("--quick", action="store_true", help="reduced run (1 seed, W 8 and 4, few epochs)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")


def run_cli(args: argparse.Namespace) -> int:
    from ..runs import ConfigError

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads}: give 1 or more")
    if args.seeds and any(s < 0 for s in args.seeds):
        raise ConfigError(f"--seeds {' '.join(map(str, args.seeds))}: give non-negative integers")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.exists() and not out.is_dir():  # before the runs, not after minutes of training
        raise ConfigError(f"--out {str(out)!r} exists and is not a folder; choose another --out")
    settings = dict(QUICK if args.quick else SETTINGS)
    if args.seeds:
        settings["seeds"] = tuple(args.seeds)
    if args.models:
        settings["models"] = tuple(args.models)
    report = run(settings)
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
    md = to_markdown(report)
    (out / "accuracy.md").write_text(md)
    print(md)
    print(f"wrote {out / 'accuracy.json'} and {out / 'accuracy.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
