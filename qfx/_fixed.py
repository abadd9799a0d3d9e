"""Exact ap_fixed conversion kernels on torch tensors.

``T y = (double)x`` in Vitis HLS rounds the exact value of ``x`` at the lsb
(the quantization mode) and then applies the overflow mode to the integer
code. Everything here reproduces that bit for bit. The tensor arithmetic is
exact by construction, never by luck:

* ``x * 2**F`` is a power-of-two scaling, exact as long as it neither
  underflows nor overflows the compute dtype (``F >= 0`` on the float32 path;
  float64 with |F| <= 900 otherwise, and a sign correction for the one case
  where a tiny value underflows to zero).
* ``s - floor(s)`` is exact for every float ``s``, so ties are detected
  exactly; the ``floor(s + 0.5)`` shortcut is only used where ``s + 0.5`` is
  exact or where its error cannot change a saturated result.
* float32 carries codes up to 2**22 exactly, float64 up to 2**53; wider words
  (54..64 bits) finish in int64 arithmetic.
"""

from __future__ import annotations

import math

import torch

from .types import FixedType, Overflow, Rounding

#: Codes of at most this many bits are computed on the float32 fast path.
_F32_MAX_WIDTH = 22
#: Largest fractional-bit count on the float32 path (x * 2**F must not overflow
#: float32 for normal inputs in a way that matters, and results stay normal).
_F32_MAX_FRAC = 100
_F64_EXACT_WIDTH = 53

_FLOAT_PRECISION = {torch.float16: 11, torch.bfloat16: 8, torch.float32: 24, torch.float64: 53}
_FLOAT_MIN_EXP = {torch.float16: -24, torch.bfloat16: -133, torch.float32: -149, torch.float64: -1074}
_FLOAT_MAX_EXP = {torch.float16: 15, torch.bfloat16: 127, torch.float32: 127, torch.float64: 1023}


def holds_exactly(t: FixedType, dtype: torch.dtype, frac_min: int | None = None, frac_max: int | None = None) -> bool:
    """Whether every value of ``t`` (with frac bits in [frac_min, frac_max]) is exact in ``dtype``."""
    frac_min = t.frac_bits if frac_min is None else frac_min
    frac_max = t.frac_bits if frac_max is None else frac_max
    if dtype not in _FLOAT_PRECISION:
        return False
    magnitude_bits = t.width - 1 if t.signed else t.width
    return (
        max(magnitude_bits, 1) <= _FLOAT_PRECISION[dtype]
        and -frac_max >= _FLOAT_MIN_EXP[dtype]
        and max(magnitude_bits, t.width - 1 if t.signed else 0) - frac_min <= _FLOAT_MAX_EXP[dtype]
    )


def result_dtype(t: FixedType, dtype: torch.dtype, frac_min: int, frac_max: int) -> torch.dtype:
    """The float dtype quantize returns: the input's if it holds every value, else wider."""
    for candidate in (dtype, torch.float32, torch.float64):
        if _FLOAT_PRECISION.get(candidate, 0) >= _FLOAT_PRECISION.get(dtype, 0) and holds_exactly(
            t, candidate, frac_min, frac_max
        ):
            return candidate
    return torch.float64


def _scale(x: torch.Tensor, frac: "int | torch.Tensor") -> torch.Tensor:
    if isinstance(frac, torch.Tensor):
        return x * torch.exp2(frac.to(x.dtype))
    return x * math.ldexp(1.0, frac)


def _unscale(r: torch.Tensor, frac: "int | torch.Tensor") -> torch.Tensor:
    # r is a fresh tensor owned by the caller: scale in place (saves an allocation).
    if isinstance(frac, torch.Tensor):
        return r.mul_(torch.exp2(-frac.to(r.dtype)))
    return r.mul_(math.ldexp(1.0, -frac))


def round_scaled(s: torch.Tensor, rounding: Rounding, *, shortcut_ok: bool) -> torch.Tensor:
    """Round the scaled value ``s`` (exact float) to an integer by an ap_fixed quantization mode.

    ``shortcut_ok`` allows ``floor(s + 0.5)``-style forms: the caller promises
    that every element with |s| >= 2**(p-2) saturates whatever it rounds to.
    """
    if rounding is Rounding.AP_TRN:
        return torch.floor(s)
    if rounding is Rounding.AP_TRN_ZERO:
        return torch.trunc(s)
    if rounding is Rounding.AP_RND_CONV:
        return torch.round(s)  # half to even, exact
    if shortcut_ok:
        if rounding is Rounding.AP_RND:
            return torch.floor(s + 0.5)
        if rounding is Rounding.AP_RND_MIN_INF:
            return torch.ceil(s - 0.5)
        a = torch.abs(s)
        if rounding is Rounding.AP_RND_INF:
            return torch.copysign(torch.floor(a + 0.5), s)
        return torch.copysign(torch.ceil(a - 0.5), s)  # AP_RND_ZERO
    f = torch.floor(s)
    d = s - f  # exact, in [0, 1)
    if rounding is Rounding.AP_RND:
        up = d >= 0.5
    elif rounding is Rounding.AP_RND_MIN_INF:
        up = d > 0.5
    elif rounding is Rounding.AP_RND_INF:
        up = (d > 0.5) | ((d == 0.5) & (s > 0))
    else:  # AP_RND_ZERO
        up = (d > 0.5) | ((d == 0.5) & (s < 0))
    return f + up.to(f.dtype)


def _wrap_float(r: torch.Tensor, t: FixedType) -> torch.Tensor:
    """Two's complement wrap of float integer codes (exact for width <= 53)."""
    # An infinite or huge code has all its low bits zero: it wraps to 0 (as ap_fixed does).
    r = torch.where(torch.isinf(r), torch.zeros((), dtype=r.dtype, device=r.device), r)
    modulus = float(1 << t.width)
    v = torch.fmod(r, modulus)  # exact, in (-2**W, 2**W)
    if t.signed:
        half = float(1 << (t.width - 1))
        v = torch.where(v >= half, v - modulus, torch.where(v < -half, v + modulus, v))
    else:
        v = torch.where(v < 0, v + modulus, v)
    return v


def _wrap_sm_float(r: torch.Tensor, t: FixedType) -> torch.Tensor:
    """AP_WRAP_SM: wrap, then where the new sign bit differs from the lowest dropped
    bit, invert all bits (ap_fixed_base::overflow_adjust)."""
    v = _wrap_float(r, t)
    rr = torch.where(torch.isinf(r), torch.zeros((), dtype=r.dtype, device=r.device), r)
    dropped = torch.remainder(torch.floor(rr / float(1 << t.width)), 2.0)  # bit W of the code
    flip = (v < 0) != (dropped == 1)
    return torch.where(flip, -v - 1, v)


def overflow_float(r: torch.Tensor, t: FixedType) -> torch.Tensor:
    """Apply the overflow mode to float integer codes ``r`` (NaN propagates)."""
    lo, hi = float(t.min_code), float(t.max_code)
    o = t.overflow
    if o is Overflow.AP_SAT or (o is Overflow.AP_SAT_SYM and not t.signed):
        return r.clamp_(lo, hi)
    if o is Overflow.AP_SAT_SYM:
        return r.clamp_(-hi, hi)
    if o is Overflow.AP_SAT_ZERO:
        return torch.where((r < lo) | (r > hi), torch.zeros((), dtype=r.dtype, device=r.device), r)
    if o is Overflow.AP_WRAP:
        return _wrap_float(r, t)
    return _wrap_sm_float(r, t)


def out_of_range(r: torch.Tensor, t: FixedType) -> torch.Tensor:
    """Elements whose rounded code the overflow mode changes (saturated or wrapped)."""
    lo, hi = float(t.min_code), float(t.max_code)
    if t.overflow is Overflow.AP_SAT_SYM and t.signed:
        lo = -hi
    return (r < lo) | (r > hi)


def _int64_wrap(r: torch.Tensor, t: FixedType) -> torch.Tensor:
    """AP_WRAP / AP_WRAP_SM of float integer codes for 54..64-bit words, in int64.

    Non-finite elements must have been replaced by zeros. For a 64-bit
    ap_ufixed the result is the int64 with the code's bit pattern.
    """
    w = t.width
    m = torch.fmod(r, 2.0**64)  # exact, in (-2**64, 2**64)
    # Into [-2**63, 2**63): exact (the result has no more significant bits than m).
    m = torch.where(m >= 2.0**63, m - 2.0**64, torch.where(m < -(2.0**63), m + 2.0**64, m))
    wrapped = m.to(torch.int64)  # r mod 2**64, two's complement
    if w < 64:
        wrapped = wrapped & ((1 << w) - 1)
        if t.signed:
            sign = 1 << (w - 1)
            wrapped = (wrapped ^ sign) - sign
    if t.overflow is Overflow.AP_WRAP_SM:
        dropped = torch.remainder(torch.floor(r / 2.0**w), 2.0) == 1
        wrapped = torch.where((wrapped < 0) != dropped, -wrapped - 1, wrapped)
    return wrapped


def quantize_fixed(x: torch.Tensor, t: FixedType, frac: "int | torch.Tensor", out_dtype: torch.dtype) -> torch.Tensor:
    """Values of ``t`` after ``T y = x`` (float tensor in ``out_dtype``)."""
    return _convert(x, t, frac, out_dtype, want="values")


def codes_fixed(x: torch.Tensor, t: FixedType, frac: "int | torch.Tensor") -> torch.Tensor:
    """Integer codes (int64) of ``T y = x``; raises on NaN."""
    return _convert(x, t, frac, torch.float64, want="codes")


def rounded_codes(x: torch.Tensor, t: FixedType, frac: "int | torch.Tensor") -> torch.Tensor:
    """Codes after rounding, before overflow handling (float, may exceed the range)."""
    s = _scale(_to_compute(x, t, frac), frac)
    return _round_exact(s, x, t)


def _fast_path(x: torch.Tensor, t: FixedType, frac: "int | torch.Tensor") -> bool:
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16) or t.width > _F32_MAX_WIDTH:
        return False
    if isinstance(frac, torch.Tensor):
        lo, hi = frac_bounds(frac)
        return 0 <= lo and hi <= _F32_MAX_FRAC
    return 0 <= frac <= _F32_MAX_FRAC


def frac_bounds(frac: "int | torch.Tensor") -> tuple[int, int]:
    """Smallest and largest fractional-bit count of a scalar or per-channel ``frac``."""
    if isinstance(frac, torch.Tensor):
        return int(frac.min().item()), int(frac.max().item())
    return frac, frac


def _to_compute(x: torch.Tensor, t: FixedType, frac: "int | torch.Tensor") -> torch.Tensor:
    return x.float() if _fast_path(x, t, frac) else x.double()


def _round_exact(s: torch.Tensor, x: torch.Tensor, t: FixedType) -> torch.Tensor:
    shortcut = (
        s.dtype == torch.float32
        and t.overflow in (Overflow.AP_SAT, Overflow.AP_SAT_SYM, Overflow.AP_SAT_ZERO)
    )
    r = round_scaled(s, t.rounding, shortcut_ok=shortcut)
    if s.dtype == torch.float64 and t.rounding is Rounding.AP_TRN:
        # x * 2**F may underflow to -0.0 for a tiny negative x whose floor is -1.
        r = torch.where((r == 0) & (x < 0), torch.full((), -1.0, dtype=r.dtype, device=r.device), r)
    return r


def _convert(x: torch.Tensor, t: FixedType, frac: "int | torch.Tensor", out_dtype: torch.dtype, want: str) -> torch.Tensor:
    fast = _fast_path(x, t, frac)
    xc = x.float() if fast else x.double()
    s = _scale(xc, frac)
    r = _round_exact(s, xc, t)
    if want == "values" and (fast or t.width <= _F64_EXACT_WIDTH):
        v = overflow_float(r, t)
        v = _unscale(v, frac)
        return v if v.dtype == out_dtype else v.to(out_dtype)
    if t.width <= _F64_EXACT_WIDTH:
        v = overflow_float(r, t)
        if torch.isnan(v).any():
            raise ValueError(f"NaN cannot be converted to the integer codes of {t}: a fixed-point format has no NaN")
        return v.to(torch.int64)
    return _finish_int64(r, t, frac, out_dtype, want)


def _finish_int64(r: torch.Tensor, t: FixedType, frac: "int | torch.Tensor", out_dtype: torch.dtype, want: str) -> torch.Tensor:
    """Overflow handling and output for 54..64-bit words (codes beyond float64's 53 bits)."""
    nan = torch.isnan(r)
    if want == "codes" and nan.any():
        raise ValueError(f"NaN cannot be converted to the integer codes of {t}: a fixed-point format has no NaN")
    if want == "codes" and not t.signed and t.width == 64:
        raise ValueError(
            f"the codes of {t} do not fit int64 (up to 2**64-1); use at most 63 bits for unsigned "
            "integer codes, or qfx.quantize for the values"
        )
    zero = torch.zeros((), dtype=r.dtype, device=r.device)
    o = t.overflow
    if o in (Overflow.AP_WRAP, Overflow.AP_WRAP_SM):
        # Infinite or huge codes have all low bits zero: they wrap to 0, as in ap_fixed.
        codes = _int64_wrap(torch.where(nan | torch.isinf(r), zero, r), t)
    else:
        high = t.max_code
        low = -t.max_code if (t.signed and o is Overflow.AP_SAT_SYM) else t.min_code
        above = r >= float(high + 1)  # 2**k: exact in float64, unlike high itself
        # r is a float integer: compare against powers of two, which float64 holds exactly.
        if t.signed and o is Overflow.AP_SAT_SYM:
            below = r <= -float(1 << (t.width - 1))
        else:
            below = r < float(low)
        inside = torch.where(above | below | nan, zero, r).to(torch.int64)
        if o is Overflow.AP_SAT_ZERO:
            codes = torch.where(above | below, torch.zeros_like(inside), inside)
        else:
            codes = torch.where(above, torch.full_like(inside, _int64_literal(high)), inside)
            codes = torch.where(below, torch.full_like(inside, low), codes)
    if want == "codes":
        return codes
    if not t.signed and t.width == 64:
        # The int64 holds the bit pattern; the code is that plus 2**64 when negative.
        values = codes.to(torch.float64) + torch.where(codes < 0, 2.0**64, 0.0).to(torch.float64)
        back = values - torch.where(codes < 0, 2.0**64, 0.0).to(torch.float64)
    else:
        values = codes.to(torch.float64)
        back = values
    inside64 = (back >= -(2.0**63)) & (back < 2.0**63)
    exact = inside64 & (torch.where(inside64, back, zero).to(torch.int64) == codes)
    if not bool((exact | nan).all()):
        raise ValueError(
            f"some results in {t} are not representable in float64 (more than 53 significant "
            "bits, e.g. a saturated extreme); use qfx.to_codes for the exact integer codes"
        )
    values = torch.where(nan, torch.full_like(values, float("nan")), values)
    values = _unscale(values, frac)
    return values if values.dtype == out_dtype else values.to(out_dtype)


def _int64_literal(code: int) -> int:
    """An unsigned 64-bit code as the int64 with the same bits."""
    return code - (1 << 64) if code >= (1 << 63) else code
