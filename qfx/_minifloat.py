"""Exact minifloat (eXmY) conversion kernels on torch tensors.

Round to nearest, ties to even (or stochastic rounding) at the quantum of the
value's binade, ``2**(max(e, emin) - M)``, where ``e = floor(log2|x|)``; the
division by the quantum is a power-of-two scaling and therefore exact.

Special values, for every format (documented in ``qfx.quantize``):

* NaN input gives NaN (also for formats without a NaN encoding, where the
  float emulation keeps it visible; :func:`minifloat_bits` refuses it).
* A finite result beyond ``max``: ``saturate`` -> ``+-max``; otherwise inf
  (``inf_nan="ieee"``) or NaN (``"fn"``).
* +-inf input: inf where the format has inf and does not saturate, ``+-max``
  when it saturates, NaN for non-saturating ``"fn"`` formats.
* Without subnormals, results below the smallest normal flush to signed zero.
* The sign of zero is kept (``-0.0`` stays ``-0.0``; tiny negatives round to ``-0.0``).
"""

from __future__ import annotations

import torch

from .types import MinifloatType

_F32_MIN_SUBNORMAL_EXP = -149
_F32_MAX_EXP = 127


def compute_dtype(x: torch.Tensor, t: MinifloatType) -> torch.dtype:
    """float32 when the input and every value of ``t`` are exact in float32, else float64."""
    fits32 = (
        t.mantissa_bits <= 23
        and t.emin >= -126
        and t.emin - t.mantissa_bits >= -149
        and t.emax <= 127
    )
    if fits32 and x.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return torch.float32
    return torch.float64


def result_dtype(x: torch.Tensor, t: MinifloatType) -> torch.dtype:
    """The input dtype when it holds every value of ``t``, else the compute dtype."""
    # (mantissa bits, smallest subnormal exponent, largest exponent) of the narrow floats
    limits = {torch.float16: (10, -24, 15), torch.bfloat16: (7, -133, 127)}
    if x.dtype in limits:
        m, low, high = limits[x.dtype]
        if t.mantissa_bits <= m and t.emin - t.mantissa_bits >= low and t.emax <= high:
            return x.dtype
    return compute_dtype(x, t)


# Sign-cleared exponent field of IEEE binary32 / binary64, and their int views.
_EXP_MASK = {torch.float32: (0x7F800000, torch.int32), torch.float64: (0x7FF0000000000000, torch.int64)}


def _binade_quantum(a: torch.Tensor, t: MinifloatType) -> torch.Tensor:
    """``2**(max(floor(log2 a), emin) - M)`` for finite ``a >= 0``, exactly.

    Masking the exponent field of ``a`` gives ``2**floor(log2 a)`` (0 for
    inputs below the dtype's normal range, which the clamp to the format's
    subnormal quantum then covers: compute_dtype guarantees ``emin`` lies in
    the dtype's normal range).
    """
    mask, int_dtype = _EXP_MASK[a.dtype]
    power = (a.view(int_dtype) & mask).view(a.dtype)
    return power.mul_(2.0 ** -t.mantissa_bits).clamp_min_(2.0 ** (t.emin - t.mantissa_bits))


def rounded_magnitude(
    x: torch.Tensor,
    t: MinifloatType,
    *,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(|x| rounded on t's grid with an unbounded top exponent, x in the compute dtype)``."""
    cd = compute_dtype(x, t)
    xc = x.to(cd)
    # Clamping keeps NaN and turns inf into the largest finite float, which then overflows the format.
    a = torch.abs(xc).clamp_max_(torch.finfo(cd).max)
    quantum = _binade_quantum(a, t)
    scaled = a.div_(quantum)  # exact: division by a power of two, result <= 2**(M+1)
    if stochastic:
        noise = torch.rand(scaled.shape, dtype=cd, device=scaled.device, generator=generator)
        q = scaled.add_(noise).floor_()
    else:
        q = scaled.round_()  # ties to even
    return q.mul_(quantum), xc


def quantize_minifloat(
    x: torch.Tensor,
    t: MinifloatType,
    *,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Values of ``t`` nearest to ``x`` (see the module docstring for special values).

    One kernel for every layout. (torch's own float8 casts were measured slower than
    this on CPU, and torch rounds float64 inputs to float8 through float32.)
    """
    q, xc = rounded_magnitude(x, t, stochastic=stochastic, generator=generator)
    if not t.subnormals:
        q = torch.where(q < t.min_normal, torch.zeros((), dtype=q.dtype, device=q.device), q)
    overflow_value = t.max if t.saturate else (float("inf") if t.has_inf else float("nan"))
    q = torch.where(q > t.max, torch.full((), overflow_value, dtype=q.dtype, device=q.device), q)
    return q.copysign_(xc)


def minifloat_bits(values: torch.Tensor, t: MinifloatType) -> torch.Tensor:
    """Bit patterns (int64: sign | exponent field | mantissa field) of values of ``t``.

    ``values`` must already be values of ``t`` (the output of quantize). NaN
    maps to the format's canonical NaN (all ones below the sign for ``fn``,
    quiet NaN for ``ieee``); a format without NaN raises.
    """
    v = values.double()
    nan = torch.isnan(v)
    if t.inf_nan == "none" and bool(nan.any()):
        raise ValueError(f"{t} has no NaN encoding: the input holds NaN")
    m, e_bits = t.mantissa_bits, t.exponent_bits
    sign = torch.signbit(v).to(torch.int64)
    a = torch.abs(torch.where(nan, torch.zeros_like(v), v))
    inf = torch.isinf(a)
    a_fin = torch.where(inf, torch.zeros_like(a), a)
    _, exp = torch.frexp(a_fin)
    e = torch.clamp_min(exp - 1, t.emin)
    normal = a_fin >= t.min_normal
    field_exp = torch.where(normal, e + t.bias, torch.zeros_like(e)).to(torch.int64)
    frac = torch.ldexp(a_fin, -(e - m)) - torch.where(normal, 2.0**m, 0.0).to(torch.float64)
    field_man = frac.to(torch.int64)
    if not bool((torch.ldexp(field_man.double() + torch.where(normal, 2.0**m, 0.0).double(), e - m) == a_fin).all()):
        raise ValueError(f"minifloat_bits: some values are not values of {t}; quantize them first")
    top = (1 << e_bits) - 1
    if t.has_inf:
        field_exp = torch.where(inf, torch.full_like(field_exp, top), field_exp)
        field_man = torch.where(inf, torch.zeros_like(field_man), field_man)
        nan_man = 1 << (m - 1) if m > 0 else 0
    elif bool(inf.any()):
        raise ValueError(f"{t} has no inf encoding: the input holds inf")
    else:
        nan_man = (1 << m) - 1
    field_exp = torch.where(nan, torch.full_like(field_exp, top), field_exp)
    field_man = torch.where(nan, torch.full_like(field_man, nan_man), field_man)
    return (sign << (e_bits + m)) | (field_exp << m) | field_man


def minifloat_from_bits(bits: torch.Tensor, t: MinifloatType) -> torch.Tensor:
    """Values (float64) of bit patterns of ``t``."""
    b = bits.to(torch.int64)
    m, e_bits = t.mantissa_bits, t.exponent_bits
    if bool(((b < 0) | (b >= (1 << t.bits))).any()):
        raise ValueError(f"bit patterns of {t} must lie in 0..{(1 << t.bits) - 1}")
    sign = (b >> (e_bits + m)) & 1
    field_exp = (b >> m) & ((1 << e_bits) - 1)
    field_man = b & ((1 << m) - 1)
    top = (1 << e_bits) - 1
    normal = field_exp > 0
    mant = field_man.double() + torch.where(normal, 2.0**m, 0.0).double()
    exp = torch.where(normal, field_exp - t.bias, torch.full_like(field_exp, t.emin)) - m
    v = torch.ldexp(mant, exp)
    if t.inf_nan == "ieee":
        v = torch.where((field_exp == top) & (field_man == 0), torch.full_like(v, float("inf")), v)
        v = torch.where((field_exp == top) & (field_man != 0), torch.full_like(v, float("nan")), v)
    elif t.inf_nan == "fn":
        v = torch.where((field_exp == top) & (field_man == (1 << m) - 1), torch.full_like(v, float("nan")), v)
    if not t.subnormals:
        v = torch.where(normal, v, torch.zeros_like(v))
    return torch.where(sign.bool(), -v, v)
