"""QAdd: the residual (element-wise) addition."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from .. import _fixed
from ..types import FixedType
from .accumulate import check_float64_exact
from .base import QuantizedModule
from .config import ConfigLike, as_config
from .plan import compiling, plan_of, set_plan

__all__ = ["QAdd"]


@functools.lru_cache(maxsize=1024)
def _sum_fits_float32(ta: FixedType, tb: FixedType) -> bool:
    """Raises unless float64 holds every ``a + b``; whether float32 does."""
    try:
        check_float64_exact(ta + tb, "QAdd's exact sum")
    except ValueError as err:
        raise ValueError(f"QAdd: {err}") from None
    return _fixed.holds_exactly(ta + tb, torch.float32)


class QAdd(QuantizedModule, nn.Module):
    """``y = cast(cast(a, in_a) + cast(b, in_b), output)``; the sum is exact (ap_fixed ``+``).

    Parameters
    ----------
    config : LayerConfig or dict, optional
        Uses ``in_a`` and ``in_b`` (each defaults to ``input``), ``output``
        (all required), ``learn_binary_point`` and ``track_overflow``.
    **overrides
        Config keys given directly.

    ``a`` and ``b`` must have the same shape (no broadcasting).
    """

    def __init__(self, *, config: ConfigLike = None, **overrides: Any) -> None:
        cfg = as_config(config, **overrides)
        cfg = cfg.updated(in_a=cfg.in_a or cfg.input, in_b=cfg.in_b or cfg.input)
        super().__init__()
        self._require(cfg, "QAdd", "in_a", "in_b", "output")
        self._setup_quantizers(cfg, {"in_a": (cfg.in_a, ()), "in_b": (cfg.in_b, ()), "output": (cfg.output, ())})

    def _fits_float32(self) -> bool:
        ta, tb = self.quant["in_a"].effective_format(), self.quant["in_b"].effective_format()
        assert isinstance(ta, FixedType) and isinstance(tb, FixedType)
        return _sum_fits_float32(ta, tb)

    def plan_key(self):
        return self._quantizer_keys()

    def refresh_plan(self) -> None:
        """Whether float32 holds every sum (and the eager forward's float64 check), for the compiled forward."""
        set_plan(self, self._fits_float32())

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        for name, t in (("a", a), ("b", b)):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise TypeError(f"QAdd expects floating-point tensors, got {getattr(t, 'dtype', type(t).__name__)} for {name}")
        if a.shape != b.shape:
            raise ValueError(f"QAdd needs operands of the same shape, got {list(a.shape)} and {list(b.shape)}")
        fits_float32 = plan_of(self) if compiling() else self._fits_float32()
        qa, qb = self.quant["in_a"](a), self.quant["in_b"](b)
        if qa.dtype == qb.dtype == torch.float32 and fits_float32:
            s = qa + qb  # float32 holds every sum exactly
        else:
            s = qa.double() + qb.double()
        return self._result(self.quant["output"](s), torch.promote_types(a.dtype, b.dtype))
