"""cocotb 2.x testbench of a qfx accelerator inside ``qfx_sim_harness`` (see :mod:`qfx.sim.accel`).

Started by :func:`qfx.sim.accel.simulate` through ``cocotb_tools.runner``; the job (mode,
files, vector count, cycle limit) comes from the JSON file named by ``$QFX_SIM_JOB``, and the
result (status, cycles, seconds, and in the Python modes the output beats) goes to the job's
``result_file``. Nothing here knows the expected values: the caller compares with the
integer reference.
"""

from __future__ import annotations

import json
import os
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import First, ReadOnly, RisingEdge, Timer, ValueChange
from cocotb.utils import get_sim_time

PERIOD_NS = 10


def _job() -> dict:
    with open(os.environ["QFX_SIM_JOB"]) as fh:
        return json.load(fh)


def _read_vectors(path: str, n_in: int) -> list[list[int]]:
    with open(path) as fh:
        tokens = fh.read().split()
    n = int(tokens[0])
    codes = [int(t, 16) for t in tokens[1:]]
    return [codes[i * n_in:(i + 1) * n_in] for i in range(n)]


async def _reset(dut, use_file: int) -> None:
    dut.use_file.value = use_file
    dut.self_clock.value = use_file
    dut.go.value = 0
    dut.start.value = 0
    dut.s_tvalid.value = 0
    dut.s_tdata.value = 0
    dut.s_tlast.value = 0
    dut.m_tready.value = 0
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.cclk)
    dut.rst.value = 0
    await RisingEdge(dut.cclk)


async def _file_mode(dut, job: dict) -> dict:
    """The harness streams everything; Python awaits ``finished`` once."""
    dut.go.value = 1
    done = await First(RisingEdge(dut.finished), Timer(job["limit_cycles"] * PERIOD_NS, unit="ns"))
    if not int(dut.finished.value):
        return {"ok": False, "error": f"no finished after {job['limit_cycles']} cycles: "
                                      f"{int(dut.vectors_done.value)} of {job['n']} vectors done"}
    del done
    if int(dut.error.value):
        return {"ok": False, "error": "m_axis_tlast was wrong on some output beat"}
    return {"ok": True, "cycles": int(dut.cycles.value)}


async def _stream_mode(dut, job: dict) -> dict:
    """Batched driver / monitor: one await per accepted beat, none per idle or compute cycle."""
    rows = _read_vectors(job["in_file"], job["n_in"])
    total = len(rows) * job["n_out"]
    outputs: list[int] = []
    dut.m_tready.value = 1
    start_ns = get_sim_time(unit="ns")

    async def monitor() -> None:
        seen = int(dut.out_count.value)
        while len(outputs) < total:
            await ValueChange(dut.out_count)
            now = int(dut.out_count.value)
            # out_count moves by one per accepted beat and out_data holds that beat.
            if now != seen + 1:
                raise AssertionError(f"output handshake counter jumped {seen} -> {now}")
            seen = now
            outputs.append(int(dut.out_data.value))

    mon = cocotb.start_soon(monitor())
    accepted = int(dut.in_count.value)
    for row in rows:
        while int(dut.busy.value):
            await ValueChange(dut.busy)
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        for k, code in enumerate(row):
            dut.s_tdata.value = code
            dut.s_tlast.value = int(k == len(row) - 1)
            dut.s_tvalid.value = 1
            await ValueChange(dut.in_count)  # the beat was taken at this edge
            accepted += 1
        dut.s_tvalid.value = 0  # the next vector starts when busy falls (after done)
    await First(mon, Timer(job["limit_cycles"] * PERIOD_NS, unit="ns"))
    if len(outputs) < total:
        return {"ok": False, "error": f"only {len(outputs)} of {total} output beats"}
    end_ns = get_sim_time(unit="ns")
    return {"ok": True, "outputs": outputs, "cycles": int((end_ns - start_ns) // PERIOD_NS)}


async def _naive_mode(dut, job: dict) -> dict:
    """The textbook loop: every clock cycle is awaited and sampled in Python, one vector at a time."""
    rows = _read_vectors(job["in_file"], job["n_in"])
    outputs: list[int] = []
    cycles = 0
    for row in rows:
        dut.start.value = 1
        await RisingEdge(dut.clk)
        cycles += 1
        dut.start.value = 0
        dut.m_tready.value = 1
        k = 0
        got = 0
        while got < job["n_out"]:
            if k < len(row):
                dut.s_tdata.value = row[k]
                dut.s_tvalid.value = 1
                dut.s_tlast.value = int(k == len(row) - 1)
            else:
                dut.s_tvalid.value = 0
            await ReadOnly()
            took_in = k < len(row) and int(dut.s_tready.value)
            out_beat = int(dut.m_tvalid.value)
            data = int(dut.m_tdata.value) if out_beat else 0
            await RisingEdge(dut.clk)
            cycles += 1
            if took_in:
                k += 1
            if out_beat:
                outputs.append(data)
                got += 1
            if cycles > job["limit_cycles"]:
                return {"ok": False, "error": f"no output after {cycles} cycles"}
        await RisingEdge(dut.clk)  # done -> busy low
        cycles += 1
    return {"ok": True, "outputs": outputs, "cycles": cycles}


@cocotb.test()
async def run_job(dut) -> None:
    job = _job()
    if job["mode"] != "file":  # file mode: the harness clocks itself, no Python per cycle
        Clock(dut.clk, PERIOD_NS, unit="ns").start()
    else:
        dut.clk.value = 0
    await _reset(dut, 1 if job["mode"] == "file" else 0)
    t0 = time.perf_counter()
    try:
        if job["mode"] == "file":
            res = await _file_mode(dut, job)
        elif job["mode"] == "stream":
            res = await _stream_mode(dut, job)
        else:
            res = await _naive_mode(dut, job)
    except Exception as err:  # reported to the caller, which raises with the message
        res = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    res["seconds"] = time.perf_counter() - t0
    with open(job["result_file"], "w") as fh:
        json.dump(res, fh)
    assert res["ok"], res.get("error")
