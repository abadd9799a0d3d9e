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
    args = p.parse_args(argv)
    from qfx.cost.estimate import engine_features
    from qfx.cost.synthesis import synth_accelerator
    from qfx.manifest import load

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    designs = {**export_models(work), **DEMOS}
    if args.only:
        designs = {k: v for k, v in designs.items() if k in args.only.split(",")}
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
