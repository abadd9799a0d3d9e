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

import torch

from qfx import _fixed
from qfx.types import FixedType, parse_type

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
def fixed_cast(x: torch.Tensor, frac_bits: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    from qfx.quant import _int_frac  # the checked round(frac_bits) of the eager path

    t = _fmt(fmt)
    frac = _int_frac(frac_bits, t)
    lo, hi = _fixed.frac_bounds(frac)
    want = _out_dtype(fmt, x.dtype)
    if _fixed.result_dtype(t, x.dtype, lo, hi) != want and not _fixed.holds_exactly(t, want, lo, hi):
        raise ValueError(
            f"frac_bits for {t} rounds to {lo}..{hi} fractional bits, outside the +-{_FRAC_WINDOW} "
            "the compiled cast supports; train this layer eagerly or lower the binary point's learning rate"
        )
    q, inside = _fixed.quantize_fixed_with_mask(x, t, frac, want)
    return q, inside.view(x.shape).clone() if inside.data_ptr() == x.data_ptr() else inside.view(x.shape)


@fixed_cast.register_fake
def _(x, frac_bits, fmt):
    return torch.empty_like(x, dtype=_out_dtype(fmt, x.dtype)), torch.empty_like(x, dtype=torch.bool)


def _setup_context(ctx, inputs, output):
    x, frac_bits, _ = inputs
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
    return grad_x, grad_f, None


fixed_cast.register_autograd(_backward, setup_context=_setup_context)


def fixed_cast_ste(x: torch.Tensor, frac_bits: torch.Tensor, t: FixedType) -> torch.Tensor:
    """The differentiable values of ``t`` with a learnable binary point, via the custom op."""
    if frac_bits.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"frac_bits for {t} must be a floating-point tensor, got {frac_bits.dtype}")
    q, _ = torch.ops.qfx.fixed_cast(x, frac_bits, str(t))
    return q
