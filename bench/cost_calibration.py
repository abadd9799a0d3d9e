"""Calibration data of the analytic LUT/FF estimator (qfx.cost.estimate): Yosys counts per engine.

Exports the small test models of tests/qmodels.py (fixed, per-channel, K-hot, minifloat, L-Mul
weights; dense, conv2d, pools, BatchNorm, residual add) plus the two digits demo manifests,
synthesizes every engine of each accelerator as its own top and each whole accelerator with
Yosys synth_xilinx -family xcup (qfx.cost.synthesis, cached), and writes the features and
counts to bench/cost_calibration.json. `--fit` then prints least-squares coefficients, which were
copied into qfx/cost/estimate.py by hand (see the comment there).

    python bench/cost_calibration.py [--work /tmp/qfx_cal] [--fit]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMOS = {"demo_cnn_w8": ROOT / "out/demo/cnn_w8/manifest", "demo_mlp_khot": ROOT / "out/demo/mlp_khot/manifest"}


def export_models(work: Path) -> dict[str, Path]:
    from torch import nn

    from qfx.export import export
    from qfx.nn import QLinear, QReLU
    from tests.qmodels import MODELS, B, X, Y, init_weights, mlp, model_inputs, per_channel

    def lmul_mlp():
        return init_weights(nn.Sequential(
            QLinear(6, 5, input=X, weight="fp8_e4m3fn<saturate=true>", bias=B, output=Y, multiply="lmul"),
            QReLU(output="ap_ufixed<8,3,AP_RND,AP_SAT>"),
            QLinear(5, 3, input=X, weight="fp6_e3m2fn", bias=B, output=Y, multiply="lmul",
                    accum="ap_fixed<10,3,AP_RND_CONV,AP_SAT>"),
        ), 21)

    models = dict(MODELS)
    models["lmul_mlp"] = (lmul_mlp, (6,), 2.0, None)
    models["mf_mlp"] = (lambda: init_weights(mlp("fp8_e4m3fn<saturate=true>"), 7), (12,), 2.0, None)
    models["khot1_mlp"] = (lambda: init_weights(mlp("khot<1,ap_fixed<8,1>>"), 9), (12,), 2.0, None)
    models["w16_mlp"] = (lambda: init_weights(mlp("ap_fixed<16,2,AP_RND_CONV,AP_SAT>"), 13), (12,), 2.0, None)
    out = {}
    for i, (name, (make, shape, scale, _)) in enumerate(models.items()):
        d = work / name
        if not (d / "manifest.yaml").exists():
            x = model_inputs(shape, scale, 300 + i)
            export(make(x) if make is per_channel else make(), x, d)
        out[name] = d
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--work", default="/tmp/qfx_cal")
    p.add_argument("--out", default=str(ROOT / "bench/cost_calibration.json"))
    p.add_argument("--only", default="")
    p.add_argument("--fit", action="store_true", help="fit the LUT/FF coefficients on the stored JSON and report errors")
    args = p.parse_args(argv)
    if args.fit:
        return fit(json.loads(Path(args.out).read_text()))
    from qfx.cost.estimate import engine_features
    from qfx.cost.synthesis import synth_accelerator
    from qfx.manifest import load

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    demos = {k: v for k, v in DEMOS.items() if (v / "manifest.yaml").exists()}
    for k in sorted(set(DEMOS) - set(demos)):
        print(f"{k}: {DEMOS[k]} not found (run `make demo` first to include it)", flush=True)
    designs = {**export_models(work), **demos}
    if args.only:
        designs = {k: designs[k] for k in args.only.split(",") if k in designs}
    rows = []
    for name, path in designs.items():
        t = time.time()
        man = load(path)
        r = synth_accelerator(man)
        feats = engine_features(man)
        for node, ms in r["engines"].items():
            rows.append({"design": name, "engine": node, "features": feats[node], "yosys": ms.summary(),
                         "paths": ms.paths})
        rows.append({"design": name, "engine": "__whole__", "yosys": r["whole"].summary(), "paths": r["whole"].paths})
        print(f"{name}: {r['whole'].summary()} {time.time() - t:.0f} s", flush=True)
        Path(args.out).write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
    Path(args.out).write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
    return 0


def _nnls_fit(A, y):
    """Non-negative coefficients for ``A @ c ~ y``, residuals weighted by 1/sqrt(y) (relative-ish)."""
    import numpy as np
    from scipy.optimize import nnls

    w = 1.0 / np.sqrt(np.maximum(y, 10.0))
    return nnls(A * w[:, None], y * w)[0]


def fit(rows) -> int:
    import numpy as np
    from qfx.cost.estimate import FEATURES, TOP_FF, TOP_LUT

    eng = [r for r in rows if r["engine"] != "__whole__"]
    A = np.array([[r["features"][k] for k in FEATURES] for r in eng], dtype=float)
    coefs = {}
    for res in ("lut", "ff"):
        y = np.array([r["yosys"][res] for r in eng], dtype=float)
        c = _nnls_fit(A, y)
        coefs[res] = c
        print(f"{res.upper()}_COEF = {{" + ", ".join(f'"{k}": {v:.4g}' for k, v in zip(FEATURES, c)) + "}")
    # whole-design: sum of engines + per-design overhead (mean of whole - sum over designs)
    designs = sorted({r["design"] for r in rows})
    out = {}
    for d in designs:
        e = [r for r in eng if r["design"] == d]
        whole = next(r for r in rows if r["design"] == d and r["engine"] == "__whole__")["yosys"]
        top = {"lut": TOP_LUT, "ff": TOP_FF}
        out[d] = {res: (sum(max(float(np.dot([r["features"][k] for k in FEATURES], coefs[res])), 0) for r in e)
                        + top[res], whole[res],
                        sum(r["yosys"][res] for r in e)) for res in ("lut", "ff")}
    for res in ("lut", "ff"):
        over = [out[d][res][1] - out[d][res][2] for d in designs]
        print(f"TOP_{res.upper()} (mean whole - sum of engines) = {np.mean(over):.1f}", over)
    print("design: est/yosys errors (engines sum + top overhead vs whole)")
    for d in designs:
        print(d, {res: f"{out[d][res][0]:.0f} vs {out[d][res][1]} ({100 * (out[d][res][0] - out[d][res][1]) / out[d][res][1]:+.1f} %)"
                  for res in ("lut", "ff")})
    # Held-out check: refit without each design in turn and estimate that design.
    print("leave-one-design-out (fitted without the design itself): est/yosys LUT, FF")
    worst = {"lut": 0.0, "ff": 0.0}
    for d in designs:
        train = [r for r in eng if r["design"] != d]
        At = np.array([[r["features"][k] for k in FEATURES] for r in train], dtype=float)
        whole = next(r for r in rows if r["design"] == d and r["engine"] == "__whole__")["yosys"]
        line = {}
        for res, top in (("lut", TOP_LUT), ("ff", TOP_FF)):
            y = np.array([r["yosys"][res] for r in train], dtype=float)
            c = _nnls_fit(At, y)
            est = sum(max(float(np.dot([r["features"][k] for k in FEATURES], c)), 0) for r in eng
                      if r["design"] == d) + top
            err = (est - whole[res]) / whole[res]
            worst[res] = max(worst[res], abs(err))
            line[res] = f"{est:.0f} vs {whole[res]} ({100 * err:+.1f} %)"
        print(d, line)
    print(f"held-out worst error: LUT {100 * worst['lut']:.1f} %, FF {100 * worst['ff']:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
