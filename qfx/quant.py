"""Tensor quantizers: bit-exact conversion into any qfx format, with autograd.

``quantize(x, fmt)`` returns the values a variable of type ``fmt`` holds after
the conversion ``fmt y = x`` (Vitis HLS semantics for ``ap_fixed``), as a float
tensor on the input's device.

Exactness and dtypes
    The result dtype is the input's when it holds every value of the format
    exactly, else the narrowest wider float that does (float32, then float64).
    Computation happens in float32 only where that is provably exact and in
    float64/int64 otherwise. Values that even float64 cannot hold (a 54..64-bit
    word saturated to its extreme) raise ``ValueError``; :func:`to_codes`
    returns the exact integer codes for any width up to 64.

Special values
    Fixed point (``FixedType`` and ``KHot``): NaN stays NaN in the returned
    float tensor (no fixed-point format encodes it, and qfx does not invent a
    value); :func:`to_codes` raises on NaN. +-inf behave as the ap_fixed
    double constructor treats them, as beyond every finite value: saturating
    modes give the extreme, ``AP_SAT_ZERO`` gives 0, and the wrap modes give 0
    (an infinitely large code has no nonzero low bits). K-hot projects +-inf
    to its extreme values.
    Minifloat: see ``qfx._minifloat`` (NaN -> NaN; overflow -> +-max when
    saturating, else inf or NaN as the format encodes).
    MX (``MXType``): see ``qfx._mx`` (a block holding NaN or inf is all NaN;
    elements saturate to the element's max). :func:`mx_encode` /
    :func:`mx_decode` give the E8M0 scales and element codes.

Gradients
    ``x`` gets a straight-through gradient: 1 where the value is inside the
    format's range, 0 where it saturated or wrapped (or overflowed a
    minifloat). MX: 1 where ``|x| / 2**shared_exp`` lies within the element's
    max (the shared exponent is treated as a constant), 0 where it saturated
    and in NaN blocks.

    ``frac_bits`` (fixed point only) is the learnable binary point: a float
    tensor, scalar or broadcastable to ``x`` (e.g. ``[C, 1, 1, 1]`` for per
    output channel), with the word length fixed. The forward pass uses
    ``F = round(frac_bits)`` (so ``int_bits = W - F``); the backward pass is
    the LSQ estimator (Esser et al., ICLR 2020) for the step ``2**-F``,
    chained through ``d(2**-F)/dF = -ln2 * 2**-F`` and straight through the
    round, as in TQT's log2 threshold training (Jain et al., MLSys 2020)::

        dq/dF = ln2 * (x - q)   where x is inside the range
        dq/dF = -ln2 * q        where x saturated (q is the clipped extreme)

    Wrapped elements are treated as saturated: training should move the binary
    point so that nothing wraps.

Fused CPU kernels
    The differentiable cast of float32/float64 CPU tensors with one binary point, a
    word of at most 22 bits and a saturating mode (``_fast_plan``) runs as one C++
    loop forward and one backward (:mod:`qfx._fused`, compiled with g++ on first use,
    under a second, cached in torch's extension folder). Same values and ``x``
    gradients bit for bit as the torch ops; the ``frac_bits`` gradient is summed in
    float64. ``QFX_NO_CPP=1`` (or no compiler: one warning) keeps the torch ops.

Under torch.compile
    No tensor value is read while tracing: a learnable binary point goes through
    ``torch.ops.qfx.fixed_cast`` (:mod:`qfx._compiled`; format-only fake kernel), or, for a
    layer's scalar binary point where the fast cast applies, its torch-op twin
    (``qfx._compiled.fast_fixed_cast``); K-hot values through ``torch.ops.qfx.khot_values``.
    The layers' value-dependent choices come from the compile plan (:mod:`qfx.nn.plan`).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Union

import torch

from . import _fixed, _fused, _khot, _minifloat, _mx
from .types import MAX_FRAC_BITS, Format, FixedType, KHot, MinifloatType, MXType, Overflow, parse_type

__all__ = [
    "quantize",
    "set_compile",
    "to_codes",
    "from_codes",
    "overflow_mask",
    "count_overflow",
    "mx_encode",
    "mx_decode",
]

FormatLike = Union[Format, str]
_LN2 = math.log(2.0)

# Opt-in fused kernels: torch.compile (Inductor) turns the ~10 element-wise passes of a
# conversion into one loop. The first call per format and dtype compiles (tens of seconds
# on a small CPU, then cached by torch); the results are the same bits (tested).
_COMPILE = os.environ.get("QFX_COMPILE", "0") == "1"


def set_compile(enabled: bool) -> None:
    """Use torch.compile'd conversion kernels for forward-only fixed and minifloat quantize.

    Also enabled by the environment variable ``QFX_COMPILE=1``. Gradient paths,
    ``frac_bits``, stochastic rounding, K-hot and 54..64-bit words always run eagerly.
    """
    global _COMPILE
    _COMPILE = bool(enabled)


@functools.lru_cache(maxsize=256)
def _compiled_kernel(t: Format, in_dtype: torch.dtype, out_dtype: torch.dtype):
    if isinstance(t, FixedType):
        def kernel(x: torch.Tensor) -> torch.Tensor:
            return _fixed.quantize_fixed(x, t, t.frac_bits, out_dtype)
    else:
        def kernel(x: torch.Tensor) -> torch.Tensor:
            return _minifloat.quantize_minifloat(x, t).to(out_dtype)
    # Default dynamism: shapes become symbolic after the first recompile; the format stays constant.
    return torch.compile(kernel)


def _use_compiled(x: torch.Tensor, t: Format) -> bool:
    if not _COMPILE or x.requires_grad:
        return False
    if isinstance(t, FixedType):
        return t.width <= 53
    return isinstance(t, MinifloatType)


def _format(fmt: FormatLike) -> Format:
    return parse_type(fmt) if isinstance(fmt, str) else _checked(fmt)


def _checked(fmt: object) -> Format:
    if not isinstance(fmt, (FixedType, MinifloatType, KHot, MXType)):
        raise TypeError(
            f"expected a qfx format (FixedType, MinifloatType, KHot, MXType or a spelling such as "
            f"'ap_fixed<8,3>'), got {type(fmt).__name__}"
        )
    return fmt


def _check_tensor(x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"quantize needs a floating-point tensor, got {x.dtype}; convert integer codes with qfx.from_codes"
        )
    return x


def _int_frac(frac_bits: torch.Tensor, t: FixedType) -> "int | torch.Tensor":
    """The fractional-bit counts the forward pass uses: ``round(frac_bits)`` (checked).

    A single binary point (one element) comes back as a Python int (one ``.item()``,
    no tensor ops); a per-channel one as an int64 tensor.
    """
    fb = frac_bits.detach()
    if fb.numel() == 1:
        v = fb.item()
        if not math.isfinite(v):
            raise ValueError(f"frac_bits for {t} holds NaN or inf; the learnable binary point diverged (lower its learning rate)")
        f = round(v)  # half to even, as torch.round
        if abs(f) > MAX_FRAC_BITS:
            raise ValueError(
                f"frac_bits for {t} rounds to {f}..{f} fractional bits, beyond the +-{MAX_FRAC_BITS} "
                "qfx emulates exactly; the learnable binary point diverged (lower its learning rate)"
            )
        return int(f)
    if not bool(torch.isfinite(fb).all()):
        raise ValueError(f"frac_bits for {t} holds NaN or inf; the learnable binary point diverged (lower its learning rate)")
    f = torch.round(fb).to(torch.int64)
    lo, hi = (int(v) for v in torch.aminmax(f))
    if lo < -MAX_FRAC_BITS or hi > MAX_FRAC_BITS:
        raise ValueError(
            f"frac_bits for {t} rounds to {lo}..{hi} fractional bits, beyond the +-{MAX_FRAC_BITS} "
            "qfx emulates exactly; the learnable binary point diverged (lower its learning rate)"
        )
    return f


# -- fixed point --------------------------------------------------------------


def _fixed_forward(x: torch.Tensor, t: FixedType, frac: "int | torch.Tensor") -> torch.Tensor:
    lo, hi = _fixed.frac_bounds(frac)
    out_dtype = _fixed.result_dtype(t, x.dtype, lo, hi)
    return _fixed.quantize_fixed(x, t, frac, out_dtype)


class _FixedSTE(torch.autograd.Function):
    """Fixed-point quantizer with STE for x and the LSQ/TQT gradient for frac_bits."""

    @staticmethod
    def forward(ctx, x, frac_bits, t: FixedType):  # type: ignore[override]
        frac = t.frac_bits if frac_bits is None else _int_frac(frac_bits, t)
        lo, hi = _fixed.frac_bounds(frac)
        q, inside = _fixed.quantize_fixed_with_mask(x, t, frac, _fixed.result_dtype(t, x.dtype, lo, hi))
        ctx.save_for_backward(x, q, inside)
        ctx.has_frac = frac_bits is not None
        ctx.frac_shape = None if frac_bits is None else frac_bits.shape
        ctx.mark_non_differentiable(inside)
        return q

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, q, inside = ctx.saved_tensors
        grad_x = grad_f = None
        if ctx.needs_input_grad[0]:
            grad_x = grad * inside
            if grad_x.dtype != x.dtype:
                grad_x = grad_x.to(x.dtype)
        if ctx.has_frac and ctx.needs_input_grad[1]:
            # dq/dF / ln2 = x - q inside the range, -q where x saturated: (x where inside, else 0) - q.
            # Infinite inputs saturate: their term is -ln2 * q, finite; only NaN can propagate.
            xd = x if x.dtype == grad.dtype else x.to(grad.dtype)
            dq_df = torch.where(inside, xd, 0.0).sub_(q if q.dtype == grad.dtype else q.to(grad.dtype))
            if len(ctx.frac_shape) == 0:
                grad_f = (grad * dq_df).sum().mul_(_LN2).reshape(ctx.frac_shape)
            else:
                grad_f = (grad * dq_df).sum_to_size(ctx.frac_shape).mul_(_LN2)
        return grad_x, grad_f, None


# Fast training cast: narrow word, saturating, one binary point. One fused C++ loop each way
# on CPU (qfx._fused); otherwise a few element-wise torch ops on float tensors (no .item()
# beyond reading the binary point): per-call overhead dominates small training tensors.
@functools.lru_cache(maxsize=4096)
def _fast_plan(t: FixedType, frac: int) -> "tuple[float, float, float, float] | None":
    """``(scale, lo, hi, inv_scale)`` when :class:`_FixedSTEFast` applies to ``t`` with ``frac``.

    The conditions are those of the float32 path of ``_fixed`` (codes of at most 22 bits,
    0 <= frac <= 100, a saturating clamp mode), under which ``x * 2**frac``, the rounding,
    the clamp and the unscaling are all exact in float32 (see ``qfx._fixed``).
    """
    if t.width > _fixed._F32_MAX_WIDTH or not 0 <= frac <= _fixed._F32_MAX_FRAC:
        return None
    if t.overflow is Overflow.AP_SAT or (t.overflow is Overflow.AP_SAT_SYM and not t.signed):
        lo = float(t.min_code)
    elif t.overflow is Overflow.AP_SAT_SYM:
        lo = float(_fixed.sat_sym_low(t))
    else:
        return None
    if _fixed.result_dtype(t, torch.float32, frac, frac) != torch.float32:
        return None
    return 2.0**frac, lo, float(t.max_code), 2.0**-frac


class _FixedSTEFast(torch.autograd.Function):
    """:class:`_FixedSTE` for float32 ``x``, a scalar binary point and a ``_fast_plan`` format.

    Same forward values; the same gradients, up to the summation order of the frac_bits
    gradient and to saturated elements getting an exact 0 (not ``grad * 0``, which is NaN
    for a non-finite upstream gradient).

    On CPU the fused kernels of :mod:`qfx._fused` do each pass in one loop (same bits;
    the frac_bits dot product summed in float64); elsewhere, under ``QFX_NO_CPP=1``,
    without a compiler or under ``torch.compile``, the torch ops below.
    """

    @staticmethod
    def forward(ctx, x, frac_bits, t: FixedType, plan):  # type: ignore[override]
        scale, lo, hi, inv = plan
        k = _fused_kernels(x)
        if k is not None:
            return _fused_forward(ctx, x, frac_bits, t, plan, k)
        ctx.frac_shape = None if frac_bits is None else frac_bits.shape
        ctx.fused = None
        r = _fixed.round_scaled(x * scale, t.rounding)  # not yet saturated
        q = r.clamp(lo, hi).mul_(inv)
        # NaN codes count as inside (as in _fixed.out_of_range); hardtanh_backward's vectorised
        # and scalar loops disagree on NaN, so the saved codes have NaN as 0 (inf stay outside).
        ctx.save_for_backward(x, torch.nan_to_num_(r, nan=0.0), q)
        ctx.bounds = (lo - 0.5, hi + 0.5)
        return q

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        if ctx.fused is not None:
            return _FixedSTEFast._fused_backward(ctx, grad)
        x, r, q = ctx.saved_tensors
        lo, hi = ctx.bounds
        grad_x = grad_f = None
        # hardtanh_backward(g, r, lo, hi) = g where lo < r < hi, else 0: a select, exact.
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.hardtanh_backward(grad, r, lo, hi)
        if ctx.frac_shape is not None and ctx.needs_input_grad[1]:
            g = grad if grad.dtype == x.dtype else grad.to(x.dtype)
            # dq/dF / ln2 = x - q inside, -q saturated (inf inputs: -q, finite).
            d = torch.ops.aten.hardtanh_backward(x, r, lo, hi).sub_(q)
            grad_f = torch.dot(g.reshape(-1), d.reshape(-1)).mul_(_LN2).reshape(ctx.frac_shape)
            if grad_f.dtype != grad.dtype:
                grad_f = grad_f.to(grad.dtype)
        return grad_x, grad_f, None, None

    @staticmethod
    def _fused_backward(ctx, grad):
        x, inside, q = ctx.saved_tensors
        want_x = ctx.needs_input_grad[0]
        want_f = ctx.frac_shape is not None and ctx.needs_input_grad[1]
        if not (want_x or want_f):
            return None, None, None, None
        if torch.is_grad_enabled():  # create_graph: differentiable torch ops, same values
            return _FixedSTEFast._torch_backward(ctx, grad, want_x, want_f)
        g = grad
        if g.dtype != x.dtype or g.device.type != "cpu" or g.shape != x.shape:
            g = g.to(device="cpu", dtype=x.dtype).expand(x.shape)
        g = g.contiguous()
        grad_x, dot = ctx.fused.backward(g, x, q, inside, want_x, want_f)
        grad_f = None
        if want_f:
            grad_f = torch.tensor(dot * _LN2, dtype=grad.dtype)
            if grad_f.shape != ctx.frac_shape:
                grad_f = grad_f.reshape(ctx.frac_shape)
        return grad_x, grad_f, None, None

    @staticmethod
    def _torch_backward(ctx, grad, want_x: bool, want_f: bool):
        x, inside, q = ctx.saved_tensors
        m = inside.view(x.shape).bool()
        grad_x = grad_f = None
        if want_x:
            # float32: a select (exact 0 outside); float64: grad * inside, as _FixedSTE.
            grad_x = torch.where(m, grad, 0.0) if x.dtype == torch.float32 else grad * m
        if want_f:
            d = torch.where(m, x, 0.0) - q
            grad_f = (grad * d).sum().mul(_LN2).reshape(ctx.frac_shape)
        return grad_x, grad_f, None, None


class _FixedSTEFused64(torch.autograd.Function):
    """:class:`_FixedSTE` for float64 ``x`` on CPU, a scalar binary point and a ``_fast_plan``
    format, by the fused kernels: the same values (float64) and ``grad_x = grad * inside``;
    the frac_bits gradient up to its summation order."""

    @staticmethod
    def forward(ctx, x, frac_bits, t: FixedType, plan, k):  # type: ignore[override]
        return _fused_forward(ctx, x, frac_bits, t, plan, k)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return _FixedSTEFast._fused_backward(ctx, grad) + (None,)


def _fused_forward(ctx, x, frac_bits, t: FixedType, plan, k) -> torch.Tensor:
    """The fused kernel's forward pass, saving what ``_FixedSTEFast._fused_backward`` reads."""
    xc = x.contiguous()
    q, inside = k.forward(xc, plan, _fused.ROUNDING_CODES[t.rounding])
    ctx.fused = k
    ctx.frac_shape = None if frac_bits is None else frac_bits.shape
    ctx.save_for_backward(xc, inside, q)
    return q


_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


def _fused_kernels(x: torch.Tensor):
    """The fused CPU kernels when they apply to ``x`` (float32/float64 on CPU, eager), else None."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or _is_compiling():
        return None
    return _fused.kernels()


def _fixed_ste(x: torch.Tensor, frac_bits: "torch.Tensor | None", t: FixedType) -> torch.Tensor:
    """The differentiable fixed-point cast: the fast Function where it applies."""
    if frac_bits is not None and _is_compiling():  # traced: the registered op, no .item()
        from qfx._compiled import fixed_cast_ste

        return fixed_cast_ste(x, frac_bits, t)
    if x.dtype in (torch.float32, torch.float64) and (frac_bits is None or frac_bits.numel() == 1):
        frac = t.frac_bits if frac_bits is None else _int_frac(frac_bits, t)
        plan = _fast_plan(t, frac)
        if plan is not None:
            if x.dtype == torch.float32:
                return _FixedSTEFast.apply(x, frac_bits, t, plan)
            k = _fused_kernels(x)
            if k is not None:
                return _FixedSTEFused64.apply(x, frac_bits, t, plan, k)
    return _FixedSTE.apply(x, frac_bits, t)


# -- minifloat and K-hot ------------------------------------------------------


class _STE(torch.autograd.Function):
    """Straight-through gradient inside the representable range."""

    @staticmethod
    def forward(ctx, x, q, lo, hi):  # type: ignore[override]
        ctx.save_for_backward((x >= lo) & (x <= hi))
        return q

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def _minifloat_values(x, t: MinifloatType, stochastic: bool, generator) -> torch.Tensor:
    out_dtype = _minifloat.result_dtype(x, t)
    q = _minifloat.quantize_minifloat(x, t, stochastic=stochastic, generator=generator)
    return q if q.dtype == out_dtype else q.to(out_dtype)


def _khot_values(x: torch.Tensor, t: KHot) -> torch.Tensor:
    codes = _khot.khot_codes(x, t)
    out_dtype = _fixed.result_dtype(t.base, x.dtype, t.base.frac_bits, t.base.frac_bits)
    return (codes * (2.0 ** -t.base.frac_bits)).to(out_dtype)


class _MaskSTE(torch.autograd.Function):
    """Straight-through gradient where ``inside`` (a precomputed mask)."""

    @staticmethod
    def forward(ctx, x, q, inside):  # type: ignore[override]
        ctx.save_for_backward(inside)
        ctx.mark_non_differentiable(inside)
        return q

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return torch.where(inside, grad, torch.zeros((), dtype=grad.dtype, device=grad.device)), None, None


def _mx_quantize(x: torch.Tensor, t: MXType, stochastic: bool, generator, what: str) -> torch.Tensor:
    if not x.requires_grad:
        return _mx.quantize_mx(x, t, stochastic=stochastic, generator=generator, what=what)
    q, inside = _mx.quantize_mx_with_mask(x, t, stochastic=stochastic, generator=generator, what=what)
    return _MaskSTE.apply(x, q, inside)


def _assume_constant(fn):
    """``fn``'s result is a constant of its (format) arguments: torch.compile calls it instead of
    tracing into it (NumPy code tables, f-string spellings)."""
    compiler = getattr(torch, "compiler", None)
    mark = getattr(compiler, "assume_constant_result", None)
    return mark(fn) if mark is not None else fn


@_assume_constant
def _spelling(t: Format) -> str:
    return str(t)


@_assume_constant
def _stale_plan_message(spelling: str) -> str:
    """The message of a compiled fast cast whose binary point left the compile plan (a constant)."""
    from ._compiled import _stale_message

    return _stale_message(spelling)


@_assume_constant
def _khot_bounds(t: KHot) -> "tuple[float, float]":
    """The smallest and largest K-hot values (the straight-through gradient's range)."""
    codes = t.codes()
    return float(codes[0]) * 2.0 ** -t.base.frac_bits, float(codes[-1]) * 2.0 ** -t.base.frac_bits


# -- public API ---------------------------------------------------------------


def quantize(
    x: torch.Tensor,
    fmt: FormatLike,
    *,
    frac_bits: torch.Tensor | None = None,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
    what: str = "the tensor",
) -> torch.Tensor:
    """Values of ``fmt`` after converting ``x`` (bit-exact; differentiable).

    Parameters
    ----------
    x : torch.Tensor
        Any floating-point dtype, any device.
    fmt : FixedType, MinifloatType, KHot or str
        The format, or its spelling (``"ap_fixed<8,3,AP_RND_CONV,AP_SAT>"``).
    frac_bits : torch.Tensor, optional
        Fixed point only: learnable fractional-bit count overriding
        ``fmt.frac_bits`` (word length fixed); see the module docstring.
    stochastic : bool
        Minifloat and MX only: stochastic rounding (round up with probability
        equal to the remainder) instead of round-to-nearest-even. Training
        only; the hardware rounds to nearest even.
    generator : torch.Generator, optional
        Random source for stochastic rounding (seed it for reproducible bits).
    what : str
        MX only: the tensor's name in errors (e.g. ``"QLinear 'fc1' weight"``).
    """
    x = _check_tensor(x)
    t = _format(fmt)
    if frac_bits is not None and not isinstance(t, FixedType):
        raise ValueError(f"frac_bits applies to fixed-point formats only, not {t}")
    if stochastic and not isinstance(t, (MinifloatType, MXType)):
        raise ValueError(f"stochastic rounding applies to MX and minifloat formats only, not {t}")
    if isinstance(t, MXType):
        return _mx_quantize(x, t, stochastic, generator, what)
    if isinstance(t, FixedType):
        if frac_bits is not None:
            if not isinstance(frac_bits, torch.Tensor):
                raise TypeError(f"frac_bits must be a torch.Tensor, got {type(frac_bits).__name__}")
            return _fixed_ste(x, frac_bits, t)
        if x.requires_grad:
            return _fixed_ste(x, None, t)
        if _use_compiled(x, t):
            out_dtype = _fixed.result_dtype(t, x.dtype, t.frac_bits, t.frac_bits)
            return _compiled_kernel(t, x.dtype, out_dtype)(x)
        return _fixed_forward(x, t, t.frac_bits)
    if isinstance(t, MinifloatType):
        if not stochastic and _use_compiled(x, t):
            return _compiled_kernel(t, x.dtype, _minifloat.result_dtype(x, t))(x)
        q = _minifloat_values(x.detach(), t, stochastic, generator)
        return _STE.apply(x, q, -t.max, t.max) if x.requires_grad else q
    if _is_compiling():  # the code table is NumPy: an opaque registered op (qfx._compiled)
        from ._compiled import khot_values

        q = khot_values(x.detach(), _spelling(t))
    else:
        q = _khot_values(x.detach(), t)
    lo, hi = _khot_bounds(t)
    return _STE.apply(x, q, lo, hi) if x.requires_grad else q


def to_codes(x: torch.Tensor, fmt: FormatLike) -> torch.Tensor:
    """The integer codes (int64) that ``fmt`` stores after converting ``x``.

    Fixed point and K-hot: ``value = code * 2**-frac_bits``. Minifloat: the
    bit pattern ``sign | exponent field | mantissa field``. Raises
    ``ValueError`` for NaN (and inf) where the format cannot encode it.
    """
    x = _check_tensor(x).detach()
    t = _format(fmt)
    if isinstance(t, MXType):
        raise TypeError(f"{t} stores two arrays (block scales and element codes): use qfx.quant.mx_encode")
    if isinstance(t, FixedType):
        return _fixed.codes_fixed(x, t, t.frac_bits)
    if isinstance(t, KHot):
        codes = _khot.khot_codes(x, t)
        if bool(torch.isnan(codes).any()):
            raise ValueError(f"NaN cannot be converted to the integer codes of {t}: a fixed-point format has no NaN")
        return codes.to(torch.int64)
    return _minifloat.minifloat_bits(_minifloat.quantize_minifloat(x, t), t)


def from_codes(codes: torch.Tensor, fmt: FormatLike) -> torch.Tensor:
    """Values (float64) of integer codes of ``fmt`` (inverse of :func:`to_codes`)."""
    if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.is_complex():
        raise TypeError("from_codes needs an integer torch.Tensor of codes")
    t = _format(fmt)
    if isinstance(t, MXType):
        raise TypeError(f"{t} stores two arrays (block scales and element codes): use qfx.quant.mx_decode")
    if isinstance(t, MinifloatType):
        return _minifloat.minifloat_from_bits(codes, t)
    base = t.base if isinstance(t, KHot) else t
    c = codes.to(torch.int64)
    if bool(((c < base.min_code) | (c > base.max_code)).any()) and not (not base.signed and base.width == 64):
        raise ValueError(f"codes out of range {base.min_code}..{base.max_code} of {t}")
    if isinstance(t, KHot):
        allowed = torch.from_numpy(t.codes()).to(c.device)
        if not bool(torch.isin(c, allowed).all()):
            raise ValueError(f"some codes are not representable in {t} (more than {t.k} nonzero digits)")
    if base.width > 53:
        raise ValueError(f"values of {t} need more than float64's 53 bits; work with the codes")
    return c.double() * 2.0 ** -base.frac_bits


def overflow_mask(x: torch.Tensor, fmt: FormatLike) -> torch.Tensor:
    """Boolean mask of the elements the overflow handling changes (saturated or wrapped).

    Fixed point: the rounded code lies outside the range (for signed
    ``AP_SAT_SYM``, the most negative code counts too). Minifloat: the rounded
    magnitude exceeds ``max`` (inf inputs included). K-hot: beyond the extreme
    representable values. MX: the scaled element exceeds the element's max
    (see :func:`qfx._mx.mx_saturated`). NaN is never counted.
    """
    x = _check_tensor(x).detach()
    t = _format(fmt)
    if isinstance(t, MXType):
        return _mx.mx_saturated(x, t)
    if isinstance(t, FixedType):
        return _fixed.out_of_range(_fixed.rounded_codes(x, t, t.frac_bits), t)
    if isinstance(t, KHot):
        codes = t.codes()
        s = x.double() * 2.0 ** t.base.frac_bits
        return (s < float(codes[0]) - 0.5) | (s > float(codes[-1]) + 0.5)
    q, _ = _minifloat.rounded_magnitude(x, t)
    return q > t.max


def count_overflow(x: torch.Tensor, fmt: FormatLike) -> int:
    """How many elements of ``x`` saturate or wrap when converted to ``fmt``."""
    return int(overflow_mask(x, fmt).sum().item())


def mx_encode(x: torch.Tensor, fmt: FormatLike, what: str = "the tensor") -> "tuple[torch.Tensor, torch.Tensor]":
    """``(E8M0 scale codes, element codes)`` (int64) of ``x`` in an MX format (see :func:`qfx._mx.mx_encode`)."""
    x = _check_tensor(x)
    t = _format(fmt)
    if not isinstance(t, MXType):
        raise TypeError(f"mx_encode needs an MX format (e.g. 'mxfp4_e2m1'), not {t}; use to_codes")
    return _mx.mx_encode(x, t, what)


def mx_decode(scales: torch.Tensor, codes: torch.Tensor, fmt: FormatLike) -> torch.Tensor:
    """Values (float64) of MX scale and element codes (inverse of :func:`mx_encode`)."""
    t = _format(fmt)
    if not isinstance(t, MXType):
        raise TypeError(f"mx_decode needs an MX format (e.g. 'mxfp4_e2m1'), not {t}; use from_codes")
    return _mx.mx_decode(scales, codes, t)
