"""The main job, end to end, on the bundled digits data: ``qfx demo -o OUT`` (``make demo``).

For each demo model -- the digits CNN with learned binary points (``configs/digits_cnn_w8.yaml``)
and the multiplier-free K-hot MLP (``configs/digits_mlp_khot.yaml``):

1. **train** (``qfx train``: float pre-training, conversion, quantization-aware training with
   learned binary points, freeze) into ``OUT/<model>/run``; the PTQ baseline (same formats,
   calibrated binary points, no training) is evaluated beside it;
2. **export** the manifest (``OUT/<model>/manifest``) and run the integer-only reference on the
   whole held-out test split, comparing every layer with the PyTorch emulation bit for bit;
3. **generate** RTL, Ultra96 board scripts and Vitis HLS C++ (``qfx-gen --board ultra96 --target
   rtl,hls`` into ``OUT/<model>/gen``);
4. **simulate** (``qfx sim``): the RTL under Verilator and the HLS C simulation (g++ against the
   Xilinx ap_types headers) on ``--vectors`` corner and random inputs, against the integer
   reference and the trained model's emulation;
5. **cost** (``qfx cost``): Yosys resources and fit on the board, Fmax estimate, cycles, energy,
   ``OUT/<model>/gen/report.{md,json}`` with plots;

then the float / PTQ / qfx accuracy table over word lengths 8, 6, 4 and K-hot (3 seeds;
``OUT/accuracy``), and ``OUT/summary.json`` with a printed summary. Exit status: 0 when every
check is bit-exact, 1 on any mismatch, 2 on bad input. ``--quick`` is the reduced run CI does.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEMOS = {"cnn_w8": "digits_cnn_w8.yaml", "mlp_khot": "digits_mlp_khot.yaml"}
BOARD = "ultra96"
#: ``--quick``: what CI runs (minutes, not the full training).
QUICK = {"epochs": 1, "float_epochs": 3, "vectors": 200}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--epochs", type=int, help="override the configs' quantization-aware epochs (smaller = faster)")
    p.add_argument("--float-epochs", type=int, help="override the configs' float pre-training epochs")
    p.add_argument("--vectors", type=int, default=1000, help="vectors qfx sim checks per design (default 1000)")
    p.add_argument("--models", default=",".join(DEMOS),
                   help=f"comma-separated subset of the demo models (default: {','.join(DEMOS)})")
    p.add_argument("--no-synth", action="store_true", help="analytic cost estimate instead of Yosys synthesis")
    p.add_argument("--no-accuracy-table", action="store_true", help="skip the 3-seed float/PTQ/qfx accuracy table")
    p.add_argument("--quick", action="store_true",
                   help=f"reduced run for CI: --epochs {QUICK['epochs']} --float-epochs {QUICK['float_epochs']} "
                        f"--vectors {QUICK['vectors']} --no-accuracy-table")
    p.add_argument("--force", action="store_true", help="redo the demo in an existing output folder")


def _stage(name: str, what: str) -> float:
    print(f"\n=== [{name}] {what}", flush=True)
    return time.perf_counter()


def run_cli(args: argparse.Namespace) -> int:
    from ..runs import ConfigError as CliError

    if args.quick:
        args.epochs = QUICK["epochs"] if args.epochs is None else args.epochs
        args.float_epochs = QUICK["float_epochs"] if args.float_epochs is None else args.float_epochs
        args.vectors = min(args.vectors, QUICK["vectors"])
        args.no_accuracy_table = True
    if args.vectors < 1:
        raise CliError(f"--vectors {args.vectors}: give at least 1")
    for flag in ("epochs", "float_epochs"):
        if getattr(args, flag) is not None and getattr(args, flag) < 0:
            raise CliError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: give 0 or more")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in DEMOS]
    if unknown or not models:
        raise CliError(f"--models {args.models!r}: choose from {', '.join(DEMOS)}")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CliError(f"{str(out)!r} exists and is not a folder; choose another -o")
    if out.exists() and any(out.iterdir()) and not args.force:
        raise CliError(f"{str(out)!r} exists and is not empty; use --force to redo the demo there, or another -o")
    _refuse_links(out)
    # Fail before an hour of training, not after: the RTL simulation needs Verilator.
    from qfx.sim.verilator import VerilatorNotFound, find_verilator

    try:
        find_verilator()
    except VerilatorNotFound as err:
        raise CliError(str(err)) from None
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary: dict[str, Any] = {"board": BOARD, "output": str(out), "runs": {}}
    for name in models:
        summary["runs"][name] = _run_one(name, DEMOS[name], out, args)
    if not args.no_accuracy_table:
        summary["accuracy_table"] = _accuracy_table(out / "accuracy")
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["bit_exact"] = all(r["bit_exact"] for r in summary["runs"].values())
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print("\n" + format_summary(summary, out / "summary.json"))
    return 0 if summary["bit_exact"] else 1


def _refuse_links(out: Path) -> None:
    """``--force`` redoes the demo in ``out``: refuse a symbolic link anywhere below it (the demo would
    write or delete through it, outside ``out``)."""
    import os

    from ..runs import ConfigError

    if not out.is_dir():
        return
    for root, dirs, files in os.walk(out):  # does not descend into linked folders
        for name in sorted(dirs + files):
            if os.path.islink(os.path.join(root, name)):
                raise ConfigError(f"{os.path.join(root, name)!r} is a symbolic link; qfx demo does not write or "
                                  "delete through links: remove it, or choose another -o")


def _manifest_folder(folder: Path) -> Path:
    """``folder`` if export may replace it: absent, empty or holding only a manifest qfx wrote."""
    from ..manifest import MANIFEST_FILE, TENSORS_FILE
    from ..runs import ConfigError

    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in (MANIFEST_FILE, TENSORS_FILE))
        if foreign:
            raise ConfigError(f"{folder} holds files qfx did not write ({', '.join(foreign)}); --force never deletes "
                              "them: move them away, or choose another -o")
    return folder


def _run_one(name: str, config: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    from .. import export as qexport
    from ..runs import ConfigError as CliError
    from ..runs import load_run, train_run

    t0 = _stage(name, f"train ({config})")
    run_dir = out / name / "run"
    cfg_path = CONFIG_DIR / config
    if args.float_epochs is not None:
        cfg_path = _config_with_float_epochs(CONFIG_DIR / config, args.float_epochs, out / name)
    metrics = train_run(cfg_path, run_dir, epochs=args.epochs, force=args.force)
    model = load_run(run_dir)
    ptq = _ptq_accuracy(run_dir)
    rec: dict[str, Any] = {
        "config": config,
        "accuracy": {
            "float": 100 * metrics["float"]["test"]["accuracy"] if "float" in metrics else None,
            "ptq": ptq,
            "qfx": 100 * metrics["qfx"]["test"]["accuracy"],
        },
        "train_seconds": round(time.perf_counter() - t0, 1),
        "run": str(run_dir),
    }

    t0 = _stage(name, "export + integer reference vs PyTorch emulation on the test split, every layer")
    from ..data import digits_splits

    x_test = digits_splits(0).test.tensors[0]
    manifest_dir = qexport.export(model, x_test[:1], _manifest_folder(out / name / "manifest"), force=True)
    rec["manifest"] = str(manifest_dir)
    rec["reference_vs_emulation"] = _reference_vs_emulation(model, manifest_dir, x_test)
    n_bad = sum(rec["reference_vs_emulation"]["mismatches_per_layer"].values())
    print(f"[{name}] {len(x_test)} test images, {len(rec['reference_vs_emulation']['mismatches_per_layer'])} layers: "
          f"{'bit-exact' if n_bad == 0 else f'{n_bad} MISMATCHES'} ({time.perf_counter() - t0:.1f} s)")

    _stage(name, f"qfx-gen --board {BOARD} --target rtl,hls")
    from ..gen import generate

    gen_dir = out / name / "gen"
    design = generate(manifest_dir, gen_dir, board=BOARD, targets=("rtl", "hls"), force=True)
    print(f"[{name}] qfx-gen: {len(design['files'])} files in {gen_dir} (top {design['top']}, "
          f"II {design['latency']['ii_cycles']} cycles per inference back to back, latency "
          f"{design['latency']['cycles']} cycles)")
    rec["gen"] = str(gen_dir)

    t0 = _stage(name, f"qfx sim: RTL (Verilator) + HLS C simulation, {args.vectors} vectors")
    from qfx.sim.check import verify
    from qfx.sim.verilator import VerilatorBuildError

    try:
        rep = verify(gen_dir, vectors=args.vectors, model=model)
    except VerilatorBuildError as err:
        raise CliError(f"qfx sim of {name}: {err}") from None
    print(rep.table())
    rec["sim"] = {
        "vectors": int(len(rep.inputs)),
        "checks": [{"name": c.name, "ok": bool(c.ok), "mismatches": int(c.mismatches), "note": c.note}
                   for c in rep.checks],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if rep.localized is not None:
        rec["sim"]["first_mismatch"] = rep.localized.describe()

    t0 = _stage(name, f"qfx cost ({'analytic estimate' if args.no_synth else 'Yosys synth_xilinx'})")
    from ..cost.report import write_report

    from qfx.hw.synth import SynthError

    try:
        from ..cost.report import design_foldings
        from ..manifest import load as load_manifest

        cost = write_report(gen_dir, manifest_dir, board=BOARD, top=design.get("top", "qfx_top"),
                            synth=not args.no_synth, clock_mhz=design.get("clock_mhz"),
                            folding=design_foldings(design, load_manifest(manifest_dir)))
    except SynthError as err:
        raise CliError(f"qfx cost of {name}: {err}\n(--no-synth gives the analytic estimate without Yosys)") from None
    res, th, en = cost["resources"], cost["throughput"], cost["energy"]
    rec["cost"] = {
        "basis": res["basis"],
        "lut": res["lut"], "ff": res["ff"], "dsp": res["dsp"], "bram36": res["bram36"],
        "fits": bool(cost["fit"]["fits"]),
        "fmax_mhz": cost["timing"].get("fmax_mhz"),
        "cycles_per_inference": th["cycles_per_inference"],
        "energy_nj_per_inference": round(en["total_dynamic_pj"] / 1e3, 3),
        "pj_per_mac": en["mac"]["pj_per_mac"],
        "report": str(gen_dir / "report.md"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(f"[{name}] {res['lut']} LUT, {res['ff']} FF, {res['dsp']} DSP, {res['bram36']:g} BRAM36 "
          f"({'fits' if cost['fit']['fits'] else 'DOES NOT FIT'} {BOARD}); {th['cycles_per_inference']} cycles; "
          f"{rec['cost']['energy_nj_per_inference']} nJ/inference")
    rec["bit_exact"] = n_bad == 0 and all(c["ok"] for c in rec["sim"]["checks"])
    return rec


def _config_with_float_epochs(src: Path, float_epochs: int, where: Path) -> Path:
    """A copy of the run config ``src`` with ``train.float_epochs`` replaced (written under ``where``)."""
    import yaml

    cfg = yaml.safe_load(src.read_text())
    cfg.setdefault("train", {})["float_epochs"] = float_epochs
    where.mkdir(parents=True, exist_ok=True)
    path = where / src.name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _ptq_accuracy(run_dir: Path) -> "float | None":
    """Test accuracy (%) of post-training quantization with the run's formats: the run's float
    model, converted, binary points calibrated (as the run calibrated them), frozen, no training."""
    import yaml

    from .. import train as qtrain
    from ..conversion import convert
    from ..runs import run_loaders
    from .models import build_model

    float_path = run_dir / "float.pt"
    if not float_path.is_file():
        return None
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    seed = cfg["train"]["seed"]
    fmodel = build_model(cfg["model"], seed=seed)
    fmodel.load_state_dict(qtrain.load_checkpoint(float_path)["state_dict"])
    fmodel.eval()
    train_loader, _, test_loader = run_loaders(cfg, seed)
    model = qtrain.ptq(convert(fmodel, cfg["quant"]), train_loader, batches=cfg["train"]["calibrate_batches"])
    return 100 * qtrain.evaluate(model, test_loader)["accuracy"]


def _reference_vs_emulation(model: Any, manifest_dir: Path, x: Any) -> dict[str, Any]:
    from .. import reference
    from ..export import emulate
    from ..manifest import load

    manifest = load(manifest_dir)
    values = reference.values(manifest, reference.run(manifest, x.numpy()))  # loaded once
    emulated = emulate(model, x)
    per_layer = {node: int(np.sum(ref != emulated[node].detach().double().numpy())) for node, ref in values.items()}
    return {"inputs": int(len(x)), "mismatches_per_layer": per_layer}


def _accuracy_table(where: Path) -> dict[str, Any]:
    from . import accuracy

    t0 = _stage("accuracy", "float / PTQ / qfx table: word lengths 8, 6, 4 and K-hot, 3 seeds")
    report = accuracy.run()
    where.mkdir(parents=True, exist_ok=True)
    (where / "accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
    (where / "accuracy.md").write_text(accuracy.to_markdown(report))
    met = accuracy.targets(report)
    print(f"[accuracy] wrote {where}/accuracy.md ({time.perf_counter() - t0:.0f} s)")
    return {"markdown": str(where / "accuracy.md"), "targets": {k: {"met": ok, "detail": why}
                                                                for k, (ok, why) in met.items()}}


def _pct(v: "float | None") -> str:
    return "-" if v is None else f"{v:.1f}"


def format_summary(summary: dict[str, Any], path: Path) -> str:
    """The short table ``qfx demo`` prints at the end."""
    head = ["model", "float %", "PTQ %", "qfx %", "mismatches", "LUT", "FF", "DSP", "BRAM36", "fits",
            "cycles", "nJ/inf"]
    rows = []
    for name, r in summary["runs"].items():
        a, c = r["accuracy"], r["cost"]
        bad = sum(r["reference_vs_emulation"]["mismatches_per_layer"].values())
        bad += sum(ch["mismatches"] for ch in r["sim"]["checks"])
        checks_failed = sum(not ch["ok"] for ch in r["sim"]["checks"])
        rows.append([name, _pct(a["float"]), _pct(a["ptq"]), _pct(a["qfx"]),
                     str(bad) if checks_failed == 0 or bad else f"{checks_failed} check(s) failed",
                     str(c["lut"]), str(c["ff"]), str(c["dsp"]), f"{c['bram36']:g}", "yes" if c["fits"] else "NO",
                     str(c["cycles_per_inference"]), f"{c['energy_nj_per_inference']:.1f}"])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = [f"qfx demo: {'BIT-EXACT' if summary['bit_exact'] else 'MISMATCH'} "
             f"(integer reference = PyTorch emulation = RTL = HLS C sim), board {summary['board']}, "
             f"{summary['seconds'] / 60:.1f} min"]
    lines.append("  ".join(h.rjust(w) for h, w in zip(head, widths)))
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    some = next(iter(summary["runs"].values()))
    lines.append(f"mismatches: reference vs emulation on {some['reference_vs_emulation']['inputs']} test images "
                 f"(every layer) + RTL and C sim vs reference on {some['sim']['vectors']} vectors; "
                 f"resources: {some['cost']['basis'].split(':')[0]}")
    for name, r in summary["runs"].items():
        lines.append(f"  {name}: run {r['run']}, manifest {r['manifest']}, design {r['gen']} "
                     f"(report {r['cost']['report']})")
    if "accuracy_table" in summary:
        lines.append(f"  accuracy table: {summary['accuracy_table']['markdown']}")
        for key, t in summary["accuracy_table"]["targets"].items():
            lines.append(f"    {key}: {'met' if t['met'] else 'NOT met'} ({t['detail']})")
    lines.append(f"summary: {path}")
    return "\n".join(lines)

