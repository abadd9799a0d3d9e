"""Mathematically exact fixed-point cast (test/scratch helper only).

Models "round the exact real value to the LSB grid with the quantisation
mode, then apply the overflow mode to the rounded integer", with Fraction
arithmetic.  It is NOT the product emulation (that lives in qfx/) and NOT the
ground truth (that is ap_types_oracle, the real headers): it exists so that
tests can see where the ap_fixed implementation deviates from the textbook
definition (see test_oracle_selfcheck.py for the deviations found).

Quantisation modes (UG1399 "ap_[u]fixed<> quantization modes"), on x * 2**F:
  AP_TRN          floor
  AP_TRN_ZERO     toward zero
  AP_RND          nearest, ties toward +inf
  AP_RND_ZERO     nearest, ties toward zero
  AP_RND_MIN_INF  nearest, ties toward -inf
  AP_RND_INF      nearest, ties away from zero
  AP_RND_CONV     nearest, ties to even
Overflow modes, on the rounded integer n and the code range [lo, hi]:
  AP_SAT          clamp to [lo, hi]
  AP_SAT_ZERO     0 if n is outside [lo, hi]
  AP_SAT_SYM      clamp to [-hi, hi] (signed), [0, hi] (unsigned)
  AP_WRAP         n modulo 2**W into [lo, hi]
  AP_WRAP_SM      (signed only) keep the low W bits; if bit W of n differs
                  from bit W-1 of n, invert them (UG1399: ap_fixed<4,4,AP_RND,
                  AP_WRAP_SM> x = 19.0 -> -4.0, x = -19.0 -> 2.0)
"""

from __future__ import annotations

import math
from fractions import Fraction

from .ap_types_oracle import FixedConfig


def round_scaled(x: Fraction, mode: str) -> int:
    """Round ``x`` (already multiplied by 2**F) to an integer."""
    fl = math.floor(x)
    rem = x - fl  # in [0, 1)
    if mode == "AP_TRN":
        return fl
    if mode == "AP_TRN_ZERO":
        return fl if (x >= 0 or rem == 0) else fl + 1
    if rem < Fraction(1, 2):
        return fl
    if rem > Fraction(1, 2):
        return fl + 1
    # exact tie between fl and fl + 1
    if mode == "AP_RND":
        return fl + 1
    if mode == "AP_RND_ZERO":
        return fl if x >= 0 else fl + 1
    if mode == "AP_RND_MIN_INF":
        return fl
    if mode == "AP_RND_INF":
        return fl + 1 if x >= 0 else fl
    if mode == "AP_RND_CONV":
        return fl if fl % 2 == 0 else fl + 1
    raise ValueError(f"unknown rounding mode {mode!r}")


def overflow_int(n: int, width: int, signed: bool, mode: str) -> int:
    """Apply overflow ``mode`` to the integer ``n`` for a ``width``-bit code."""
    if signed:
        lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    else:
        lo, hi = 0, (1 << width) - 1
    if mode == "AP_SAT":
        return min(max(n, lo), hi)
    if mode == "AP_SAT_ZERO":
        return n if lo <= n <= hi else 0
    if mode == "AP_SAT_SYM":
        return min(max(n, -hi if signed else 0), hi)
    mask = (1 << width) - 1
    if mode == "AP_WRAP":
        v = n & mask
    elif mode == "AP_WRAP_SM":
        if not signed:
            raise ValueError("AP_WRAP_SM is signed-only")
        v = n & mask
        if ((n >> width) & 1) != ((n >> (width - 1)) & 1):
            v = ~v & mask
    else:
        raise ValueError(f"unknown overflow mode {mode!r}")
    if signed and v >= (1 << (width - 1)):
        v -= 1 << width
    return v


def exact_cast(cfg: FixedConfig, x: Fraction) -> int:
    """Code of ``x`` cast exactly into ``cfg`` (round, then overflow)."""
    scaled = Fraction(x) * (Fraction(2) ** cfg.frac_bits)
    n = round_scaled(scaled, cfg.rounding)
    return overflow_int(n, cfg.width, cfg.signed, cfg.overflow)


def exact_cast_double(cfg: FixedConfig, v: float) -> int:
    if math.isnan(v) or math.isinf(v):
        raise ValueError("no exact model for NaN/Inf")
    return exact_cast(cfg, Fraction(v))


def exact_cast_fixed(src: FixedConfig, dst: FixedConfig, code: int) -> int:
    return exact_cast(dst, Fraction(code) / (Fraction(2) ** src.frac_bits))
