"""cocotb 2.x testbench of the unit banks inside ``qfx_units_harness`` (see :mod:`qfx.sim.units`).

Started by :func:`qfx.sim.units.run_units` through ``cocotb_tools.runner``. The harness drives
every cycle's stimulus from its ``$readmemh`` memory and logs every cycle's outputs itself;
this test only clocks, resets, raises ``go`` and awaits ``finished`` (one await for the whole
run). The result (status, cycles, seconds) goes to the job's ``result_file``; nothing here
knows the expected values.
"""

from __future__ import annotations

import json
import os
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import First, RisingEdge, Timer

PERIOD_NS = 10


@cocotb.test()
async def run_job(dut) -> None:
    with open(os.environ["QFX_UNITS_JOB"]) as fh:
        job = json.load(fh)
    Clock(dut.clk, PERIOD_NS, unit="ns").start()
    dut.go.value = 0
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    t0 = time.perf_counter()
    dut.go.value = 1
    limit = (job["n_cycles"] + 100) * PERIOD_NS
    await First(RisingEdge(dut.finished), Timer(limit, unit="ns"))
    if int(dut.finished.value):
        res = {"ok": True, "cycles": int(dut.cycle.value)}
    else:
        res = {"ok": False, "error": f"not finished after {job['n_cycles'] + 100} cycles "
                                     f"({int(dut.cycle.value)} done)"}
    res["seconds"] = time.perf_counter() - t0
    with open(job["result_file"], "w") as fh:
        json.dump(res, fh)
    assert res["ok"], res.get("error")
