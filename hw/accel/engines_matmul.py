"""Engines of the transformer pieces of issue 14: matmul of two activations, and permute.

Same stream contract as :mod:`qfx.hw.accel.engines`: single-element streams, C order in and out.

* :class:`MatMulEngine` (matmul, ``a [.., T, K] @ b [.., K, S]``): both operands buffered (the two
  paths of ``q @ k.T`` fork from one tensor; buffering both means the fork can never deadlock),
  then one product per cycle over the loop nest (g, t, s, k), k innermost and ascending:
  ``acc = cast(Mux(k == 0, 0, acc) + a[g, t, k] * b[g, k, s], accum)`` (exact product, exact sum,
  the accum cast after every step, as the reference and the HLS loop), and on the last k the
  output ``cast(acc, output)``. ``G * T * S * K`` compute cycles. With ``multiply: lmul`` the product
  is :class:`qfx.hw.pe.multiply.LMulPairMultiplier`'s: both operands rounded to ``formats.operand``
  by the fixed -> minifloat logic of the dense L-Mul unit, then their L-Mul product (exact).
* :class:`PermuteEngine` (permute): the input buffered, then one output element per cycle in C
  order of the output, read at the input's permuted address (no cast: the formats are equal).

``reshape`` needs no engine: C order is kept, so the stream passes unchanged (as ``flatten``).
"""

from __future__ import annotations

import math

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream
from amaranth.lib.wiring import In, Out

from qfx.manifest import Node
from qfx.types import FixedType

from ..cast import CastUnit, fixed_shape
from ..pe.multiply import LMulPairMultiplier
from .engines import EngineError, _InputBuffer, _OutputStage, _Sequencer
from .engines_ops import _BufferedReorderEngine, _OpsEngine
from .loops import LoopNest

__all__ = ["MatMulEngine", "PermuteEngine", "matmul_dims", "permute_strides"]


def matmul_dims(node: Node) -> tuple[int, int, int, int]:
    """``(G, T, K, S)``: the leading-dim product, rows of a, inner dim, columns of b."""
    sa, sb = node.input_shapes
    return math.prod(sa[:-2]), sa[-2], sa[-1], sb[-1]


def permute_strides(node: Node) -> list[int]:
    """Per output axis j, the C-order stride in the input of input axis ``dims[j]``."""
    shape = list(node.input_shapes[0])
    st = [math.prod(shape[i + 1:]) for i in range(len(shape))]
    return [st[d] for d in node.params["dims"]]


class MatMulEngine(_OpsEngine):
    """matmul node: both operands buffered, one exact product per cycle, the accum cast per step.

    Parameters
    ----------
    node : Node
        A ``matmul`` node.
    src_a, src_b : FixedType
        Formats of the codes arriving on ``a`` and ``b`` (cast to ``in_a`` / ``in_b`` on entry).
    slots : tuple of int
        Tensor slots of the ``a`` and ``b`` buffers (:meth:`qfx.hw.accel.top.Accelerator.input_slots`).
    """

    def __init__(self, node: Node, src_a: FixedType, src_b: FixedType, slots: "tuple[int, int]" = (2, 2)) -> None:
        if node.op != "matmul":
            raise EngineError(f"node {node.name!r}: MatMulEngine builds matmul, not {node.op!r}")
        self._src_a, self._src_b = src_a, src_b
        self._slots = tuple(slots)
        f = node.formats
        self._ta, self._tb, self._acc_fmt, self._out_fmt = f["in_a"], f["in_b"], f["accum"], f["output"]
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
        g_n, t_n, k_n, s_n = matmul_dims(self._node)
        ta, tb, acc_fmt = self._ta, self._tb, self._acc_fmt
        n_a, n_b = g_n * t_n * k_n, g_n * k_n * s_n
        buf_a = _InputBuffer(m, "a", self.a, self._src_a, ta, n_a, slots=self._slots[0])
        buf_b = _InputBuffer(m, "b", self.b, self._src_b, tb, n_b, slots=self._slots[1])
        out = _OutputStage(m, self.o)
        adv = out.adv
        loops = LoopNest("mm", [g_n, t_n, s_n, k_n])
        g, t, s, k = loops.counters
        addr_a = Signal(range(max(n_a, 2)), name="mm_addr_a")
        addr_b = Signal(range(max(n_b, 2)), name="mm_addr_b")
        m.d.comb += [addr_a.eq((g * t_n + t) * k_n + k), addr_b.eq((g * k_n + k) * s_n + s)]
        da, db = buf_a.read(0, addr_a, adv), buf_b.read(0, addr_b, adv)
        seq = _Sequencer(m, out, [buf_a, buf_b], loops, [3])
        if self._node.params["multiply"] == "lmul":
            m.submodules.lmul = unit = LMulPairMultiplier(ta, tb, self._node.formats["operand"])
            p_fmt = unit.product_fmt
            prod = Signal(fixed_shape(p_fmt), name="mm_prod")
            m.d.comb += [unit.a.eq(da), unit.b.eq(db), prod.eq(unit.p)]
        else:
            p_fmt = ta * tb
            prod = Signal(fixed_shape(p_fmt), name="mm_prod")
            m.d.comb += prod.eq(da * db)
        sum_fmt = acc_fmt + p_fmt
        fs = sum_fmt.frac_bits
        acc = Signal(fixed_shape(acc_fmt), name="mm_acc")
        total = Signal(fixed_shape(sum_fmt), name="mm_sum")
        m.d.comb += total.eq((Mux(seq.first1, 0, acc) << (fs - acc_fmt.frac_bits)) + (prod << (fs - p_fmt.frac_bits)))
        m.submodules.acc_cast = acc_cast = CastUnit(sum_fmt, acc_fmt)
        m.submodules.out_cast = out_cast = CastUnit(acc_fmt, self._out_fmt)
        m.d.comb += [acc_cast.i.eq(total), out_cast.i.eq(acc_cast.o)]
        with m.If(seq.v1 & adv):
            m.d.sync += acc.eq(acc_cast.o)
        out.emit(m, seq.v1 & adv & seq.last1, out_cast.o)
        return m


class PermuteEngine(_BufferedReorderEngine):
    """permute node: the input buffered, then one output element per cycle in the output's C order,
    read at ``sum_j o_j * stride_in[dims[j]]`` (no cast).

    Parameters
    ----------
    node : Node
        A ``permute`` node.
    src : FixedType
        Format of the codes arriving on ``i`` (equal to the node's output format).
    slots : int
        Tensor slots of the input buffer (2: double buffering).
    """

    def elaborate(self, platform):
        m = Module()
        n = math.prod(self._node.input_shapes[0])
        buf = _InputBuffer(m, "in", self.i, self._src, self._out_fmt, n, slots=self._slots)
        out = _OutputStage(m, self.o)
        adv = out.adv
        loops = LoopNest("perm", list(self._node.output_shape))
        seq = _Sequencer(m, out, [buf], loops, [])
        addr = Signal(range(max(n, 2)), name="perm_addr")
        expr = 0
        for ctr, stride in zip(loops.counters, permute_strides(self._node)):
            expr = expr + ctr * stride
        m.d.comb += addr.eq(expr)
        data = buf.read(0, addr, adv)
        out.emit(m, seq.v1 & adv, data)
        return m
