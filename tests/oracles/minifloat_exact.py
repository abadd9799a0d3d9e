"""Exact rational reference for minifloat rounding (independent of qfx's float tricks).

Follows the definition directly: find the binade of |v| with exact rationals,
round |v| to the quantum of that binade (ties to even, Python's exact
``round(Fraction)``), then apply the format's overflow rule.
"""

from __future__ import annotations

import math
from fractions import Fraction

from qfx.types import MinifloatType


def _floor_log2(v: Fraction) -> int:
    e = v.numerator.bit_length() - v.denominator.bit_length()
    while Fraction(2) ** e > v:
        e -= 1
    while Fraction(2) ** (e + 1) <= v:
        e += 1
    return e


def max_value(t: MinifloatType) -> Fraction:
    m = t.mantissa_bits
    if t.inf_nan == "fn" and m == 0:
        return Fraction(2) ** (t.emax - 1)
    top_mantissa = (1 << m) - (2 if t.inf_nan == "fn" else 1)
    return Fraction((1 << m) + top_mantissa, 1 << m) * Fraction(2) ** t.emax


def round_minifloat(x: float, t: MinifloatType) -> float:
    """The value qfx.quantize must return for the float ``x`` (NaN -> NaN)."""
    if math.isnan(x):
        return math.nan
    sign = -1.0 if math.copysign(1.0, x) < 0 else 1.0
    top = max_value(t)
    overflow = float(top) if t.saturate else (math.inf if t.inf_nan == "ieee" else math.nan)
    if math.isinf(x):
        return sign * overflow if not math.isnan(overflow) else math.nan
    v = abs(Fraction(x))
    if v == 0:
        return sign * 0.0
    e = max(_floor_log2(v), t.emin)
    quantum = Fraction(2) ** (e - t.mantissa_bits)
    q = round(v / quantum) * quantum  # round() of a Fraction is exact, ties to even
    if not t.subnormals and q < Fraction(2) ** t.emin:
        q = Fraction(0)
    if q > top:
        return sign * overflow if not math.isnan(overflow) else math.nan
    return sign * float(q)


def all_values(t: MinifloatType) -> list[float]:
    """Every finite value of ``t`` (both signs, from the bit patterns)."""
    out = []
    m, e_bits = t.mantissa_bits, t.exponent_bits
    for field_exp in range(1 << e_bits):
        for field_man in range(1 << m):
            if t.inf_nan == "ieee" and field_exp == (1 << e_bits) - 1:
                continue
            if t.inf_nan == "fn" and field_exp == (1 << e_bits) - 1 and field_man == (1 << m) - 1:
                continue
            if field_exp == 0:
                if not t.subnormals and field_man:
                    continue
                v = Fraction(field_man, 1 << m) * Fraction(2) ** t.emin
            else:
                v = (1 + Fraction(field_man, 1 << m)) * Fraction(2) ** (field_exp - t.bias)
            out += [float(v), -float(v)]
    return sorted(set(out))
