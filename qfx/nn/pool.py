"""Quantized pooling: QMaxPool2d, QAvgPool2d."""

from __future__ import annotations

from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from ..quant import quantize
from ..types import FixedType
from .accumulate import check_float64_exact
from .base import QuantizedModule
from .config import ConfigLike, as_config

__all__ = ["QMaxPool2d", "QAvgPool2d"]

IntOrPair = Union[int, tuple[int, int]]


def _check_4d(x: object, layer: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{layer} expects a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() not in (3, 4):
        raise ValueError(f"{layer} expects input of shape [N, C, H, W] or [C, H, W], got {list(x.shape)}")
    return x


class QMaxPool2d(QuantizedModule, nn.MaxPool2d):
    """``y = cast(max over the window of cast(x, input), output)``.

    The maximum of quantized values is one of them: no arithmetic. Both casts
    are optional: without ``input`` the values are taken as they come,
    without ``output`` the maximum is returned unchanged.

    Parameters
    ----------
    kernel_size, stride, padding, dilation, ceil_mode
        As for :class:`torch.nn.MaxPool2d` (``return_indices`` is not supported).
    config : LayerConfig or dict, optional
        Uses ``input``, ``output`` (both optional), ``learn_binary_point``, ``track_overflow``.
    **overrides
        Config keys given directly.
    """

    def __init__(
        self,
        kernel_size: IntOrPair,
        stride: "IntOrPair | None" = None,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
        ceil_mode: bool = False,
        *,
        config: ConfigLike = None,
        **overrides: Any,
    ) -> None:
        if overrides.get("return_indices"):
            raise ValueError("QMaxPool2d does not support return_indices")
        overrides.pop("return_indices", None)
        cfg = as_config(config, **overrides)
        super().__init__(kernel_size, stride, padding, dilation, False, ceil_mode)
        self._setup_quantizers(cfg, {"input": (cfg.input, ()), "output": (cfg.output, ())})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_4d(x, "QMaxPool2d")
        xq = self.quant["input"](x) if "input" in self.quant else x
        y = F.max_pool2d(xq, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        if "output" in self.quant:
            return self._result(self.quant["output"](y), x.dtype)
        return y


class QAvgPool2d(QuantizedModule, nn.AvgPool2d):
    """Average pooling with an exact window sum and one rounding::

        s = sum of cast(x, input) over the KH x KW window     (exact; zero padding counts)
        y = cast(s * 2**-k, output)          if the divisor N = 2**k
        y = cast(s * cast(1/N, reciprocal), output)   otherwise

    The divisor ``N`` is ``KH * KW`` (padded taps included, as
    ``count_include_pad=True``) or ``divisor_override``.

    Parameters
    ----------
    kernel_size, stride, padding, divisor_override
        As for :class:`torch.nn.AvgPool2d`; ``ceil_mode`` must be False and
        ``count_include_pad`` True (a constant divisor).
    config : LayerConfig or dict, optional
        Uses ``input`` and ``output`` (required), ``reciprocal`` (required
        when the divisor is not a power of two), ``learn_binary_point`` and
        ``track_overflow``.
    **overrides
        Config keys given directly.

    Attributes
    ----------
    divisor : int
        ``N``.
    """

    def __init__(
        self,
        kernel_size: IntOrPair,
        stride: "IntOrPair | None" = None,
        padding: IntOrPair = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
        *,
        config: ConfigLike = None,
        **overrides: Any,
    ) -> None:
        cfg = as_config(config, **overrides)
        if ceil_mode:
            raise ValueError("QAvgPool2d supports ceil_mode=False only (border windows would change the divisor)")
        if not count_include_pad and padding != 0 and _pair(padding) != (0, 0):
            raise ValueError("QAvgPool2d with padding needs count_include_pad=True (a constant divisor)")
        super().__init__(kernel_size, stride, padding, False, True, divisor_override)
        kh, kw = _pair(kernel_size)
        n = kh * kw if divisor_override is None else divisor_override
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"divisor_override must be a positive int, got {divisor_override!r}")
        self.divisor = n
        self.power_of_two = n & (n - 1) == 0
        self._require(cfg, "QAvgPool2d", "input", "output")
        if not self.power_of_two:
            self._require(cfg, f"QAvgPool2d with divisor {n} (not a power of two)", "reciprocal")
        self._setup_quantizers(
            cfg,
            {
                "input": (cfg.input, ()),
                "reciprocal": (None if self.power_of_two else cfg.reciprocal, ()),
                "output": (cfg.output, ()),
            },
        )

    def reciprocal_value(self) -> float:
        """The factor the window sum is multiplied by: ``2**-k`` or ``cast(1/N, reciprocal)``."""
        if self.power_of_two:
            return 1.0 / self.divisor
        r = quantize(torch.tensor(1.0 / self.divisor, dtype=torch.float64), self.quant["reciprocal"].fmt)
        return float(r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_4d(x, "QAvgPool2d")
        kh, kw = _pair(self.kernel_size)
        x_fmt = self.quant["input"].effective_format()
        assert isinstance(x_fmt, FixedType)
        sum_fmt = x_fmt.accumulator(kh * kw)
        factor = self.reciprocal_value()
        if not self.power_of_two:
            r_fmt = self.quant["reciprocal"].fmt
            assert isinstance(r_fmt, FixedType)
            check_float64_exact(sum_fmt * r_fmt, "QAvgPool2d's window sum times the reciprocal")
        else:
            check_float64_exact(sum_fmt, "QAvgPool2d's window sum")
        xq = self.quant["input"](x).double()
        s = F.avg_pool2d(xq, self.kernel_size, self.stride, self.padding, False, True, divisor_override=1)
        return self._result(self.quant["output"](s * factor), x.dtype)
