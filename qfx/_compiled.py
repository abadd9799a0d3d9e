"""The fixed-point cast with a learnable binary point as a registered operator (issue 16).

``torch.ops.qfx.fixed_cast(x, frac_bits, fmt)`` returns ``(values, inside)``: the values of
``fmt`` (a fixed-point spelling) with ``round(frac_bits)`` fractional bits, and the mask of the
elements its overflow mode left alone. It is a ``torch.library`` custom op:

* the CPU/CUDA body is today's eager cast (``qfx._fixed.quantize_fixed_with_mask``); it may read
  the binary point (``.item()``) because torch.compile treats the body as opaque;
* the fake (meta) implementation decides the output dtype from the format and the input dtype
  only (``_out_dtype``), so tracing never reads a tensor value;
* the registered autograd is the gradient of ``qfx.quant._FixedSTE`` exactly: STE for ``x``
  (``grad * inside``) and the LSQ/TQT gradient ``ln2 * sum(grad * (x where inside else 0 - q))``
  for the binary point (summed to its shape for a per-channel one).

:func:`qfx.quant.quantize` routes a learnable binary point through this op while
``torch.compiler.is_compiling()``; the eager path keeps its fused kernels.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch

from qfx import _fixed
from qfx.types import FixedType, Overflow, parse_type

_LN2 = math.log(2.0)

# Binary points the format-only dtype decision covers. A learned binary point beyond this
# window (|frac| > 64) is refused in the body with a clear message instead of silently changing
# the output dtype between trace and run.
_FRAC_WINDOW = 64


@functools.lru_cache(maxsize=1024)
def _fmt(spelling: str) -> FixedType:
    t = parse_type(spelling)
    if not isinstance(t, FixedType):
        raise ValueError(f"qfx::fixed_cast takes a fixed-point format, got {spelling!r}")
    return t


@functools.lru_cache(maxsize=1024)
def _out_dtype(spelling: str, dtype: torch.dtype) -> torch.dtype:
    """The output dtype from the format and input dtype only (no binary-point value)."""
    t = _fmt(spelling)
    return _fixed.result_dtype(t, dtype, min(-_FRAC_WINDOW, t.frac_bits), max(_FRAC_WINDOW, t.frac_bits))


@torch.library.custom_op("qfx::fixed_cast", mutates_args=())
def fixed_cast(
    x: torch.Tensor, frac_bits: torch.Tensor, fmt: str, planned: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    from qfx.quant import _int_frac  # the checked round(frac_bits) of the eager path

    t = _fmt(fmt)
    frac = _int_frac(frac_bits, t)
    if planned is not None:
        _check_planned(frac, planned, t)
    lo, hi = _fixed.frac_bounds(frac)
    want = _out_dtype(fmt, x.dtype)
    if _fixed.result_dtype(t, x.dtype, lo, hi) != want and not _fixed.holds_exactly(t, want, lo, hi):
        raise ValueError(
            f"frac_bits for {t} rounds to {lo}..{hi} fractional bits, outside the +-{_FRAC_WINDOW} "
            "the compiled cast supports; train this layer eagerly or lower the binary point's learning rate"
        )
    q, inside = _fixed.quantize_fixed_with_mask(x, t, frac, want)
    return q, inside.view(x.shape).clone() if inside.data_ptr() == x.data_ptr() else inside.view(x.shape)


def _check_planned(frac: "int | torch.Tensor", planned: torch.Tensor, t: FixedType) -> None:
    """Raise CompilePlanError unless the binary point in force is the one the compile plan assumed."""
    now = torch.as_tensor(frac, dtype=torch.int64, device=planned.device).reshape(planned.shape)
    if not torch.equal(now, planned):
        from qfx.nn.plan import CompilePlanError

        raise CompilePlanError(
            f"the learnable binary point of {t} rounds to {now.tolist()} fractional bits, the compile plan "
            f"assumed {planned.tolist()}: call qfx.nn.refresh_compile_plan(model) before each compiled call "
            "(qfx.nn.compile_model and qfx.train.fit(compile=True) do)"
        )


@fixed_cast.register_fake
def _(x, frac_bits, fmt, planned=None):
    return torch.empty_like(x, dtype=_out_dtype(fmt, x.dtype)), torch.empty_like(x, dtype=torch.bool)


def _setup_context(ctx, inputs, output):
    x, frac_bits = inputs[0], inputs[1]
    q, inside = output
    ctx.save_for_backward(x, q, inside)
    ctx.frac_shape = frac_bits.shape
    ctx.mark_non_differentiable(inside)


def _backward(ctx, grad, _grad_inside):
    x, q, inside = ctx.saved_tensors
    grad_x = grad_f = None
    if ctx.needs_input_grad[0]:
        grad_x = grad * inside
        if grad_x.dtype != x.dtype:
            grad_x = grad_x.to(x.dtype)
    if ctx.needs_input_grad[1]:
        xd = x if x.dtype == grad.dtype else x.to(grad.dtype)
        dq_df = torch.where(inside, xd, 0.0) - (q if q.dtype == grad.dtype else q.to(grad.dtype))
        if len(ctx.frac_shape) == 0:
            grad_f = ((grad * dq_df).sum() * _LN2).reshape(ctx.frac_shape)
        else:
            grad_f = (grad * dq_df).sum_to_size(ctx.frac_shape) * _LN2
    return grad_x, grad_f, None, None


fixed_cast.register_autograd(_backward, setup_context=_setup_context)


def fixed_cast_ste(
    x: torch.Tensor, frac_bits: torch.Tensor, t: FixedType, planned: "torch.Tensor | None" = None
) -> torch.Tensor:
    """The differentiable values of ``t`` with a learnable binary point, via the custom op.

    ``planned``: the rounded binary point the compile plan assumed (:mod:`qfx.nn.plan`); the op
    raises where the one in force differs."""
    if frac_bits.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"frac_bits for {t} must be a floating-point tensor, got {frac_bits.dtype}")
    q, _ = torch.ops.qfx.fixed_cast(x, frac_bits, str(t), planned)
    return q


# -- K-hot -----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _khot(spelling: str):
    from qfx.types import KHot

    t = parse_type(spelling)
    if not isinstance(t, KHot):
        raise ValueError(f"qfx::khot_values takes a K-hot format, got {spelling!r}")
    return t


@torch.library.custom_op("qfx::khot_values", mutates_args=())
def khot_values(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """The nearest K-hot values (``qfx.quant._khot_values``): opaque to the compiler, because the
    code table is built in NumPy (``KHot.codes``), which Dynamo would trace into and branch on."""
    from qfx.quant import _khot_values

    return _khot_values(x, _khot(fmt))


@khot_values.register_fake
def _(x, fmt):
    t = _khot(fmt)
    return torch.empty_like(x, dtype=_fixed.result_dtype(t.base, x.dtype, t.base.frac_bits, t.base.frac_bits))


# -- BatchNorm: the per-channel gradient sums of the fused affine kernel ---------------------------


@torch.library.custom_op("qfx::bn_affine_sums", mutates_args=())
def bn_affine_sums(g: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel ``(sum g*x, sum g)`` in float64 of float32 ``[N, C, H, W]`` tensors, by the fused
    kernel that the eager :class:`qfx.nn.QBatchNorm2d` uses (``qfx._fused``), in its summation order:
    the compiled layer's scale and shift gradients are then the eager ones bit for bit."""
    from qfx import _fused

    k = _fused.kernels()
    gc, xc = g.contiguous(), x.contiguous()
    if k is None or gc.dtype != torch.float32 or xc.dtype != torch.float32 or gc.device.type != "cpu":
        gd = gc.double()
        return (gd * xc.double()).sum(dim=(0, 2, 3)), gd.sum(dim=(0, 2, 3))
    return k.bn_affine_sums(gc, xc)


@bn_affine_sums.register_fake
def _(g, x):
    c = x.shape[1]
    return x.new_empty((c,), dtype=torch.float64), x.new_empty((c,), dtype=torch.float64)


# -- the fast cast in torch ops (Inductor fuses it) -----------------------------------------------


def _pow2(e: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``2**e`` for an integer ``e`` in the normal range of ``dtype`` (float32: -126..127, float64:
    -1022..1023), exact by construction (the exponent field written directly: no exp2 whose
    accuracy the compiler's math library decides)."""
    if dtype == torch.float64:
        return ((e.to(torch.int64) + 1023) << 52).view(torch.float64)
    return ((e.to(torch.int32) + 127) << 23).view(torch.float32)


class _FastCast(torch.autograd.Function):
    """``qfx.quant._FixedSTEFast`` in torch ops with the binary point as a tensor: the same values
    (``x * 2**F`` exact in float32 for the plan's formats, rounded, clamped, scaled back) and the same
    ``x`` gradient (float32: a select, float64: ``grad * inside``); the binary point's gradient up to
    its summation order."""

    @staticmethod
    def forward(ctx, x, frac_bits, f, t: FixedType, lo: float, hi: float):  # type: ignore[override]
        r = _fixed.round_scaled(x * _pow2(f, x.dtype), t.rounding)
        q = r.clamp(lo, hi) * _pow2(-f, x.dtype)
        inside = ~((r < lo) | (r > hi))  # NaN codes count as inside, as in _fixed.out_of_range
        ctx.save_for_backward(x, q, inside)
        ctx.frac_shape = frac_bits.shape
        return q

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, q, inside = ctx.saved_tensors
        # float32: a select (the fused kernel's exact 0); float64: grad * inside (as _FixedSTE)
        grad_x = torch.where(inside, grad, 0.0) if x.dtype == torch.float32 else grad * inside
        grad_f = None
        if ctx.needs_input_grad[1]:
            g = grad if grad.dtype == x.dtype else grad.to(x.dtype)
            grad_f = ((g * (torch.where(inside, x, 0.0) - q)).sum() * _LN2).reshape(ctx.frac_shape)
        return grad_x, grad_f, None, None, None, None


def fast_fixed_cast(x: torch.Tensor, frac_bits: torch.Tensor, t: FixedType, planned: torch.Tensor) -> torch.Tensor:
    """The differentiable cast of float32/float64 ``x`` to ``t`` with a scalar learnable binary point, where
    the compile plan found ``qfx.quant._fast_plan`` to apply (a saturating mode, at most 22 bits,
    0 <= F <= 100); Inductor fuses it with its neighbours. ``planned``: the plan's rounded binary
    point; a different one in force raises (``torch._assert_async``)."""
    from qfx.quant import _spelling, _stale_plan_message

    # the clamp bounds of _fast_plan (codes: they do not depend on the binary point)
    signed_sym = t.overflow is Overflow.AP_SAT_SYM and t.signed
    lo = float(_fixed.sat_sym_low(t)) if signed_sym else float(t.min_code)
    f = torch.round(frac_bits.detach())
    # A stale plan fails loudly, inside the graph and without a host sync (Inductor keeps the check).
    torch._assert_async((f == planned).all(), _stale_plan_message(_spelling(t)))
    return _FastCast.apply(x, frac_bits, f, t, lo, float(t.max_code))


@functools.lru_cache(maxsize=1024)
def _stale_message(t: str) -> str:
    return (f"qfx: the learnable binary point of {t} moved since the compile plan was made: call "
            "qfx.nn.refresh_compile_plan(model) before each compiled call (qfx.nn.compile_model and "
            "qfx.train.fit(compile=True) do)")
