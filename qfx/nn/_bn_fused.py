"""The fused CPU path of :class:`qfx.nn.QBatchNorm2d` (float32 activations, ``qfx._fused``).

Two autograd Functions replace about twenty small torch ops per call:

``batch_stats``
    The per-channel mean and biased variance of the quantized input, computed from
    exact float64 sums (fixed-point values whose sums fit 53 bits add exactly in any
    order) and then correctly rounded: the exact mean and variance of the batch,
    independent of summation order and thread count. The backward is the usual
    ``dmean / n + dvar * 2 (x - mean) / n`` in one pass.
``affine_cast``
    ``cast(x * scale_q[c] + shift_q[c], output)`` in one pass: the multiply-add in
    float32 (exact: the layer checked that float32 holds every operand and result) and
    the fused fast cast, with the straight-through backward of the float32 fast cast
    (``qfx.quant._FixedSTEFast``) and the gradients of the multiply-add in one pass.

Forward values are bit-identical to the torch path of ``QBatchNorm2d.forward`` wherever
the torch path's float64 mean and variance round like the exact ones (they differ by at
most an ulp otherwise, in training mode only; eval mode and exports use the running
statistics). Gradients agree up to summation order (sums here are float64).
``tests/test_bn_fused.py`` compares both paths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .. import _fused
from ..quant import _LN2, _fast_plan, _fused_kernels
from ..types import FixedType

__all__ = ["AffinePlan", "stats_frac", "affine_plan", "batch_stats", "affine_cast"]

_EXACT_SUM_LIMIT = 2.0**53


@dataclass(frozen=True)
class AffinePlan:
    """The fused multiply-add and output cast: the kernels, the learnable output binary
    point (or None) and the output cast's ``_fast_plan`` and rounding code."""

    kernels: Any
    out_frac: "torch.Tensor | None"
    out_plan: tuple
    out_mode: int


def stats_frac(xq: torch.Tensor, x_fmt: FixedType) -> "int | None":
    """The input's fractional-bit count when the fused batch statistics apply to ``xq`` (float32
    ``[N, C, H, W]`` values of ``x_fmt`` whose per-channel sums of squares fit 53 bits, on
    CPU with the kernels built), else None."""
    if not isinstance(x_fmt, FixedType) or xq.dtype != torch.float32 or xq.dim() != 4 or xq.numel() == 0:
        return None
    if _fused_kernels(xq) is None:
        return None
    m = float(max(-x_fmt.min_code, x_fmt.max_code))
    count = xq.numel() // xq.shape[1]
    return x_fmt.frac_bits if count * m * m < _EXACT_SUM_LIMIT else None


def affine_plan(layer: Any, xq: torch.Tensor) -> "AffinePlan | None":
    """The fused multiply-add and cast for ``layer`` (a QBatchNorm2d whose formats float32
    holds) on its quantized input ``xq``, or None where the torch path must run (no
    kernels, float64 activations, an output quantizer that tracks overflow, still has to
    calibrate or is per channel, a format outside the fast cast)."""
    if xq.dtype != torch.float32 or xq.dim() != 4 or xq.numel() == 0:
        return None
    k = _fused_kernels(xq)
    if k is None:
        return None
    cast = layer.quant["output"].scalar_fixed_cast()
    if cast is None:
        return None
    t, frac, out_frac = cast
    plan = _fast_plan(t, frac)
    if plan is None:
        return None
    return AffinePlan(k, out_frac, plan, _fused.ROUNDING_CODES[t.rounding])


def _exact_ratio(num: int, den: int, shift: int) -> float:
    """``num / (den * 2**shift)`` correctly rounded (Python's int division is)."""
    return num / (den << shift) if shift >= 0 else (num << -shift) / den


class _BatchStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k, frac: int):  # type: ignore[override]
        x = x.contiguous()
        n = x.numel() // x.shape[1]
        s1, s2 = k.bn_sums(x)
        mean, var = [], []
        for a, b in zip(s1, s2):
            if not (math.isfinite(a) and math.isfinite(b)):
                mean.append(math.nan)
                var.append(math.nan)
                continue
            c1 = int(math.ldexp(a, frac))  # sum of the codes, exactly
            c2 = int(math.ldexp(b, 2 * frac))  # sum of their squares
            mean.append(_exact_ratio(c1, n, frac))
            var.append(_exact_ratio(n * c2 - c1 * c1, n * n, 2 * frac))
        ctx.k, ctx.n, ctx.mean = k, n, mean
        ctx.save_for_backward(x)
        return torch.tensor(mean, dtype=torch.float64), torch.tensor(var, dtype=torch.float64)

    @staticmethod
    def backward(ctx, g_mean, g_var):  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None
        (x,) = ctx.saved_tensors
        n = ctx.n
        if torch.is_grad_enabled():  # create_graph: differentiable torch ops, same formula
            mean = torch.tensor(ctx.mean, dtype=torch.float64)[None, :, None, None]
            g = torch.zeros((), dtype=torch.float64)
            if g_mean is not None:
                g = g + g_mean[None, :, None, None] / n
            if g_var is not None:
                g = g + (2.0 / n) * g_var[None, :, None, None] * (x.double() - mean)
            return g.expand(x.shape).to(x.dtype), None, None
        c = x.shape[1]
        a = [0.0] * c if g_mean is None else [v / n for v in g_mean.tolist()]
        b = [0.0] * c if g_var is None else [2.0 * v / n for v in g_var.tolist()]
        return ctx.k.bn_stats_backward(x, a, b, ctx.mean), None, None


class _AffineCast(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale_q, shift_q, out_frac, plan: AffinePlan):  # type: ignore[override]
        x = x.contiguous()
        s = scale_q.detach().float().contiguous()
        b = shift_q.detach().float().contiguous()
        q, inside = plan.kernels.bn_affine_forward(x, s, b, plan.out_plan, plan.out_mode)
        ctx.k = plan.kernels
        ctx.frac_shape = None if out_frac is None else out_frac.shape
        ctx.frac_dtype = None if out_frac is None else out_frac.dtype
        ctx.save_for_backward(x, s, b, q, inside)
        return q

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, s, b, q, inside = ctx.saved_tensors
        want_x = ctx.needs_input_grad[0]
        want_sb = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        want_f = ctx.frac_shape is not None and ctx.needs_input_grad[3]
        gx = gs = gb = gf = None
        if torch.is_grad_enabled():  # create_graph: differentiable torch ops, same values
            m = inside.bool()
            sv, bv = s[None, :, None, None], b[None, :, None, None]
            g_in = torch.where(m, grad, 0.0)
            gx = g_in * sv
            gs = (g_in.double() * x.double()).sum((0, 2, 3))
            gb = g_in.double().sum((0, 2, 3))
            if want_f:
                gf = (grad * (torch.where(m, x * sv + bv, 0.0) - q)).sum().mul(_LN2).reshape(ctx.frac_shape)
        else:
            g = grad if grad.dtype == torch.float32 else grad.float()
            g = g.expand(x.shape).contiguous()
            gx, ds, db, dot = ctx.k.bn_affine_backward(g, x, s, b, q, inside, want_x, want_sb, want_f)
            if want_sb:
                gs = torch.tensor(ds, dtype=torch.float64)
                gb = torch.tensor(db, dtype=torch.float64)
            if want_f:
                gf = torch.tensor(dot * _LN2, dtype=ctx.frac_dtype).reshape(ctx.frac_shape)
        return (gx if want_x else None), gs, gb, gf, None


def batch_stats(xq: torch.Tensor, frac: int) -> "tuple[torch.Tensor, torch.Tensor]":
    """``(mean, var)`` per channel (float64, biased variance) of the quantized input, whose
    values have ``frac`` fractional bits (:func:`stats_frac`)."""
    return _BatchStats.apply(xq, _fused_kernels(xq), frac)


def affine_cast(xq: torch.Tensor, scale_q: torch.Tensor, shift_q: torch.Tensor, plan: AffinePlan) -> torch.Tensor:
    """``cast(xq * scale_q[c] + shift_q[c], output)`` (float32), differentiable."""
    return _AffineCast.apply(xq, scale_q, shift_q, plan.out_frac, plan)


# -- the compiled path (torch ops Inductor can fuse; the same bits as the kernels above) -----------


def compiled_exact_stats(xq: torch.Tensor, x_fmt: FixedType, kernels: bool) -> bool:
    """Whether the eager forward would take :func:`batch_stats` (the exact statistics) on ``xq``:
    decided from the dtype, shape and format only, as :func:`stats_frac` does (``kernels``: the
    fused kernels are built, recorded by the compile plan). Raises where the compiled formula
    (:class:`_ExactStatsTorch`) cannot give those exact statistics (more than 2**53 in ``n**2 m**2``)."""
    if not kernels or xq.dtype != torch.float32 or xq.dim() != 4 or xq.numel() == 0 or xq.device.type != "cpu":
        return False
    m = float(max(-x_fmt.min_code, x_fmt.max_code))
    count = xq.numel() // xq.shape[1]
    if count * m * m >= _EXACT_SUM_LIMIT:
        return False
    if float(count) * count * m * m >= _EXACT_SUM_LIMIT:
        from .plan import CompilePlanError

        raise CompilePlanError(
            f"QBatchNorm2d: {count} values per channel of {x_fmt} are too many for the compiled exact batch "
            "statistics (count**2 * max_code**2 must stay below 2**53); train this model eagerly or use smaller batches"
        )
    return True


class _ExactStatsTorch(torch.autograd.Function):
    """:class:`_BatchStats` in torch ops. With ``c`` the codes of ``x`` (``x = c 2**-F``) and ``n`` the
    count, ``sum x`` and ``sum x*x`` are exact in float64 (``n m**2 < 2**53``), and so are ``n sum x*x``
    and ``(sum x)**2`` (both below ``n**2 m**2 < 2**53``, :func:`compiled_exact_stats`): ``sum x / n``
    and ``(n sum x*x - (sum x)**2) / n**2`` are then one IEEE division of exact values, the correctly
    rounded exact mean and variance the kernel computes with Python integers. The backward is the
    kernel's ``g_mean/n + (2 g_var/n) (x - mean)`` in float64, rounded once to float32."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        n = x.numel() // x.shape[1]
        xd = x.double()
        s1 = xd.sum(dim=(0, 2, 3))
        s2 = (xd * xd).sum(dim=(0, 2, 3))
        mean = s1 / n
        var = (n * s2 - s1 * s1) / float(n * n)
        ctx.n = n
        ctx.save_for_backward(x, mean)
        return mean, var

    @staticmethod
    def backward(ctx, g_mean, g_var):  # type: ignore[override]
        x, mean = ctx.saved_tensors
        n = ctx.n
        a = (g_mean / n)[None, :, None, None]
        b = (2.0 * g_var / n)[None, :, None, None]
        return (a + b * (x.double() - mean[None, :, None, None])).to(x.dtype)


def compiled_batch_stats(xq: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor]":
    """``(mean, var)`` of :func:`batch_stats` in torch ops (see :class:`_ExactStatsTorch`)."""
    return _ExactStatsTorch.apply(xq)


def fused_affine_applies(layer: Any) -> bool:
    """Whether :func:`affine_plan` can apply to ``layer`` apart from the input's dtype and shape
    (kernels built, an output cast the fused kernel covers): for the compile plan."""
    if _fused.kernels() is None:
        return False
    cast = layer.quant["output"].scalar_fixed_cast()
    return cast is not None and _fast_plan(cast[0], cast[1]) is not None


class _AffineTorch(torch.autograd.Function):
    """``x * scale_q[c] + shift_q[c]`` in float32 (exact where the layer checked it) with the
    gradients of :class:`_AffineCast`: ``grad * scale`` for ``x`` and the kernel's per-channel float64
    sums of ``grad * x`` and ``grad`` for the scale and shift (``qfx::bn_affine_sums``)."""

    @staticmethod
    def forward(ctx, x, scale_q, shift_q):  # type: ignore[override]
        s = scale_q.detach().float()
        b = shift_q.detach().float()
        ctx.save_for_backward(x, s)
        return torch.addcmul(b[None, :, None, None], x, s[None, :, None, None])

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, s = ctx.saved_tensors
        g = grad if grad.dtype == torch.float32 else grad.float()
        gx = g * s[None, :, None, None]
        from .._compiled import bn_affine_sums  # the kernel's own sums (same order, same bits)

        gs, gb = bn_affine_sums(g, x)
        return gx, gs, gb


def compiled_affine(xq: torch.Tensor, scale_q: torch.Tensor, shift_q: torch.Tensor) -> torch.Tensor:
    """The multiply-add of :func:`affine_cast` before its output cast, in torch ops."""
    return _AffineTorch.apply(xq, scale_q, shift_q)
