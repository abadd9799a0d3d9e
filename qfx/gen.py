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

Folding: ``--folding auto`` (default) lets :func:`qfx.hw.accel.folding.plan` choose each
dense / conv2d engine's ``pe`` x ``simd`` inside the board's safe caps; ``--folding F.yaml``
(``{layer: {pe: P, simd: S}}``) fixes some layers, the planner chooses the rest; ``--fps N`` /
``--ii C`` ask for the smallest plan meeting a target (refused with the best reachable one).
design.json's ``folding`` holds the plan (II, inferences/s, per-layer foldings, the limit it hit)
and its resources; each layer its ``folding``, the RTL engine's ``cycles`` and ``ii`` and the
plan's ``planned`` cycles / resources. The fit check and ``resources_estimate`` are of the folded
design.

and prints a short summary. Generation never imports torch, and the output is
byte-identical for the same manifest and options. Bad input (unknown board or
architecture, an invalid manifest, a design that does not fit the board, foreign files in
OUT without ``--force``) prints ``qfx-gen: error: ...`` and exits with status 2, having
written nothing. ``--force`` lets qfx write into a folder holding other files; it
overwrites only the files it generates and never deletes anything else.
"""

from __future__ import annotations

import argparse
import dataclasses
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
                "on chip; each dense/conv engine folded to pe x simd multiply-accumulates per cycle, "
                "--folding / --fps / --ii or the board's automatic plan)",
    "systolic": "one weight-stationary R x C systolic array (--array RxC; packed int8 pairs per DSP48E2, "
                "double-buffered weights) runs the dense and conv2d (im2col) layers one after the other as "
                "GEMM tiles, weights in an on-chip ROM, ping-pong activation buffers of C-code words, maxpool2d, "
                "relu/relu6/leaky_relu/batchnorm and residual adds on C vector lanes (exact accumulators only)",
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


#: The granularity of the clock qfx-gen derives from an Fmax estimate (MHz).
CLOCK_STEP_MHZ = 5.0


def clock_from_fmax(fmax_mhz: float, board: Any) -> float:
    """The fabric clock a design whose Fmax estimate is ``fmax_mhz`` gets by default: the estimate
    rounded down to a :data:`CLOCK_STEP_MHZ` step (no margin added: the estimate is already a
    weighted path delay, see qfx.cost.timing), at most ``board.max_clock_mhz``, at least one step."""
    step = CLOCK_STEP_MHZ
    return float(min(board.max_clock_mhz, max(step, math.floor(fmax_mhz / step) * step)))


def _layer_entry(node: Any) -> dict[str, Any]:
    """A node's design.json ``layers`` entry as every architecture starts it: name, source, op,
    output shape, formats."""
    return {"name": node.name, "source": node.source, "op": node.op, "output_shape": list(node.output_shape),
            "formats": {k: _fmt_info(v) for k, v in sorted(node.formats.items())}}


def _design_head(man: Any, manifest_path: Any, out_dir: Any, b: Any, top: str) -> dict[str, Any]:
    """design.json's first keys, the same for every architecture: schema, top, model, manifest, board."""
    return {
        "schema": DESIGN_SCHEMA,
        "version": DESIGN_VERSION,
        "top": top,
        "model": man.model,
        # relative to OUT, so the pair of folders can move together (qfx sim / qfx cost read it)
        "manifest": Path(os.path.relpath(Path(manifest_path).resolve(), Path(out_dir).resolve())).as_posix(),
        "board": {"name": b.name, "title": b.title, "part": b.part},
    }


def _interface(man: Any, in_fmt: Any, out_fmt: Any) -> dict[str, Any]:
    """design.json's ``interface``: the stream ports, control and clock every architecture's top has."""
    from qfx.hw.accel import axis_width

    shape_in, shape_out = man.input_node.output_shape, man.output_node.output_shape
    return {
        "s_axis": {"tdata_bits": axis_width(in_fmt), "format": str(in_fmt),
                   "elements": math.prod(shape_in), "shape": list(shape_in), "order": "C"},
        "m_axis": {"tdata_bits": axis_width(out_fmt), "format": str(out_fmt),
                   "elements": math.prod(shape_out), "shape": list(shape_out), "order": "C"},
        "control": {"start": "in, one-cycle pulse: accept one input tensor",
                    "done": "out, one-cycle pulse after the last output beat", "busy": "out"},
        "clock": "clk", "reset": "rst (synchronous, active high)",
    }


def generate(manifest_path: "str | Path", out_dir: "str | Path", *, board: str = "ultra96",
             targets: Sequence[str] = ("rtl",), arch: str = "dataflow", top: str = "qfx_top",
             clock_mhz: "float | None" = None, reuse_factor: int = 1, synth: bool = False,
             force: bool = False, folding: "str | Path | Mapping[str, Any] | None" = "auto",
             fps: "float | None" = None, ii: "int | None" = None, khot_unroll: bool = False,
             array: "str | tuple[int, int] | None" = None) -> dict[str, Any]:
    """Generate the hardware of a manifest into ``out_dir``; return the ``design.json`` contents.

    ``folding``: ``"auto"`` (the planner chooses every dense / conv2d layer's folding inside the
    board's safe caps), a YAML file ``{layer: {pe: P, simd: S}}`` (those layers fixed, the planner
    chooses the rest) or a mapping ``{layer: Folding}`` (exactly those, the rest at folding 1,
    unless ``fps`` / ``ii`` ask the planner for more). design.json lists each engine's folding,
    folded cycles and ``ii``, and the design's initiation interval. ``khot_unroll``: fully unroll
    (hard-wire) every K-hot layer that fits before the planner balances the rest
    (:func:`qfx.hw.accel.folding.plan`). ``array``: with ``arch="systolic"``, the array size ``"RxC"``
    or ``(R, C)`` (default: the largest of 16x16, 8x8, 4x4, 2x2, 1x1 that fits the board's safe caps;
    :func:`_systolic_generate`); refused with any other architecture.

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
    from qfx.hw.accel.khot_wired import hardwired
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
    from qfx.manifest import is_valid_name

    if not isinstance(top, str) or not is_valid_name(top):
        raise GenError(f"--top {top!r} is not a Verilog / C++ identifier ([A-Za-z][A-Za-z0-9_]*, no '__', not a "
                       "Verilog or C++ keyword); e.g. --top qfx_top")
    if array is not None and arch != "systolic":
        raise GenError(f"--array {array!r} sets the systolic array size; it needs --arch systolic (not {arch!r})")
    b = get_board(board)
    clock = float(clock_mhz) if clock_mhz is not None else float(b.default_clock_mhz)
    clock_basis = ("--clock-mhz" if clock_mhz is not None else
                   "the board's default (qfx-gen --synth sets the clock its Fmax estimate supports)")
    man = load(manifest_path)
    if arch == "systolic":
        return _systolic_generate(man, manifest_path, out_dir, b, targets=targets, top=top, clock=clock,
                                  clock_mhz=clock_mhz, clock_basis=clock_basis, reuse_factor=reuse_factor,
                                  synth=synth, force=force, array=array, folding=folding, fps=fps, ii=ii,
                                  khot_unroll=khot_unroll)
    files: dict[str, str] = {}
    rtl = "rtl" in targets
    # The folding plan is the RTL's (checked against the board), and the HLS C++ beside it follows
    # it; an HLS-only request checks no fit (Vitis HLS reports its resources) and plans nothing.
    fplan = None
    est: "dict[str, Any] | None" = None
    cycles: "dict[str, Any] | None" = None
    modules: list[str] = []
    if rtl:
        # LUT / FF from the calibrated analytic model, DSP / BRAM from the structure: all four are
        # checked against the board before any Verilog, so an oversized design fails fast.
        est = {k: v for k, v in analytic_estimate(man).items() if k != "per_layer"}
        # With --synth, Yosys' LUT / FF decide (the estimate is within about 15 % of them).
        _check_fit(b, {**est, "lut": 0, "ff": 0} if synth else est, check_fit)
        fplan = _folding_plan(man, b, folding, fps=fps, ii=ii, clock_mhz=clock, khot_unroll=khot_unroll)
        # the design that is built: the plan's folded resources (engines + glue), checked again
        est = {**est, **{k: int(round(fplan.resources[k])) for k in ("lut", "ff", "dsp")},
               "bram36": float(fplan.resources["bram36"]),
               "basis": f"{est['basis']}; folded engines per qfx.hw.accel.folding.folded_resources"}
        _check_fit(b, {**est, "lut": 0, "ff": 0} if synth else est, check_fit)
        acc = Accelerator(man, folding=fplan.foldings)
        verilog = to_verilog(acc, top)
        if synth:
            est, clock, clock_basis = _synth_and_clock(verilog, top, b, est, check_fit, clock, clock_mhz, clock_basis)
            if clock_mhz is None and fps is None:  # (an --fps plan was made for the board's default clock, and says so)
                fplan = dataclasses.replace(fplan, clock_mhz=clock)
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
        # with the RTL, the HLS C++ describes the same folding (its pragmas follow the plan)
        hfold = fplan.foldings if fplan is not None else None
        for name, text in hls.render(man, top=top, reuse_factor=reuse_factor, foldings=hfold).items():
            files[f"hls/{name}"] = text

    in_fmt, out_fmt = stream_formats(man)
    layers = []
    for node in man:
        entry = _layer_entry(node)
        if rtl and node.op not in ("input", "flatten", "reshape", "output"):
            entry["cycles"] = {k: v for k, v in cycles["engines"][node.name].items() if k != "ii"}
            entry["ii"] = cycles["engines"][node.name]["ii"]
            if node.name in acc.folding:
                entry["folding"] = acc.folding[node.name].as_dict()
                if hardwired(node, acc.folding[node.name]):
                    entry["khot_hardwired"] = True  # constant shift-add products, no weight ROM
        if fplan is not None and node.name in fplan.layers:
            pl = fplan.layers[node.name]
            entry["planned"] = {"cycles": pl["cycles"], "ii": pl["ii"], "resources_estimate": pl["resources"]}
        layers.append(entry)
    design: dict[str, Any] = {
        **_design_head(man, manifest_path, out_dir, b, top),
        "arch": arch,
        "targets": list(targets),
        "clock_mhz": clock,
        "clock_basis": clock_basis,
        "interface": _interface(man, in_fmt, out_fmt),
        "ports": _ports(acc) if rtl else [],
        "modules": modules,
        "layers": layers,
        "latency": {"cycles": cycles["total"], "us": round(cycles["total"] / clock, 3),
                    "ii_cycles": cycles["ii"]} if cycles else None,
        "resources_estimate": est,
        "folding": {**fplan.as_dict(), "request": _folding_request(folding, fps, ii, khot_unroll)}
        if fplan is not None else None,
        "files": sorted(files) + ["design.json"],
    }
    files["design.json"] = json.dumps(design, indent=2, sort_keys=False) + "\n"
    write_files(out_dir, files, force=force, replace=("rtl", "board", "hls"))
    return design


def systolic_resources(acc: Any) -> dict[str, Any]:
    """A structural resource estimate of a :class:`qfx.hw.accel.systolic_top.SystolicAccelerator`.

    Only the *live* PEs count: a PE column past the widest layer's output channels (or a PE row
    past the longest reduction) only ever holds weight 0, and synthesis removes it with its
    multiplier (the digits CNN at 16x16, at most 10 output channels: Yosys keeps 16 x 5 packed
    DSPs of 16 x 8). DSP one per live PE-grid multiply plus one per batchnorm multiply in each of the
    vector-unit lanes; BRAM36 of the weight ROM as 512 x 72 blocks; FF the registers counted from the
    structure: per live PE both weight copies (double buffering) and the partial sum, the operand
    and skew registers, the products in the DSPs' M registers (no FF), the lanes' pipeline registers;
    LUT one per partial-sum adder bit of a live PE, the lanes' bias adds and casts, the readers'
    lane muxes, plus the buffers' LUTRAM (words of ``C`` codes; each copy of a replicated conv / pool
    input buffer and each skip buffer counted). Checked against Yosys on the digits CNN at 16x16
    (README); ``--synth`` counts them."""
    from qfx.hw.accel.systolic_plan import lane_words

    r, c, g = acc.rows, acc.cols, acc.grid_cols
    p = acc.plan
    gemm = [s for s in p.steps if not s.is_pool]
    c_live = min(c, max(s.n for s in gemm))
    r_live = min(r, max(s.k for s in gemm))
    g_live = -(-c_live // 2) if acc.pack else c_live
    wx, ww, a = p.x_fmt.width, p.w_fmt.width, acc.acc_fmt.width
    words, _ = acc.weight_rom()
    bram = math.ceil(c * ww / 72) * math.ceil(len(words) / 512)
    stages = sum(p.lanes(s, c) * (3 if n.op == "batchnorm" else 1) for s in p.steps for n in s.vector)
    n_bn = sum(p.lanes(s, c) for s in p.steps for n in s.vector if n.op == "batchnorm")  # one DSP a lane
    # per live PE: shadow and active weight and the partial sum; the operand registers along the rows,
    # the input skew, the output de-skew, the commit token line
    ff = (r_live * c_live * (2 * ww + a) + r_live * g_live * wx + wx * r * (r + 1) // 2
          + a * c_live * (g_live + 1) + r + g
          + r * wx + c * (a + 8) + 24 * stages + 64 * len(p.steps) + 128)
    # LUTRAM columns of 64 words, one memory per lane (its own depth): the two buffers, the conv /
    # pool input copies, the skip buffers (one lane per channel of the layer)
    bufs = sum(math.ceil(d / 64) for ds in p.buffer_lane_depths(c).values() for d in ds)
    banks = (r - 1) * sum(math.ceil(d / 64) for ds in p.bank_lane_depths(c).values() for d in ds)
    skips = sum(math.ceil(lane_words(p.steps[src].out_layout, c) / 64) * p.lanes(p.steps[src], c)
                for src, adds in p.skip_sources().items() for _ in adds)
    lanes = sum(p.lanes(s, c) * (60 + 30 * len(s.vector)) for s in p.steps)  # bias add, casts, vector nodes
    muxes = (r * wx * c // 2 if p.conv_buffers() else 0) + 2 * wx * c  # readers' lane muxes
    lut = (r_live * c_live * a + c * a + (bufs + banks + skips) * 16 + 120 * len(p.steps) + lanes
           + muxes + 200)
    return {"lut": int(lut), "ff": int(ff), "dsp": int(r_live * g_live + n_bn), "bram36": float(bram),
            "basis": "structural estimate of the systolic array (qfx.gen.systolic_resources, live PEs only; "
                     "--synth counts LUT / FF with Yosys)"}


#: Array sizes tried, largest first, when ``--array`` is not given.
SYSTOLIC_DEFAULT_SIZES = ((16, 16), (8, 8), (4, 4), (2, 2), (1, 1))


def fit_systolic_array(man: Any, b: Any, sizes: Sequence[tuple[int, int]] = SYSTOLIC_DEFAULT_SIZES, *,
                       synth: bool = False) -> "tuple[Any, dict[str, Any] | None, list[str]]":
    """The first array of ``sizes`` whose :func:`systolic_resources` fit board ``b``'s safe caps
    (``synth``: LUT / FF left to the Yosys check): ``(accelerator, estimate, [])``, or ``(None, None,
    problems)`` with the last size's over-cap resources. The accelerator is not elaborated (its
    must-use warning silenced); :class:`~qfx.hw.accel.systolic_top.SystolicError` for a manifest
    the systolic arch cannot run."""
    from qfx.boards import check_fit
    from qfx.hw.accel.systolic_top import SystolicAccelerator

    problems: list[str] = []
    for r, c in sizes:
        cand = SystolicAccelerator(man, r, c)
        cand._MustUse__silence = True
        e = systolic_resources(cand)
        problems = check_fit(b, {k: (0 if synth and k in ("lut", "ff") else e[k]) for k in ("lut", "ff", "dsp", "bram36")})
        if not problems:
            return cand, e, []
    return None, None, problems


def _systolic_generate(man: Any, manifest_path: Any, out_dir: Any, b: Any, *, targets: Sequence[str], top: str,
                       clock: float, clock_mhz: "float | None", clock_basis: str, reuse_factor: int, synth: bool,
                       force: bool, array: Any, folding: Any, fps: Any, ii: Any, khot_unroll: bool) -> dict[str, Any]:
    """``--arch systolic``: :class:`qfx.hw.accel.systolic_top.SystolicAccelerator` (see :func:`generate`)."""
    from qfx.boards import check_fit, render_board_files
    from qfx.hw.accel import axis_width
    from qfx.hw.accel.systolic_top import SystolicError, parse_array, plan_systolic
    from qfx.hw.accel.top import stream_formats
    from qfx.hw.verilog import to_verilog

    from . import hls
    from .outdir import write_files

    if folding not in (None, "auto") or fps is not None or ii is not None or khot_unroll:
        raise GenError("--folding / --fps / --ii / --khot-unroll plan the dataflow architecture's engines; "
                       "--arch systolic takes --array RxC instead")
    try:
        plan_systolic(man)  # names the first node the systolic arch cannot run
        if array is not None:
            sizes = [parse_array(array)]
        else:
            sizes = list(SYSTOLIC_DEFAULT_SIZES)
    except SystolicError as err:
        raise GenError(f"--arch systolic: {err}") from None
    files: dict[str, str] = {}
    rtl = "rtl" in targets
    modules: list[str] = []
    acc, est, problems = fit_systolic_array(man, b, sizes, synth=synth)
    if acc is None:
        raise GenError(f"--arch systolic: no array of {', '.join(f'{r}x{c}' for r, c in sizes)} fits {b.name} "
                       f"({b.part}) within its safe utilization: " + "; ".join(problems) + " [structural estimate]. "
                       "Use a smaller --array, narrower formats or a larger board")
    acc._MustUse__silence = False
    cycles = acc.cycle_estimate()
    if rtl:
        verilog = to_verilog(acc, top)
        if synth:
            est, clock, clock_basis = _synth_and_clock(verilog, top, b, est, check_fit, clock, clock_mhz, clock_basis)
        files[f"rtl/{top}.v"] = verilog
        design_board = {"top": top, "sources": [f"{top}.v"], "clock_mhz": clock,
                        "s_axis_width": axis_width(acc.input_format), "m_axis_width": axis_width(acc.output_format)}
        for name, text in render_board_files(b, design_board).items():
            files[f"board/{name}"] = text
        modules = _verilog_modules(verilog)
    else:
        acc._MustUse__silence = True
    if "hls" in targets:  # the HLS project is the dataflow one (its C simulation equals the reference too)
        for name, text in hls.render(man, top=top, reuse_factor=reuse_factor, foldings=None).items():
            files[f"hls/{name}"] = text
    in_fmt, out_fmt = stream_formats(man)
    layers = []
    for node in man:
        entry = _layer_entry(node)
        if node.name in cycles["layers"]:  # (no "cycles" key: that marks a dataflow engine for the probes)
            entry["systolic"] = cycles["layers"][node.name]
        layers.append(entry)
    design: dict[str, Any] = {
        **_design_head(man, manifest_path, out_dir, b, top),
        "arch": "systolic",
        "array": {"rows": acc.rows, "cols": acc.cols, "pack": acc.pack, "grid_cols": acc.grid_cols,
                  "x_format": str(acc.plan.x_fmt), "w_format": str(acc.plan.w_fmt),
                  "acc_format": str(acc.acc_fmt), "request": None if array is None else f"{acc.rows}x{acc.cols}"},
        "targets": list(targets),
        "clock_mhz": clock,
        "clock_basis": clock_basis,
        "interface": _interface(man, in_fmt, out_fmt),
        "ports": _ports(acc) if rtl else [],
        "modules": modules,
        "layers": layers,
        "cycle_model": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in cycles.items()},
        "latency": {"cycles": cycles["total"], "us": round(cycles["total"] / clock, 3),
                    "ii_cycles": cycles["ii"]} if rtl else None,
        "resources_estimate": est if rtl else None,
        "folding": None,
        "files": sorted(files) + ["design.json"],
    }
    files["design.json"] = json.dumps(design, indent=2, sort_keys=False) + "\n"
    write_files(out_dir, files, force=force, replace=("rtl", "board", "hls"))
    return design


def _folding_request(folding: Any, fps: "float | None", ii: "int | None", khot_unroll: bool = False) -> dict[str, Any]:
    if isinstance(folding, Mapping):
        spec = "mapping"
    else:
        spec = "auto" if folding in (None, "auto") else Path(folding).name
    return {"folding": spec, "fps": fps, "ii": ii, **({"khot_unroll": True} if khot_unroll else {})}


def _folding_plan(man: Any, board: Any, folding: "str | Path | Mapping[str, Any] | None", *,
                  fps: "float | None", ii: "int | None", clock_mhz: float, khot_unroll: bool = False) -> Any:
    """The folding plan (:func:`qfx.hw.accel.folding.plan`) for ``--folding auto | F.yaml``, ``--fps``,
    ``--ii``. A mapping ``{layer: Folding}`` (the Python API) is exact: the other layers stay at
    folding 1 unless a target asks the planner for more."""
    from qfx.hw.accel.folding import Folding, parse_foldings, plan

    nodes = {n.name: n for n in man}
    overrides: dict[str, Any] = {}
    exact = False
    if isinstance(folding, Mapping):
        exact = True
        overrides = parse_foldings(nodes, {k: v.as_dict() if isinstance(v, Folding) else v
                                           for k, v in folding.items()})
    elif folding not in (None, "auto"):
        import yaml

        path = Path(folding)
        try:
            spec = yaml.safe_load(path.read_text())
        except (FileNotFoundError, IsADirectoryError):
            raise GenError(f"--folding {str(folding)!r}: no such file; give 'auto' or a YAML file "
                           "of {layer: {pe: P, simd: S}}") from None
        except yaml.YAMLError as exc:
            raise GenError(f"--folding {str(folding)!r} is not valid YAML ({exc}); expected {{layer: {{pe: P, "
                           "simd: S}}}}") from None
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise GenError(f"--folding {str(folding)!r} must map layer names to {{pe: P, simd: S}}, "
                           f"not a {type(spec).__name__}")
        overrides = parse_foldings(nodes, spec)
    if exact and fps is None and ii is None:
        ii = 10 ** 15  # met at once: exactly the given foldings
    return plan(man, board, target_ii=ii, fps=fps, clock_mhz=clock_mhz, overrides=overrides,
                khot_unroll=khot_unroll)



def _synth_and_clock(verilog: str, top: str, b: Any, est: dict[str, Any], check_fit: Any, clock: float,
                     clock_mhz: "float | None", clock_basis: str) -> "tuple[dict[str, Any], float, str]":
    """``--synth``: Yosys' counts of ``verilog`` replace the estimate and are checked against the
    board; without an asked clock (``clock_mhz``) the clock becomes what the Fmax estimate supports.
    Returns ``(est, clock, clock_basis)``."""
    from qfx.cost.synthesis import synth_module
    from qfx.cost.timing import fmax_mhz

    ms = synth_module(verilog, top, family=b.family)
    counts = ms.summary()
    est = {**est, **{k: counts[k] for k in ("lut", "ff", "dsp", "bram36")},
           "basis": f"Yosys synth_xilinx -family {b.family} (qfx.hw.synth)"}
    _check_fit(b, est, check_fit)
    fmax = fmax_mhz(ms.paths)
    if clock_mhz is None:  # the clock the design's Fmax estimate supports
        return est, clock_from_fmax(fmax, b), (
            f"the Fmax estimate {fmax:g} MHz (Yosys netlist, qfx.cost.timing), rounded down to "
            f"a {CLOCK_STEP_MHZ:g} MHz step, at most the board's {b.max_clock_mhz:g} MHz")
    return est, clock, clock_basis + f"; Fmax estimate {fmax:g} MHz"


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
        f"  clock {design['clock_mhz']:g} MHz: {design.get('clock_basis', '')}",
    ]
    est = design["resources_estimate"]
    if design["latency"] is None or est is None:
        lines.append("  no RTL built (--target without rtl): latency and resources come from the Vitis HLS "
                     "reports; the board fit was not checked")
    else:
        lat = design["latency"]
        lines.append(f"  throughput: one inference every {lat['ii_cycles']} cycles back to back (II); latency "
                     f"{lat['cycles']} cycles = {lat['us']:g} us for one alone")
        lines.append(f"  resources: {est['dsp']} DSP, {est['bram36']:g} BRAM36, {est['lut']} LUT, {est['ff']} FF "
                     f"({est['basis']}); all four checked against the board")
    fold = design.get("folding")
    if fold:
        rows = [ly for ly in design["layers"] if "planned" in ly]
        lines.append(f"  folding plan ({fold['request']['folding']}): II {fold['ii']} cycles = "
                     f"{fold['inferences_per_s']:,.0f} inferences/s at {fold['clock_mhz']:g} MHz; {fold['limit']}")
        lines.append(f"    {'layer':12s} {'pe':>4s} {'simd':>5s} {'load':>7s} {'compute':>8s} {'out':>7s} "
                     f"{'DSP':>5s} {'LUT':>7s}")
        for ly in rows:
            f, c, r = ly.get("folding", {}), ly["planned"]["cycles"], ly["planned"]["resources_estimate"]
            lines.append(f"    {ly['name'][:12]:12s} {f.get('pe', '-')!s:>4s} {f.get('simd', '-')!s:>5s} "
                         f"{c['load']:>7d} {c['compute']:>8d} {c['outputs']:>7d} {r['dsp']:>5g} {r['lut']:>7g}")
        ku = fold.get("khot_unroll")
        if ku:
            lines.append("  K-hot hard-wired (full unroll): " + (", ".join(ku["unrolled"]) or "none"))
            lines.extend(f"  K-hot kept rolled: {n}: {why}" for n, why in ku["kept"].items())
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
    p.add_argument("--array", default=None,
                   help="--arch systolic: the array size RxC, e.g. 16x16 (default: the largest of 16x16, 8x8, ... "
                        "that fits the board)")
    p.add_argument("--top", default="qfx_top", help="top module / function name (default: qfx_top)")
    p.add_argument("--clock-mhz", type=float, default=None,
                   help="fabric clock (default: with --synth the clock the Fmax estimate supports, else the board's)")
    p.add_argument("--reuse-factor", type=int, default=1, help="HLS reuse factor (default: 1)")
    p.add_argument("--folding", default="auto",
                   help="MAC engine folding: auto (default: the planner, qfx.hw.accel.folding.plan) or a YAML "
                        "file {layer: {pe: P, simd: S}} of per-layer overrides merged over auto")
    p.add_argument("--fps", type=float, default=None, help="target inferences/s: the smallest folding reaching it")
    p.add_argument("--ii", type=int, default=None, help="target initiation interval in cycles (instead of --fps)")
    p.add_argument("--khot-unroll", action="store_true",
                   help="fully unroll K-hot layers where the design fits: hard-wired shift-add products, "
                        "no DSP, no weight ROM (the planner balances the other layers)")
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
                          force=args.force, folding=args.folding, fps=args.fps, ii=args.ii,
                          khot_unroll=args.khot_unroll, array=args.array)
    except BaseException as err:  # noqa: BLE001 - every error is one `qfx-gen: error:` line (qfx._errors)
        from ._errors import error_status

        return error_status("qfx-gen", err)
    print(_summary(design, Path(args.out)))
    if args.report:
        from qfx.cost.cli import cmd_cost

        from ._errors import report_errors

        cost = argparse.Namespace(out=args.out, no_synth=False, manifest=args.manifest, board=args.board,
                                  clock_mhz=args.clock_mhz)
        return report_errors("qfx-gen", lambda: cmd_cost(cost))
    return 0


if __name__ == "__main__":
    sys.exit(main())
