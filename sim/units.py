"""Run banks of qfx.hw units (CastUnit, PEs, SystolicArray) under Verilator with cocotb, fast.

Many units go into ONE Amaranth top (:class:`UnitsTop`): every unit input is a field of one
wide input bus ``din``, every output a field of one wide output bus ``dout``. A small
SystemVerilog harness (:func:`harness_sv`) loads a precomputed per-cycle stimulus for ``din``
from a ``$readmemh`` file and writes ``dout`` (sampled just before each rising edge) to a text
file, one line per cycle; the cocotb test (:mod:`qfx.sim.tb_units`) starts the clock, raises
``go`` and awaits ``finished`` once, no Python per cycle or per vector.

Optionally the top holds one :class:`~qfx.hw.systolic.SystolicArray`; the harness then also
runs a stream producer (weight beats and input rows from a second ``$readmemh`` file, each
beat tagged weight/row, with random gaps) and a consumer (``y.ready`` from a per-cycle stall
bit), logging every accepted output row and the handshake signals per cycle.

Expected values never come from here: this module returns what the RTL computed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from amaranth.hdl import Cat, Elaboratable, Module, Shape, Signal

from .verilator import DEFAULT_ARGS, Verilator, build, find_verilator

__all__ = ["Field", "UnitsTop", "UnitsRun", "harness_sv", "run_units", "HARNESS_TOP", "DUT_TOP"]

HARNESS_TOP = "qfx_units_harness"
DUT_TOP = "qfx_units"
#: No --timing (the clock is cocotb's), no blanket public access (the harness ports are marked).
BUILD_ARGS = (*DEFAULT_ARGS, "--no-public-flat-rw")
#: Depth of the harness's stimulus memories (cycles, stream beats): a build constant.
MAX_CYCLES = 4096
MAX_BEATS = 1024


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of ``din`` / ``dout``: bits ``offset .. offset + width - 1``."""

    name: str
    offset: int
    width: int
    signed: bool

    def encode(self, value: int) -> int:
        return (int(value) & ((1 << self.width) - 1)) << self.offset

    def decode(self, word: int) -> int:
        v = (word >> self.offset) & ((1 << self.width) - 1)
        if self.signed and v >> (self.width - 1):
            v -= 1 << self.width
        return v


class UnitsTop(Elaboratable):
    """Units side by side; inputs are fields of ``din``, outputs fields of ``dout``.

    :meth:`add` a unit with its input and output values (Amaranth ``Value``\\ s of the unit's
    ports, e.g. ``pe.x``, ``pe.shift.as_value()``), each under a name; :meth:`systolic` adds
    one SystolicArray whose streams become ports of the top.
    """

    def __init__(self) -> None:
        self._units: list[tuple[str, Any]] = []
        self._ins: list[tuple[str, Any]] = []
        self._outs: list[tuple[str, Any]] = []
        self.array = None
        self.din_fields: dict[str, Field] = {}
        self.dout_fields: dict[str, Field] = {}
        self._frozen = False

    def add(self, name: str, unit, ins: "dict[str, Any]", outs: "dict[str, Any]") -> None:
        assert not self._frozen
        self._units.append((name, unit))
        self._ins += [(f"{name}.{k}", v) for k, v in ins.items()]
        self._outs += [(f"{name}.{k}", v) for k, v in outs.items()]

    def systolic(self, array) -> None:
        assert self.array is None and not self._frozen
        self.array = array
        wl = Shape.cast(array.weights.payload.shape()).width
        xl = Shape.cast(array.x.payload.shape()).width
        yl = Shape.cast(array.y.payload.shape()).width
        self.sa = {
            "w_valid": Signal(name="sa_w_valid"), "w_ready": Signal(name="sa_w_ready"),
            "w_payload": Signal(wl, name="sa_w_payload"),
            "x_valid": Signal(name="sa_x_valid"), "x_ready": Signal(name="sa_x_ready"),
            "x_payload": Signal(xl, name="sa_x_payload"),
            "y_valid": Signal(name="sa_y_valid"), "y_ready": Signal(name="sa_y_ready"),
            "y_payload": Signal(yl, name="sa_y_payload"),
        }

    def _freeze(self) -> None:
        if self._frozen:
            return
        self._frozen = True
        off = 0
        for name, v in self._ins:
            s = Shape.cast(v.shape())
            self.din_fields[name] = Field(name, off, s.width, s.signed)
            off += s.width
        self.din = Signal(max(off, 1), name="din")
        off = 0
        for name, v in self._outs:
            s = Shape.cast(v.shape())
            self.dout_fields[name] = Field(name, off, s.width, s.signed)
            off += s.width
        self.dout = Signal(max(off, 1), name="dout")

    def ports(self) -> list:
        self._freeze()
        ps = [self.din, self.dout]
        if self.array is not None:
            ps += list(self.sa.values())
        return ps

    def elaborate(self, platform):
        self._freeze()
        m = Module()
        for name, u in self._units:
            m.submodules[name] = u
        for name, v in self._ins:
            f = self.din_fields[name]
            m.d.comb += v.eq(self.din[f.offset: f.offset + f.width])
        if self._outs:
            m.d.comb += self.dout.eq(Cat(*(v for _, v in self._outs)))
        if self.array is not None:
            a, s = self.array, self.sa
            m.submodules.array = a
            m.d.comb += [
                a.weights.valid.eq(s["w_valid"]), s["w_ready"].eq(a.weights.ready),
                a.weights.payload.as_value().eq(s["w_payload"]),
                a.x.valid.eq(s["x_valid"]), s["x_ready"].eq(a.x.ready),
                a.x.payload.as_value().eq(s["x_payload"]),
                s["y_valid"].eq(a.y.valid), a.y.ready.eq(s["y_ready"]),
                s["y_payload"].eq(a.y.payload.as_value()),
            ]
        return m

    def verilog(self) -> str:
        from amaranth.back import verilog

        return verilog.convert(self, name=DUT_TOP, ports=self.ports(), emit_src=False)


def harness_sv(top: UnitsTop) -> str:
    """The SystemVerilog harness around :data:`DUT_TOP` (see the module docstring).

    The per-cycle stimulus word is ``{stall bit, gap bit, din}``: ``gap`` withholds the next
    stream beat, ``stall`` drops ``y.ready`` for that cycle.
    """
    top.ports()
    dw, ow = len(top.din), len(top.dout)
    sa = top.array is not None
    if sa:
        ww, xw, yw = len(top.sa["w_payload"]), len(top.sa["x_payload"]), len(top.sa["y_payload"])
        bw = max(ww, xw) + 1
        sa_decl = f"""
  logic [{bw - 1}:0] bmem [0:{MAX_BEATS - 1}];
  integer n_beats, bi, nb_i, fy;
  logic pend, is_x, rdy, fire, gap, stall;
  logic w_valid, w_ready, x_valid, x_ready, y_valid, y_ready;
  logic [{ww - 1}:0] w_payload;
  logic [{xw - 1}:0] x_payload;
  logic [{yw - 1}:0] y_payload;
  logic [{bw - 1}:0] beat;
  assign gap = cyc[{dw}];
  assign stall = cyc[{dw + 1}];
  assign beat = (bi < n_beats) ? bmem[bi] : '0;
  assign is_x = beat[{bw - 1}];
  assign w_valid = pend && !is_x;
  assign x_valid = pend && is_x;
  assign w_payload = beat[{ww - 1}:0];
  assign x_payload = beat[{xw - 1}:0];
  assign y_ready = running && !stall;
  assign rdy = is_x ? x_ready : w_ready;
  assign fire = pend && rdy;
"""
        sa_conn = (", .sa_w_valid(w_valid), .sa_w_ready(w_ready), .sa_w_payload(w_payload)"
                   ", .sa_x_valid(x_valid), .sa_x_ready(x_ready), .sa_x_payload(x_payload)"
                   ", .sa_y_valid(y_valid), .sa_y_ready(y_ready), .sa_y_payload(y_payload)")
        sa_init = """    n_beats = 0; fy = 0;
    if ($value$plusargs("qfx_beats=%s", bname)) $readmemh(bname, bmem);
    if (!$value$plusargs("qfx_nbeats=%d", n_beats)) n_beats = 0;
    if ($value$plusargs("qfx_y=%s", yname)) fy = $fopen(yname, "w");
"""
        sa_seq = """      if (fire || !pend) begin
        nb_i = fire ? bi + 1 : bi;
        bi <= nb_i;
        pend <= (nb_i < n_beats) && !gap;
      end
      if (y_valid && y_ready) $fwrite(fy, "%h\\n", y_payload);
"""
        sa_log = ', w_valid, w_ready, x_valid, x_ready, y_valid, y_ready'
        sa_fmt = " %b%b%b%b%b%b"
        sa_rst = "      bi <= 0; pend <= 0;\n"
        sa_flush = "        if (fy != 0) $fflush(fy);\n"
    else:
        sa_decl = sa_conn = sa_init = sa_seq = sa_log = sa_fmt = sa_rst = sa_flush = ""
    cw = dw + 2
    return f"""// qfx unit-test harness (generated by qfx.sim.units; not part of any design)
module {HARNESS_TOP} (
  input  logic clk /*verilator public_flat_rw*/,
  input  logic rst /*verilator public_flat_rw*/,
  input  logic go /*verilator public_flat_rw*/,
  output logic finished /*verilator public_flat_rw*/,
  output logic [31:0] cycle /*verilator public_flat_rw*/
);
  logic [{cw - 1}:0] cmem [0:{MAX_CYCLES - 1}];
  logic [{cw - 1}:0] cyc;
  logic [{dw - 1}:0] din;
  logic [{ow - 1}:0] dout;
  logic running;
  integer n_cycles, fout;
  string cname, oname, bname, yname;
{sa_decl}
  assign running = go && !finished;
  assign cyc = (running && cycle < n_cycles) ? cmem[cycle] : '0;
  assign din = cyc[{dw - 1}:0];
  {DUT_TOP} dut (.clk(clk), .rst(rst), .din(din), .dout(dout){sa_conn});

  initial begin
    n_cycles = 0; fout = 0;
    if ($value$plusargs("qfx_cycles=%s", cname)) $readmemh(cname, cmem);
    if (!$value$plusargs("qfx_ncycles=%d", n_cycles)) n_cycles = 0;
    if ($value$plusargs("qfx_out=%s", oname)) fout = $fopen(oname, "w");
{sa_init}  end

  always @(posedge clk) begin
    if (rst) begin
      cycle <= 0; finished <= 0;
{sa_rst}    end else if (running) begin
      $fwrite(fout, "%h{sa_fmt}\\n", dout{sa_log});
{sa_seq}      cycle <= cycle + 1;
      if (cycle + 1 >= n_cycles) begin
        finished <= 1;
        $fflush(fout);
{sa_flush}      end
    end
  end
endmodule
"""


@dataclasses.dataclass
class UnitsRun:
    """What the RTL did: per cycle the ``dout`` word and (with an array) the handshake bits and
    the accepted output rows (raw payload words)."""

    dout: list[int]
    handshakes: list[str]  # per cycle "w_valid w_ready x_valid x_ready y_valid y_ready" as a bit string
    y_words: list[int]
    build_seconds: float
    sim_seconds: float
    build_dir: Path

    def field(self, top: UnitsTop, name: str) -> list[int]:
        f = top.dout_fields[name]
        return [f.decode(w) for w in self.dout]


def run_units(top: UnitsTop, cycles: Sequence[int], beats: Sequence[int] = (), *,
              verilator: "Verilator | None" = None, work_dir: "str | os.PathLike | None" = None) -> UnitsRun:
    """Build (cached) and run ``top`` on the per-cycle stimulus words ``cycles``
    (``{stall, gap, din}`` integers) and, with an array, the stream ``beats``
    (``{is_x, payload}`` integers). Raises ``RuntimeError`` when the run does not finish."""
    import time

    from cocotb_tools.runner import get_runner

    if len(cycles) > MAX_CYCLES or len(beats) > MAX_BEATS:
        raise ValueError(f"at most {MAX_CYCLES} cycles and {MAX_BEATS} beats per run")
    vl = verilator or find_verilator()
    t0 = time.perf_counter()
    bdir = build({f"{DUT_TOP}.v": top.verilog(), f"{HARNESS_TOP}.sv": harness_sv(top)}, HARNESS_TOP,
                 verilator=vl, args=BUILD_ARGS)
    t_build = time.perf_counter() - t0
    own = work_dir is None
    wd = Path(tempfile.mkdtemp(prefix="qfx-units-")) if own else Path(work_dir)
    wd.mkdir(parents=True, exist_ok=True)
    try:
        cfile, bfile, ofile, yfile, rfile = (wd / n for n in ("cycles.hex", "beats.hex", "out.txt", "y.txt",
                                                               "result.json"))
        for f in (ofile, yfile, rfile):
            f.unlink(missing_ok=True)
        cfile.write_text("".join(f"{int(c):x}\n" for c in cycles))
        bfile.write_text("".join(f"{int(b):x}\n" for b in beats) or "0\n")
        job = {"n_cycles": len(cycles), "result_file": str(rfile)}
        (wd / "job.json").write_text(json.dumps(job))
        plusargs = [f"+qfx_cycles={cfile}", f"+qfx_ncycles={len(cycles)}", f"+qfx_out={ofile}",
                    f"+qfx_beats={bfile}", f"+qfx_nbeats={len(beats)}", f"+qfx_y={yfile}"]
        saved = {k: os.environ.get(k) for k in ("PATH", "VERILATOR_ROOT")}
        os.environ.update({k: v for k, v in vl.env().items() if k in ("PATH", "VERILATOR_ROOT")})
        log_file = wd / "sim.log"
        try:
            runner = get_runner("verilator")
            runner.log.setLevel(logging.WARNING)
            runner.test(test_module="qfx.sim.tb_units", hdl_toplevel=HARNESS_TOP, hdl_toplevel_lang="verilog",
                        build_dir=str(bdir / "obj"), test_dir=str(wd),
                        extra_env={"QFX_UNITS_JOB": str(wd / "job.json")}, plusargs=plusargs,
                        log_file=str(log_file), results_xml=str(wd / "results.xml"))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        log = log_file.read_text(errors="replace") if log_file.is_file() else ""
        if not rfile.is_file():
            raise RuntimeError(f"the cocotb testbench wrote no result; simulator log tail:\n{log[-3000:]}")
        res = json.loads(rfile.read_text())
        if not res.get("ok"):
            raise RuntimeError(f"unit simulation failed: {res.get('error')}\nlog tail:\n{log[-2000:]}")
        dout, hs = [], []
        for line in ofile.read_text().splitlines():
            parts = line.split()
            dout.append(int(parts[0], 16))
            hs.append(parts[1] if len(parts) > 1 else "")
        if len(dout) != len(cycles):
            raise RuntimeError(f"harness logged {len(dout)} cycles, expected {len(cycles)}")
        y = [int(t, 16) for t in yfile.read_text().split()] if yfile.is_file() else []
        return UnitsRun(dout, hs, y, t_build, float(res.get("seconds", 0.0)), bdir)
    finally:
        if own:
            import shutil

            shutil.rmtree(wd, ignore_errors=True)
