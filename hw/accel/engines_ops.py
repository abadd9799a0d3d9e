"""Engines of the structural ops of issue 14: concat, clamp, sub, mul, pad, upsample (matmul and
permute: :mod:`qfx.hw.accel.engines_matmul`).

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
* :class:`PadEngine` (pad): no buffer; forwards each input code or emits a border zero.
* :class:`UpsampleEngine` (upsample, nearest): the input buffered (double-buffered, no cast: the
  formats are equal), then one output element per cycle in C order, each reading input element
  ``(c, oy // sh, ox // sw)``.

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
from .engines import EngineError, SkidInput, _InputBuffer, _OutputStage, _Sequencer
from .loops import LoopNest

__all__ = ["BinaryEngine", "ConcatEngine", "ClampEngine", "PadEngine", "UpsampleEngine", "OPS", "ops_engine", "ops_engine_cycles",
           "ops_engine_latency"]

#: Manifest ops built by this module.
OPS = ("concat", "clamp", "sub", "mul", "pad", "upsample", "table", "softmax",
       "layernorm", "matmul", "permute")  # table: engines_table.TableEngine; softmax: engines_softmax.SoftmaxEngine;
# layernorm: engines_norm.LayerNormEngine; matmul, permute: engines_matmul


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
    slots : tuple of int
        Tensor slots of the ``a`` and ``b`` input buffers (2: double buffering; more for the
        operand that arrives early, :meth:`qfx.hw.accel.top.Accelerator.input_slots`).

    Attributes
    ----------
    a, b : In(stream.Signature(...))
        Operand codes, C order.
    o : Out(stream.Signature(fixed_shape(output)))
        Output codes, C order.
    """

    def __init__(self, node: Node, src_a: FixedType, src_b: FixedType, slots: "tuple[int, int]" = (2, 2)) -> None:
        if node.op not in ("sub", "mul"):
            raise EngineError(f"node {node.name!r}: BinaryEngine builds sub and mul, not {node.op!r}")
        self._src_a, self._src_b = src_a, src_b
        self._slots = tuple(slots)
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
        buf_a = _InputBuffer(m, "a", self.a, self._src_a, ta, n, slots=self._slots[0])
        buf_b = _InputBuffer(m, "b", self.b, self._src_b, tb, n, slots=self._slots[1])
        out = _OutputStage(m, self.o)
        adv = out.adv
        loops = LoopNest("bin", [n])
        da, db = buf_a.read(0, loops[0], adv), buf_b.read(0, loops[0], adv)
        seq = _Sequencer(m, out, [buf_a, buf_b], loops, [])
        if self._node.op == "mul":
            r_fmt = ta * tb
            r = Signal(fixed_shape(r_fmt))
            m.d.comb += r.eq(da * db)
        else:
            r_fmt = ta - tb
            f = r_fmt.frac_bits
            r = Signal(fixed_shape(r_fmt))
            m.d.comb += r.eq((da << (f - ta.frac_bits)) - (db << (f - tb.frac_bits)))
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
    slots : tuple of int or None
        Tensor slots of each input buffer (default 2 each: double buffering).

    Attributes
    ----------
    i0, i1, ... : In(stream.Signature(...))
        One input stream per manifest input, C order.
    o : Out(stream.Signature(fixed_shape(output)))
    """

    def __init__(self, node: Node, srcs: "list[FixedType]", slots: "tuple[int, ...] | None" = None) -> None:
        if int(node.params["axis"]) != 0:
            raise EngineError(f"node {node.name!r}: concat along axis {node.params['axis']} has no RTL engine; "
                              "only the channel axis (0) is supported")
        self._srcs = list(srcs)
        self._slots = tuple(slots) if slots is not None else (2,) * len(self._srcs)
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
        bufs = [_InputBuffer(m, f"in{j}", getattr(self, f"i{j}"), src, out_fmt, size, slots=slots)
                for j, (src, size, slots) in enumerate(zip(self._srcs, self._sizes, self._slots))]
        out = _OutputStage(m, self.o)
        adv = out.adv
        loops = LoopNest("cat", [n_out])
        idx = loops[0]
        seq = _Sequencer(m, out, bufs, loops, [])
        sel = Signal(range(max(len(bufs), 2)))
        sel1 = Signal.like(sel)
        offset = 0
        sel_v = Const(0, sel.shape())
        reads = []
        for j, (buf, size) in enumerate(zip(bufs, self._sizes)):
            local = Signal(range(max(size, 2)), name=f"addr{j}")
            m.d.comb += local.eq(idx - offset)
            reads.append(buf.read(0, local, adv))
            if j:
                sel_v = Mux(idx >= offset, j, sel_v)
            offset += size
        m.d.comb += sel.eq(sel_v)
        with m.If(adv):
            m.d.sync += sel1.eq(sel)
        data = reads[0]
        for j in range(1, len(reads)):
            data = Mux(sel1 == j, reads[j], data)
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
        i = SkidInput(m, self.i)
        m.submodules.in_cast = in_cast = CastUnit(self._src, self._in_fmt)
        m.submodules.out_cast = out_cast = CastUnit(self._in_fmt, self._out_fmt)
        m.d.comb += [in_cast.i.eq(i.payload), out_cast.i.eq(in_cast.o)]
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
        m.d.comb += i.ready.eq(out.adv)
        out.emit(m, i.valid & out.adv, r)
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
        i = SkidInput(m, self.i)
        # inside: wait for an input beat; border: emit a zero whenever the output stage advances
        take = Signal()
        m.d.comb += [i.ready.eq(out.adv & inside), take.eq(out.adv & (~inside | i.valid))]
        loops.step(m, take)
        out.emit(m, take, Mux(inside, i.payload, 0))
        return m


class _BufferedReorderEngine(_OpsEngine):
    """One input tensor buffered (``slots`` tensor slots), then read out in another order with no
    cast: what the upsample and permute engines share."""

    def __init__(self, node: Node, src: FixedType, slots: int = 2) -> None:
        self._src = src
        self._slots = int(slots)
        self._out_fmt = node.formats["output"]
        super().__init__(node, {"i": In(stream.Signature(fixed_shape(src))),
                                "o": Out(stream.Signature(fixed_shape(self._out_fmt)))})

    @property
    def input_ports(self) -> list:
        return [self.i]


class UpsampleEngine(_BufferedReorderEngine):
    """upsample node (nearest, integer factors ``scale = [sh, sw]``): the input tensor buffered,
    then one output element per cycle in C order, ``y[c, oy, ox] = x[c, oy // sh, ox // sw]``.

    The output positions run as the loop nest (c, iy, dy, ix, dx) with ``oy = iy * sh + dy`` and
    ``ox = ix * sw + dx``, so the read address ``(c * H + iy) * W + ix`` needs no division.

    Parameters
    ----------
    node : Node
        An ``upsample`` node.
    src : FixedType
        Format of the codes arriving on ``i`` (equal to the node's output format).
    slots : int
        Tensor slots of the input buffer (2: double buffering).
    """

    def elaborate(self, platform):
        m = Module()
        c, h, w = self._node.input_shapes[0]
        sh, sw = self._node.params["scale"]
        n_in = c * h * w
        buf = _InputBuffer(m, "in", self.i, self._src, self._out_fmt, n_in, slots=self._slots)
        out = _OutputStage(m, self.o)
        adv = out.adv
        loops = LoopNest("up", [c, h, sh, w, sw])
        ch, iy, _dy, ix, _dx = loops.counters
        seq = _Sequencer(m, out, [buf], loops, [])
        addr = Signal(range(max(n_in, 2)), name="up_addr")
        m.d.comb += addr.eq(ch * (h * w) + iy * w + ix)
        data = buf.read(0, addr, adv)
        out.emit(m, seq.v1 & adv, data)
        return m


def ops_engine(node: Node, srcs: "list[FixedType]", slots: "tuple[int, ...] | None" = None) -> wiring.Component:
    """The engine of a node whose op is in :data:`OPS` (``srcs``: its producers' emitted formats;
    ``slots``: the tensor slots of each input buffer of a buffered engine, default 2 each)."""
    slots = tuple(slots) if slots is not None else (2,) * len(srcs)
    if node.op in ("sub", "mul"):
        return BinaryEngine(node, srcs[0], srcs[1], slots[:2])
    if node.op == "concat":
        return ConcatEngine(node, srcs, slots)
    if node.op == "clamp":
        return ClampEngine(node, srcs[0])
    if node.op == "pad":
        return PadEngine(node, srcs[0])
    if node.op == "upsample":
        return UpsampleEngine(node, srcs[0], slots[0])
    if node.op == "layernorm":
        from .engines_norm import LayerNormEngine, check_layernorm

        check_layernorm(node)  # before the Elaboratable exists (a refused one would warn "never used")
        return LayerNormEngine(node, srcs[0])
    if node.op == "table":
        from .engines_table import TableEngine

        return TableEngine(node, srcs[0])
    if node.op == "softmax":
        from qfx.tables import softmax_geometry

        from .engines_softmax import SoftmaxEngine, SoftmaxStridedEngine

        if softmax_geometry(node.params, node.input_shapes[0])[2] > 1:  # vectors across a non-last axis
            return SoftmaxStridedEngine(node, srcs[0])
        return SoftmaxEngine(node, srcs[0])
    if node.op == "matmul":
        from .engines_matmul import MatMulEngine

        return MatMulEngine(node, srcs[0], srcs[1], slots[:2])
    if node.op == "permute":
        from .engines_matmul import PermuteEngine

        return PermuteEngine(node, srcs[0], slots[0])
    raise EngineError(f"node {node.name!r}: op {node.op!r} is not one of {OPS}")  # pragma: no cover


def ops_engine_cycles(node: Node) -> dict[str, int]:
    """As :func:`qfx.hw.accel.engines.engine_cycles` (which defers to this for :data:`OPS`):
    buffered engines load their inputs (in parallel, double-buffered) while they compute."""
    n_out = math.prod(node.output_shape)
    if node.op == "softmax":
        from qfx.tables import softmax_geometry

        from .engines_softmax import softmax_cycles, softmax_strided_cycles

        if softmax_geometry(node.params, node.input_shapes[0])[2] > 1:
            return softmax_strided_cycles(node)
        return softmax_cycles(node)
    if node.op in ("sub", "mul"):
        return {"load": n_out, "compute": n_out, "outputs": n_out}
    if node.op == "matmul":  # one product per cycle (engines_matmul.MatMulEngine)
        return {"load": max(math.prod(s) for s in node.input_shapes),
                "compute": n_out * int(node.input_shapes[0][-1]), "outputs": n_out}
    if node.op == "permute":
        return {"load": n_out, "compute": n_out, "outputs": n_out}
    if node.op == "pad":
        return {"load": 0, "compute": n_out, "outputs": n_out}
    if node.op == "concat":
        return {"load": max(math.prod(s) for s in node.input_shapes), "compute": n_out, "outputs": n_out}
    if node.op == "upsample":
        return {"load": math.prod(node.input_shapes[0]), "compute": n_out, "outputs": n_out}
    if node.op == "layernorm":
        from .engines_norm import layernorm_cycles

        return layernorm_cycles(node)
    return {"load": 0, "compute": n_out, "outputs": n_out}


def ops_engine_latency(node: Node, last_in: int) -> int:
    """As :func:`qfx.hw.accel.engines.engine_latency`: the cycle of the node's last output beat
    when its last input beat is accepted in cycle ``last_in`` (one tensor, output never stalled).

    Buffered engines (sub, mul, concat, upsample) issue one element per cycle from the cycle after their
    last input and emit 2 cycles after the issue; clamp and table emit 1 cycle after their input. The pad
    engine emits the border positions before its last inside element on its own (one per cycle,
    from cycle 0 at the earliest), then that element 1 cycle after it arrives, then the trailing
    border one per cycle.
    """
    c = ops_engine_cycles(node)
    if node.op == "softmax":
        from qfx.tables import softmax_geometry

        from .engines_softmax import softmax_latency

        if softmax_geometry(node.params, node.input_shapes[0])[2] > 1:  # the strided engine: buffered
            return last_in + c["compute"] + 2
        return softmax_latency(node, last_in)
    if node.op == "layernorm":
        from .engines_norm import layernorm_latency

        return layernorm_latency(node, last_in)
    if node.op in ("sub", "mul", "concat", "upsample", "matmul", "permute"):
        return last_in + c["compute"] + 2
    if node.op == "pad":
        _c, h, w = node.input_shapes[0]
        _, ho, wo = node.output_shape
        left, _right, top, _bottom = node.params["padding"]
        last_inside = (ho * wo) * (_c - 1) + (top + h - 1) * wo + (left + w - 1)  # C-order position
        trailing = math.prod(node.output_shape) - 1 - last_inside
        return max(last_in, last_inside) + 1 + trailing
    return last_in + 1
