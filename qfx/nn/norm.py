"""QBatchNorm2d (fixed-point per-channel scale and shift) and BatchNorm folding into QConv2d."""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
from torch import nn

from .. import _fixed, _fused
from ..types import FixedType
from . import _bn_fused
from .accumulate import check_float64_exact
from .base import QuantizedModule
from .config import ConfigLike, as_config
from .conv import QConv2d
from .plan import CompilePlanError, compiling, plan_of, set_plan

__all__ = ["QBatchNorm2d", "fold_batchnorm"]


@functools.lru_cache(maxsize=1024)
def _bn_types(x_fmt: FixedType, s_fmt: FixedType, b_fmt: FixedType) -> "tuple[FixedType, bool]":
    try:
        t = x_fmt * s_fmt + b_fmt
    except ValueError:
        raise ValueError(
            f"QBatchNorm2d: input {x_fmt} * scale {s_fmt} + shift {b_fmt} needs more than 64 bits; "
            "use narrower formats"
        ) from None
    check_float64_exact(t, "QBatchNorm2d's exact x * scale + shift")
    return t, all(_fixed.holds_exactly(f, torch.float32) for f in (t, x_fmt, s_fmt, b_fmt))


class QBatchNorm2d(QuantizedModule, nn.BatchNorm2d):
    """Batch normalisation as a per-channel fixed-point multiply-add::

        y[n, c, h, w] = cast(cast(x[n, c, h, w], input) * scale_q[c] + shift_q[c], output)

    with ``scale = gamma / sqrt(var + eps)``, ``shift = beta - mean * scale``
    computed in floating point and then quantized, ``scale_q = cast(scale,
    scale)`` and ``shift_q = cast(shift, shift)``. The product and the sum are
    exact (ap_fixed result types; checked to fit float64), so there is a
    single rounding, at the output cast.

    In training mode (or without running statistics) ``mean`` and ``var``
    are the batch statistics of the quantized input (biased variance, as
    :class:`torch.nn.BatchNorm2d`; gradients flow through them), and the
    running statistics are updated as torch does. In eval mode they are the
    running statistics: :meth:`quantized_scale_shift` gives the constants an
    export writes.

    Parameters
    ----------
    num_features, eps, momentum, affine, track_running_stats, device, dtype
        As for :class:`torch.nn.BatchNorm2d`.
    config : LayerConfig or dict, optional
        Uses ``input``, ``scale``, ``shift``, ``output`` (all required),
        ``learn_binary_point`` and ``track_overflow``.
    **overrides
        Config keys given directly.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        config: ConfigLike = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
        **overrides: Any,
    ) -> None:
        cfg = as_config(config, **overrides)
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self._require(cfg, "QBatchNorm2d", "input", "scale", "shift", "output")
        self._setup_quantizers(
            cfg,
            {"input": (cfg.input, ()), "scale": (cfg.scale, ()), "shift": (cfg.shift, ()), "output": (cfg.output, ())},
        )

    @classmethod
    def from_float(cls, module: nn.BatchNorm2d, config: ConfigLike = None, **overrides: Any) -> "QBatchNorm2d":
        """A QBatchNorm2d with the parameters and running statistics of ``module``."""
        if not isinstance(module, nn.BatchNorm2d):
            raise TypeError(f"from_float needs an nn.BatchNorm2d, not {type(module).__name__}")
        q = cls(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            config=config,
            **overrides,
        )
        q.load_state_dict(module.state_dict(), strict=False)
        return q

    def _float_scale_shift(self, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # sqrt, / , * and - are correctly rounded (IEEE 754): any implementation reproduces these floats.
        sd = torch.sqrt(var.double() + self.eps)
        gamma = self.weight.double() if self.affine else torch.ones_like(sd)
        beta = self.bias.double() if self.affine else torch.zeros_like(sd)
        scale = gamma / sd
        return scale, beta - mean.double() * scale

    def quantized_scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale_q, shift_q)`` from the running statistics (what eval mode and an export use)."""
        if self.running_mean is None or self.running_var is None:
            raise RuntimeError("QBatchNorm2d without running statistics has no fixed scale/shift")
        with torch.no_grad():
            scale, shift = self._float_scale_shift(self.running_mean, self.running_var)
            return self.quant["scale"](scale).double(), self.quant["shift"](shift).double()

    def _check_exact(self) -> "tuple[FixedType, bool]":
        """``(input format, whether float32 holds it, scale, shift and every x * scale + shift)``;
        raises unless float64 holds ``x * scale + shift``."""
        x_fmt, s_fmt, b_fmt = (self.quant[k].effective_format() for k in ("input", "scale", "shift"))
        assert isinstance(x_fmt, FixedType) and isinstance(s_fmt, FixedType) and isinstance(b_fmt, FixedType)
        return x_fmt, _bn_types(x_fmt, s_fmt, b_fmt)[1]

    def plan_key(self):
        keys = self._quantizer_keys()
        if keys is None:
            return None
        return (keys, self.training, self.track_running_stats, self.momentum is None, _fused.kernels() is not None)

    @torch.no_grad()
    def refresh_plan(self) -> None:
        """``(float32 holds the multiply-add, fused kernels built, fused affine applies)`` for the
        compiled forward, which takes the same paths as the eager one (:mod:`qfx.nn._bn_fused`)."""
        if self.training and self.track_running_stats and self.momentum is None:
            raise CompilePlanError("QBatchNorm2d(momentum=None) reads its batch count in Python; give a momentum to compile")
        _, fits = self._check_exact()
        kernels = _fused.kernels() is not None
        set_plan(self, (fits, kernels, fits and _bn_fused.fused_affine_applies(self)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"QBatchNorm2d expects a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"QBatchNorm2d expects input of shape [N, {self.num_features}, H, W], got {list(x.shape)}")
        xq_in = self.quant["input"](x)
        use_batch = self.training or self.running_mean is None
        if use_batch:
            # The fused CPU kernels (qfx.nn._bn_fused) where they apply: exact statistics.
            compiled = compiling()
            if compiled:
                frac = None
                exact_stats = _bn_fused.compiled_exact_stats(xq_in, self.quant["input"].fmt, plan_of(self)[1])
            else:
                frac = _bn_fused.stats_frac(xq_in, self.quant["input"].effective_format())
            if compiled and exact_stats:
                mean, var = _bn_fused.compiled_batch_stats(xq_in)
            elif frac is not None:
                mean, var = _bn_fused.batch_stats(xq_in, frac)
            else:
                xq = xq_in.double()
                mean = xq.mean(dim=(0, 2, 3))
                var = xq.var(dim=(0, 2, 3), unbiased=False)
            if self.training and self.track_running_stats and self.running_mean is not None:
                with torch.no_grad():
                    self.num_batches_tracked += 1
                    m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                    count = xq_in.numel() // self.num_features
                    unbiased = var.detach() * (count / max(count - 1, 1))
                    self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                    self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        else:
            mean, var = self.running_mean, self.running_var
        scale, shift = self._float_scale_shift(mean, var)
        scale_q = self.quant["scale"](scale).double()
        shift_q = self.quant["shift"](shift).double()
        if compiling():
            fits_float32, _, affine_ok = plan_of(self)
            if affine_ok and xq_in.dtype == torch.float32 and xq_in.dim() == 4 and xq_in.numel() and xq_in.device.type == "cpu":
                y = _bn_fused.compiled_affine(xq_in, scale_q, shift_q)
                return self._result(self.quant["output"](y), x.dtype)
            fused = None
        else:
            _, fits_float32 = self._check_exact()  # after the scale/shift quantizers calibrated
            fused = _bn_fused.affine_plan(self, xq_in) if fits_float32 else None
        if fused is not None:
            return self._result(_bn_fused.affine_cast(xq_in, scale_q, shift_q, fused), x.dtype)
        if xq_in.dtype == torch.float32 and fits_float32:
            # float32 holds x, scale, shift and every x * scale + shift (the type t) exactly:
            # the same values as in float64, one rounding-free multiply-add.
            s32, b32 = scale_q.float(), shift_q.float()
            y = torch.addcmul(b32[None, :, None, None], xq_in, s32[None, :, None, None])
        else:
            y = xq_in.double() * scale_q[None, :, None, None] + shift_q[None, :, None, None]
        return self._result(self.quant["output"](y), x.dtype)


def fold_batchnorm(conv: QConv2d, bn: nn.BatchNorm2d, *, bias: "str | FixedType | None" = None) -> QConv2d:
    """A new QConv2d computing ``bn(conv(x))`` in float, folded before quantization.

    ``w' = w * gamma / sqrt(running_var + eps)`` per output channel and
    ``b' = beta + (b - running_mean) * gamma / sqrt(running_var + eps)`` (``b =
    0`` without a conv bias); the folded float weights and bias are then
    quantized by the conv's own formats. The result always has a bias: its
    format is ``bias`` if given, else the conv's configured bias format.
    Learned binary points of the weight and bias are recalibrated on the next
    forward call (the folded values differ); the others are kept.

    Parameters
    ----------
    conv : QConv2d
        The convolution feeding ``bn`` directly.
    bn : nn.BatchNorm2d or QBatchNorm2d
        Uses its running statistics, ``eps`` and affine parameters.
    bias : format, optional
        Bias format of the folded conv (required if the conv has none).
    """
    if not isinstance(conv, QConv2d):
        raise TypeError(f"fold_batchnorm needs a QConv2d, not {type(conv).__name__}")
    if not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"fold_batchnorm needs an nn.BatchNorm2d, not {type(bn).__name__}")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm has {bn.num_features} channels, the conv {conv.out_channels} outputs")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_batchnorm needs a BatchNorm with running statistics")
    cfg = conv.config if bias is None else conv.config.updated(bias=bias)
    if cfg.bias is None:
        raise ValueError("the folded conv needs a bias format: give fold_batchnorm(..., bias='ap_fixed<16,6>')")
    with torch.no_grad():
        sd = torch.sqrt(bn.running_var.double() + bn.eps)
        gamma = bn.weight.double() if bn.affine else torch.ones_like(sd)
        beta = bn.bias.double() if bn.affine else torch.zeros_like(sd)
        scale = gamma / sd
        b = conv.bias.double() if conv.bias is not None else torch.zeros_like(sd)
        w = conv.weight.double() * scale[:, None, None, None]
        b = beta + (b - bn.running_mean.double()) * scale
    folded = QConv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        True,
        config=cfg,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    # Keep the other quantizers' state (learned input/output binary points).
    state = {k: v for k, v in copy.deepcopy(conv.state_dict()).items() if not k.startswith(("quant.weight.", "quant.bias."))}
    state.pop("weight", None)
    state.pop("bias", None)
    folded.load_state_dict(state, strict=False)
    with torch.no_grad():
        folded.weight.copy_(w)
        folded.bias.copy_(b)
    folded.train(conv.training)
    return folded
