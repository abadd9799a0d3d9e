"""Throughput of the dataflow accelerator at folding 1 and at the planner's folding, and of the systolic arch.

For the two digits demo models (structure of ``configs/digits_cnn_w8.yaml`` and
``configs/digits_mlp_khot.yaml``, converted with random weights: the cycle model and the
resource estimate do not depend on trained values beyond ROM contents) and a CIFAR-10-sized
CNN (3x32x32 input, random weights), on a board (default ultra96):

* the initiation interval (II) of :func:`qfx.hw.accel.folding.plan` at folding 1 and at the
  automatic folding, inferences/s and GOPS (2 ops per MAC) at ``--clock-mhz`` (default: the
  board's clock; the Fmax of a folded design needs its RTL through Yosys, not done here);
* the planner's estimated LUT / FF / DSP / BRAM36 (:func:`qfx.hw.accel.folding.folded_resources`);
* the fraction of the board's compute ceiling used: MACs per cycle / (safe DSPs x 2, the packed
  int8 MACs of a DSP48E2 (WP486)), and how busy the instantiated product units are: MACs per
  cycle / the design's pe x simd units (``busy``).

A ``systolic`` row per model: ``--arch systolic`` at the array ``qfx-gen`` chooses (the largest of
``qfx.gen.SYSTOLIC_DEFAULT_SIZES`` inside the safe caps, structural estimate
``qfx.gen.systolic_resources``), its cycle model (:func:`qfx.hw.accel.systolic_top.systolic_cycles`);
``units`` are the array's R x C MACs, ``busy`` MACs per cycle over them; a model the systolic arch
refuses is listed with the reason.

By default every number is analytic (the cycle model of hw/accel/folding.py). ``--verilator``
also generates each design with qfx-gen (``folding=`` the plan's) and runs it under Verilator
on back-to-back random input vectors: the measured steady-state II (intervals between done
pulses), checked against the analytic II, and the outputs checked against the integer reference
(``qfx.reference.run``). The CIFAR CNN is measured at the automatic folding only (folding 1 is
~2.8 M cycles per vector).

    .venv/bin/python bench/accel_throughput.py [--board ultra96] [--clock-mhz F] [--json PATH] [--verilator]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _demo_manifest(config: str, where: Path):
    import torch
    import yaml

    from qfx.conversion import convert
    from qfx.demo.models import build_model
    from qfx.export import export
    from qfx.manifest import load

    cfg = yaml.safe_load((ROOT / "configs" / config).read_text())
    q = convert(build_model(cfg["model"], seed=0), cfg["quant"]).eval()
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        q(x)
    return load(export(q, x[:1], where / cfg["model"], force=True))


def _cifar_manifest(where: Path):
    import torch
    from torch import nn

    from qfx.export import export
    from qfx.manifest import load
    from qfx.nn import QConv2d, QFlatten, QLinear, QMaxPool2d, QReLU

    X, W, B, Y = ("ap_fixed<8,3,AP_RND,AP_SAT>", "ap_fixed<8,1,AP_RND_CONV,AP_SAT>", "ap_fixed<16,4,AP_RND>",
                  "ap_fixed<8,3,AP_RND,AP_SAT>")
    torch.manual_seed(0)
    model = nn.Sequential(
        QConv2d(3, 16, 3, padding=1, input=X, weight=W, bias=B, output=Y), QReLU(output=Y), QMaxPool2d(2),
        QConv2d(16, 32, 3, padding=1, input=X, weight=W, bias=B, output=Y), QReLU(output=Y), QMaxPool2d(2),
        QConv2d(32, 64, 3, padding=1, input=X, weight=W, bias=B, output=Y), QReLU(output=Y), QMaxPool2d(2),
        QFlatten(), QLinear(64 * 4 * 4, 10, input=X, weight=W, bias=B, output=Y)).eval()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        model(x)
    return load(export(model, x[:1], where / "cifar_cnn", force=True))


def _row(name: str, label: str, m, p, board) -> dict:
    from qfx.hw.accel.folding import MAC_OPS, mac_dims

    macs = sum(math.prod(mac_dims(n)) for n in m if n.op in MAC_OPS)
    units = board.safe_limit("dsp") * 2
    mpc = macs / p.ii
    # the product units the design instantiates (pe x simd per MAC engine): how busy they are
    inst = sum(p.foldings[n.name].pe * p.foldings[n.name].simd for n in m if n.op in MAC_OPS)
    return {"model": name, "folding": label, "ii": p.ii, "inferences_per_s": p.inferences_per_s,
            "mac_units": inst, "unit_utilization": mpc / inst,
            "gops": 2 * macs * p.inferences_per_s / 1e9, "macs": macs, "macs_per_cycle": mpc,
            "compute_fraction": mpc / units, "resources": p.resources, "limit": p.limit,
            "foldings": {k: v.as_dict() for k, v in p.foldings.items()}}


def _systolic_row(name: str, m, board, clock_mhz: float) -> "dict | str":
    """The systolic arch at qfx-gen's default array: a row like :func:`_row`'s, or why it is refused."""
    from qfx.gen import fit_systolic_array
    from qfx.hw.accel.systolic_top import SystolicError

    try:
        acc, res, _problems = fit_systolic_array(m, board)
    except SystolicError as err:
        return str(err)
    if acc is None:
        return "no array fits the board"
    r, c = acc.rows, acc.cols
    cm = acc.cycle_estimate()
    ips = clock_mhz * 1e6 / cm["ii"]
    return {"model": name, "folding": f"sys{r}x{c}", "ii": cm["ii"], "inferences_per_s": ips,
            "mac_units": r * c, "unit_utilization": cm["utilization"], "gops": 2 * cm["macs"] * ips / 1e9,
            "macs": cm["macs"], "macs_per_cycle": cm["macs_per_cycle"],
            "compute_fraction": cm["macs_per_cycle"] / (board.safe_limit("dsp") * 2), "resources": res,
            "limit": "systolic cycle model", "foldings": {}, "array": f"{r}x{c}", "pack": acc.pack}


def _run_against_reference(m, out: Path, vectors: int) -> dict:
    """Verilator on ``vectors`` back-to-back vectors of the design in ``out``: the measured
    steady-state II and the vectors whose outputs differ from the integer reference."""
    import numpy as np

    from qfx.reference import run
    from qfx.sim.accel import input_code_range, load_design, simulate
    from qfx.sim.check import corner_and_random_codes

    d = load_design(out)
    codes = corner_and_random_codes(*input_code_range(d), vectors, d.n_in, 3)
    fr = m.input_node.formats["output"].frac_bits
    ref = run(m, (codes * 2.0 ** -fr).reshape((vectors,) + tuple(m.input_node.output_shape)))
    r = simulate(d, codes)
    bad = int(np.sum(np.any(r.outputs != ref[m.output].reshape(vectors, -1), axis=1)))
    return {"measured_ii": max(r.steady_ii(tail=min(3, vectors - 1))), "mismatching_vectors": bad, "vectors": vectors}


def _measure_systolic(name: str, m, array: str, work: Path, vectors: int = 6) -> dict:
    """qfx-gen --arch systolic at ``array`` and :func:`_run_against_reference`, beside the cycle model's II."""
    from qfx.gen import generate

    out = work / f"{name}_systolic"
    info = generate(m.path, out, arch="systolic", array=array, force=True)
    return {**_run_against_reference(m, out, vectors), "model_ii": info["cycle_model"]["ii"]}


def _measure(name: str, label: str, m, foldings, board, work: Path, vectors: int = 6) -> dict:
    """qfx-gen at ``foldings`` and :func:`_run_against_reference`: measured II beside the model's II
    and one-tensor latency, mismatches against the integer reference."""
    from qfx.gen import generate

    out = work / f"{name}_{label}"
    info = generate(m.path, out, board=board.name, folding=dict(foldings), force=True)
    return {**_run_against_reference(m, out, vectors), "model_ii": info["latency"]["ii_cycles"],
            "latency_model": info["latency"]["cycles"]}


def main(argv=None) -> int:
    from qfx.boards import get_board
    from qfx.hw.accel.folding import plan

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--board", default="ultra96")
    ap.add_argument("--clock-mhz", type=float, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--verilator", action="store_true", help="measure the II in Verilator (needs the folded RTL)")
    args = ap.parse_args(argv)
    board = get_board(args.board)
    rows = []
    refused: dict[str, str] = {}  # model -> why the systolic arch refuses it
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        models = {"digits_cnn": _demo_manifest("digits_cnn_w8.yaml", t),
                  "digits_mlp_khot": _demo_manifest("digits_mlp_khot.yaml", t),
                  "cifar_cnn": _cifar_manifest(t)}
        for name, m in models.items():
            one = plan(m, board, target_ii=10 ** 12, clock_mhz=args.clock_mhz)
            auto = plan(m, board, clock_mhz=args.clock_mhz)
            rows += [_row(name, "1", m, one, board), _row(name, "auto", m, auto, board)]
            if args.verilator:
                for row, p in ((rows[-2], one), (rows[-1], auto)):
                    if name == "cifar_cnn" and row["folding"] == "1":
                        continue
                    row["verilator"] = _measure(name, row["folding"], m, p.foldings, board, t)
                    v = row["verilator"]
                    print(f"  {name} folding {row['folding']}: Verilator II {v['measured_ii']} (model {v['model_ii']}), "
                          f"{v['mismatching_vectors']}/{v['vectors']} vectors differ from the reference", flush=True)
            sys_row = _systolic_row(name, m, board, auto.clock_mhz)
            if isinstance(sys_row, str):
                refused[name] = sys_row
                continue
            rows.append(sys_row)
            if args.verilator:
                v = sys_row["verilator"] = _measure_systolic(name, m, sys_row["array"], t)
                print(f"  {name} systolic {sys_row['array']}: Verilator II {v['measured_ii']} (model {v['model_ii']}), "
                      f"{v['mismatching_vectors']}/{v['vectors']} vectors differ from the reference", flush=True)
    clock = rows[0]["inferences_per_s"] * rows[0]["ii"] / 1e6
    print(f"board {board.name}, {clock:g} MHz ({'II measured in Verilator where shown' if args.verilator else 'analytic cycle model'})")
    print(f"{'model':16s} {'fold':>5s} {'II':>9s} {'inf/s':>11s} {'GOPS':>8s} {'MAC/cyc':>8s} {'ceiling':>8s} "
          f"{'units':>6s} {'busy':>6s} {'DSP':>5s} {'LUT':>7s} {'FF':>7s} {'BRAM':>5s} {'speedup':>8s}")
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["folding"] == "1")
        res = r["resources"]
        print(f"{r['model']:16s} {r['folding']:>5s} {r['ii']:>9d} {r['inferences_per_s']:>11,.0f} {r['gops']:>8.3f} "
              f"{r['macs_per_cycle']:>8.2f} {100 * r['compute_fraction']:>7.2f}% {r['mac_units']:>6d} "
              f"{100 * r['unit_utilization']:>5.1f}% {res['dsp']:>5g} {res['lut']:>7g} "
              f"{res['ff']:>7g} {res['bram36']:>5g} {base['ii'] / r['ii']:>7.1f}x"
              + (f"  measured II {r['verilator']['measured_ii']}" if "verilator" in r else ""))
    for r in rows:
        if r["folding"] == "auto":
            print(f"  {r['model']}: {r['foldings']}; stopped: {r['limit']}")
    for name, why in refused.items():
        print(f"  {name}: systolic arch refuses it: {why}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
