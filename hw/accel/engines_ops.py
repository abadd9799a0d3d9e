"""Engines of the structural ops of issue 14: concat, clamp, sub, mul.

Same stream contract as :mod:`qfx.hw.accel.engines`: single-element ``amaranth.lib.stream``
ports, C order in and out; each computes what :mod:`qfx.reference` documents for its op.

* :class:`BinaryEngine` (sub, mul): like the add engine, both operands buffered (a fork that
  feeds both can never deadlock), then one element per cycle:
  ``cast(align(a) - align(b), output)`` / ``cast(a * b, output)`` (exact product).
* :class:`ConcatEngine` (concat, channel axis): every input buffered, cast to the output format
  on entry; then the buffers are read out one after another (C order along the channel axis is
  the inputs in sequence), one element per cycle.
* :class:`ClampEngine` (clamp): no buffer, one element per cycle, a one-stage pipeline:
  ``min(max(cast(cast(x, input), output), min_code), max_code)``.

(BatchNorm1d and global average pooling need no engine of their own: they are the manifest's
``batchnorm`` on ``[C]`` / ``[C, L]`` and ``avgpool2d`` with kernel = H x W.)
"""

from __future__ import annotations

import math

from amaranth.hdl import Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from qfx.manifest import Node
from qfx.types import FixedType

from ..cast import CastUnit, fixed_shape
from .engines import EngineError, _buffer, _load, _OutputStage, _Sequencer
from .loops import LoopNest

__all__ = ["BinaryEngine", "ConcatEngine", "ClampEngine", "PadEngine", "OPS", "ops_engine", "ops_engine_cycles"]

#: Manifest ops built by this module.
OPS = ("concat", "clamp", "sub", "mul", "pad")


class _OpsEngine(wiring.Component):
    def __init__(self, node: Node, members: dict) -> None:
        self._node = node
        super().__init__(members)

    @property
    def cycles(self) -> dict[str, int]:
        return ops_engine_cycles(self._node)


class BinaryEngine(_OpsEngine):
    """sub / mul node: both operands buffered, then one output per cycle.

    Parameters
    ----------
    node : Node
        A ``sub`` or ``mul`` node.
    src_a, src_b : FixedType
        Formats of the codes arriving on ``a`` and ``b``.

    Attributes
    ----------
    a, b : In(stream.Signature(...))
        Operand codes, C order.
    o : Out(stream.Signature(fixed_shape(output)))
        Output codes, C order.
    """

    def __init__(self, node: Node, src_a: FixedType, src_b: FixedType) -> None:
        if node.op not in ("sub", "mul"):
            raise EngineError(f"node {node.name!r}: BinaryEngine builds sub and mul, not {node.op!r}")
        self._src_a, self._src_b = src_a, src_b
        f = node.formats
        self._ta, self._tb, self._out_fmt = f["in_a"], f["in_b"], f["output"]
        self._n = math.prod(node.output_shape)
        super().__init__(node, {
            "a": In(stream.Signature(fixed_shape(src_a))),
            "b": In(stream.Signature(fixed_shape(src_b))),
            "o": Out(stream.Signature(fixed_shape(self._out_fmt))),
        })

    @property
    def input_ports(self) -> list:
        return [self.a, self.b]

    def elaborate(self, platform):
        m = Module()
        n, ta, tb = self._n, self._ta, self._tb
        wa, ra = _buffer(m, "abuf", fixed_shape(ta), n)
        wb, rb = _buffer(m, "bbuf", fixed_shape(tb), n)
        load_a, load_b = Signal(init=1), Signal(init=1)
        _load(m, "a", self.a, self._src_a, ta, n, wa, load_a)
        _load(m, "b", self.b, self._src_b, tb, n, wb, load_b)
        out = _OutputStage(m, self.o)
        adv = out.adv
        loops = LoopNest("bin", [n])
        m.d.comb += [ra.addr.eq(loops[0]), rb.addr.eq(loops[0]), ra.en.eq(adv), rb.en.eq(adv)]
        seq = _Sequencer(m, out, [load_a, load_b], loops, [])
        if self._node.op == "mul":
            r_fmt = ta * tb
            r = Signal(fixed_shape(r_fmt))
            m.d.comb += r.eq(ra.data * rb.data)
        else:
            r_fmt = ta - tb
            f = r_fmt.frac_bits
            r = Signal(fixed_shape(r_fmt))
            m.d.comb += r.eq((ra.data << (f - ta.frac_bits)) - (rb.data << (f - tb.frac_bits)))
        m.submodules.out_cast = out_cast = CastUnit(r_fmt, self._out_fmt)
        m.d.comb += out_cast.i.eq(r)
        out.emit(m, seq.v1 & adv, out_cast.o)
        return m


class ConcatEngine(_OpsEngine):
    """concat node (channel axis): every input buffered in the output format, then read out in order.

    Parameters
    ----------
    node : Node
        A ``concat`` node with ``params.axis == 0``.
    srcs : list of FixedType
        Formats of the codes arriving on each input.

    Attributes
    ----------
    i0, i1, ... : In(stream.Signature(...))
        One input stream per manifest input, C order.
    o : Out(stream.Signature(fixed_shape(output)))
    """

    def __init__(self, node: Node, srcs: "list[FixedType]") -> None:
        if int(node.params["axis"]) != 0:
            raise EngineError(f"node {node.name!r}: concat along axis {node.params['axis']} has no RTL engine; "
                              "only the channel axis (0) is supported")
        self._srcs = list(srcs)
        self._out_fmt = node.formats["output"]
        self._sizes = [math.prod(s) for s in node.input_shapes]
        members = {f"i{j}": In(stream.Signature(fixed_shape(s))) for j, s in enumerate(self._srcs)}
        members["o"] = Out(stream.Signature(fixed_shape(self._out_fmt)))
        super().__init__(node, members)

    @property
    def input_ports(self) -> list:
        return [getattr(self, f"i{j}") for j in range(len(self._srcs))]

    def elaborate(self, platform):
        m = Module()
        out_fmt = self._out_fmt
        n_out = sum(self._sizes)
        loads, reads = [], []
        for j, (src, size) in enumerate(zip(self._srcs, self._sizes)):
            wp, rp = _buffer(m, f"buf{j}", fixed_shape(out_fmt), size)
            loading = Signal(init=1, name=f"load{j}")
            _load(m, f"in{j}", getattr(self, f"i{j}"), src, out_fmt, size, wp, loading)
            loads.append(loading)
            reads.append(rp)
        out = _OutputStage(m, self.o)
        adv = out.adv
        loops = LoopNest("cat", [n_out])
        idx = loops[0]
        seq = _Sequencer(m, out, loads, loops, [])
        sel = Signal(range(max(len(reads), 2)))
        sel1 = Signal.like(sel)
        offset = 0
        sel_v = Const(0, sel.shape())
        for j, (rp, size) in enumerate(zip(reads, self._sizes)):
            local = Signal(range(max(size, 2)), name=f"addr{j}")
            m.d.comb += [local.eq(idx - offset), rp.addr.eq(local), rp.en.eq(adv)]
            if j:
                sel_v = Mux(idx >= offset, j, sel_v)
            offset += size
        m.d.comb += sel.eq(sel_v)
        with m.If(adv):
            m.d.sync += sel1.eq(sel)
        data = reads[0].data
        for j in range(1, len(reads)):
            data = Mux(sel1 == j, reads[j].data, data)
        out.emit(m, seq.v1 & adv, data)
        return m


class ClampEngine(_OpsEngine):
    """clamp node: one element per cycle, latency 1, no buffer.

    Parameters
    ----------
    node : Node
        A ``clamp`` node.
    src : FixedType
        Format of the codes arriving on ``i``.
    """

    def __init__(self, node: Node, src: FixedType) -> None:
        self._src = src
        f = node.formats
        self._in_fmt, self._out_fmt = f["input"], f["output"]
        super().__init__(node, {"i": In(stream.Signature(fixed_shape(src))),
                                "o": Out(stream.Signature(fixed_shape(self._out_fmt)))})

    @property
    def input_ports(self) -> list:
        return [self.i]

    def elaborate(self, platform):
        m = Module()
        p = self._node.params
        m.submodules.in_cast = in_cast = CastUnit(self._src, self._in_fmt)
        m.submodules.out_cast = out_cast = CastUnit(self._in_fmt, self._out_fmt)
        m.d.comb += [in_cast.i.eq(self.i.payload), out_cast.i.eq(in_cast.o)]
        shape = fixed_shape(self._out_fmt)
        v = out_cast.o
        if p["min_code"] is not None:
            lo = Const(int(p["min_code"]), shape)
            v = Mux(v < lo, lo, v)
        if p["max_code"] is not None:
            hi = Const(int(p["max_code"]), shape)
            v = Mux(v > hi, hi, v)
        r = Signal(shape)
        m.d.comb += r.eq(v)
        out = _OutputStage(m, self.o)
        m.d.comb += self.i.ready.eq(out.adv)
        out.emit(m, self.i.valid & out.adv, r)
        return m


class PadEngine(_OpsEngine):
    """pad node (ZeroPad2d): streams, no buffer. For every output position in C order it either
    forwards the next input code (inside) or emits a zero code (the border); one per cycle.

    Parameters
    ----------
    node : Node
        A ``pad`` node.
    src : FixedType
        Format of the codes arriving on ``i`` (equal to the node's output format).
    """

    def __init__(self, node: Node, src: FixedType) -> None:
        self._src = src
        super().__init__(node, {"i": In(stream.Signature(fixed_shape(src))),
                                "o": Out(stream.Signature(fixed_shape(node.formats["output"])))})

    @property
    def input_ports(self) -> list:
        return [self.i]

    def elaborate(self, platform):
        m = Module()
        c, h, w = self._node.input_shapes[0]
        _, ho, wo = self._node.output_shape
        left, _right, top, _bottom = self._node.params["padding"]
        loops = LoopNest("pad", [c, ho, wo])
        _ch, y, x = loops.counters
        inside = Signal()
        m.d.comb += inside.eq((y >= top) & (y < top + h) & (x >= left) & (x < left + w))
        out = _OutputStage(m, self.o)
        # inside: wait for an input beat; border: emit a zero whenever the output stage advances
        take = Signal()
        m.d.comb += [self.i.ready.eq(out.adv & inside), take.eq(out.adv & (~inside | self.i.valid))]
        loops.step(m, take)
        out.emit(m, take, Mux(inside, self.i.payload, 0))
        return m


def ops_engine(node: Node, srcs: "list[FixedType]") -> wiring.Component:
    """The engine of a node whose op is in :data:`OPS` (``srcs``: its producers' emitted formats)."""
    if node.op in ("sub", "mul"):
        return BinaryEngine(node, srcs[0], srcs[1])
    if node.op == "concat":
        return ConcatEngine(node, srcs)
    if node.op == "clamp":
        return ClampEngine(node, srcs[0])
    if node.op == "pad":
        return PadEngine(node, srcs[0])
    raise EngineError(f"node {node.name!r}: op {node.op!r} is not one of {OPS}")  # pragma: no cover


def ops_engine_cycles(node: Node) -> dict[str, int]:
    """As :func:`qfx.hw.accel.engines.engine_cycles`: buffered engines load their inputs first."""
    n_out = math.prod(node.output_shape)
    if node.op in ("sub", "mul"):
        return {"load": n_out, "compute": n_out, "outputs": n_out}
    if node.op == "pad":
        return {"load": 0, "compute": n_out, "outputs": n_out}
    if node.op == "concat":
        return {"load": max(math.prod(s) for s in node.input_shapes), "compute": n_out, "outputs": n_out}
    return {"load": 0, "compute": n_out, "outputs": n_out}
