"""The main job as it stands: train -> export -> integer reference, on the digits data.

``qfx demo -o OUT`` (or ``make demo``):

1. trains the digits CNN with learned binary points (``configs/digits_cnn_w8.yaml``; the
   K-hot MLP with ``configs/digits_mlp_khot.yaml`` too) through ``qfx train``;
2. exports each trained model to a manifest (``OUT/<name>/manifest``);
3. runs the integer-only reference interpreter on the whole held-out test split and
   compares every layer with the PyTorch emulation, bit for bit;
4. generates the Vitis HLS C++ (``OUT/<name>/hls_project/hls``), C-simulates it with g++
   against the Xilinx ap_types headers and compares its outputs with the reference;
5. writes ``OUT/summary.json`` and prints accuracy and the mismatch count.

RTL generation, RTL simulation and the cost report join this pipeline as they land.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEMOS = {"cnn_w8": "digits_cnn_w8.yaml", "mlp_khot": "digits_mlp_khot.yaml"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--epochs", type=int, help="override the configs' quantization-aware epochs (smaller = faster)")
    p.add_argument("--force", action="store_true", help="redo the runs in an existing output folder")


def run_cli(args: argparse.Namespace) -> int:
    import torch

    from .. import export as qexport
    from .. import reference
    from ..cli import CliError, load_run, main as qfx_main
    from ..data import digits_splits

    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise CliError(f"{str(out)!r} exists and is not empty; use --force to redo the demo there, or another -o")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"runs": {}}
    test = digits_splits(0).test
    x_test = test.tensors[0]
    for name, config in DEMOS.items():
        started = time.perf_counter()
        run_dir = out / name / "run"
        argv = ["train", str(CONFIG_DIR / config), "-o", str(run_dir)]
        argv += ["--force"] if args.force else []
        argv += ["--epochs", str(args.epochs)] if args.epochs is not None else []
        if qfx_main(argv) != 0:
            raise CliError(f"training {name} failed (see above)")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        model = load_run(run_dir)
        manifest_dir = qexport.export(model, x_test[:1], out / name / "manifest", force=True)
        print(f"[{name}] exported {manifest_dir}; running the integer reference on {len(x_test)} test inputs")
        codes = reference.run(manifest_dir, x_test.numpy())
        emulated = qexport.emulate(model, x_test)
        from ..manifest import load

        manifest = load(manifest_dir)
        values = reference.values(manifest, codes)
        mismatches = {}
        for node, ref in values.items():
            emu = emulated[node].detach().double().numpy()
            mismatches[node] = int(np.sum(ref != emu))
        total = sum(mismatches.values())
        # Vitis HLS C++ from the manifest, C-simulated with g++ against the ap_types headers.
        from .. import hls

        hls_dir = hls.generate(manifest, out / name / "hls_project", force=True)
        csim_out = hls.csim(out / name / "hls_project", codes[manifest.input])
        ref_out = codes[manifest.output].reshape(len(x_test), -1)
        csim_mismatches = int(np.sum(csim_out.reshape(ref_out.shape) != ref_out))
        print(f"[{name}] HLS C simulation (g++ + ap_types) vs reference on the outputs: "
              f"{'bit-exact' if csim_mismatches == 0 else f'{csim_mismatches} MISMATCHES'}")
        with torch.no_grad():
            logits = model(x_test)
        acc = float((logits.argmax(1) == test.tensors[1]).float().mean()) * 100
        summary["runs"][name] = {
            "config": config,
            "test_accuracy_qfx": acc,
            "metrics": metrics,
            "manifest": str(manifest_dir),
            "reference_vs_emulation_mismatches": total,
            "hls_csim_vs_reference_mismatches": csim_mismatches,
            "hls": str(hls_dir),
            "mismatches_per_node": mismatches,
            "inputs_checked": int(len(x_test)),
            "seconds": round(time.perf_counter() - started, 1),
        }
        verdict = "bit-exact" if total == 0 else f"{total} MISMATCHES"
        print(f"[{name}] test accuracy {acc:.2f} %; reference vs emulation on every layer: {verdict}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(f"summary: {out / 'summary.json'}")
    bad = sum(
        r["reference_vs_emulation_mismatches"] + r["hls_csim_vs_reference_mismatches"] for r in summary["runs"].values()
    )
    return 0 if bad == 0 else 1
