"""A fixed-point multiply-accumulate processing element for one DSP48E2."""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from qfx.types import FixedType

from ..cast import _check_bool, check_fixed, fixed_shape
from ._accumulate import multiply_accumulate, pe_members, sum_format
from .multiply import FixedMultiplier

__all__ = ["MACPE", "DSP48E2_A_BITS", "DSP48E2_B_BITS", "dsp_operand_bits"]

#: Signed width of the DSP48E2 multiplier's A (pre-adder) input.
DSP48E2_A_BITS = 27
#: Signed width of the DSP48E2 multiplier's B input.
DSP48E2_B_BITS = 18


def dsp_operand_bits(fmt: FixedType) -> int:
    """Signed bits an operand of ``fmt`` needs at a two's complement multiplier (unsigned: one more)."""
    return fmt.width + (0 if fmt.signed else 1)


class MACPE(wiring.Component):
    """Fixed-point multiply-accumulate meant to map onto one DSP48E2.

    Computes, as a Vitis HLS loop does::

        acc = cast(acc + x * w, acc_fmt)      # every cycle with valid

    The product is exact, of type ``P = x * w`` (the ap_fixed product type);
    the cast (``acc_fmt``'s rounding and overflow modes) is a
    :class:`~qfx.hw.cast.CastUnit` on the exact sum type ``acc_fmt + P``.

    DSP48E2 mapping: the multiplier is a 27 x 18 two's complement multiply
    (A x B); an unsigned operand needs one more bit. The operand widths
    (as signed bits) must fit 27 and 18 in one order or the other, else
    ``ValueError``, unless ``allow_lut_mult=True`` accepts a multiplier that
    synthesis builds from several DSPs or LUTs. The product is registered
    (the DSP's MREG). The 48-bit post-adder can only hold the accumulator
    when the cast is the identity on the sum (AP_WRAP with no dropped bits);
    a rounding or saturating cast per step is fabric logic after the DSP.

    Handshake as :class:`~qfx.hw.pe.KHotPE`: on the edge where the term's
    ``valid`` reaches the accumulator, ``acc`` becomes
    ``cast((clear ? init : acc) + x * w, acc_fmt)``; ``clear`` without
    ``valid`` loads ``init``; neither holds. ``valid``, ``clear`` and
    ``init`` travel with the operands through the product register, so all
    inputs of one term are presented in the same cycle.

    Latency 2 cycles: a term presented in cycle ``t`` is in ``acc`` from
    cycle ``t + 2``, when ``o_valid`` is high. Throughput one term per
    cycle; the PE is always ready.

    Parameters
    ----------
    x : FixedType
        Format of the input codes.
    w : FixedType
        Format of the weight codes.
    acc : FixedType
        Accumulator format; its modes define the per-step cast.
    allow_lut_mult : bool
        Accept operands beyond one DSP48E2's 27 x 18 multiplier. Default False.

    Attributes
    ----------
    x : Signal(fixed_shape(x)), in
        Input code.
    w : Signal(fixed_shape(w)), in
        Weight code.
    valid, clear : Signal(1), in
        Accumulate this term / start from ``init``.
    init : Signal(fixed_shape(acc)), in
        Code of ``acc_fmt`` loaded by ``clear``.
    acc : Signal(fixed_shape(acc)), out
        The accumulator register (reset value 0).
    o_valid : Signal(1), out
        ``valid`` delayed by the latency: ``acc`` holds a new value.

    Raises
    ------
    TypeError
        If ``x``, ``w`` or ``acc`` is not a FixedType, or ``allow_lut_mult``
        is not a bool.
    ValueError
        If the operands exceed 27 x 18 signed bits without
        ``allow_lut_mult``, or the exact product or sum type would exceed 64
        bits.
    """

    latency = 2

    def __init__(self, x: FixedType, w: FixedType, acc: FixedType, *, allow_lut_mult: bool = False) -> None:
        self._x_fmt = check_fixed("x", x)
        self._w_fmt = check_fixed("w", w)
        self._acc_fmt = check_fixed("acc", acc)
        self._allow_lut_mult = _check_bool("allow_lut_mult", allow_lut_mult)
        a, b = sorted((dsp_operand_bits(x), dsp_operand_bits(w)), reverse=True)
        if not allow_lut_mult and (a > DSP48E2_A_BITS or b > DSP48E2_B_BITS):
            raise ValueError(
                f"MACPE: operands {x} ({dsp_operand_bits(x)} signed bits) x {w} "
                f"({dsp_operand_bits(w)} signed bits) exceed one DSP48E2's "
                f"{DSP48E2_A_BITS} x {DSP48E2_B_BITS} multiplier; narrow an operand "
                "or pass allow_lut_mult=True"
            )
        try:
            self._p_fmt = x * w
        except ValueError as err:
            raise ValueError(f"MACPE: the product of {x} and {w} is too wide ({err})") from None
        sum_format(acc, self._p_fmt, "MACPE")
        super().__init__(pe_members(fixed_shape(x), {"w": In(fixed_shape(w))}, acc))

    x_fmt = property(lambda self: self._x_fmt, doc="Input format.")
    w_fmt = property(lambda self: self._w_fmt, doc="Weight format.")
    acc_fmt = property(lambda self: self._acc_fmt, doc="Accumulator format.")
    product_fmt = property(lambda self: self._p_fmt, doc="Exact product type ``x * w``.")
    allow_lut_mult = property(lambda self: self._allow_lut_mult)

    def elaborate(self, platform):
        m = Module()
        mul = FixedMultiplier(self._x_fmt, self._w_fmt)
        m.d.comb += [mul.x.eq(self.x), mul.w.eq(self.w)]
        multiply_accumulate(m, self, mul, registered_product=True)
        return m

    def __repr__(self) -> str:
        fmts = (getattr(self, f, "?") for f in ("_x_fmt", "_w_fmt", "_acc_fmt"))
        return "MACPE({}, {}, {})".format(*fmts)
