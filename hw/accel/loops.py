"""Loop nests in hardware: nested counters that step together, outermost first."""

from __future__ import annotations

from typing import Sequence

from amaranth.hdl import Const, Module, Mux, Signal, Value

__all__ = ["LoopNest"]


class LoopNest:
    """Counters ``c[0] .. c[n-1]`` over ``range(sizes[i])``, the last one innermost.

    ``step(m, en)`` advances the nest by one iteration in the ``sync`` domain
    when ``en`` is high; after the final iteration it wraps to all zeros.
    ``is_last(i)`` is high when counter ``i`` holds its last value,
    ``all_last(levels)`` when every counter of ``levels`` does (``is_first``
    / ``all_first`` likewise for zero). A size-1 loop costs nothing.

    ``is_last`` is a register (set when the counter steps onto its last value), not a compare
    of the counter: the ``all_last`` of a loader's nest gates its buffer's full flags and an
    engine's slot and release logic, and a carry-chain compare there was the start of the
    longest paths through a fork of the dataflow accelerator. The counters change only through
    :meth:`step` and :meth:`reset`, which keep the flags in step.
    """

    def __init__(self, name: str, sizes: Sequence[int]) -> None:
        if any(int(s) < 1 for s in sizes):
            raise ValueError(f"loop {name}: every size must be >= 1, got {list(sizes)}")
        self.sizes = [int(s) for s in sizes]
        # A loop of one iteration has no counter (a zero-width signal would reach the Verilog).
        self.counters = [Signal(range(s), name=f"{name}_{i}") if s > 1 else Const(0, 1)
                         for i, s in enumerate(self.sizes)]
        self._last = [Signal(name=f"{name}_{i}_last") if s > 1 else Const(1, 1)
                      for i, s in enumerate(self.sizes)]

    def __getitem__(self, i: int) -> Value:
        return self.counters[i]

    def is_last(self, i: int) -> Value:
        return self._last[i]

    def is_first(self, i: int) -> Value:
        return Const(1, 1) if self.sizes[i] == 1 else ~self.counters[i].any()

    def all_last(self, levels: Sequence[int] | None = None) -> Value:
        out = Const(1, 1)
        for i in range(len(self.sizes)) if levels is None else levels:
            out = out & self.is_last(i)
        return out

    def all_first(self, levels: Sequence[int] | None = None) -> Value:
        out = Const(1, 1)
        for i in range(len(self.sizes)) if levels is None else levels:
            out = out & self.is_first(i)
        return out

    def step(self, m: Module, en: Value) -> None:
        carry = en
        for i in reversed(range(len(self.sizes))):
            if self.sizes[i] == 1:
                continue
            c, last = self.counters[i], self._last[i]
            with m.If(carry):
                m.d.sync += [c.eq(Mux(last, 0, c + 1)), last.eq(~last & (c == self.sizes[i] - 2))]
            carry = carry & last

    def reset(self, m: Module) -> None:
        for i, c in enumerate(self.counters):
            if self.sizes[i] > 1:
                m.d.sync += [c.eq(0), self._last[i].eq(0)]
