"""QLinear: a fully connected layer with HLS fixed-point arithmetic."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..types import Format
from .config import ConfigLike, as_config
from .mac import _split_bias
from .mac import MACLayer

__all__ = ["QLinear"]


class QLinear(MACLayer, nn.Linear):
    """``y = x W^T + b`` computed as a Vitis HLS loop would, bit for bit.

    For every output feature ``o`` (and every row of the batch)::

        acc = cast(bias[o], accum)                     # 0 without a bias
        for k in 0 .. in_features-1:                   # ascending input feature index
            acc = cast(acc + x[k] * w[o, k], accum)
        y[o] = cast(acc, output)

    where ``x = cast(input_tensor, input)``, ``w = cast(weight, weight)`` and
    ``bias = cast(bias, bias)``. With ``accum="auto"`` (or any accum that holds
    every value of the auto type) nothing inside the loop can round or
    overflow, and the layer evaluates ``F.linear`` in float64 on the exact
    operands (provably exact, see :mod:`qfx.nn.accumulate`). A narrower
    accumulator is emulated step by step, ``in_features`` vectorised steps
    (slow; meant for studying narrow accumulators, not for routine training).

    Weight formats: FixedType, KHot (products exact), or MinifloatType
    (products exact, accumulated in fixed point; with ``multiply="lmul"`` the
    activation is first cast to the weight's minifloat format and each product
    is ``qfx.lmul(x, w, weight_format, exact=True)``), or MXType (e.g. ``"mxfp4_e2m1"``,
    blocks along the weight's last axis by default; products exact, accumulated in fixed
    point sized from the current weights, see :mod:`qfx.nn.accumulate`).

    Parameters
    ----------
    in_features, out_features, bias, device, dtype
        As for :class:`torch.nn.Linear`. ``bias`` may also be a bias format
        (e.g. ``bias="ap_fixed<16,6>"``): a bias with that format.
    config : LayerConfig or dict, optional
        Formats and options (see :class:`qfx.nn.LayerConfig`). Uses ``input``,
        ``weight``, ``bias`` (required when ``bias=True``), ``accum``,
        ``output``, ``multiply``, ``learn_binary_point``, ``weight_per_channel``
        and ``track_overflow``.
    **overrides
        Config keys given directly, e.g. ``input="ap_fixed<8,3>"``.

    Attributes
    ----------
    weight, bias : nn.Parameter
        The float master copies (quantized on every forward call).
    quant : nn.ModuleDict
        The :class:`qfx.nn.TensorQuantizer` of each tensor.
    n_terms : int
        Products per output (``in_features``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: "bool | str | Format" = True,
        *,
        config: ConfigLike = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
        **overrides: Any,
    ) -> None:
        bias, overrides = _split_bias(bias, overrides)
        cfg = as_config(config, **overrides)
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, not {type(v).__name__}")
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.n_terms = in_features
        self._setup_mac(cfg, "QLinear", (out_features, 1), bias)

    @classmethod
    def from_float(cls, module: nn.Linear, config: ConfigLike = None, **overrides: Any) -> "QLinear":
        """A QLinear with the float weights of ``module``."""
        if not isinstance(module, nn.Linear):
            raise TypeError(f"from_float needs an nn.Linear, not {type(module).__name__}")
        q = cls(
            module.in_features,
            module.out_features,
            module.bias is not None,
            config=config,
            device=module.weight.device,
            dtype=module.weight.dtype,
            **overrides,
        )
        return q._copy_float_params(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"QLinear expects a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"QLinear expects input of shape [..., {self.in_features}], got {list(x.shape)}"
            )
        lead = x.shape[:-1]
        cdt = torch.float32 if self.float32_exact(x.device) else torch.float64
        xq = self.quant["input"](x).to(cdt).reshape(-1, self.in_features)
        wq, bq = self._quantized_params(cdt)
        acc = self._accumulate(
            xq,
            wq,
            bq,
            fast=F.linear,
            to_columns=lambda v: v[:, None, :, None],  # [B, 1, K, 1]
            w_rows=wq[None],  # [1, O, K]
            from_columns=lambda a: a[:, 0, :, 0],
        )
        y = self.quant["output"](acc).reshape(*lead, self.out_features)
        return self._result(y, x.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", accum={'auto' if self.config.accum_is_auto else self.config.accum}"
