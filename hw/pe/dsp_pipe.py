"""Fully registered product units for the folded engines: the DSP48E2 with A/B, M and P registers.

DS925 quotes the DSP48E2's top clock only for the "all registers" use: input registers
(AREG/BREG), the multiplier register (MREG) and the output register (PREG). The folded dataflow
engines (:class:`qfx.hw.accel.engines.MACEngine`) build every product unit through
:func:`product_stage`, which puts exactly those three registers around it, so a product
presented in cycle ``t`` leaves the unit in cycle ``t + PRODUCT_LATENCY``:

* :class:`PackedMultiplier` -- two fixed-point products that share their input ``x`` in ONE
  27 x 18 multiply (Xilinx WP486, the INT8 packing of :class:`~qfx.hw.pe.PackedMACPE`):
  ``A = (w1 << 18) + w0``, ``B = x``, ``P = A * B = (w1 x << 18) + w0 x``; the low product is
  ``P``'s low 18 bits read as signed, the high product ``(P >> 18) + P[17]`` (the arithmetic
  shift borrowed one where ``w0 x`` is negative: the "sign bleed" of the lower product).
  Both are exactly the individual products when :func:`~qfx.hw.pe.packed.check_packable`
  passes (weights at most 8 signed bits, ``x`` at most 18, ``x * w`` at most 18 bits: int8 x
  int8, signed or unsigned activations).
* every other product unit (:func:`~qfx.hw.pe.multiply.multiplier_for`: one DSP multiply,
  K-hot shift-adds, minifloat, L-Mul) with the same three registers around it, so packed and
  unpacked lanes of one engine line up.

The data registers have no reset (as the DSP's pipeline registers in a free-running pipeline:
what they hold is qualified by the valid flags travelling beside them).
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from qfx.types import FixedType

from ..cast import check_fixed, fixed_shape
from .mac import DSP48E2_A_BITS, DSP48E2_B_BITS
from .packed import PACK_SHIFT, check_packable, unpack_products

__all__ = ["PRODUCT_LATENCY", "PackedMultiplier", "packable", "product_stage"]

#: Registers of a product unit: A/B (input), M (product), P (output).
PRODUCT_LATENCY = 3


def packable(x_fmt: object, w_fmt: object, multiply: str = "exact") -> bool:
    """Whether two products ``x * w0`` and ``x * w1`` of these formats share one DSP48E2 exactly."""
    if multiply != "exact" or not isinstance(x_fmt, FixedType) or not isinstance(w_fmt, FixedType):
        return False
    try:
        check_packable(x_fmt, w_fmt, "packing")
    except ValueError:
        return False
    return True


def _reg(m: Module, value, shape, name: str) -> Signal:
    r = Signal(shape, name=name, reset_less=True)
    m.d.sync += r.eq(value)
    return r


class PackedMultiplier(wiring.Component):
    """Two exact products sharing ``x`` in one registered DSP48E2 multiply (WP486).

    ``p0 = x * w0`` and ``p1 = x * w1`` (type ``x_fmt * w_fmt``), ``PRODUCT_LATENCY`` (3)
    cycles after the operands: A/B registers (the packed ``A = (w1 << 18) + w0`` and ``B = x``),
    the M register (the 45-bit product), the P register; the unpacking (low field as signed,
    high field plus the borrow bit ``P[17]``) is combinational after P.

    Raises
    ------
    TypeError
        A format that is not a FixedType.
    ValueError
        Formats beyond the packing limits (:func:`~qfx.hw.pe.packed.check_packable`, naming the limit).
    """

    latency = PRODUCT_LATENCY

    def __init__(self, x_fmt: FixedType, w_fmt: FixedType) -> None:
        self._x_fmt = check_fixed("x_fmt", x_fmt)
        self._w_fmt = check_fixed("w_fmt", w_fmt)
        check_packable(x_fmt, w_fmt, "PackedMultiplier")
        self._p_fmt = x_fmt * w_fmt
        super().__init__({
            "x": In(fixed_shape(x_fmt)),
            "w0": In(fixed_shape(w_fmt)),
            "w1": In(fixed_shape(w_fmt)),
            "p0": Out(fixed_shape(self._p_fmt)),
            "p1": Out(fixed_shape(self._p_fmt)),
        })

    x_fmt = property(lambda self: self._x_fmt, doc="Input format.")
    w_fmt = property(lambda self: self._w_fmt, doc="Weight format (both weights).")
    product_fmt = property(lambda self: self._p_fmt, doc="Exact product type ``x * w``.")

    def elaborate(self, platform):
        m = Module()
        a_reg = _reg(m, (self.w1 << PACK_SHIFT) + self.w0, signed(DSP48E2_A_BITS), "a_reg")
        b_reg = _reg(m, self.x, signed(DSP48E2_B_BITS), "b_reg")
        m_reg = _reg(m, a_reg * b_reg, signed(DSP48E2_A_BITS + DSP48E2_B_BITS), "m_reg")
        p_reg = _reg(m, m_reg, signed(DSP48E2_A_BITS + DSP48E2_B_BITS), "p_reg")
        lo, hi = unpack_products(p_reg)
        m.d.comb += [self.p0.eq(lo), self.p1.eq(hi)]
        return m

    def __repr__(self) -> str:
        return f"PackedMultiplier({getattr(self, '_x_fmt', '?')}, {getattr(self, '_w_fmt', '?')})"


def product_stage(m: Module, plan, xs: list, w_lanes: list, *, pack: bool, name: str = "mul") -> tuple[list, object]:
    """All products of one engine cycle, ``PRODUCT_LATENCY`` cycles later.

    ``xs[j]``: the ``simd`` input codes (padding already zeroed); ``w_lanes[i][j]``: the weight
    word of output channel ``i`` and term ``j`` (``pe`` x ``simd``); ``plan``: the engine's
    :class:`~qfx.hw.accel.weights.WeightPlan`. With ``pack`` (the formats must be
    :func:`packable`), output channels ``2q`` and ``2q + 1`` share one :class:`PackedMultiplier`
    per term (an odd last channel gets its own unit). Returns ``(products[i][j], product_fmt)``.
    """
    pe, simd = len(w_lanes), len(xs)
    products = [[None] * simd for _ in range(pe)]
    p_fmt = None
    pairs = pe // 2 if pack else 0
    for j in range(simd):
        for q in range(pairs):
            u = PackedMultiplier(plan.x_fmt, plan.w_fmt)
            m.submodules[f"{name}_pk{q}_{j}"] = u
            m.d.comb += [u.x.eq(xs[j]), u.w0.eq(w_lanes[2 * q][j]), u.w1.eq(w_lanes[2 * q + 1][j])]
            p_fmt = u.product_fmt
            products[2 * q][j], products[2 * q + 1][j] = u.p0, u.p1
        for i in range(2 * pairs, pe):
            mult = plan.multiplier()
            m.submodules[f"{name}_{i}_{j}"] = mult
            p_fmt = mult.product_fmt
            x_reg = _reg(m, xs[j], mult.x.shape(), f"{name}_a{i}_{j}")
            w_reg = _reg(m, w_lanes[i][j], mult.w.shape(), f"{name}_b{i}_{j}")
            m.d.comb += [mult.x.eq(x_reg), mult.w.eq(w_reg)]
            m_reg = _reg(m, mult.p, fixed_shape(p_fmt), f"{name}_m{i}_{j}")
            products[i][j] = _reg(m, m_reg, fixed_shape(p_fmt), f"{name}_p{i}_{j}")
    return products, p_fmt
