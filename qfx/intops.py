"""Integer arithmetic on fixed-point codes, without torch: the ap_fixed cast and minifloat fields.

One definition shared by the integer reference interpreter (:mod:`qfx.reference`)
and the hardware generators (:mod:`qfx.hw`), which must not import torch.
:func:`cast_codes` is documented in :mod:`qfx.reference` (the algorithm) and is
bit-exact with the Xilinx ap_types headers (tests/test_export_reference.py,
tests/test_ap_types.py via ``qfx.to_codes``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .arith import lmul_offset_bits
from .types import FixedType, KHot, MinifloatType, Overflow, Rounding, parse_type

__all__ = ["cast_codes", "to_real", "INT64_SAFE_BITS", "minifloat_fields", "fixed_to_minifloat_fields",
           "lmul_products", "corner_and_random_codes"]

#: Intermediates of at most this many bits (sign included) are computed in int64.
INT64_SAFE_BITS = 62

# ---------------------------------------------------------------------------
# Integer helpers (int64 or object arrays alike)
# ---------------------------------------------------------------------------


def _as_int_array(codes: Any) -> np.ndarray:
    a = np.asarray(codes)
    if a.dtype == object:
        if a.size and not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in a.reshape(-1)):
            raise TypeError("cast_codes needs integer codes")
        return np.array([int(v) for v in a.reshape(-1)], dtype=object).reshape(a.shape)
    if a.dtype == np.uint64:
        return a.astype(object)
    if a.dtype.kind in "iub":
        return a.astype(np.int64)
    raise TypeError(f"cast_codes needs integer codes, got dtype {a.dtype}")


def _max_bits(a: np.ndarray) -> int:
    """Bits of the largest magnitude in ``a`` (0 for an empty or all-zero array)."""
    if a.size == 0:
        return 0
    return max(int(a.max()).bit_length(), (-int(a.min())).bit_length())


def _big(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == object else a.astype(object)


def _shl(a: np.ndarray, s: int) -> np.ndarray:
    if s < 0:
        raise AssertionError("negative alignment shift")
    return a << s if s else a


def _bit_length(a: np.ndarray) -> np.ndarray:
    """Element-wise ``int.bit_length`` of non-negative integers (int64 result)."""
    if a.dtype == object:
        return np.array([int(v).bit_length() for v in a.reshape(-1)], dtype=np.int64).reshape(a.shape)
    out = np.zeros(a.shape, dtype=np.int64)
    v = a.copy()
    while True:
        nz = v > 0
        if not nz.any():
            return out
        out += nz
        v >>= 1


def _wrap(r: np.ndarray, t: FixedType) -> np.ndarray:
    w = t.width
    v = r & ((1 << w) - 1)
    if t.signed:
        v = np.where(v >= (1 << (w - 1)), v - (1 << w), v)
    return v


def cast_codes(codes: Any, src_frac_bits: int, dst_fmt: "FixedType | str") -> np.ndarray:
    """The codes of ``dst_fmt`` after ``dst y = x`` for ``x = codes * 2**-src_frac_bits``, in integers.

    Bit-exact with ap_fixed (and :func:`qfx.to_codes`) for every rounding and
    overflow mode; see the module docstring for the algorithm. ``codes`` may
    be any integer array (or Python ints of any size, as an object array);
    the result is int64 when ``dst_fmt``'s codes fit it (all but a 64-bit
    ap_ufixed), else an object array of Python ints.
    """
    t = parse_type(dst_fmt) if isinstance(dst_fmt, str) else dst_fmt
    if not isinstance(t, FixedType):
        raise TypeError(f"cast_codes casts to fixed-point formats, not {t}")
    if isinstance(src_frac_bits, bool) or not isinstance(src_frac_bits, (int, np.integer)):
        raise TypeError(f"src_frac_bits must be an int, not {src_frac_bits!r}")
    a = _as_int_array(codes)
    shape = a.shape
    a = a.reshape(-1)
    s = int(src_frac_bits) - t.frac_bits
    if a.dtype != object and (
        t.width > INT64_SAFE_BITS - 1 or s > INT64_SAFE_BITS - 1 or _max_bits(a) + max(0, -s) > INT64_SAFE_BITS - 1
    ):
        a = a.astype(object)
    if s <= 0:
        fl = _shl(a, -s)
        r = fl
    else:
        fl = a >> s
        rem = a - (fl << s)
        half = 1 << (s - 1)
        q = t.rounding
        if q is Rounding.AP_TRN:
            up = np.zeros(a.shape, dtype=bool)
        elif q is Rounding.AP_TRN_ZERO:
            up = (rem != 0) & (a < 0)
        elif q is Rounding.AP_RND:
            up = rem >= half
        elif q is Rounding.AP_RND_ZERO:
            up = (rem > half) | ((rem == half) & (a < 0))
        elif q is Rounding.AP_RND_MIN_INF:
            up = rem > half
        elif q is Rounding.AP_RND_INF:
            up = (rem > half) | ((rem == half) & (a > 0))
        else:  # AP_RND_CONV
            up = (rem > half) | ((rem == half) & ((fl & 1) == 1))
        r = fl + np.asarray(up, dtype=bool).astype(np.int64)
    lo, hi = t.min_code, t.max_code
    o = t.overflow
    if o is Overflow.AP_SAT or (o is Overflow.AP_SAT_SYM and not t.signed):
        v = np.minimum(np.maximum(r, lo), hi)
    elif o is Overflow.AP_SAT_SYM:
        v = np.minimum(np.maximum(r, lo | 1), hi)
    elif o is Overflow.AP_SAT_ZERO:
        v = np.where((r < lo) | (r > hi), 0, r)
    elif o is Overflow.AP_WRAP:
        v = _wrap(r, t)
    else:  # AP_WRAP_SM
        v = _wrap(r, t)
        outside = np.asarray((r < lo) | (r > hi), dtype=bool)
        dropped = np.asarray(((fl >> t.width) & 1) == 1, dtype=bool)
        flip = outside & (np.asarray(v < 0, dtype=bool) != dropped)
        v = np.where(flip, ~v, v)
    v = np.asarray(v)
    if v.dtype == object and (t.signed or t.width <= 63):
        v = v.astype(np.int64)
    elif v.dtype != object:
        v = v.astype(np.int64)
    return v.reshape(shape)


def to_real(codes: np.ndarray, fmt: "FixedType | str") -> np.ndarray:
    """Values (float64) of codes of a fixed-point format (exact for codes of at most 53 bits)."""
    t = parse_type(fmt) if isinstance(fmt, str) else fmt
    if isinstance(t, KHot):
        t = t.base
    if not isinstance(t, FixedType):
        raise TypeError(f"to_real converts fixed-point codes, not {t}")
    return np.ldexp(np.asarray(codes).astype(np.float64), -t.frac_bits)


# ---------------------------------------------------------------------------
# Minifloat fields
# ---------------------------------------------------------------------------


def _minifloat_fields(bits: np.ndarray, t: MinifloatType) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(negative, zero, e, f)`` of bit patterns: ``|v| = (1 + f/2**M) 2**e``, subnormals normalised."""
    m, e_bits = t.mantissa_bits, t.exponent_bits
    neg = ((bits >> (e_bits + m)) & 1) == 1
    ef = (bits >> m) & ((1 << e_bits) - 1)
    man = bits & ((1 << m) - 1)
    normal = ef > 0
    length = _bit_length(man)
    sub_e = t.emin - m + length - 1
    sub_f = (man << np.clip(m - length + 1, 0, None)) - (1 << m)
    zero = ~normal & ((man == 0) | (not t.subnormals))
    e = np.where(normal, ef - t.bias, np.where(zero, 0, sub_e))
    f = np.where(normal, man, np.where(zero, 0, sub_f))
    return neg, zero, e.astype(np.int64), f.astype(np.int64)


def _fixed_to_minifloat_fields(
    c: np.ndarray, frac: int, t: MinifloatType, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Round fixed-point codes to minifloat ``t`` (nearest even) and return ``(negative, zero, e, f)``."""
    m = t.mantissa_bits
    if c.dtype != object and _max_bits(c) > 60:
        c = c.astype(object)
    neg = c < 0
    a = np.where(neg, -c, c)
    length = _bit_length(a)
    sh = np.maximum(length - 1, t.emin + frac) - m
    shp = np.clip(sh, 0, 61 if a.dtype != object else None)
    if a.dtype == object:
        shp = shp.astype(object)
    fl = a >> shp
    rem = a - (fl << shp)
    two_rem, unit = rem * 2, np.ones_like(a) << shp
    up = (two_rem > unit) | ((two_rem == unit) & ((fl & 1) == 1))
    mant = fl + np.asarray(up, dtype=bool).astype(np.int64)
    qexp = np.asarray(shp, dtype=np.int64) - frac  # value = mant * 2**qexp
    mlen = _bit_length(np.asarray(mant))
    zero = np.asarray(mant == 0, dtype=bool)
    e = np.where(zero, 0, mlen - 1 + qexp).astype(np.int64)
    up_shift = np.clip(m - mlen + 1, 0, None)
    down_shift = np.clip(mlen - 1 - m, 0, None)
    if mant.dtype == object:
        up_shift, down_shift = up_shift.astype(object), down_shift.astype(object)
    f = np.where(zero, 0, ((mant << up_shift) >> down_shift) - (1 << m))
    f = np.asarray(f).astype(np.int64)
    if not t.subnormals:
        zero = zero | (e < t.emin)
    top_e, top_f = t.max_finite_fields
    over = ~zero & ((e > top_e) | ((e == top_e) & (f > top_f)))
    if over.any():
        if not t.saturate:
            raise ValueError(
                f"{where}: L-Mul: some activations overflow the weight format {t} to inf/NaN when cast to it; "
                f"use a saturating minifloat (saturate=true) or a narrower input format"
            )
        e = np.where(over, top_e, e)
        f = np.where(over, top_f, f)
    e = np.where(zero, 0, e)
    f = np.where(zero, 0, f)
    return np.asarray(neg, dtype=bool), zero, e, f


def _lmul_products(
    xa: tuple[np.ndarray, ...], wb: tuple[np.ndarray, ...], t: MinifloatType, product_frac: int, big: bool
) -> np.ndarray:
    """Exact L-Mul products (broadcasting) as codes on the grid ``product_frac``."""
    na, za, ea, fa = xa
    nb, zb, eb, fb = wb
    m = t.mantissa_bits
    n = (1 << m) + fa + fb + (1 << (m - lmul_offset_bits(m)))
    zero = za | zb
    sh = np.where(zero, 0, ea + eb - m + product_frac)
    if (sh < 0).any():  # pragma: no cover - excluded by lmul_product_type
        raise AssertionError("L-Mul product below the product grid")
    if big:
        n, sh = _big(np.asarray(n)), np.asarray(sh).astype(object)
    p = n << sh
    p = np.where(na ^ nb, -p, p)
    return np.where(zero, 0, p)



# Public names for the generators; the reference keeps using the underscored ones.
minifloat_fields = _minifloat_fields
fixed_to_minifloat_fields = _fixed_to_minifloat_fields
lmul_products = _lmul_products


def corner_and_random_codes(lo: int, hi: int, n: int, n_in: int, seed: int) -> np.ndarray:
    """``n`` input vectors of ``n_in`` codes in ``lo..hi``: corners first (min, max, zero,
    alternating extremes both ways, a ramp over the codes), then random codes from ``seed``.
    Used by ``qfx sim`` and the HLS testbench data; codes must fit int64."""
    rng = np.random.default_rng(seed)
    alt = np.arange(n_in) % 2 == 0
    ramp = [lo + (i * (hi - lo)) // max(1, n_in - 1) for i in range(n_in)]  # Python ints: no overflow
    corners = [np.full(n_in, lo), np.full(n_in, hi), np.full(n_in, min(max(0, lo), hi)), np.where(alt, lo, hi),
               np.where(alt, hi, lo), np.array(ramp, dtype=np.int64)]
    rows = corners[: min(n, len(corners))]
    if n > len(rows):
        rows += list(rng.integers(lo, hi, size=(n - len(rows), n_in), endpoint=True))
    return np.array(rows, dtype=np.int64).reshape(n, n_in)
