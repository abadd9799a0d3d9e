"""Combinational product units: one ``x * w`` per weight kind, exact on the manifest's product grid.

:func:`multiplier_for` picks the unit for an input format, a weight format and
the layer's ``multiply`` mode (as a manifest node states them):

=================== ============ ================================ ===========================
weight format       ``multiply`` unit                             ``w`` port carries
=================== ============ ================================ ===========================
FixedType           ``exact``    :class:`FixedMultiplier`         the weight code
KHot                ``exact``    :class:`KHotMultiplier`          ``k`` (shift, sign) digits
MinifloatType       ``exact``    :class:`MinifloatMultiplier`     the raw bit pattern
MinifloatType       ``lmul``     :class:`LMulMultiplier`          the raw bit pattern
=================== ============ ================================ ===========================

Every unit has ports ``x`` (input code), ``w`` (:func:`weight_shape`) and
``p`` (the product code of ``product_fmt``), and computes exactly what the
integer reference (:mod:`qfx.reference`) computes for one term ``x[k] * w[k]``:
``product_fmt`` is :func:`qfx.manifest.mac_product_format`, and the code on
``p`` is the reference's product code on that grid. :func:`weight_words` turns
the manifest's weight arrays into the integers to drive ``w`` with (what a
weight ROM stores).

All units are combinational (``latency = 0``); a PE registers the product or
the accumulator after them.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from qfx.arith import lmul_offset_bits, lmul_product_type, minifloat_hull
from qfx.manifest import mac_product_format
from qfx.types import FixedType, KHot, MinifloatType, khot_slots

from ..cast import check_fixed, fixed_shape

__all__ = [
    "MULTIPLY_MODES",
    "multiplier_for",
    "weight_shape",
    "weight_words",
    "khot_shift_bits",
    "khot_max_shift",
    "khot_canonical_digits",
    "FixedMultiplier",
    "KHotMultiplier",
    "MinifloatMultiplier",
    "LMulMultiplier",
    "LMulPairMultiplier",
]

#: The ``multiply`` modes of a dense / conv2d manifest node.
MULTIPLY_MODES = ("exact", "lmul")


def _check_multiply(multiply: object) -> str:
    if not isinstance(multiply, str):
        raise TypeError(f"multiply must be a str, not {type(multiply).__name__} {multiply!r}")
    if multiply not in MULTIPLY_MODES:
        raise ValueError(f"multiply={multiply!r} is not one of {', '.join(MULTIPLY_MODES)}")
    return multiply


def _check_weight_format(w_fmt: object, multiply: str) -> "FixedType | KHot | MinifloatType":
    if isinstance(w_fmt, tuple):
        raise TypeError(
            "a per-channel weight format (a tuple of FixedTypes) is not a single weight format: the "
            "accelerator aligns the channels' codes onto one grid (qfx.arith.envelope) and passes that "
            f"format; got {w_fmt!r}"
        )
    if not isinstance(w_fmt, (FixedType, KHot, MinifloatType)):
        raise TypeError(
            f"w_fmt must be a qfx.types.FixedType, KHot or MinifloatType, not {type(w_fmt).__name__} {w_fmt!r}; "
            "e.g. qfx.parse_type('fp8_e4m3fn')"
        )
    if multiply == "lmul" and not isinstance(w_fmt, MinifloatType):
        raise ValueError(f"multiply='lmul' needs a minifloat weight format, not {w_fmt}")
    return w_fmt


def khot_shift_bits(w_fmt: KHot) -> int:
    """Bits of one digit's shift field: digits lie at positions ``0 .. w_fmt.base.width``."""
    return w_fmt.base.width.bit_length()


def khot_max_shift(w_fmt: KHot) -> int:
    """The highest digit position of a canonical digit set (:func:`qfx.khot_digits`) of ``w_fmt``.

    Canonical digits are the non-adjacent form (NAF) of the code: a code of bit length ``L``
    has NAF digits at positions ``0 .. L``, and ``|code| <= 2**(W-1)`` (signed base of width
    ``W``) gives ``W - 1``; an unsigned base (codes up to ``2**W - 1``) gives ``W``. Digit ``j``
    (most significant first) then lies at ``0 .. max_shift - 2 j`` (no two adjacent digits).
    """
    return w_fmt.base.width - 1 if w_fmt.base.signed else w_fmt.base.width


def khot_canonical_digits(w_fmt: KHot, shifts: np.ndarray, signs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Any digit set of codes of ``w_fmt`` as the canonical one :func:`qfx.khot_digits` gives.

    A manifest may spell a code with other digits (``-128 = -(1 << 8) + (1 << 7)``); the
    product units rely on the canonical form (NAF, most significant first, unused digits
    ``(0, 0)``), whose positions are bounded by :func:`khot_max_shift`. ValueError when the
    digits do not sum to a code of ``w_fmt``.
    """
    codes = (signs.astype(np.int64) << shifts.astype(np.int64)).sum(axis=-1)
    try:
        return khot_slots(codes, w_fmt)
    except ValueError:
        bad = next(int(c) for c in codes.ravel() if not np.isin(c, w_fmt.codes()))
        raise ValueError(f"K-hot digits sum to {bad}, which is not a code of {w_fmt}") from None


def _khot_digit_layout(w_fmt: KHot) -> data.StructLayout:
    return data.StructLayout({"shift": unsigned(khot_shift_bits(w_fmt)), "sign": signed(2)})


def weight_shape(w_fmt: "FixedType | KHot | MinifloatType", multiply: str = "exact"):
    """The shape of the ``w`` port of :func:`multiplier_for` ``(x_fmt, w_fmt, multiply)``.

    * FixedType: ``fixed_shape(w_fmt)`` (the weight code);
    * KHot: ``ArrayLayout(StructLayout({"shift": unsigned(S), "sign": signed(2)}), k)``
      with ``S = khot_shift_bits(w_fmt)``: digit ``j`` is ``sign[j] << shift[j]``
      (the canonical digits of :func:`qfx.khot_digits`, most significant digit
      first; an unused digit has sign 0); digit ``j`` occupies bits
      ``j*(S+2) ..``, its shift in the low ``S`` bits;
    * MinifloatType (``exact`` or ``lmul``): ``unsigned(w_fmt.bits)``, the raw
      bit pattern as the manifest stores it.

    Raises
    ------
    TypeError
        On a format that is not a single FixedType / KHot / MinifloatType.
    ValueError
        On an unknown ``multiply`` or ``lmul`` with a non-minifloat format.
    """
    multiply = _check_multiply(multiply)
    w_fmt = _check_weight_format(w_fmt, multiply)
    if isinstance(w_fmt, FixedType):
        return fixed_shape(w_fmt)
    if isinstance(w_fmt, KHot):
        return data.ArrayLayout(_khot_digit_layout(w_fmt), w_fmt.k)
    return unsigned(w_fmt.bits)


def _shape_width(shape) -> int:
    return Shape.cast(shape).width


def _as_int_array(a: Any, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == object:
        if not all(isinstance(v, (int, np.integer)) for v in arr.ravel()):
            raise TypeError(f"{what} must hold integers")
        return arr
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{what} must be an integer array, not {arr.dtype}")
    return arr.astype(np.int64)


def _check_range(arr: np.ndarray, lo: int, hi: int, what: str) -> None:
    if arr.size and (arr.min() < lo or arr.max() > hi):
        bad = arr.ravel()[(arr.ravel() < lo) | (arr.ravel() > hi)][0]
        raise ValueError(f"{what}: value {bad} outside {lo}..{hi}")


def weight_words(w_fmt: "FixedType | KHot | MinifloatType", weights: Any, multiply: str = "exact") -> np.ndarray:
    """The integers to drive the ``w`` port with (what a weight ROM stores), from manifest weight arrays.

    Parameters
    ----------
    w_fmt : FixedType, KHot or MinifloatType
        The weight format (one format; per-channel formats are the accelerator's business).
    weights : mapping or array
        A node's ``arrays`` mapping (roles ``weight``, or ``weight_khot_shifts``
        and ``weight_khot_signs`` for K-hot), an integer array (FixedType:
        codes; MinifloatType: bit patterns) or, for K-hot, a ``(shifts,
        signs)`` pair whose last axis is the ``k`` digits. K-hot digits may
        spell a code in any way the manifest allows; the words hold its
        canonical digits (:func:`khot_canonical_digits`), which the K-hot
        product unit needs.
    multiply : {"exact", "lmul"}

    Returns
    -------
    numpy.ndarray
        Same shape as the weights (K-hot: without the digit axis); each entry
        is a valid value of ``Const(word, weight_shape(w_fmt, multiply))``: a
        signed FixedType gives its (signed) codes, every other format
        unsigned words (K-hot digits packed as :func:`weight_shape` says).
        dtype int64, or object beyond 62 bits.

    Raises
    ------
    TypeError, ValueError
        On a wrong format, missing arrays, or values outside the format.
    """
    shape = weight_shape(w_fmt, multiply)
    width = _shape_width(shape)
    if isinstance(w_fmt, KHot):
        if isinstance(weights, Mapping):
            try:
                shifts, signs = weights["weight_khot_shifts"], weights["weight_khot_signs"]
            except KeyError as err:
                raise ValueError(f"K-hot weights need the arrays weight_khot_shifts and weight_khot_signs ({err})") from None
        elif isinstance(weights, tuple) and len(weights) == 2:
            shifts, signs = weights
        else:
            raise TypeError("K-hot weights: pass a node's arrays mapping or a (shifts, signs) pair")
        shifts = _as_int_array(shifts, "weight_khot_shifts")
        signs = _as_int_array(signs, "weight_khot_signs")
        k = w_fmt.k
        if shifts.shape != signs.shape or shifts.shape[-1:] != (k,):
            raise ValueError(f"K-hot shifts {shifts.shape} and signs {signs.shape} must both end in k={k} digits")
        _check_range(shifts, 0, w_fmt.base.width, "weight_khot_shifts")
        _check_range(signs, -1, 1, "weight_khot_signs")
        shifts, signs = khot_canonical_digits(w_fmt, shifts.astype(np.int64), signs.astype(np.int64))
        s_bits = khot_shift_bits(w_fmt)
        big = width > 62
        words = np.zeros(shifts.shape[:-1], dtype=object if big else np.int64)
        for j in range(k):
            digit = shifts[..., j].astype(object if big else np.int64) | ((signs[..., j].astype(object if big else np.int64) & 3) << s_bits)
            words = words | (digit << (j * (s_bits + 2)))
        return words
    arr = weights["weight"] if isinstance(weights, Mapping) else weights
    arr = _as_int_array(arr, "weight")
    if isinstance(w_fmt, FixedType):
        _check_range(arr, w_fmt.min_code, w_fmt.max_code, f"weight codes of {w_fmt}")
        return arr
    _check_range(arr, 0, (1 << w_fmt.bits) - 1, f"bit patterns of {w_fmt}")
    return arr


# ---------------------------------------------------------------------------
# The units
# ---------------------------------------------------------------------------


class _Multiplier(wiring.Component):
    """Common part: formats, ports ``x``, ``w``, ``p``; combinational."""

    latency = 0
    _multiply = "exact"

    def __init__(self, x_fmt: FixedType, w_fmt, multiply: str) -> None:
        self._x_fmt = check_fixed("x_fmt", x_fmt)
        self._multiply = _check_multiply(multiply)
        self._w_fmt = _check_weight_format(w_fmt, multiply)
        try:
            self._p_fmt = mac_product_format(x_fmt, w_fmt, multiply)
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}: {err}") from None
        super().__init__({
            "x": In(fixed_shape(x_fmt)),
            "w": In(weight_shape(w_fmt, multiply)),
            "p": Out(fixed_shape(self._p_fmt)),
        })

    x_fmt = property(lambda self: self._x_fmt, doc="Input format.")
    w_fmt = property(lambda self: self._w_fmt, doc="Weight format.")
    multiply = property(lambda self: self._multiply, doc="``'exact'`` or ``'lmul'``.")
    product_fmt = property(lambda self: self._p_fmt, doc="Product type (``mac_product_format``).")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({getattr(self, '_x_fmt', '?')}, {getattr(self, '_w_fmt', '?')})"


class FixedMultiplier(_Multiplier):
    """Exact product of two fixed-point codes: ``p = x * w`` (type ``x_fmt * w_fmt``).

    A plain ``*``: synthesis maps it to a DSP48E2 where the operands fit
    (27 x 18 signed) or to LUTs.

    Parameters
    ----------
    x_fmt : FixedType
        Input format.
    w_fmt : FixedType
        Weight format.

    Attributes
    ----------
    x : Signal(fixed_shape(x_fmt)), in
    w : Signal(fixed_shape(w_fmt)), in
        The weight code.
    p : Signal(fixed_shape(product_fmt)), out
        ``x * w``, exact.
    product_fmt : FixedType
        ``x_fmt * w_fmt``.

    Latency 0 (combinational); throughput one product per cycle.

    Raises
    ------
    TypeError
        If a format is not a FixedType.
    ValueError
        If the product type would exceed 64 bits.
    """

    def __init__(self, x_fmt: FixedType, w_fmt: FixedType) -> None:
        check_fixed("w_fmt", w_fmt)
        super().__init__(x_fmt, w_fmt, "exact")

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.p.eq(self.x * self.w)
        return m


class KHotMultiplier(_Multiplier):
    """Exact product of a fixed-point code and a K-hot weight by shifts and adds (no ``*``, no DSP).

    The weight is ``k`` signed power-of-two digits (``w[j].shift``,
    ``w[j].sign``), its code ``sum(sign[j] << shift[j])`` on the grid of
    ``w_fmt.base``. The product ``sum(sign[j] * (x << shift[j]))`` is built
    as: ``-x`` once (shared by all digits); per digit a 2:1 choice of ``x`` /
    ``-x`` / 0 followed by a left shifter; a ``k``-input adder at the product
    width. No multiplier, no conditional negation after the shifters, no
    carry-in per digit. The digits must be canonical (:func:`qfx.khot_digits`,
    :func:`weight_words`): digit ``j`` lies at ``0 .. khot_max_shift(w_fmt) -
    2 j``, so each shifter covers only those positions (an int8 weight: 0..7
    and 0..5, three stages each instead of four over 0..8) and is only as
    wide as its largest term. Other digit sets, even of valid codes, give
    don't-care products.

    Parameters
    ----------
    x_fmt : FixedType
        Input format.
    w_fmt : KHot
        Weight format.

    Attributes
    ----------
    x : Signal(fixed_shape(x_fmt)), in
    w : View(weight_shape(w_fmt)), in
        ``w[j].shift`` (unsigned), ``w[j].sign`` (``+1``, ``-1``, ``0``):
        the canonical digits of a code of ``w_fmt`` (as
        :func:`qfx.khot_digits` and :func:`weight_words` give them).
    p : Signal(fixed_shape(product_fmt)), out
        ``x * w``, exact, of type ``x_fmt * w_fmt.base``.

    Latency 0 (combinational); throughput one product per cycle.

    Raises
    ------
    TypeError
        If ``x_fmt`` is not a FixedType or ``w_fmt`` not a KHot.
    ValueError
        If the product type would exceed 64 bits.
    """

    def __init__(self, x_fmt: FixedType, w_fmt: KHot) -> None:
        if not isinstance(w_fmt, KHot):
            raise TypeError(
                f"w_fmt must be a qfx.types.KHot, not {type(w_fmt).__name__} {w_fmt!r}; "
                "e.g. qfx.parse_type('khot<2,ap_fixed<8,1>>')"
            )
        super().__init__(x_fmt, w_fmt, "exact")

    def elaborate(self, platform):
        m = Module()
        x_fmt, w_fmt = self._x_fmt, self._w_fmt
        pw = self._p_fmt.width
        s_bits = khot_shift_bits(w_fmt)
        # -x needs one more bit than x (the negative of the most negative code; any unsigned code).
        src_shape = signed(x_fmt.width + 1)
        neg_x = Signal(src_shape)
        m.d.comb += neg_x.eq(-self.x)
        terms = []
        for j in range(w_fmt.k):
            digit = self.w[j]
            sign = digit.sign.as_unsigned()
            src = Signal(src_shape, name=f"src{j}")
            # sign: 01 -> x, 11 -> -x, 00 -> 0 (10 never occurs).
            m.d.comb += src.eq(Mux(sign[0], Mux(sign[1], neg_x, self.x), 0))
            # Canonical digit j lies at 0 .. top (non-adjacent digits, most significant first): a log
            # shifter over the bits of top only, each stage cut to the widest term (and the product
            # width); amounts beyond top never occur and are not clamped.
            top = max(0, khot_max_shift(w_fmt) - 2 * j)
            cap = min(len(src) + top, pw)
            cur = src
            for b in range(min(s_bits, top.bit_length())):
                amount = 1 << b
                width = min(len(cur) + amount, cap)
                nxt = Signal(signed(width), name=f"sh{j}_{b}")
                m.d.comb += nxt.eq(Mux(digit.shift[b], cur << amount, cur))
                cur = nxt
            terms.append(cur)
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        m.d.comb += self.p.eq(total)
        return m


class MinifloatMultiplier(_Multiplier):
    """Exact product of a fixed-point code and a minifloat weight (``multiply: exact``).

    The weight's raw bit pattern ``(s, e, m)`` is decoded to its code on the
    minifloat hull grid ``2**(emin - M)`` (:func:`qfx.manifest.minifloat_hull_codes`):
    significand ``sig = (e != 0, m)`` (``m`` alone for a subnormal; 0 without
    subnormals), exponent shift ``max(e - 1, 0)``; then
    ``p = +-(x * sig) << shift``: an ``x.width x (M + 1)`` multiply, a
    negation and a shifter. Exact for every finite pattern; a NaN / inf
    pattern (never in a manifest) gives ``minifloat_hull_codes(bits) * x``
    wrapped to ``product_fmt``.

    Parameters
    ----------
    x_fmt : FixedType
        Input format.
    w_fmt : MinifloatType
        Weight format.

    Attributes
    ----------
    x : Signal(fixed_shape(x_fmt)), in
    w : Signal(unsigned(w_fmt.bits)), in
        Raw bit pattern.
    p : Signal(fixed_shape(product_fmt)), out
        ``x * hull_code(w)``, of type ``x_fmt * minifloat_hull(w_fmt)``.

    Latency 0 (combinational); throughput one product per cycle.

    Raises
    ------
    TypeError
        If ``x_fmt`` is not a FixedType or ``w_fmt`` not a MinifloatType.
    ValueError
        If the product type would exceed 64 bits.
    """

    def __init__(self, x_fmt: FixedType, w_fmt: MinifloatType) -> None:
        if not isinstance(w_fmt, MinifloatType):
            raise TypeError(
                f"w_fmt must be a qfx.types.MinifloatType, not {type(w_fmt).__name__} {w_fmt!r}; "
                "e.g. qfx.parse_type('fp8_e4m3fn')"
            )
        super().__init__(x_fmt, w_fmt, "exact")
        assert self._p_fmt == x_fmt * minifloat_hull(w_fmt)

    def elaborate(self, platform):
        m = Module()
        t = self._w_fmt
        mb, eb = t.mantissa_bits, t.exponent_bits
        bits = self.w
        man = bits[:mb] if mb else Const(0, 1)
        ef = bits[mb : mb + eb]
        neg = bits[mb + eb]
        normal = ef.any()
        sig = Signal(unsigned(mb + 1))
        if t.subnormals:
            m.d.comb += sig.eq(Cat(man, normal) if mb else normal)
        else:
            m.d.comb += sig.eq(Mux(normal, Cat(man, Const(1, 1)) if mb else 1, 0))
        shift = Signal(unsigned(eb))
        m.d.comb += shift.eq(Mux(normal, ef - 1, 0))
        q = Signal(signed(self._x_fmt.width + mb + 2))
        m.d.comb += q.eq(self.x * sig)
        qn = Signal(signed(len(q) + 1))
        m.d.comb += qn.eq(Mux(neg, -q, q))
        m.d.comb += self.p.eq(qn << shift)
        return m


def _bit_length(m: Module, value, name: str) -> Signal:
    """``value.bit_length()`` of an unsigned value (priority encoder)."""
    out = Signal(range(len(value) + 1), name=name)
    for i in range(len(value)):  # later statements win: the highest set bit
        with m.If(value[i]):
            m.d.comb += out.eq(i + 1)
    return out


class LMulMultiplier(_Multiplier):
    """L-Mul product (``multiply: lmul``) of a fixed-point activation and a minifloat weight.

    Bit-exact with the integer reference: the activation code is rounded to
    the weight's minifloat format to nearest even and split into fields as
    ``qfx.reference._fixed_to_minifloat_fields`` does (subnormals normalised,
    flushed to zero without subnormals, the largest finite value on
    overflow), the weight pattern split as ``_minifloat_fields``; then
    ``p = +-(2**M + fa + fb + 2**(M - l(M))) << (ea + eb - M + F)`` with
    ``F = product_fmt.frac_bits`` (``_lmul_products``), 0 if an operand is
    zero. One add of the fields instead of a mantissa multiplier.

    Hardware: leading-one detector and normalising shifter on ``|x|``
    (rounding position ``max(msb(|x|), emin + x.frac_bits) - M``), a
    round-to-nearest-even increment, a small normaliser for subnormal
    results, the same for subnormal weights, an ``M + 2``-bit adder, an
    exponent adder and the output shifter.

    Where the reference raises (a non-saturating format and an activation
    beyond its largest finite value), the hardware saturates, as a
    saturating format would. A NaN / inf weight pattern (never in a
    manifest) gives an unspecified product.

    Parameters
    ----------
    x_fmt : FixedType
        Input format.
    w_fmt : MinifloatType
        Weight format (the activation is rounded to it too).

    Attributes
    ----------
    x : Signal(fixed_shape(x_fmt)), in
    w : Signal(unsigned(w_fmt.bits)), in
        Raw bit pattern.
    p : Signal(fixed_shape(product_fmt)), out
        The L-Mul product on the grid of ``lmul_product_type(w_fmt)``.

    Latency 0 (combinational); throughput one product per cycle.

    Raises
    ------
    TypeError
        If ``x_fmt`` is not a FixedType or ``w_fmt`` not a MinifloatType.
    ValueError
        If the product type would exceed 64 bits.
    """

    def __init__(self, x_fmt: FixedType, w_fmt: MinifloatType) -> None:
        if not isinstance(w_fmt, MinifloatType):
            raise TypeError(
                f"w_fmt must be a qfx.types.MinifloatType, not {type(w_fmt).__name__} {w_fmt!r}; "
                "e.g. qfx.parse_type('fp8_e4m3fn')"
            )
        super().__init__(x_fmt, w_fmt, "lmul")

    def _activation_fields(self, m: Module):
        """``(neg, zero, e, f)`` of ``x`` rounded to the minifloat (``_fixed_to_minifloat_fields``)."""
        return _fixed_fields(m, self.x, self._x_fmt, self._w_fmt, "xa")

    def _weight_fields(self, m: Module):
        """``(neg, zero, e, f)`` of the weight pattern (``_minifloat_fields``)."""
        t = self._w_fmt
        mb, eb = t.mantissa_bits, t.exponent_bits
        man = self.w[:mb] if mb else Const(0, 1)
        ef = self.w[mb : mb + eb]
        neg = self.w[mb + eb]
        normal = ef.any()
        e_shape = signed(max(abs(t.emin - mb) + 1, (1 << eb) + abs(t.bias)).bit_length() + 2)
        e = Signal(e_shape, name="wb_e")
        f = Signal(unsigned(max(mb, 1)), name="wb_f")
        zero = Signal(name="wb_zero")
        if mb and t.subnormals:
            m.d.comb += zero.eq(~normal & ~man.any())
            mlen = _bit_length(m, man, "wb_mlen")
            lz = Signal(range(mb + 2), name="wb_lz")
            m.d.comb += lz.eq(mb + 1 - mlen)
            with m.If(normal):
                m.d.comb += [e.eq(ef - t.bias), f.eq(man)]
            with m.Elif(~zero):
                m.d.comb += [e.eq(t.emin - lz), f.eq(man << lz)]
        else:
            m.d.comb += zero.eq(~normal)
            with m.If(normal):
                m.d.comb += [e.eq(ef - t.bias), f.eq(man)]
        return neg, zero, e, f

    def elaborate(self, platform):
        m = Module()
        a = self._activation_fields(m)
        b = self._weight_fields(m)
        _lmul_combine(m, a, b, self._w_fmt, self._p_fmt, self.p)
        return m


def _lmul_combine(m: Module, a, b, t: MinifloatType, p_fmt: FixedType, p) -> None:
    """``p = +-(2**M + fa + fb + 2**(M - l(M))) << (ea + eb - M + F)``, 0 if an operand is zero
    (``_lmul_products``), from the fields ``(neg, zero, e, f)`` of both operands."""
    mb = t.mantissa_bits
    na, za, ea, fa = a
    nb, zb, eb_, fb = b
    n = Signal(unsigned(mb + 2), name="lmul_n")
    m.d.comb += n.eq((1 << mb) + (1 << (mb - lmul_offset_bits(mb))) + (fa if mb else 0) + (fb if mb else 0))
    sh = Signal(signed(max(len(ea), len(eb_)) + 2 + (abs(p_fmt.frac_bits - mb)).bit_length() + 1),
                name="lmul_sh")
    m.d.comb += sh.eq(ea + eb_ + (p_fmt.frac_bits - mb))
    # Finite operands give 0 <= sh <= width - (M + 2): a shifter only that wide.
    pw = p_fmt.width
    sh_u = Signal(range(pw), name="lmul_sh_u")
    m.d.comb += sh_u.eq(sh)
    mag = Signal(unsigned(pw), name="lmul_mag")
    m.d.comb += mag.eq(n << sh_u)
    zero = za | zb
    m.d.comb += p.eq(Mux(zero, 0, Mux(na ^ nb, -mag, mag)))


class LMulPairMultiplier(wiring.Component):
    """L-Mul product of two fixed-point run-time operands (matmul ``multiply: lmul``).

    Both codes are rounded to the minifloat ``t`` exactly as :class:`LMulMultiplier` rounds its
    activation (nearest even, subnormals normalised, flushed to zero without subnormals, saturating
    at the largest finite value), then multiplied by L-Mul as there: the product on the grid of
    ``lmul_product_type(t)``. Two rounding front ends and one field adder / shifter; no multiplier.

    Parameters
    ----------
    a_fmt, b_fmt : FixedType
        Formats of the codes on ``a`` and ``b``.
    t : MinifloatType
        The operand format.

    Attributes
    ----------
    a : Signal(fixed_shape(a_fmt)), in
    b : Signal(fixed_shape(b_fmt)), in
    p : Signal(fixed_shape(lmul_product_type(t))), out

    Latency 0 (combinational); throughput one product per cycle.
    """

    latency = 0

    def __init__(self, a_fmt: FixedType, b_fmt: FixedType, t: MinifloatType) -> None:
        check_fixed("a_fmt", a_fmt)
        check_fixed("b_fmt", b_fmt)
        if not isinstance(t, MinifloatType):
            raise TypeError(f"t must be a qfx.types.MinifloatType, not {type(t).__name__} {t!r}; "
                            "e.g. qfx.parse_type('fp8_e4m3fn')")
        self._a_fmt, self._b_fmt, self._t = a_fmt, b_fmt, t
        self._p_fmt = lmul_product_type(t)
        super().__init__({"a": In(fixed_shape(a_fmt)), "b": In(fixed_shape(b_fmt)), "p": Out(fixed_shape(self._p_fmt))})

    product_fmt = property(lambda self: self._p_fmt, doc="Product type (``lmul_product_type(t)``).")

    def elaborate(self, platform):
        m = Module()
        fa = _fixed_fields(m, self.a, self._a_fmt, self._t, "xa")
        fb = _fixed_fields(m, self.b, self._b_fmt, self._t, "xb")
        _lmul_combine(m, fa, fb, self._t, self._p_fmt, self.p)
        return m


def _fixed_fields(m: Module, x, x_fmt: FixedType, t: MinifloatType, pre: str):
    """``(neg, zero, e, f)`` of the fixed-point code ``x`` rounded to the minifloat ``t``
    (``_fixed_to_minifloat_fields``); signal names start with ``pre``."""
    mb = t.mantissa_bits
    w = x_fmt.width
    frac = x_fmt.frac_bits
    p0 = t.emin + frac  # code bit position of the smallest normal's leading one
    neg = Signal(name=f"{pre}_neg")
    a = Signal(unsigned(w), name=f"{pre}_abs")
    if x_fmt.signed:
        m.d.comb += [neg.eq(x[-1]), a.eq(Mux(x[-1], -x, x))]
    else:
        m.d.comb += a.eq(x)
    length = _bit_length(m, a, f"{pre}_len")
    pos_hi = max(w - 1, p0)
    pos_lo = max(p0, 0) if p0 <= w - 1 else p0
    # pos = max(length - 1, p0): the code position of the rounded value's unit of 2**e.
    pos = Signal(range(pos_lo, pos_hi + 1), name=f"{pre}_pos")
    if p0 > w - 1:
        m.d.comb += pos.eq(p0)
    else:
        m.d.comb += pos.eq(Mux(length - 1 > p0, length - 1, p0))
    # a_ext = a << (M + 2): bit i of a is bit i + M + 2. Shifting right by pos + 1 puts the
    # round bit (code bit pos - M - 1) at 0 and the M + 1 kept bits above it.
    ext_w = w + mb + 2
    a_ext = Signal(unsigned(ext_w), name=f"{pre}_ext")
    m.d.comb += a_ext.eq(a << (mb + 2))
    amount = Signal(range(pos_hi + 2), name=f"{pre}_amount")
    m.d.comb += amount.eq(pos + 1)
    window = Signal(unsigned(mb + 2), name=f"{pre}_window")
    m.d.comb += window.eq(a_ext >> amount)
    mask = Signal(unsigned(ext_w), name=f"{pre}_mask")
    m.d.comb += mask.eq(~(Const((1 << ext_w) - 1, ext_w) << amount))
    sticky = (a_ext & mask).any()
    up = window[0] & (sticky | window[1])
    mant = Signal(unsigned(mb + 2), name=f"{pre}_mant")
    m.d.comb += mant.eq(window[1:] + up)
    # Exponent of a unit at code position pos.
    e_lo, e_hi = t.emin - mb - 1, pos_hi - frac + 1
    e_shape = signed(max(abs(e_lo), abs(e_hi), abs(t.emax) + 1).bit_length() + 2)
    e0 = Signal(e_shape, name=f"{pre}_e0")
    m.d.comb += e0.eq(pos - frac)
    e = Signal(e_shape, name=f"{pre}_e")
    f = Signal(unsigned(max(mb, 1)), name=f"{pre}_f")
    zero = Signal(name=f"{pre}_zero")
    with m.If(mant[mb + 1]):
        m.d.comb += [e.eq(e0 + 1), f.eq(0)]
    with m.Elif(mant[mb]):
        m.d.comb += [e.eq(e0), f.eq(mant[:mb] if mb else 0)]
    with m.Else():  # subnormal result (or zero): normalise
        if t.subnormals and mb:
            mlen = _bit_length(m, mant[:mb], f"{pre}_mlen")
            lz = Signal(range(mb + 2), name=f"{pre}_lz")
            m.d.comb += lz.eq(mb + 1 - mlen)
            m.d.comb += [e.eq(e0 - lz), f.eq(mant[:mb] << lz)]
        else:
            m.d.comb += [e.eq(0), f.eq(0)]
    if t.subnormals:
        m.d.comb += zero.eq(~mant.any())
    else:
        m.d.comb += zero.eq(~mant[mb:].any())
    # Saturation to the largest finite value.
    top_e, top_f = t.max_finite_fields
    over = e > top_e
    if top_f < (1 << mb) - 1:  # else no mantissa lies beyond the top code
        over = over | ((e == top_e) & (f > top_f))
    over = ~zero & over
    es = Signal(e_shape, name=f"{pre}_es")
    fs = Signal(unsigned(max(mb, 1)), name=f"{pre}_fs")
    m.d.comb += [es.eq(Mux(over, top_e, e)), fs.eq(Mux(over, top_f, f))]
    return neg, zero, es, fs


def multiplier_for(x_fmt: FixedType, w_fmt, multiply: str = "exact") -> _Multiplier:
    """The combinational product unit for ``x_fmt`` times ``w_fmt`` under ``multiply``.

    Returns a :class:`FixedMultiplier`, :class:`KHotMultiplier`,
    :class:`MinifloatMultiplier` or :class:`LMulMultiplier` (see the module
    docstring), with ports ``x``, ``w`` (:func:`weight_shape`), ``p`` and
    attributes ``x_fmt``, ``w_fmt``, ``product_fmt`` (exactly
    :func:`qfx.manifest.mac_product_format` ``(x_fmt, w_fmt, multiply)``)
    and ``latency = 0``.

    Raises
    ------
    TypeError
        If ``x_fmt`` is not a FixedType, ``w_fmt`` not a single
        FixedType / KHot / MinifloatType (a per-channel tuple included), or
        ``multiply`` not a str.
    ValueError
        On an unknown ``multiply``, ``lmul`` with a non-minifloat weight, or a
        product type beyond 64 bits.
    """
    check_fixed("x_fmt", x_fmt)
    multiply = _check_multiply(multiply)
    w_fmt = _check_weight_format(w_fmt, multiply)
    if multiply == "lmul":
        return LMulMultiplier(x_fmt, w_fmt)
    if isinstance(w_fmt, FixedType):
        return FixedMultiplier(x_fmt, w_fmt)
    if isinstance(w_fmt, KHot):
        return KHotMultiplier(x_fmt, w_fmt)
    return MinifloatMultiplier(x_fmt, w_fmt)
