"""OCP Microscaling (MX v1.0) conversion kernels on torch tensors (see :class:`qfx.types.MXType`).

For each block of ``block_size`` consecutive elements along the format's axis
(spec section 6.3)::

    shared_exp = floor(log2(max|V|)) - emax_elem      # exact, from the float's exponent
    shared_exp = max(shared_exp, -127)                # E8M0's smallest scale; a zero block too
    P_i        = element(V_i / 2**shared_exp)         # round to nearest even, saturate
    value_i    = P_i * 2**shared_exp

Special values: a block holding NaN or +-inf (``log2(max)`` is not finite), or
whose shared exponent exceeds E8M0's 127 (float64 inputs beyond ~2**127), gets
the NaN scale (code 0xFF) and every one of its values is NaN; its element codes
are 0 (the spec: a NaN scale makes the whole block NaN whatever the elements).
These are the rules of the spec's reference library (microsoft/microxcaling,
``_quantize_mx`` with ``round="even"``, without its optional flush of float32
subnormal inputs). Elements beyond the element's max normal saturate to it,
also for E4M3 and E5M2.

Exactness: the computation runs in float64. ``floor(log2 max)`` is read from
``frexp`` (exact, subnormals included); ``V / 2**shared_exp`` multiplies by an
exact power of two built from its bits (no rounding: the quotient lies below
``2**(emax_elem+1)``, and a quotient that underflows float64 lies far below the
element's smallest subnormal, where every rounding gives 0). Every MX value has
at most 8 significant bits and an exponent in -143..127, so the result is exact
in float32 for float32/bfloat16/float16 inputs (returned as float32) and in
float64 for float64 inputs (returned as float64).

Stochastic rounding (training only; the hardware rounds to nearest even): the
element rounding adds uniform noise from ``torch.rand(generator=...)`` before
flooring the magnitude at the element's quantum, so a value rounds away from
zero with probability equal to its remainder (unbiased); the shared exponent is
not random. Pass a seeded ``torch.Generator`` for reproducible draws: the same
generator state, shape and device give the same bits.
"""

from __future__ import annotations

import torch

from . import _fixed, _minifloat
from .types import MX_SCALE_BIAS, MX_SCALE_NAN, FixedType, MinifloatType, MXType

__all__ = ["mx_blocks", "quantize_mx", "quantize_mx_with_mask", "mx_encode", "mx_decode", "mx_saturated"]


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """``2.0**k`` (float64) for integer ``k`` in -1022..1023, built from its bits (exact)."""
    return ((k.to(torch.int64) + 1023) << 52).view(torch.float64)


def result_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for narrower float inputs (every MX value of them is exact there), else float64."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _blocked(x: torch.Tensor, t: MXType, what: str) -> tuple[torch.Tensor, int]:
    """``x`` as float64 ``[..., n_blocks, block_size]`` (the block axis moved last), and the axis."""
    if x.dim() == 0:
        raise ValueError(f"{what} is a scalar: an MX format {t} needs a tensor with an axis of blocks")
    axis = t.block_axis(tuple(x.shape), what)
    xm = x.detach().to(torch.float64).movedim(axis, -1)
    return xm.reshape(*xm.shape[:-1], xm.shape[-1] // t.block_size, t.block_size), axis


def _unblocked(b: torch.Tensor, axis: int) -> torch.Tensor:
    return b.reshape(*b.shape[:-2], b.shape[-2] * b.shape[-1]).movedim(-1, axis)


def mx_blocks(x: torch.Tensor, t: MXType, what: str = "the tensor") -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(blocks [..., n_blocks, block_size] float64, shared exponents [..., n_blocks] int64, axis)``.

    The shared exponent of a NaN block is 128 (one beyond E8M0's range).
    """
    blocks, axis = _blocked(x, t, what)
    amax = blocks.abs().amax(dim=-1)  # NaN propagates
    _, exp = torch.frexp(torch.where(torch.isfinite(amax), amax, torch.zeros_like(amax)))
    # frexp: amax = m * 2**exp with 0.5 <= m < 1, so floor(log2 amax) = exp - 1 (amax > 0).
    shared = (exp.to(torch.int64) - 1 - t.emax_elem).clamp_min_(-MX_SCALE_BIAS)
    shared = torch.where(amax > 0, shared, torch.full_like(shared, -MX_SCALE_BIAS))
    nan_block = ~torch.isfinite(amax) | (shared > MX_SCALE_BIAS)
    shared = torch.where(nan_block, torch.full_like(shared, MX_SCALE_BIAS + 1), shared)
    return blocks, shared, axis


def _element_values(
    scaled: torch.Tensor, t: MXType, stochastic: bool, generator: "torch.Generator | None"
) -> torch.Tensor:
    """Element values (float64) of the scaled block entries (finite, |v| < 2**(emax_elem+1))."""
    e = t.element
    if isinstance(e, MinifloatType):
        return _minifloat.quantize_minifloat(scaled, e, stochastic=stochastic, generator=generator).to(torch.float64)
    assert isinstance(e, FixedType)
    if not stochastic:
        return _fixed.quantize_fixed(scaled, e, e.frac_bits, torch.float64)
    # MXINT8, stochastic: floor(|v| * 2**F + U) saturated to the symmetric range, signed back.
    a = scaled.abs().mul_(2.0**e.frac_bits)
    a = a.add_(torch.rand(a.shape, dtype=a.dtype, device=a.device, generator=generator)).floor_()
    return a.clamp_max_(float(e.max_code)).mul_(2.0**-e.frac_bits).copysign_(scaled)


def _split(
    x: torch.Tensor, t: MXType, stochastic: bool, generator: "torch.Generator | None", what: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``(scaled blocks, element values, shared exponents, NaN-block mask, axis)``."""
    blocks, shared, axis = mx_blocks(x, t, what)
    nan_block = shared > MX_SCALE_BIAS
    safe = torch.where(nan_block, torch.zeros_like(shared), shared)
    scaled = blocks * _pow2(-safe)[..., None]
    scaled = torch.where(nan_block[..., None], torch.zeros_like(scaled), scaled)
    elems = _element_values(scaled, t, stochastic, generator)
    return scaled, elems, shared, nan_block, axis


def _saturated(scaled: torch.Tensor, nan_block: torch.Tensor, t: MXType) -> torch.Tensor:
    return (scaled.abs() > t.element.max) & ~nan_block[..., None]


def quantize_mx_with_mask(
    x: torch.Tensor,
    t: MXType,
    *,
    stochastic: bool = False,
    generator: "torch.Generator | None" = None,
    what: str = "the tensor",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(MX values of x, mask of the elements left alone)`` from one pass (the training path):
    the mask is False where the element saturated (:func:`mx_saturated`) and in NaN blocks."""
    scaled, elems, shared, nan_block, axis = _split(x, t, stochastic, generator, what)
    safe = torch.where(nan_block, torch.zeros_like(shared), shared)
    values = elems * _pow2(safe)[..., None]
    values = torch.where(nan_block[..., None], torch.full_like(values, float("nan")), values)
    inside = ~_saturated(scaled, nan_block, t) & ~nan_block[..., None]
    return _unblocked(values, axis).to(result_dtype(x)), _unblocked(inside, axis)


def quantize_mx(
    x: torch.Tensor,
    t: MXType,
    *,
    stochastic: bool = False,
    generator: "torch.Generator | None" = None,
    what: str = "the tensor",
) -> torch.Tensor:
    """MX values of ``x`` (shape of ``x``; float32 or float64, see the module docstring)."""
    return quantize_mx_with_mask(x, t, stochastic=stochastic, generator=generator, what=what)[0]


def mx_saturated(x: torch.Tensor, t: MXType, what: str = "the tensor") -> torch.Tensor:
    """Boolean mask (shape of ``x``) of the elements whose scaled value lies beyond the element's max.

    These saturate (or round down to the max); NaN blocks count as not saturated.
    """
    scaled, _, _, nan_block, axis = _split(x, t, False, None, what)
    return _unblocked(_saturated(scaled, nan_block, t), axis)


def mx_encode(x: torch.Tensor, t: MXType, what: str = "the tensor") -> tuple[torch.Tensor, torch.Tensor]:
    """``(scales, element codes)`` (int64) of ``x`` converted to ``t`` (round to nearest even).

    ``scales`` has the shape of ``x`` with the block axis divided by ``block_size``:
    the E8M0 byte ``shared_exp + 127`` (0xFF for a NaN block). ``codes`` has the
    shape of ``x``: minifloat elements as bit patterns ``sign | exponent | mantissa``,
    MXINT8 elements as the signed integer ``round(P * 64)`` (-127..127). A NaN block's
    element codes are 0.
    """
    _, elems, shared, nan_block, axis = _split(x, t, False, None, what)
    e = t.element
    elems = torch.where(nan_block[..., None], torch.zeros_like(elems), elems)
    if isinstance(e, MinifloatType):
        codes = _minifloat.minifloat_bits(elems, e)
    else:
        codes = _fixed.codes_fixed(elems, e, e.frac_bits)
    scales = torch.where(nan_block, torch.full_like(shared, MX_SCALE_NAN), shared + MX_SCALE_BIAS)
    return scales.movedim(-1, axis), _unblocked(codes, axis)


def mx_decode(scales: torch.Tensor, codes: torch.Tensor, t: MXType) -> torch.Tensor:
    """Values (float64) of MX ``(scales, element codes)`` as :func:`mx_encode` returns them."""
    for name, a in (("scales", scales), ("codes", codes)):
        if not isinstance(a, torch.Tensor) or a.is_floating_point() or a.is_complex():
            raise TypeError(f"mx_decode needs integer torch.Tensors; {name} is {type(a).__name__}")
    if codes.dim() == 0:
        raise ValueError(f"mx_decode: the element codes of {t} must have an axis of blocks")
    axis = t.block_axis(tuple(codes.shape), "the element codes")
    want = list(codes.shape)
    want[axis] //= t.block_size
    if list(scales.shape) != want:
        raise ValueError(f"mx_decode: scales of shape {list(scales.shape)} do not match codes of shape "
                         f"{list(codes.shape)} with {t} (expected {want})")
    s = scales.to(torch.int64)
    if bool(((s < 0) | (s > MX_SCALE_NAN)).any()):
        raise ValueError("mx_decode: E8M0 scale codes must lie in 0..255")
    e = t.element
    if isinstance(e, MinifloatType):
        elems = _minifloat.minifloat_from_bits(codes, e)
    else:
        c = codes.to(torch.int64)
        if bool(((c < -e.max_code) | (c > e.max_code)).any()):
            raise ValueError("mx_decode: MXINT8 element codes must lie in -127..127")
        elems = c.double() * 2.0**-e.frac_bits
    eb = elems.movedim(axis, -1)
    eb = eb.reshape(*eb.shape[:-1], eb.shape[-1] // t.block_size, t.block_size)
    sb = s.movedim(axis, -1)
    nan_block = sb == MX_SCALE_NAN
    values = eb * _pow2(torch.where(nan_block, 0, sb - MX_SCALE_BIAS))[..., None]
    values = torch.where(nan_block[..., None], torch.full_like(values, float("nan")), values)
    return _unblocked(values, axis)
