"""Quantized activations: QReLU, QReLU6, QLeakyReLU (power-of-two slope), QHardtanh (clamp)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .base import QuantizedModule
from .config import ConfigLike, as_config

__all__ = ["QReLU", "QReLU6", "QLeakyReLU", "QHardtanh", "dyadic_bound"]

#: Bounds of QHardtanh are dyadic numbers code * 2**-frac with frac in this range (a finer bound
#: would need a compare grid far wider than any format qfx builds).
BOUND_FRAC_RANGE = (-32, 32)


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


def dyadic_bound(value: float, what: str = "bound") -> tuple[int, int]:
    """``(code, frac)`` with ``value == code * 2**-frac`` exactly, ``frac`` as small as possible.

    Raises ValueError for a non-finite value or one that needs more than 32 fractional bits (0.1,
    say, is not a short dyadic number: the compare grid would be enormous) or code over 53 bits.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, not {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{what} must be finite, got {value!r}")
    if v == 0:
        return 0, 0
    num, den = v.as_integer_ratio()  # den is a power of two
    frac = den.bit_length() - 1
    while frac > BOUND_FRAC_RANGE[0] and num % 2 == 0:
        num //= 2
        frac -= 1
    if frac > BOUND_FRAC_RANGE[1] or abs(num) >= 1 << 53:
        raise ValueError(
            f"{what} {value!r} is not a dyadic number with at most {BOUND_FRAC_RANGE[1]} fractional bits; "
            f"use a bound such as {round(v * 16) / 16!r} (a multiple of a power of two)")
    return num, frac


class QHardtanh(_QElementwise):
    """``y = cast(min(max(cast(x, input), lo), hi), output)``: ``nn.Hardtanh``, ``F.hardtanh`` and
    ``torch.clamp`` / ``clip`` with constant bounds (either may be ``None``: no bound on that side).

    The bounds are used exactly as given (they must be dyadic: ``code * 2**-frac`` with
    ``|frac| <= 32``, e.g. -1, 0.75, 6); the compare happens on the grid ``max(F_x, frac)`` where
    both the input and the bounds are exact, and only the final cast to ``output`` rounds. ReLU6 is
    the case ``lo = 0, hi = 6``.

    Parameters
    ----------
    min_val, max_val : float or None
        The bounds (``min_val <= max_val``; at least one given).
    config, **overrides
        As for :class:`QReLU`.

    Attributes
    ----------
    bound_codes : tuple
        ``(lo_code or None, hi_code or None, frac)``: the bounds on one common grid ``2**-frac``.
    """

    _layer = "QHardtanh"
    _exact_in_any_dtype = False

    def __init__(self, min_val: "float | None" = -1.0, max_val: "float | None" = 1.0, *,
                 config: ConfigLike = None, **overrides: Any) -> None:
        if min_val is None and max_val is None:
            raise ValueError("QHardtanh needs min_val or max_val (both None would be the identity)")
        lo = None if min_val is None else dyadic_bound(min_val, "min_val")
        hi = None if max_val is None else dyadic_bound(max_val, "max_val")
        if lo is not None and hi is not None and float(min_val) > float(max_val):  # type: ignore[arg-type]
            raise ValueError(f"QHardtanh needs min_val <= max_val, got {min_val!r} > {max_val!r}")
        super().__init__(config, **overrides)
        frac = max(b[1] for b in (lo, hi) if b is not None)
        self.bound_codes = (None if lo is None else lo[0] << (frac - lo[1]),
                            None if hi is None else hi[0] << (frac - hi[1]), frac)
        self.min_val = None if min_val is None else float(min_val)
        self.max_val = None if max_val is None else float(max_val)

    def _f(self, x: torch.Tensor) -> torch.Tensor:
        # float64 min/max against exact dyadic bounds return one of the operands: exact
        return torch.clamp(x, self.min_val, self.max_val)

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}"
