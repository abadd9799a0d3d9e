"""``qfx-gen``: hardware from a manifest (Amaranth RTL, Vitis HLS C++, board scripts).

``qfx-gen MANIFEST --board ultra96 -o OUT [--target rtl,hls] [--arch dataflow] [--force]``

writes

``OUT/rtl/<top>.v``
    The whole-network accelerator (:class:`qfx.hw.accel.Accelerator`) as Verilog from
    Amaranth's back end: AXI4-Stream in/out, start/done/busy.
``OUT/board/``
    ``create_project.tcl`` (Vivado project and block design: PS, AXI DMA, the accelerator),
    ``constraints.xdc`` and the ``qfx_ctrl.v`` GPIO shim (:mod:`qfx.boards`).
``OUT/hls/``
    With ``--target hls``: the Vitis HLS C++ project (:mod:`qfx.hls`).
``OUT/design.json``
    Machine-readable: the top module's name under ``top``; board, architecture, clock;
    the stream interface and its formats; ports; Verilog modules; per layer its engine,
    formats and cycles; latency; the resource estimate; the files written.

The board-fit check covers LUT, FF, DSP and BRAM: LUT / FF from the analytic estimate
(:func:`qfx.cost.estimate`, calibrated on Yosys counts) or, with ``--synth``, from Yosys
itself. ``--target hls`` alone builds no RTL: the RTL accelerator's limits (its engines,
its resource estimate against the board) do not apply to the HLS project, whose
resources Vitis HLS reports; design.json then has no ports, modules, cycles, latency or
resource estimate (``null``).

and prints a short summary. Generation never imports torch, and the output is
byte-identical for the same manifest and options. Bad input (unknown board or
architecture, an invalid manifest, a design that does not fit the board, foreign files in
OUT without ``--force``) prints ``qfx-gen: error: ...`` and exits with status 2, having
written nothing. ``--force`` lets qfx write into a folder holding other files; it
overwrites only the files it generates and never deletes anything else.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["main", "generate", "ARCHITECTURES", "TARGETS", "GenError"]

#: Architectures ``--arch`` accepts, with a line of description each.
ARCHITECTURES: dict[str, str] = {
    "dataflow": "one engine per layer, chained by AXI4-Stream (weights in ROM, activations buffered "
                "on chip, one multiply-accumulate per cycle per dense/conv layer)",
}
#: Outputs ``--target`` accepts.
TARGETS = ("rtl", "hls")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
DESIGN_SCHEMA = "qfx.design"
DESIGN_VERSION = 1


class GenError(ValueError):
    """A request qfx-gen refuses (the message names the problem and the fix)."""


def _targets(text: str) -> tuple[str, ...]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in TARGETS]
    if bad or not items:
        raise GenError(f"--target {text!r}: choose from {', '.join(TARGETS)} (comma separated, e.g. rtl,hls)")
    return tuple(t for t in TARGETS if t in items)


def _fmt_info(fmt: Any) -> Any:
    if isinstance(fmt, tuple):
        return [str(t) for t in fmt]
    return str(fmt)


def _verilog_modules(text: str) -> list[str]:
    names = re.findall(r"^module\s+(\\\S+|[A-Za-z_][A-Za-z0-9_$]*)", text, flags=re.M)
    return [n[1:] if n.startswith("\\") else n for n in names]


def _ports(component: Any) -> list[dict[str, Any]]:
    from amaranth.hdl import Shape
    from amaranth.lib.wiring import Flow

    ports = [{"name": "clk", "direction": "in", "width": 1}, {"name": "rst", "direction": "in", "width": 1}]
    for name, member in component.signature.members.items():
        ports.append({"name": name, "direction": "in" if member.flow == Flow.In else "out",
                      "width": Shape.cast(member.shape).width})
    return ports


def generate(manifest_path: "str | Path", out_dir: "str | Path", *, board: str = "ultra96",
             targets: Sequence[str] = ("rtl",), arch: str = "dataflow", top: str = "qfx_top",
             clock_mhz: "float | None" = None, reuse_factor: int = 1, synth: bool = False,
             force: bool = False, folding: "Mapping[str, Any] | None" = None) -> dict[str, Any]:
    """Generate the hardware of a manifest into ``out_dir``; return the ``design.json`` contents.

    ``folding``: per dense / conv2d layer its :class:`qfx.hw.accel.folding.Folding` for the RTL
    (missing layers: ``Folding(1, 1)``); design.json then lists each engine's folded cycles and
    the design's initiation interval.

    Raises
    ------
    GenError
        Unknown architecture or target, a bad top name, a design over the board's safe
        utilization (the resource and by how much).
    qfx.manifest.ManifestError
        The manifest fails validation.
    ValueError
        An unknown board (the valid ones listed), a node the generators cannot build (named).
    FileExistsError
        ``out_dir`` holds files qfx did not write and ``force`` is false.
    """
    from qfx.boards import check_fit, get_board, render_board_files
    from qfx.cost.estimate import estimate as analytic_estimate
    from qfx.hw.accel import Accelerator, axis_width
    from qfx.hw.accel.top import stream_formats
    from qfx.hw.verilog import to_verilog

    from . import hls
    from .manifest import load
    from .outdir import write_files

    if arch not in ARCHITECTURES:
        close = difflib.get_close_matches(str(arch), list(ARCHITECTURES), n=1)
        hint = f". Did you mean {close[0]!r}?" if close else ""
        raise GenError(f"unknown architecture {arch!r}; choose from: {', '.join(ARCHITECTURES)}{hint}")
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise GenError(f"unknown target {', '.join(bad) or '(none)'}; choose from: {', '.join(TARGETS)}")
    if not isinstance(top, str) or not _IDENT.match(top) or "__" in top:
        raise GenError(f"--top {top!r} is not a Verilog / C++ identifier ([A-Za-z_][A-Za-z0-9_]*, no '__'); "
                       "e.g. --top qfx_top")
    b = get_board(board)
    clock = float(clock_mhz) if clock_mhz is not None else float(b.default_clock_mhz)
    man = load(manifest_path)

    files: dict[str, str] = {}
    rtl = "rtl" in targets
    est: "dict[str, Any] | None" = None
    cycles: "dict[str, Any] | None" = None
    modules: list[str] = []
    if rtl:
        # LUT / FF from the calibrated analytic model, DSP / BRAM from the structure: all four are
        # checked against the board before any Verilog, so an oversized design fails fast.
        est = {k: v for k, v in analytic_estimate(man).items() if k != "per_layer"}
        # With --synth, Yosys' LUT / FF decide (the estimate is within about 15 % of them).
        _check_fit(b, {**est, "lut": 0, "ff": 0} if synth else est, check_fit)
        acc = Accelerator(man, folding=folding)
        verilog = to_verilog(acc, top)
        if synth:
            from qfx.hw.synth import synth_xilinx

            counts = synth_xilinx(verilog, top, family=b.family).summary()
            est = {**est, **{k: counts[k] for k in ("lut", "ff", "dsp", "bram36")},
                   "basis": f"Yosys synth_xilinx -family {b.family} (qfx.hw.synth)"}
            _check_fit(b, est, check_fit)
        cycles = acc.cycle_estimate()
        files[f"rtl/{top}.v"] = verilog
        design_board = {
            "top": top, "sources": [f"{top}.v"], "clock_mhz": clock,
            "s_axis_width": axis_width(acc.input_format), "m_axis_width": axis_width(acc.output_format),
        }
        for name, text in render_board_files(b, design_board).items():
            files[f"board/{name}"] = text
        modules = _verilog_modules(verilog)
    if "hls" in targets:
        for name, text in hls.render(man, top=top, reuse_factor=reuse_factor).items():
            files[f"hls/{name}"] = text

    in_fmt, out_fmt = stream_formats(man)
    layers = []
    for node in man:
        entry: dict[str, Any] = {"name": node.name, "source": node.source, "op": node.op,
                                 "output_shape": list(node.output_shape),
                                 "formats": {k: _fmt_info(v) for k, v in sorted(node.formats.items())}}
        if rtl and node.op not in ("input", "flatten", "output"):
            entry["cycles"] = {k: v for k, v in cycles["engines"][node.name].items() if k != "ii"}
            entry["ii"] = cycles["engines"][node.name]["ii"]
            if node.name in acc.folding:
                entry["folding"] = acc.folding[node.name].as_dict()
        layers.append(entry)
    n_in = math.prod(man.input_node.output_shape)
    n_out = math.prod(man.output_node.output_shape)
    design: dict[str, Any] = {
        "schema": DESIGN_SCHEMA,
        "version": DESIGN_VERSION,
        "top": top,
        "model": man.model,
        # relative to OUT, so the pair of folders can move together (qfx sim / qfx cost read it)
        "manifest": Path(os.path.relpath(Path(manifest_path).resolve(), Path(out_dir).resolve())).as_posix(),
        "board": {"name": b.name, "title": b.title, "part": b.part},
        "arch": arch,
        "targets": list(targets),
        "clock_mhz": clock,
        "interface": {
            "s_axis": {"tdata_bits": axis_width(in_fmt), "format": str(in_fmt),
                       "elements": n_in, "shape": list(man.input_node.output_shape), "order": "C"},
            "m_axis": {"tdata_bits": axis_width(out_fmt), "format": str(out_fmt),
                       "elements": n_out, "shape": list(man.output_node.output_shape), "order": "C"},
            "control": {"start": "in, one-cycle pulse: accept one input tensor",
                        "done": "out, one-cycle pulse after the last output beat", "busy": "out"},
            "clock": "clk", "reset": "rst (synchronous, active high)",
        },
        "ports": _ports(acc) if rtl else [],
        "modules": modules,
        "layers": layers,
        "latency": {"cycles": cycles["total"], "us": round(cycles["total"] / clock, 3),
                    "ii_cycles": cycles["ii"]} if cycles else None,
        "resources_estimate": est,
        "files": sorted(files) + ["design.json"],
    }
    files["design.json"] = json.dumps(design, indent=2, sort_keys=False) + "\n"
    write_files(out_dir, files, force=force, replace=("rtl", "board", "hls"))
    return design


def _check_fit(board: Any, est: dict[str, Any], check_fit: Any) -> None:
    problems = check_fit(board, {k: est[k] for k in ("lut", "ff", "dsp", "bram36")})
    if problems:
        fabric = any(p.startswith(("LUT", "FF")) for p in problems)
        hint = (" (LUT / FF are an estimate; --synth checks Yosys' counts instead)"
                if fabric and est["basis"].startswith("analytic") else "")
        raise GenError(f"the design does not fit {board.name} ({board.part}) within its safe utilization: "
                       + "; ".join(problems) + f" [{est['basis']}]{hint}. Use narrower formats, K-hot weights "
                       "(no DSP), fewer or smaller layers, or a larger board")


def _summary(design: dict[str, Any], out_dir: Path) -> str:
    b = design["board"]
    lines = [
        f"qfx-gen: {design['model'] or 'model'} -> {out_dir} ({', '.join(design['targets'])}; {design['arch']} on "
        f"{b['title']}, {b['part']}, {design['clock_mhz']:g} MHz)",
        f"  top {design['top']}: in {design['interface']['s_axis']['elements']} x "
        f"{design['interface']['s_axis']['format']}, out {design['interface']['m_axis']['elements']} x "
        f"{design['interface']['m_axis']['format']}",
    ]
    est = design["resources_estimate"]
    if design["latency"] is None or est is None:
        lines.append("  no RTL built (--target without rtl): latency and resources come from the Vitis HLS "
                     "reports; the board fit was not checked")
    else:
        lines.append(f"  latency {design['latency']['cycles']} cycles = {design['latency']['us']:g} us per inference")
        lines.append(f"  resources: {est['dsp']} DSP, {est['bram36']:g} BRAM36, {est['lut']} LUT, {est['ff']} FF "
                     f"({est['basis']}); all four checked against the board")
    busiest = sorted((ly for ly in design["layers"] if "cycles" in ly), key=lambda ly: -ly["cycles"]["compute"])[:3]
    if busiest:
        lines.append("  busiest layers: " + ", ".join(f"{ly['name']} ({ly['cycles']['compute']} cycles)"
                                                        for ly in busiest))
    lines.append(f"  {len(design['files'])} files written; details in design.json")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from qfx.boards import board_names, get_board

    boards = "\n".join(f"  {n:10s} {get_board(n).title} ({get_board(n).part})" for n in board_names())
    archs = "\n".join(f"  {n:10s} {d}" for n, d in ARCHITECTURES.items())
    p = argparse.ArgumentParser(
        prog="qfx-gen",
        description="Generate FPGA hardware (Amaranth RTL as Verilog, Vitis HLS C++, board scripts) from a qfx "
                    "manifest; the hardware computes exactly the integer reference of the manifest.",
        epilog=f"boards:\n{boards}\n\narchitectures:\n{archs}\n\ntargets: {', '.join(TARGETS)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("manifest", help="exported model: a folder or its manifest.yaml (qfx.export)")
    p.add_argument("--board", default="ultra96", help="target board (default: ultra96); see the list below")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--target", default="rtl", help="comma-separated: rtl, hls (default: rtl)")
    p.add_argument("--arch", default="dataflow", help="RTL architecture (default: dataflow); see below")
    p.add_argument("--top", default="qfx_top", help="top module / function name (default: qfx_top)")
    p.add_argument("--clock-mhz", type=float, default=None, help="fabric clock (default: the board's)")
    p.add_argument("--reuse-factor", type=int, default=1, help="HLS reuse factor (default: 1)")
    p.add_argument("--synth", action="store_true",
                   help="run Yosys synth_xilinx for LUT/FF/DSP/BRAM counts and check them against the board")
    p.add_argument("--report", action="store_true",
                   help="also write the cost report (OUT/report.md, report.json, PNG plots; Yosys) as `qfx cost OUT`")
    p.add_argument("--force", action="store_true",
                   help="write into a folder holding files qfx did not write (they are kept, never deleted)")
    return p


def main(argv: "Sequence[str] | None" = None) -> int:
    """Entry point of ``qfx-gen``: 0 on success, 2 on a refused request."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        design = generate(args.manifest, args.out, board=args.board, targets=_targets(args.target), arch=args.arch,
                          top=args.top, clock_mhz=args.clock_mhz, reuse_factor=args.reuse_factor, synth=args.synth,
                          force=args.force)
    except (ValueError, FileExistsError, FileNotFoundError, PermissionError, TypeError) as err:
        print(f"qfx-gen: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qfx-gen: interrupted", file=sys.stderr)
        return 130
    print(_summary(design, Path(args.out)))
    if args.report:
        from qfx.cost.cli import cmd_cost

        return cmd_cost(argparse.Namespace(out=args.out, no_synth=False, manifest=args.manifest, board=args.board,
                                           clock_mhz=args.clock_mhz))
    return 0


if __name__ == "__main__":
    sys.exit(main())
