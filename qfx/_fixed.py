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
  exactly (``floor(s + 0.5)`` is not: ``s + 0.5`` can round up to the next
  integer for ``s`` a fraction of an ulp below a tie).
* float32 carries codes up to 2**22 exactly, float64 up to 2**53; wider words
  (54..64 bits) finish in int64 arithmetic.
"""

from __future__ import annotations

import functools

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


@functools.lru_cache(maxsize=4096)
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


@functools.lru_cache(maxsize=4096)
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
    return x * 2.0**frac


def _unscale(r: torch.Tensor, frac: "int | torch.Tensor") -> torch.Tensor:
    # r is a fresh tensor owned by the caller: scale in place (saves an allocation).
    if isinstance(frac, torch.Tensor):
        return r.mul_(torch.exp2(-frac.to(r.dtype)))
    return r.mul_(2.0**-frac)


def round_scaled(s: torch.Tensor, rounding: Rounding) -> torch.Tensor:
    """Round the scaled value ``s`` (exact float) to an integer by an ap_fixed quantization mode.

    Through ``d = s - floor(s)``, which is exact except for ``s`` in (-0.5, 0): there
    ``d`` lies in (0.5, 1) but may round to 0.5 and look like a tie. Every mode rounds
    such ``s`` to 0 (up from ``floor(s) = -1``), which the tie conditions below honour.
    ``floor(s + 0.5)`` is not used: ``s + 0.5`` rounds up to 1.0 for ``s`` a fraction
    of an ulp below 0.5.
    """
    if rounding is Rounding.AP_TRN:
        return torch.floor(s)
    if rounding is Rounding.AP_TRN_ZERO:
        return torch.trunc(s)
    if rounding is Rounding.AP_RND_CONV:
        return torch.round(s)  # half to even, exact
    f = torch.floor(s)
    d = s - f  # in [0, 1); exact unless -0.5 < s < 0 (then 0.5 <= d < 1)
    if rounding is Rounding.AP_RND:
        up = d >= 0.5
    elif rounding is Rounding.AP_RND_ZERO:
        up = (d > 0.5) | ((d == 0.5) & (s < 0))
    else:
        # A tie that is not one: d rounded to 0.5 for -0.5 < s < 0, which must go up to 0.
        false_tie = (d == 0.5) & (s > -0.5) & (s < 0)
        if rounding is Rounding.AP_RND_MIN_INF:
            up = (d > 0.5) | false_tie
        else:  # AP_RND_INF: real ties go up for s > 0
            up = (d > 0.5) | ((d == 0.5) & (s > 0)) | false_tie
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


def _dropped_bit(s: torch.Tensor, width: int) -> torch.Tensor:
    """Bit ``width`` of the truncated code ``floor(s)`` (before any rounding carry).

    ap_fixed's AP_WRAP_SM compares the new sign bit with this bit, the lowest
    one dropped from the source, read before quantization adds its carry.
    Infinite and huge codes have it 0 (their low bits are all zero).
    """
    finite = torch.where(torch.isinf(s), torch.zeros((), dtype=s.dtype, device=s.device), s)
    return torch.remainder(torch.floor(torch.floor(finite) / float(1 << width)), 2.0) == 1


def _wrap_sm_float(r: torch.Tensor, s: torch.Tensor, t: FixedType) -> torch.Tensor:
    """AP_WRAP_SM (ap_fixed_base::overflow_adjust): on overflow, wrap; then, where the new
    sign bit differs from the lowest dropped bit of the truncated source, invert all bits."""
    v = _wrap_float(r, t)
    flip = out_of_range(r, t) & ((v < 0) != _dropped_bit(s, t.width))
    return torch.where(flip, -v - 1, v)


def overflow_float(r: torch.Tensor, t: FixedType, s: torch.Tensor) -> torch.Tensor:
    """Apply the overflow mode to float integer codes ``r`` rounded from the scaled
    source ``s`` (NaN propagates)."""
    lo, hi = float(t.min_code), float(t.max_code)
    o = t.overflow
    if o is Overflow.AP_SAT or (o is Overflow.AP_SAT_SYM and not t.signed):
        return r.clamp_(lo, hi)
    if o is Overflow.AP_SAT_SYM:
        return r.clamp_(float(sat_sym_low(t)), hi)
    if o is Overflow.AP_SAT_ZERO:
        return torch.where((r < lo) | (r > hi), torch.zeros((), dtype=r.dtype, device=r.device), r)
    if o is Overflow.AP_WRAP:
        return _wrap_float(r, t)
    return _wrap_sm_float(r, s, t)


def out_of_range(r: torch.Tensor, t: FixedType) -> torch.Tensor:
    """Elements whose rounded code the overflow mode changes (saturated or wrapped)."""
    # r holds float integers; compare with powers of two, which float64 holds exactly even
    # where max_code (2**63 - 1, say) would round.
    above = r >= float(t.max_code + 1)
    low = sat_sym_low(t) if t.overflow is Overflow.AP_SAT_SYM else t.min_code
    if low == t.min_code + 1:  # -(2**(W-1) - 1) may round in float64; its neighbour does not
        return above | (r <= float(t.min_code))
    return above | (r < float(low))


def sat_sym_low(t: FixedType) -> int:
    """The most negative code AP_SAT_SYM produces: the min code with its lsb set
    (``-(2**(W-1)) + 1``; -1 for a 1-bit signed word; 0 unsigned), as ap_fixed does."""
    return t.min_code | 1 if t.signed else 0


def _int64_wrap(r: torch.Tensor, s: torch.Tensor, t: FixedType) -> torch.Tensor:
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
        flip = out_of_range(r, t) & ((wrapped < 0) != _dropped_bit(s, w))
        wrapped = torch.where(flip, -wrapped - 1, wrapped)
    return wrapped


def quantize_fixed(x: torch.Tensor, t: FixedType, frac: "int | torch.Tensor", out_dtype: torch.dtype) -> torch.Tensor:
    """Values of ``t`` after ``T y = x`` (float tensor in ``out_dtype``)."""
    return _convert(x, t, frac, out_dtype, want="values")


def quantize_fixed_with_mask(
    x: torch.Tensor, t: FixedType, frac: "int | torch.Tensor", out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, inside)``: the values and the mask of elements the overflow mode left
    alone, from one rounding pass (the training path needs both)."""
    if t.width > _F64_EXACT_WIDTH:
        return quantize_fixed(x, t, frac, out_dtype), ~out_of_range(rounded_codes(x, t, frac), t)
    fast = _fast_path(x, t, frac)
    xc = x.float() if fast else x.double()
    s = _scale(xc, frac)
    r = _round_exact(s, xc, t)
    inside = ~out_of_range(r, t)  # before overflow_float, which may clamp r in place
    v = _unscale(overflow_float(r, t, s), frac)
    return (v if v.dtype == out_dtype else v.to(out_dtype)), inside


def codes_fixed(x: torch.Tensor, t: FixedType, frac: "int | torch.Tensor", *, bit_pattern: bool = False) -> torch.Tensor:
    """Integer codes (int64) of ``T y = x``; raises on NaN.

    ``bit_pattern=True`` lets a 64-bit ap_ufixed return the int64 holding its
    code's bits (code mod 2**64) instead of raising.
    """
    return _convert(x, t, frac, torch.float64, want="bits" if bit_pattern else "codes")


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
    r = round_scaled(s, t.rounding)
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
        v = overflow_float(r, t, s)
        v = _unscale(v, frac)
        return v if v.dtype == out_dtype else v.to(out_dtype)
    if t.width <= _F64_EXACT_WIDTH:
        v = overflow_float(r, t, s)
        if torch.isnan(v).any():
            raise ValueError(f"NaN cannot be converted to the integer codes of {t}: a fixed-point format has no NaN")
        return v.to(torch.int64)
    return _finish_int64(r, s, t, frac, out_dtype, want)


def _finish_int64(
    r: torch.Tensor, s: torch.Tensor, t: FixedType, frac: "int | torch.Tensor", out_dtype: torch.dtype, want: str
) -> torch.Tensor:
    """Overflow handling and output for 54..64-bit words (codes beyond float64's 53 bits)."""
    nan = torch.isnan(r)
    if want in ("codes", "bits") and nan.any():
        raise ValueError(f"NaN cannot be converted to the integer codes of {t}: a fixed-point format has no NaN")
    if want == "bits":
        want = "codes"
    elif want == "codes" and not t.signed and t.width == 64:
        raise ValueError(
            f"the codes of {t} do not fit int64 (up to 2**64-1); use at most 63 bits for unsigned "
            "integer codes, or qfx.quantize for the values"
        )
    zero = torch.zeros((), dtype=r.dtype, device=r.device)
    o = t.overflow
    if o in (Overflow.AP_WRAP, Overflow.AP_WRAP_SM):
        # Infinite or huge codes have all low bits zero: they wrap to 0, as in ap_fixed.
        codes = _int64_wrap(torch.where(nan | torch.isinf(r), zero, r), s, t)
    else:
        high = t.max_code
        low = sat_sym_low(t) if o is Overflow.AP_SAT_SYM else t.min_code
        above = r >= float(high + 1)  # 2**k: exact in float64, unlike high itself
        below = out_of_range(r, t) & (r < 0)
        inside = torch.where(above | below | nan, zero, r)
        if not t.signed and t.width == 64:  # codes >= 2**63 as the int64 with the same bits (exact)
            inside = torch.where(inside >= 2.0**63, inside - 2.0**64, inside)
        inside = inside.to(torch.int64)
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
