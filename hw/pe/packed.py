"""Two multiply-accumulates sharing one DSP48E2 multiply (Xilinx WP486 INT8 packing)."""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from qfx.types import FixedType

from ..cast import check_fixed, fixed_shape
from ._accumulate import accumulate, sum_format
from .mac import DSP48E2_A_BITS, DSP48E2_B_BITS, dsp_operand_bits

__all__ = ["PackedMACPE", "PACK_SHIFT", "check_packable", "unpack_products"]

#: Bit offset of the second weight in the packed A operand (WP486).
PACK_SHIFT = 18


def check_packable(x: FixedType, w: FixedType, what: str) -> None:
    """Raise ValueError (naming ``what``) unless ``x`` and ``w`` fit the WP486 packing.

    Limits (two's complement bits; an unsigned format needs one more): ``w``
    at most ``27 - 18 - 1 = 8`` bits (``(w1 << 18) + w0`` must be a 27-bit A
    operand even for the most negative ``w1`` and a negative ``w0``), ``x`` at
    most 18 bits (B), and ``x * w`` at most 18 bits (``w0 x`` must stay in the
    low product field).
    """
    xb, wb = dsp_operand_bits(x), dsp_operand_bits(w)
    w_max = DSP48E2_A_BITS - PACK_SHIFT - 1  # the sign-extended w0 may borrow from w1
    if wb > w_max:
        raise ValueError(
            f"{what}: weight {w} needs {wb} signed bits; packing two weights into the "
            f"DSP48E2's {DSP48E2_A_BITS}-bit A operand at offset {PACK_SHIFT} allows at most {w_max}"
        )
    if xb > DSP48E2_B_BITS:
        raise ValueError(
            f"{what}: input {x} needs {xb} signed bits; the DSP48E2's B operand has {DSP48E2_B_BITS}"
        )
    if xb + wb > PACK_SHIFT:
        raise ValueError(
            f"{what}: the product of {x} ({xb} signed bits) and {w} ({wb} signed bits) needs "
            f"{xb + wb} bits; the low product field of the packed multiply has {PACK_SHIFT}"
        )


def unpack_products(prod):
    """The two products ``(w0 x, w1 x)`` in the packed product ``prod = ((w1 << 18) + w0) * x``.

    ``w0 x`` is the low 18 bits read as signed; ``w1 x`` is ``(prod >> 18) +
    prod[17]``: the arithmetic shift borrowed one where ``w0 x`` is negative.
    Both are exact when the formats pass :func:`check_packable`.
    """
    return prod[:PACK_SHIFT].as_signed(), prod[PACK_SHIFT:].as_signed() + prod[PACK_SHIFT - 1]


class PackedMACPE(wiring.Component):
    """Two fixed-point MACs with a shared input ``x`` in ONE DSP48E2 multiply (Xilinx WP486).

    Computes, bit-exactly as two independent :class:`~qfx.hw.pe.MACPE`::

        acc0 = cast(acc0 + x * w0, acc_fmt)    # every cycle with valid
        acc1 = cast(acc1 + x * w1, acc_fmt)

    Packing: ``A = (w1 << 18) + w0`` (``w0`` sign-extended; a 27-bit signed
    operand), ``B = x``; one ``27 x 18`` multiply ``P = A * B = (w1 x << 18)
    + w0 x``. The low product ``w0 x`` is ``P``'s low 18 bits read as signed
    (it fits: ``|w0 x| < 2**17``); the high product is ``(P >> 18) + P[17]``,
    the arithmetic shift having borrowed one where ``w0 x`` is negative. The
    product ``P`` is registered (MREG); the two accumulators, the borrow
    correction and the per-step casts (:class:`~qfx.hw.cast.CastUnit`, as in
    the other PEs) are fabric logic.

    Operand limits (two's complement bits; an unsigned format needs one
    more): ``w`` at most ``27 - 18 - 1 = 8`` bits (so that ``(w1 << 18) +
    w0`` is a 27-bit A operand even for the most negative ``w1`` and a
    negative ``w0``), ``x`` at most 18 bits (B), and the product ``x * w``
    at most 18 bits (so that ``w0 x`` stays in the low field): signed int8
    x int8 fits, as do int8 weights with int10 inputs; otherwise
    ``ValueError`` naming the limit.

    Handshake as :class:`~qfx.hw.pe.MACPE`, one ``valid`` / ``clear`` for
    both accumulators and an ``init`` per accumulator; ``valid``, ``clear``,
    ``init0`` and ``init1`` travel with the product register.

    Latency 2 cycles: a term presented in cycle ``t`` is in ``acc0`` /
    ``acc1`` from cycle ``t + 2``, when ``o_valid`` is high. Throughput two
    multiply-accumulates (one per output) per cycle; always ready.

    Parameters
    ----------
    x : FixedType
        Format of the shared input codes.
    w : FixedType
        Format of both weights' codes.
    acc : FixedType
        Format of both accumulators; its modes define the per-step cast.

    Attributes
    ----------
    x : Signal(fixed_shape(x)), in
        Shared input code.
    w0, w1 : Signal(fixed_shape(w)), in
        Weight codes of the two outputs.
    valid, clear : Signal(1), in
        Accumulate this term / start from ``init0`` / ``init1``.
    init0, init1 : Signal(fixed_shape(acc)), in
        Codes of ``acc_fmt`` loaded by ``clear``.
    acc0, acc1 : Signal(fixed_shape(acc)), out
        The accumulator registers (reset value 0).
    o_valid : Signal(1), out
        ``valid`` delayed by the latency.
    latency : int
        2.

    Raises
    ------
    TypeError
        If ``x``, ``w`` or ``acc`` is not a FixedType.
    ValueError
        If an operand exceeds the packing limits above, or the exact sum
        type would exceed 64 bits.
    """

    latency = 2

    def __init__(self, x: FixedType, w: FixedType, acc: FixedType) -> None:
        self._x_fmt = check_fixed("x", x)
        self._w_fmt = check_fixed("w", w)
        self._acc_fmt = check_fixed("acc", acc)
        check_packable(x, w, "PackedMACPE")
        self._p_fmt = x * w
        sum_format(acc, self._p_fmt, "PackedMACPE")
        super().__init__({
            "x": In(fixed_shape(x)),
            "w0": In(fixed_shape(w)),
            "w1": In(fixed_shape(w)),
            "valid": In(1),
            "clear": In(1),
            "init0": In(fixed_shape(acc)),
            "init1": In(fixed_shape(acc)),
            "acc0": Out(fixed_shape(acc)),
            "acc1": Out(fixed_shape(acc)),
            "o_valid": Out(1),
        })

    x_fmt = property(lambda self: self._x_fmt, doc="Input format.")
    w_fmt = property(lambda self: self._w_fmt, doc="Weight format (both weights).")
    acc_fmt = property(lambda self: self._acc_fmt, doc="Accumulator format (both accumulators).")
    product_fmt = property(lambda self: self._p_fmt, doc="Exact product type ``x * w``.")

    def elaborate(self, platform):
        m = Module()
        a = Signal(signed(DSP48E2_A_BITS), name="a_packed")
        m.d.comb += a.eq((self.w1 << PACK_SHIFT) + self.w0)
        b = Signal(signed(DSP48E2_B_BITS), name="b")
        m.d.comb += b.eq(self.x)
        prod = Signal(signed(DSP48E2_A_BITS + DSP48E2_B_BITS), name="p_packed")
        valid1, clear1 = Signal(name="valid1"), Signal(name="clear1")
        init0, init1 = Signal(fixed_shape(self._acc_fmt), name="init0_1"), Signal(fixed_shape(self._acc_fmt), name="init1_1")
        m.d.sync += [
            prod.eq(a * b),
            valid1.eq(self.valid),
            clear1.eq(self.clear),
            init0.eq(self.init0),
            init1.eq(self.init1),
        ]
        p0 = Signal(fixed_shape(self._p_fmt), name="p0")
        p1 = Signal(fixed_shape(self._p_fmt), name="p1")
        lo, hi = unpack_products(prod)
        m.d.comb += [p0.eq(lo), p1.eq(hi)]
        common = dict(p_fmt=self._p_fmt, acc_fmt=self._acc_fmt, valid=valid1, clear=clear1)
        accumulate(m, p=p0, init=init0, acc=self.acc0, o_valid=self.o_valid, name="cast0", **common)
        accumulate(m, p=p1, init=init1, acc=self.acc1, o_valid=None, name="cast1", **common)
        return m

    def __repr__(self) -> str:
        fmts = (getattr(self, f, "?") for f in ("_x_fmt", "_w_fmt", "_acc_fmt"))
        return "PackedMACPE({}, {}, {})".format(*fmts)
