"""Run a generated accelerator in Amaranth's own simulator (no Verilog, no external tools).

:func:`run_accelerator` drives the AXI4-Stream ports of a
:class:`qfx.hw.accel.Accelerator` the way a DMA would (optionally with random
gaps on ``tvalid`` and ``tready``) and collects the output codes and the cycle
counts. It is the fast check used by the RTL generator's tests; the cocotb /
Verilator regression runs the emitted Verilog itself.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
from amaranth.sim import Simulator

__all__ = ["AcceleratorRun", "run_accelerator"]


@dataclasses.dataclass
class AcceleratorRun:
    """Outputs and timing of one simulation.

    Attributes
    ----------
    outputs : numpy.ndarray
        ``[N, n_out]`` output codes (int64), one row per input tensor.
    cycles : list[int]
        Per tensor, clock cycles from its ``start`` pulse to its ``done`` pulse.
    done_at : list[int]
        Per tensor, the cycle (counted from the simulation's start) of its ``done`` pulse; with
        ``back_to_back`` their differences are the initiation interval.
    """

    outputs: np.ndarray
    cycles: list[int]
    done_at: list[int] = dataclasses.field(default_factory=list)


def _signed(v: int, width: int, signed: bool) -> int:
    v &= (1 << width) - 1
    return v - (1 << width) if signed and v >> (width - 1) else v


def run_accelerator(acc: Any, inputs: Any, *, stall_in: float = 0.0, stall_out: float = 0.0, seed: int = 0,
                    max_cycles: int = 10_000_000, back_to_back: bool = False) -> AcceleratorRun:
    """Simulate ``acc`` on every row of ``inputs`` (input codes, ``[N, n_in]`` or ``[N, *shape]``).

    ``stall_in`` / ``stall_out`` are the probabilities that the source withholds ``tvalid`` /
    the sink withholds ``tready`` in a cycle (backpressure testing). Raises ``TimeoutError``
    after ``max_cycles`` cycles without ``done``. ``back_to_back``: do not wait for ``busy`` to fall;
    the next tensor's ``start`` goes with the first beat of the current one (the accelerator queues
    it), so tensors overlap as a streaming DMA would feed them.
    """
    x = np.asarray(inputs, dtype=np.int64)
    x = x.reshape(x.shape[0], -1)
    out_fmt = acc.output_format
    n_in = x.shape[1]
    n_out = int(np.prod(acc.manifest.output_node.output_shape))
    rng = random.Random(seed)
    outputs: list[list[int]] = []
    cycles: list[int] = []
    mask_in = (1 << len(acc.s_axis_tdata)) - 1

    if back_to_back and n_in < 2:
        raise ValueError("back_to_back needs tensors of at least 2 elements")

    async def source(ctx):
        for n, row in enumerate(x):
            if not back_to_back:
                await ctx.tick().until(acc.busy == 0)
            if not back_to_back or n == 0:
                ctx.set(acc.start, 1)
                await ctx.tick()
                ctx.set(acc.start, 0)
            for k, code in enumerate(row):
                if back_to_back and k == 0 and n + 1 < len(x):
                    ctx.set(acc.start, 1)  # queue the next tensor
                if back_to_back and k == 1:
                    ctx.set(acc.start, 0)
                while rng.random() < stall_in:
                    ctx.set(acc.s_axis_tvalid, 0)
                    await ctx.tick()
                ctx.set(acc.s_axis_tdata, int(code) & mask_in)
                ctx.set(acc.s_axis_tvalid, 1)
                ctx.set(acc.s_axis_tlast, int(k == n_in - 1))
                await ctx.tick().until(acc.s_axis_tready == 1)
            ctx.set(acc.s_axis_tvalid, 0)
            ctx.set(acc.s_axis_tlast, 0)

    done_at: list[int] = []
    starts: list[int] = []
    now = 0
    prev_start = 0

    async def sink(ctx):
        nonlocal now, prev_start
        count = 0
        carry: list[int] = []  # a beat taken in the cycle ``done`` (registered) reports the previous tensor
        for _ in x:
            row, carry = carry, []
            while True:
                ready = rng.random() >= stall_out
                ctx.set(acc.m_axis_tready, int(ready))
                _clk, _rst, valid, data, last, done, start = await ctx.tick().sample(
                    acc.m_axis_tvalid, acc.m_axis_tdata, acc.m_axis_tlast, acc.done, acc.start)
                now += 1
                if start and not prev_start:
                    starts.append(now)
                prev_start = start
                t = now - starts[count] + 1 if len(starts) > count else 0
                if ready and valid:
                    # done pulses the cycle after the previous tensor's last beat: a beat in that
                    # cycle is the first of the next tensor (back to back at ii == n_out)
                    beats = carry if done else row
                    beats.append(_signed(int(data), out_fmt.width, out_fmt.signed))
                    if bool(last) != (len(beats) == n_out):
                        raise AssertionError(f"tlast {bool(last)} on output beat {len(beats)} of {n_out}")
                if done:
                    break
                if t > max_cycles:
                    raise TimeoutError(f"no done after {max_cycles} cycles (tensor {count}, {len(row)} outputs)")
            outputs.append(row)
            cycles.append(t)
            done_at.append(now)
            count += 1

    sim = Simulator(acc)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    bad = [i for i, r in enumerate(outputs) if len(r) != n_out]
    if bad:
        raise AssertionError(f"tensor {bad[0]}: {len(outputs[bad[0]])} output beats, expected {n_out}")
    return AcceleratorRun(outputs=np.array(outputs, dtype=np.int64), cycles=cycles, done_at=done_at)
