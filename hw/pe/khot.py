"""A shift-add processing element for K-hot weights (no multiplier)."""

from __future__ import annotations

from amaranth.hdl import Module, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In

from qfx.types import FixedType, KHot

from ..cast import check_fixed, fixed_shape
from ._accumulate import multiply_accumulate, pe_members, sum_format
from .multiply import KHotMultiplier, khot_shift_bits

__all__ = ["KHotPE"]


class KHotPE(wiring.Component):
    """Shift-add multiply-accumulate of a fixed-point input by a K-hot weight.

    The weight is given as ``k`` signed power-of-two digits, the
    ``(shifts, signs)`` pairs of :func:`qfx.khot_digits`: weight code
    ``= sum(sign[j] << shift[j])`` on the grid of ``w.base``. The product
    ``sum(sign[j] * (x << shift[j]))`` is formed by a
    :class:`~qfx.hw.pe.KHotMultiplier` -- ``-x`` once, per digit a choice of
    ``x`` / ``-x`` / 0 and a log shifter, a ``k``-input adder; no multiplier,
    no DSP -- and is exact, of type ``P = x * w.base`` (ap_fixed product
    type). It is accumulated as a Vitis HLS loop does::

        acc = cast(acc + x * w, acc_fmt)      # every cycle with valid

    the cast (``acc_fmt``'s rounding and overflow modes) being a
    :class:`~qfx.hw.cast.CastUnit` on the exact sum type ``acc_fmt + P``.

    Handshake: ``clear`` starts a new accumulation from ``init`` (typically
    ``cast(bias, acc_fmt)``, or 0). On a clock edge:

    ========= ========= ==========================================
    ``clear`` ``valid`` ``acc`` becomes
    ========= ========= ==========================================
    0         0         ``acc`` (holds)
    0         1         ``cast(acc + x * w, acc_fmt)``
    1         0         ``init``
    1         1         ``cast(init + x * w, acc_fmt)``
    ========= ========= ==========================================

    so a new dot product can start in the cycle after the last term of the
    previous one, with no bubble.

    Latency 1 cycle: the term presented in cycle ``t`` is in ``acc`` from
    cycle ``t + 1``, when ``o_valid`` is high. Throughput one term per cycle;
    the PE is always ready. The critical path is the negation of ``x``,
    the shifters, the ``k``-input adder, the accumulator adder and the cast.

    Parameters
    ----------
    x : FixedType
        Format of the input codes.
    w : KHot
        The weight format: at most ``w.k`` nonzero digits on ``w.base``.
    acc : FixedType
        Accumulator format; its modes define the per-step cast.

    Attributes
    ----------
    x : Signal(fixed_shape(x)), in
        Input code.
    shift : ArrayLayout(unsigned(S), k), in
        Digit positions (``S = (w.base.width).bit_length()``).
    sign : ArrayLayout(signed(2), k), in
        Digit signs: ``+1``, ``-1`` or ``0`` (an unused digit). The digits
        must be the canonical digits of a code of ``w`` (as
        :func:`qfx.khot_digits` and :func:`~qfx.hw.pe.weight_words` give
        them: digit ``j`` at ``0 .. khot_max_shift(w) - 2 j``); other digit
        sets give don't-care products.
    valid, clear : Signal(1), in
        Accumulate this term / start from ``init`` (see the table).
    init : Signal(fixed_shape(acc)), in
        Code of ``acc_fmt`` loaded by ``clear``.
    acc : Signal(fixed_shape(acc)), out
        The accumulator register (reset value 0).
    o_valid : Signal(1), out
        ``valid`` delayed by the latency: ``acc`` holds a new value.

    Raises
    ------
    TypeError
        If ``x`` or ``acc`` is not a FixedType or ``w`` is not a KHot.
    ValueError
        If the exact product or sum type would exceed 64 bits.
    """

    def __init__(self, x: FixedType, w: KHot, acc: FixedType) -> None:
        self._x_fmt = check_fixed("x", x)
        if not isinstance(w, KHot):
            raise TypeError(
                f"w must be a qfx.types.KHot, not {type(w).__name__} {w!r}; "
                "e.g. qfx.parse_type('khot<2,ap_fixed<8,1>>')"
            )
        self._w_fmt = w
        self._acc_fmt = check_fixed("acc", acc)
        try:
            self._p_fmt = x * w.base
        except ValueError as err:
            raise ValueError(f"KHotPE: the product of {x} and {w} is too wide ({err})") from None
        sum_format(acc, self._p_fmt, "KHotPE")
        self._shift_bits = khot_shift_bits(w)
        super().__init__(pe_members(fixed_shape(x), {
            "shift": In(data.ArrayLayout(unsigned(self._shift_bits), w.k)),
            "sign": In(data.ArrayLayout(signed(2), w.k)),
        }, acc))

    x_fmt = property(lambda self: self._x_fmt, doc="Input format.")
    w_fmt = property(lambda self: self._w_fmt, doc="Weight (K-hot) format.")
    acc_fmt = property(lambda self: self._acc_fmt, doc="Accumulator format.")
    product_fmt = property(lambda self: self._p_fmt, doc="Exact product type ``x * w.base``.")
    latency = 1

    def elaborate(self, platform):
        m = Module()
        mul = KHotMultiplier(self._x_fmt, self._w_fmt)
        m.d.comb += mul.x.eq(self.x)
        for j in range(self._w_fmt.k):
            m.d.comb += [mul.w[j].shift.eq(self.shift[j]), mul.w[j].sign.eq(self.sign[j])]
        multiply_accumulate(m, self, mul, registered_product=False)
        return m

    def __repr__(self) -> str:
        fmts = (getattr(self, f, "?") for f in ("_x_fmt", "_w_fmt", "_acc_fmt"))
        return "KHotPE({}, {}, {})".format(*fmts)
