"""Fmax estimate from the logic depth of the Yosys-mapped netlist, and throughput from the architecture.

Method
------
After ``synth_xilinx`` the flattened netlist (``write_json``) holds Xilinx primitives. Every
register-to-register path is timed by adding a fixed delay per primitive it passes through
(:data:`DELAYS_NS`); the slowest path plus a clocking overhead gives the clock period, its
inverse the Fmax estimate. Registers (FDRE/FDSE/FDCE/FDPE), shift-register LUTs (SRL16E /
SRLC32E: data clocked in, the delay lines Yosys maps there have a constant tap), block RAM
(registered read) and DSP48E2 with its P register start and end paths; LUTs, MUXF7/8, CARRY8 and
LUT RAM reads (read address -> data out) are combinational; a LUT RAM's write side (data in, write
enable, write clock: :func:`_lutram_write_port`) is clocked, so a path ends there, as at a register's D;
a DSP48E2 without a P register is a combinational block.

Limits (stated in every report): no placement, so wire delays are an average per logic level,
not the real routing; Yosys maps (and packs) somewhat differently from Vivado; no clock skew
beyond the fixed margin; the delays are per-level averages, not datasheet values. Treat the
number as a first-order estimate (+-30 %), useful to compare designs, not as timing closure.

Delays (UltraScale+, -1 speed grade; ASSUMPTIONS):
  The Zynq UltraScale+ data sheet DS925 lists block Fmax values (e.g. DSP48E2 fully pipelined and
  RAMB36 at 600+ MHz for -1) but no per-LUT delay. The per-level figure 0.50 ns (LUT ~0.12 ns +
  an average local net ~0.38 ns) is a rule-of-thumb of Vivado timing reports on UltraScale+ -1
  parts, not a measured or published number; CARRY8 0.12 ns per cascaded block; MUXF 0.10 ns;
  block-RAM clock-to-out without output register 1.20 ns; DSP48E2 combinational A/B->P multiply-add
  2.80 ns, input side of a P-registered DSP 2.20 ns (1.00 ns with the M register); register
  clock-to-out + setup + clock uncertainty 0.50 ns per path.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DELAYS_NS", "critical_path", "fmax_mhz", "throughput", "TIMING_METHOD"]

DELAYS_NS: dict[str, float] = {
    "lut": 0.50,          # one LUT level incl. average routing (assumption, see module docstring)
    "carry": 0.12,        # one CARRY8 block in a chain
    "muxf": 0.10,         # MUXF7/MUXF8/MUXF9
    "lutram": 0.60,       # distributed RAM / SRL read (address -> data) incl. routing
    "bram_clk_to_out": 1.20,
    "dsp_comb": 2.80,     # DSP48E2 without any pipeline register
    "dsp_in_preg": 2.20,  # input -> P register (no M register)
    "dsp_in_mreg": 1.00,  # input -> M register
    "dsp_clk_to_out": 0.40,
    "overhead": 0.50,     # FF clock-to-out + setup + clock uncertainty
}

TIMING_METHOD = (
    "longest register-to-register path of the Yosys-mapped netlist, weighted per primitive "
    f"(LUT level incl. average net {DELAYS_NS['lut']} ns, CARRY8 {DELAYS_NS['carry']} ns, MUXF "
    f"{DELAYS_NS['muxf']} ns, LUT RAM read {DELAYS_NS['lutram']} ns, BRAM clk-to-out {DELAYS_NS['bram_clk_to_out']} ns, "
    f"combinational DSP48E2 {DELAYS_NS['dsp_comb']} ns, path overhead {DELAYS_NS['overhead']} ns); "
    "UltraScale+ -1 per-level delays are assumptions (rule of thumb), not datasheet values; no placement or "
    "routing; first-order estimate, about +-30 %"
)

_FF = ("FDRE", "FDSE", "FDCE", "FDPE", "LDCE", "LDPE")
_LUTRAM = ("RAM", "SRL")


def _param(cell: dict, name: str) -> int:
    v = cell.get("parameters", {}).get(name, 0)
    try:
        return int(str(v), 2) if isinstance(v, str) else int(v)
    except ValueError:
        return 0


def _classify(ctype: str, cell: dict) -> tuple[str, float]:
    """(kind, delay): kind is 'seq' (path boundary), 'comb', or 'dsp_reg' (boundary with input delay)."""
    d = DELAYS_NS
    if ctype in _FF:
        return "seq", 0.0
    if ctype.startswith("RAMB") or ctype.startswith("FIFO") or ctype.startswith("URAM"):
        return "seq", d["bram_clk_to_out"]
    if ctype.startswith("DSP48"):
        if _param(cell, "PREG") or _param(cell, "MREG"):
            return "dsp_reg", d["dsp_in_mreg"] if _param(cell, "MREG") else d["dsp_in_preg"]
        return "comb", d["dsp_comb"]
    if ctype.startswith("LUT") or ctype == "INV":
        return "comb", d["lut"]
    if ctype.startswith("CARRY"):
        return "comb", d["carry"]
    if ctype.startswith("MUXF"):
        return "comb", d["muxf"]
    if ctype.startswith("SRL"):
        # a shift register: D and CE are clocked in (a path ends there), Q leaves a clocked bit
        # (a path starts there, LUT RAM read delay); the A -> Q select is combinational, but the
        # delay lines Yosys maps to SRLs have a constant address
        return "seq", d["lutram"]
    if ctype.startswith(_LUTRAM):
        return "comb", d["lutram"]
    if ctype in ("VCC", "GND", "BUFG", "IBUF", "OBUF"):
        return "const", 0.0
    return "comb", d["lut"]  # unknown primitive: one logic level


def _lutram_write_port(port: str) -> bool:
    """Whether ``port`` of a distributed-RAM primitive (RAM32M, RAM64M8, RAM64X1D, ...) is on its
    synchronous write side: the data written (``D``, ``DIA`` ...), the write enable and clock, the
    write-only address (``WADR*``). Read addresses (``ADDR*``, ``A*``, ``DPRA*``) reach the data
    outputs combinationally; the write-side pins do not (they are captured at the clock edge)."""
    return port in ("D", "WE", "WCLK") or port.startswith(("DI", "WADR"))


def critical_path(netlist: dict, top: str) -> dict[str, Any]:
    """The slowest register-to-register path of a mapped netlist (Yosys ``write_json``).

    Returns ``{"delay_ns", "lut_levels", "carry_blocks", "cells", "start", "end"}`` where
    ``delay_ns`` includes the per-path overhead.
    """
    mods = netlist.get("modules", {})
    mod = mods.get(top) or next(iter(mods.values()), {})
    cells = mod.get("cells", {})
    driver: dict[int, str] = {}
    info: dict[str, tuple[str, float, str]] = {}
    for name, c in cells.items():
        kind, delay = _classify(c["type"], c)
        info[name] = (kind, delay, c["type"])
        for port, bits in c.get("connections", {}).items():
            if c.get("port_directions", {}).get(port) == "output":
                for b in bits:
                    if isinstance(b, int):
                        driver[b] = name
    # arrival[cell] = (time at the cell's outputs, lut levels, carry blocks, start cell)
    arrival: dict[str, tuple[float, int, int, str]] = {}

    def out_time(name: str) -> tuple[float, int, int, str]:
        kind, delay, ctype = info[name]
        if kind == "seq":
            return (delay, 0, 0, name)
        if kind == "dsp_reg":
            return (DELAYS_NS["dsp_clk_to_out"], 0, 0, name)
        if kind == "const":
            return (0.0, 0, 0, name)
        return arrival[name]

    lutram = {name for name, c in cells.items() if c["type"].startswith("RAM") and not c["type"].startswith("RAMB")}

    def inputs_of(name: str, write_side: bool = False) -> list[str]:
        """The cells driving ``name``'s inputs; of a LUT RAM, only the read side (or, with
        ``write_side``, only the write side)."""
        c = cells[name]
        srcs = []
        for port, bits in c.get("connections", {}).items():
            if c.get("port_directions", {}).get(port) == "input":
                if name in lutram and _lutram_write_port(port) != write_side:
                    continue
                for b in bits:
                    if isinstance(b, int) and b in driver:
                        srcs.append(driver[b])
        return srcs

    def is_comb(name: str) -> bool:
        return info[name][0] == "comb"

    # Iterative depth-first evaluation of the combinational cells' arrival times.
    for root in cells:
        if not is_comb(root) or root in arrival:
            continue
        stack = [(root, False)]
        onstack = set()
        while stack:
            name, ready = stack.pop()
            if name in arrival:
                continue
            if not ready:
                onstack.add(name)
                stack.append((name, True))
                for s in inputs_of(name):
                    if is_comb(s) and s not in arrival and s not in onstack:
                        stack.append((s, False))
                continue
            onstack.discard(name)
            best = (0.0, 0, 0, "input")
            for s in inputs_of(name):
                if is_comb(s) and s not in arrival:
                    continue  # a combinational loop: broken here
                t = out_time(s)
                if t[0] > best[0] or (t[0] == best[0] and best[3] == "input"):  # (a register's clk-to-out is 0 here)
                    best = t
            kind, delay, ctype = info[name]
            lut = 1 if ctype.startswith("LUT") or ctype == "INV" else 0
            carry = 1 if ctype.startswith("CARRY") else 0
            arrival[name] = (best[0] + delay, best[1] + lut, best[2] + carry, best[3])
    worst = {"delay_ns": DELAYS_NS["overhead"], "lut_levels": 0, "carry_blocks": 0, "start": None, "end": None}
    for name, c in cells.items():
        kind, delay, ctype = info[name]
        if kind not in ("seq", "dsp_reg") and name not in lutram:
            continue
        extra = delay if kind == "dsp_reg" else 0.0
        for s in inputs_of(name, write_side=name in lutram):
            t = out_time(s)
            total = t[0] + extra + DELAYS_NS["overhead"]
            if total > worst["delay_ns"]:
                worst = {"delay_ns": total, "lut_levels": t[1], "carry_blocks": t[2],
                         "start": cells.get(t[3], {}).get("type", t[3]) if t[3] in cells else t[3],
                         "end": ctype}
    worst["delay_ns"] = round(worst["delay_ns"], 3)
    return worst


def fmax_mhz(paths: dict[str, Any]) -> float:
    """Fmax estimate (MHz) from :func:`critical_path`'s delay."""
    return round(1000.0 / max(paths["delay_ns"], 1e-3), 1)


def throughput(cycles: int, macs: int, clock_mhz: float, *, latency_cycles: "int | None" = None) -> dict[str, float]:
    """Latency, inferences/s and GOPS (2 ops per MAC) at ``clock_mhz``.

    ``cycles``: cycles per inference in steady state (the initiation interval: the dataflow
    engines overlap successive inferences, so one leaves every ``cycles``); inferences/s =
    clock / cycles. ``latency_cycles``: one inference alone, start to done (default ``cycles``).
    """
    hz = clock_mhz * 1e6
    ips = hz / cycles if cycles else 0.0
    lat = cycles if latency_cycles is None else latency_cycles
    return {"clock_mhz": round(clock_mhz, 1), "latency_us": round(lat / clock_mhz, 3),
            "inferences_per_s": round(ips, 1), "gops": round(2 * macs * ips / 1e9, 6)}
