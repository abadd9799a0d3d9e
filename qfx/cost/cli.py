"""``qfx cost OUT [--no-synth] [--manifest PATH] [--board B] [--clock-mhz F]``: the cost report of a qfx-gen folder.

Writes ``OUT/report.md``, ``OUT/report.json``, ``OUT/report_resources.png`` and
``OUT/report_energy.png`` (see :mod:`qfx.cost.report`). Bad input (not a qfx-gen folder, no
manifest, unknown board, Yosys missing or failing -- its error lines shown) prints
``qfx: error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import sys

__all__ = ["add_cost_command", "cmd_cost"]


def add_cost_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cost", help="resources (Yosys or analytic), fit, Fmax, throughput, energy of a qfx-gen folder",
                       description="Cost report of a qfx-gen output folder: OUT/report.md, report.json and PNG plots.")
    p.add_argument("out", help="qfx-gen output folder (holds design.json)")
    p.add_argument("--no-synth", action="store_true", help="analytic estimate only (seconds; no Yosys, no Fmax)")
    p.add_argument("--manifest", default=None, help="the manifest qfx-gen read (default: design.json's 'manifest')")
    p.add_argument("--board", default=None, help="board (default: the one in design.json)")
    p.add_argument("--clock-mhz", type=float, default=None, help="chosen clock (default: design.json's clock)")
    p.set_defaults(func=cmd_cost)


def cmd_cost(args: argparse.Namespace) -> int:
    from qfx.hw.synth import SynthError

    from qfx.manifest import load

    from .report import design_foldings, load_design, write_report

    try:
        design, manifest = load_design(args.out, args.manifest)
        board = args.board or (design.get("board") or {}).get("name") or "ultra96"
        clock = args.clock_mhz if args.clock_mhz is not None else design.get("clock_mhz")
        if clock is not None and (isinstance(clock, bool) or not isinstance(clock, (int, float))
                                  or not math.isfinite(clock) or clock <= 0):
            raise ValueError(f"clock {clock!r} MHz: give a finite positive --clock-mhz (e.g. --clock-mhz 100)")
        # the design as qfx-gen built it: a systolic array, or the dataflow engines at their folding
        folding = None if design.get("arch") == "systolic" else design_foldings(design, load(manifest))
        rep = write_report(args.out, manifest, board=board, top=design.get("top", "qfx_top"),
                           synth=not args.no_synth, clock_mhz=clock, folding=folding, design=design)
    except (SynthError, ValueError, FileNotFoundError, TypeError) as err:
        print(f"qfx: error: {err}", file=sys.stderr)
        return 2
    print(summary(rep, args.out))
    return 0


def summary(rep: dict, out: str) -> str:
    r, t, th, en = rep["resources"], rep["timing"], rep["throughput"], rep["energy"]
    lines = [f"qfx cost: {rep['model']} on {rep['board']['name']}: {r['lut']} LUT, {r['ff']} FF, {r['dsp']} DSP, "
             f"{r['bram36']:g} BRAM36 ({'fits' if rep['fit']['fits'] else 'DOES NOT FIT'}; {r['basis'][:40]}...)"]
    if t.get("fmax_mhz"):
        lines.append(f"  Fmax estimate {t['fmax_mhz']} MHz; {th['cycles_per_inference']} cycles/inference "
                     f"(II, back to back; {th['latency_cycles']} for one alone)")
    sy = rep.get("systolic")
    if sy:
        lines.append(f"  {sy['rows']}x{sy['cols']} systolic array: {th['macs_per_cycle']:g} MACs/cycle, "
                     f"{100 * sy['array_busy']:.1f} % busy")
    lines.append(f"  energy {en['total_dynamic_pj'] / 1e3:.1f} nJ/inference (model), MAC {en['mac']['pj_per_mac']:.3f} pJ")
    lines.append(f"  wrote {out}/report.md, report.json, report_resources.png, report_energy.png")
    return "\n".join(lines)
