"""Vivado project scripts for an accelerator on a board, rendered from ``boards/templates/*.j2``.

``render_board_files(board, design)`` returns ``{file name: text}`` for ``OUT/board/``:

* ``create_project.tcl`` -- project for the board's part, the accelerator RTL from ``../rtl/``, a
  block design with the PS (board preset), an AXI DMA in simple mode (MM2S feeds ``s_axis``,
  ``m_axis`` feeds S2MM), the accelerator as an RTL module reference, an AXI GPIO for
  start/done/busy through the small ``qfx_ctrl`` shim, PS clock 0 at ``clock_mhz``, one
  ``proc_sys_reset``, SmartConnects to the PS HPM0 (control) and HP0 (data) ports, then address
  assignment, validation, HDL wrapper, synthesis, implementation, bitstream and ``.xsa`` export.
* ``constraints.xdc`` -- no ``create_clock`` (the PS IP constrains its own PL clock); LED pins
  when the board has LEDs on PL pins (driven by ``qfx_ctrl``).
* ``qfx_ctrl.v`` -- turns the GPIO start level into a one-cycle ``start`` pulse, keeps ``done``
  sticky until the next start (a one-cycle pulse is too short to poll), drives the LEDs.

The output is deterministic: equal inputs give byte-identical files (no dates, no paths of this
machine, sorted iteration only).

GPIO register map (AXI GPIO, dual channel): channel 1 (offset 0x0) bit 0 = start -- write 1 then 0,
the rising edge starts one run; channel 2 (offset 0x8) bit 0 = done since the last start,
bit 1 = busy.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping

import jinja2

from .board import Board, get_board

__all__ = ["ACCELERATOR_PORTS", "DMA_STREAM_WIDTHS", "render_board_files", "validate_design"]

#: The accelerator's ports, exactly (name -> direction). TDATA widths come from the design.
ACCELERATOR_PORTS: dict[str, str] = {
    "clk": "in", "rst": "in",
    "s_axis_tdata": "in", "s_axis_tvalid": "in", "s_axis_tready": "out", "s_axis_tlast": "in",
    "m_axis_tdata": "out", "m_axis_tvalid": "out", "m_axis_tready": "in", "m_axis_tlast": "out",
    "start": "in", "done": "out", "busy": "out",
}

#: Stream widths the AXI DMA (simple mode) supports for MM2S/S2MM TDATA.
DMA_STREAM_WIDTHS: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024)

_REQUIRED = ("top", "sources", "clock_mhz", "s_axis_width", "m_axis_width")
_OPTIONAL = ("ports",)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SOURCE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*\.(v|sv)\Z")
_VERILOG_KEYWORDS = frozenset("""
    always and assign begin buf case casex casez cmos deassign default defparam disable edge else
    end endcase endfunction endmodule endprimitive endspecify endtable endtask event for force
    forever fork function generate genvar highz0 highz1 if initial inout input integer join large
    localparam macromodule medium module nand negedge nmos nor not notif0 notif1 or output parameter
    pmos posedge primitive pull0 pull1 pulldown pullup rcmos real realtime reg release repeat rnmos
    rpmos rtran rtranif0 rtranif1 scalared signed small specify specparam strong0 strong1 supply0
    supply1 table task time tran tranif0 tranif1 tri tri0 tri1 triand trior trireg unsigned vectored
    wait wand weak0 weak1 while wire wor xnor xor logic bit byte int shortint longint
""".split())
#: Names the generated block design uses itself; the accelerator's module may not take them.
_RESERVED_TOPS = frozenset({"qfx_ctrl", "qfx_bd", "qfx_bd_wrapper"})
_TEMPLATES = Path(__file__).resolve().parent / "templates"


def _number(design: Mapping[str, Any], key: str) -> float:
    value = design[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"design[{key!r}] must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"design[{key!r}] must be finite, got {value!r}")
    return float(value)


def _width(design: Mapping[str, Any], key: str) -> int:
    value = design[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"design[{key!r}] must be an int number of TDATA bits, got {type(value).__name__} {value!r}")
    if value <= 0 or value % 8:
        raise ValueError(f"design[{key!r}] = {value} is not a positive multiple of 8; AXI-Stream TDATA "
                         f"is whole bytes, pad the stream to the next multiple of 8")
    if value not in DMA_STREAM_WIDTHS:
        raise ValueError(f"design[{key!r}] = {value} is not a width the AXI DMA supports; "
                         f"use one of {', '.join(map(str, DMA_STREAM_WIDTHS))}")
    return value


def validate_design(board: Board | str, design: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``design`` for ``board``; return a normalised copy. Raises TypeError/ValueError naming the field."""
    board = get_board(board)
    if not isinstance(design, Mapping):
        raise TypeError(f"design must be a mapping with keys {', '.join(_REQUIRED)}, got {type(design).__name__}")
    missing = [k for k in _REQUIRED if k not in design]
    if missing:
        raise ValueError(f"design is missing {', '.join(map(repr, missing))}; required keys: {', '.join(_REQUIRED)}")
    unknown = sorted(set(design) - set(_REQUIRED) - set(_OPTIONAL), key=str)
    if unknown:
        raise ValueError(f"design has unknown keys {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(_REQUIRED + _OPTIONAL)}")

    top = design["top"]
    if not isinstance(top, str):
        raise TypeError(f"design['top'] must be the Verilog module name (str), got {type(top).__name__}")
    if not _IDENT.match(top) or top in _VERILOG_KEYWORDS:
        raise ValueError(f"design['top'] = {top!r} is not a valid Verilog module name; use letters, "
                         f"digits and '_', not starting with a digit, and not a keyword")
    if top in _RESERVED_TOPS:
        raise ValueError(f"design['top'] = {top!r} collides with a name of the generated block design; "
                         f"rename the module (reserved: {', '.join(sorted(_RESERVED_TOPS))})")

    sources = design["sources"]
    if isinstance(sources, (str, bytes)) or not isinstance(sources, (list, tuple)):
        raise TypeError(f"design['sources'] must be a list of Verilog file names relative to OUT/rtl/, "
                        f"got {type(sources).__name__}")
    if not sources:
        raise ValueError("design['sources'] is empty; list the accelerator's Verilog files (relative to OUT/rtl/)")
    for s in sources:
        if not isinstance(s, str) or not _SOURCE.match(s) or ".." in s.split("/"):
            raise ValueError(f"design['sources'] entry {s!r} is not a relative .v/.sv path inside OUT/rtl/ "
                             f"(letters, digits, '_', '-', '.', '/' only; no '..', no absolute paths)")
    if len(set(sources)) != len(sources):
        raise ValueError(f"design['sources'] lists a file twice: {sorted(sources)}")

    clock = _number(design, "clock_mhz")
    if clock <= 0:
        raise ValueError(f"design['clock_mhz'] = {clock:g} must be positive")
    if clock > board.max_clock_mhz:
        raise ValueError(f"design['clock_mhz'] = {clock:g} is above {board.name}'s maximum of "
                         f"{board.max_clock_mhz:g} MHz; lower the clock")

    s_w, m_w = _width(design, "s_axis_width"), _width(design, "m_axis_width")

    if "ports" in design:
        ports = design["ports"]
        if isinstance(ports, (str, bytes)) or not isinstance(ports, (list, tuple, Mapping)):
            raise TypeError(f"design['ports'] must list the accelerator's port names, got {type(ports).__name__}")
        names = list(ports)
        extra = sorted(set(map(str, names)) - set(ACCELERATOR_PORTS))
        absent = sorted(set(ACCELERATOR_PORTS) - set(map(str, names)))
        if extra or absent or len(names) != len(set(names)):
            raise ValueError(f"design['ports'] must be exactly {', '.join(ACCELERATOR_PORTS)}; "
                             f"unexpected: {extra or 'none'}, missing: {absent or 'none'}")

    return {"top": top, "sources": list(sources), "clock_mhz": clock, "s_axis_width": s_w, "m_axis_width": m_w}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["mhz"] = lambda x: f"{float(x):.6g}"
    env.filters["ns"] = lambda mhz: f"{1000.0 / float(mhz):.3f}"
    return env


def render_board_files(board: Board | str, design: Mapping[str, Any]) -> dict[str, str]:
    """``{"create_project.tcl": ..., "constraints.xdc": ..., "qfx_ctrl.v": ...}`` for ``OUT/board/``."""
    board = get_board(board)
    d = validate_design(board, design)
    leds = sorted(board.leds, key=lambda led: led.index)
    ctx = {
        "board": board,
        "design": d,
        "leds": leds,
        "n_leds": len(leds),
        "us_plus": board.ps_kind == "zynq_ultrascale_plus",
        "project_name": f"qfx_{d['top']}",
        "bd_name": "qfx_bd",
        "hp_width": 128 if board.ps_kind == "zynq_ultrascale_plus" else 64,
        "mm2s_data_width": max(32, d["s_axis_width"]),
        "s2mm_data_width": max(32, d["m_axis_width"]),
        "heartbeat_bits": max(2, math.ceil(math.log2(d["clock_mhz"] * 1e6))),
    }
    env = _environment()
    names = {"create_project.tcl": "create_project.tcl.j2", "constraints.xdc": "constraints.xdc.j2",
             "qfx_ctrl.v": "qfx_ctrl.v.j2"}
    return {out: env.get_template(src).render(**ctx) for out, src in sorted(names.items())}
