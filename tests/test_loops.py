"""LoopNest (hw/accel/loops.py): the counters and their registered first/last flags follow a Python
model of the nested loop, step by step, under a random enable."""

from __future__ import annotations

import itertools

from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from qfx.hw.accel.loops import LoopNest


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_counters_and_last_flags_follow_the_nested_loop(sizes, seed):
    import random

    m = Module()
    loops = LoopNest("t", sizes)
    en = Signal()
    loops.step(m, en)
    dummy = Signal()  # keep the module non-empty when every loop has size 1
    m.d.sync += dummy.eq(~dummy)
    rng = random.Random(seed)
    order = list(itertools.product(*(range(s) for s in sizes)))
    seen = []

    async def bench(ctx):
        k = 0
        for _ in range(3 * len(order) + 5):
            want = order[k % len(order)]
            got = tuple(ctx.get(c) if hasattr(c, "name") else c.value for c in loops.counters)
            lasts = [ctx.get(loops.is_last(i)) for i in range(len(sizes))]
            seen.append((got, want, lasts, [want[i] == sizes[i] - 1 for i in range(len(sizes))],
                         ctx.get(loops.all_last()), all(want[i] == sizes[i] - 1 for i in range(len(sizes)))))
            e = rng.random() < 0.6
            ctx.set(en, int(e))
            await ctx.tick()
            k += int(e)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    for got, want, lasts, want_lasts, all_last, want_all in seen:
        assert got == want
        assert [bool(v) for v in lasts] == want_lasts
        assert bool(all_last) == want_all
