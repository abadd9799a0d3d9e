"""Quantized activations: QReLU, QReLU6, QLeakyReLU (power-of-two slope)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .base import QuantizedModule
from .config import ConfigLike, as_config

__all__ = ["QReLU", "QReLU6", "QLeakyReLU"]


class _QElementwise(QuantizedModule, nn.Module):
    """``y = cast(f(cast(x, input)), output)``; the input cast is skipped without an ``input`` format.

    ``f`` must be exact on the values it gets (max, min, power-of-two scaling).
    """

    _layer = "elementwise"
    #: ``f`` returns one of its inputs' values or a constant every float dtype holds (max, min):
    #: exact in the input's own dtype, no float64 copy needed.
    _exact_in_any_dtype = False

    def __init__(self, config: ConfigLike = None, **overrides: Any) -> None:
        cfg = as_config(config, **overrides)
        super().__init__()
        self._require(cfg, self._layer, "output")
        self._setup_quantizers(cfg, {"input": (cfg.input, ()), "output": (cfg.output, ())})

    def _f(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{self._layer} expects a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        xq = self.quant["input"](x) if "input" in self.quant else x
        if not (self._exact_in_any_dtype and xq.dtype in (torch.float32, torch.float64)):
            xq = xq.double()
        return self._result(self.quant["output"](self._f(xq)), x.dtype)


class QReLU(_QElementwise):
    """``y = cast(max(cast(x, input), 0), output)``.

    Parameters
    ----------
    config : LayerConfig or dict, optional
        Uses ``output`` (required), ``input`` (optional: without it the input
        is taken as it comes, e.g. already in the previous layer's output
        format), ``learn_binary_point`` and ``track_overflow``.
    **overrides
        Config keys given directly, e.g. ``output="ap_ufixed<8,3,AP_RND,AP_SAT>"``.
    """

    _layer = "QReLU"
    _exact_in_any_dtype = True

    def _f(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


class QReLU6(_QElementwise):
    """``y = cast(min(max(cast(x, input), 0), 6), output)``; parameters as :class:`QReLU`."""

    _layer = "QReLU6"
    _exact_in_any_dtype = True

    def _f(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, 0.0, 6.0)


class QLeakyReLU(_QElementwise):
    """``y = cast(x if x >= 0 else x * 2**-s, output)`` with ``x = cast(x, input)``.

    The slope is a power of two, so the negative part is an exact shift.

    Parameters
    ----------
    negative_slope : float
        ``2**-s`` for an integer ``s >= 1`` (0.5, 0.25, 0.125, ...).
    config, **overrides
        As for :class:`QReLU`.

    Attributes
    ----------
    slope_shift : int
        ``s``.
    """

    _layer = "QLeakyReLU"

    def __init__(self, negative_slope: float = 0.125, *, config: ConfigLike = None, **overrides: Any) -> None:
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)):
            raise TypeError(f"negative_slope must be a float, not {type(negative_slope).__name__}")
        mantissa, exponent = math.frexp(float(negative_slope))
        if not (0 < negative_slope < 1) or mantissa != 0.5:
            raise ValueError(
                f"QLeakyReLU needs a power-of-two negative_slope 2**-s (s >= 1), e.g. 0.125, "
                f"got {negative_slope!r}"
            )
        super().__init__(config, **overrides)
        self.negative_slope = float(negative_slope)
        self.slope_shift = 1 - exponent

    def _f(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, x * self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope=2**-{self.slope_shift}"
