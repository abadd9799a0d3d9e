"""The lookup-table engine (manifest op ``table``: Sigmoid, Tanh, SiLU, GELU, Hardsigmoid, Hardswish).

Same stream contract as :mod:`qfx.hw.accel.engines`: single-element ``amaranth.lib.stream``
ports, C order in and out. One element per cycle, no buffer, latency 1 (as the clamp engine):

    c   = cast(x, input)                            (a CastUnit; the input format's code)
    idx = (clamp(c, lo_code, hi_code) - lo_code) >> shift
    y   = ROM[idx]

The ROM holds the node's ``table`` array (codes of the output format; the manifest checks on load
that it equals :func:`qfx.tables.contents`), ``size`` words read combinationally (a LUT ROM or
distributed RAM, as synthesis decides); the registered output stage is the one pipeline stage.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from qfx.manifest import Node
from qfx.types import FixedType

from ..cast import CastUnit, fixed_shape
from .engines import EngineError, SkidInput, _OutputStage

__all__ = ["TableEngine"]


class TableEngine(wiring.Component):
    """table node: a ROM indexed by the clipped, shifted input code; one element per cycle.

    Parameters
    ----------
    node : Node
        A ``table`` node.
    src : FixedType
        Format of the codes arriving on ``i``.

    Attributes
    ----------
    i : In(stream.Signature(fixed_shape(src)))
    o : Out(stream.Signature(fixed_shape(output)))
    """

    def __init__(self, node: Node, src: FixedType) -> None:
        if node.op != "table":
            raise EngineError(f"node {node.name!r}: TableEngine builds table nodes, not {node.op!r}")
        self._node, self._src = node, src
        f = node.formats
        self._in_fmt, self._out_fmt = f["input"], f["output"]
        super().__init__({"i": In(stream.Signature(fixed_shape(src))),
                          "o": Out(stream.Signature(fixed_shape(self._out_fmt)))})

    @property
    def cycles(self) -> dict[str, int]:
        from .engines_ops import ops_engine_cycles

        return ops_engine_cycles(self._node)

    @property
    def input_ports(self) -> list:
        return [self.i]

    def elaborate(self, platform):
        m = Module()
        p = self._node.params
        size, shift, lo = int(p["size"]), int(p["shift"]), int(p["lo_code"])
        hi = lo + (size << shift) - 1
        m.submodules.in_cast = in_cast = CastUnit(self._src, self._in_fmt)
        i = SkidInput(m, self.i)
        m.d.comb += in_cast.i.eq(i.payload)
        # compare and subtract on a signed grid wide enough for the code and both bounds
        w = max(self._in_fmt.width, lo.bit_length(), hi.bit_length()) + 2
        c = Signal(signed(w))
        m.d.comb += c.eq(in_cast.o)
        lo_c, hi_c = Const(lo, signed(w)), Const(hi, signed(w))
        clipped = Signal(signed(w))
        m.d.comb += clipped.eq(Mux(c < lo_c, lo_c, Mux(c > hi_c, hi_c, c)))
        off = Signal(signed(w + 1))
        m.d.comb += off.eq(clipped - lo_c)
        abits = (size - 1).bit_length()
        rom = Memory(shape=fixed_shape(self._out_fmt), depth=size, init=[int(v) for v in self._node.arrays["table"]])
        m.submodules.rom = rom
        rd = rom.read_port(domain="comb")
        m.d.comb += rd.addr.eq(off[shift:shift + abits])
        out = _OutputStage(m, self.o)
        m.d.comb += i.ready.eq(out.adv)
        out.emit(m, i.valid & out.adv, rd.data)
        return m
