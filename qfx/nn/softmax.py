"""Softmax inside the model, as HLS designs build it (hls4ml's ``softmax_stable``): QSoftmax.

Over one non-batch dim ``dim`` of ``[N, ...]``: the features of ``[N, F]`` (``dim=1`` or ``-1``), the
last dim of ``[N, T, S]`` / ``[N, H, T, S]`` (``dim=-1``: attention scores, one row per query), the
channels of ``[N, C, H, W]`` (``dim=1``: per pixel across channels), any other non-batch dim alike.
Per vector of the ``F`` codes along ``dim`` (every other index fixed), with integer codes throughout::

    c_j = code(cast(x_j, input))                      # lsb 2**-F of the input format
    m   = max_j c_j
    d_j = m - c_j                                     # >= 0, a code of ap_ufixed<W, I> (the input's W, I)
    e_j = exp_table[index(d_j)]                       # qfx.tables: exp(-d) cast to `exp`, codes (grid 2**-Fe)
    S   = sum_j e_j                                   # exact integer sum (S >= e(0) >= 1)
    r   = cast(2**Fe / S, reciprocal)                 # exact integer division, then the reciprocal's cast
    y_j = cast(e_j * r, output)                       # the exact product (grid 2**-(Fe+Fr)), one cast

The exp table is :func:`qfx.tables.softmax_plan` / :func:`qfx.tables.contents` of ``exp_neg`` on the
difference format (the one definition the reference, the HLS C++ and the RTL ROM use too): entry ``i``
is ``cast(exp(-midpoint of the d codes it covers), exp)``; ``d`` beyond the table's range takes the last
entry. ``r`` is correctly rounded in the reciprocal format's own rounding / overflow modes: ``q = 2**K // S``
and ``t = 2*q + (2**K % S != 0)`` is an exact-enough code on the grid ``2**-(Fr+2)`` (a guard and a sticky
bit, :func:`qfx.tables.softmax_reciprocal_codes`), cast like any value.

Config keys: ``input`` (the default one too), ``output``, ``exp`` and ``reciprocal`` (unsigned; only from
``types:`` / ``layers:`` or keyword arguments, default :data:`qfx.tables.SOFTMAX_EXP_DEFAULT` /
:data:`~qfx.tables.SOFTMAX_RECIPROCAL_DEFAULT`: a ``reciprocal`` in ``default:`` is the pools'), ``table_size``,
``table_range`` (of ``d``: ``R`` is ``[0, R)``). Formats are never learned. Training: the forward value
is the integer result; the gradient is float softmax's at ``cast(x, input)`` (STE).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import tables
from ..quant import quantize
from ..types import FixedType, parse_type
from .base import QuantizedModule
from .config import ConfigLike, as_config

__all__ = ["QSoftmax", "DIM_RULE", "softmax_dim"]

#: What ``dim`` may be (every refusal of a softmax dim says it).
DIM_RULE = ("a softmax runs over one non-batch dim given as an int: dim=-1 (the last dim of [N, F], [N, T, S], "
            "[N, H, T, S]), dim=1 (the features of [N, F], the channels of [N, C, H, W]) or another dim >= 1 "
            "(not the batch dim 0)")


def softmax_dim(dim: int, rank: int) -> "int | None":
    """``dim`` of a rank-``rank`` tensor ``[N, ...]`` as a positive dim ``1 .. rank - 1`` (None: the batch
    dim or out of range)."""
    d = dim + rank if dim < 0 else dim
    return d if 1 <= d < rank else None


class QSoftmax(QuantizedModule, nn.Module):
    """Softmax over one non-batch dim with an exp table, an exact sum and an exact reciprocal.

    Parameters
    ----------
    dim : int
        The dim, as torch counts it on ``[N, ...]``: any int but the batch dim (0, or ``-rank``: checked
        at the forward pass), e.g. 1 / -1 on ``[N, F]``, -1 on ``[N, T, S]``, 1 on ``[N, C, H, W]``.
    config : LayerConfig or dict, optional
        ``input``, ``output`` (required), ``exp``, ``reciprocal`` (unsigned fixed point; defaults
        :data:`qfx.tables.SOFTMAX_EXP_DEFAULT`, :data:`qfx.tables.SOFTMAX_RECIPROCAL_DEFAULT`),
        ``table_size``, ``table_range``.
    name : str
        The layer's name in error messages.
    """

    def __init__(self, dim: int = 1, *, config: ConfigLike = None, name: str = "QSoftmax", **overrides: Any) -> None:
        cfg = as_config(config, **overrides)
        super().__init__()
        self.name = name
        if isinstance(dim, bool) or not isinstance(dim, int) or dim == 0:
            raise ValueError(f"layer {name!r} (Softmax): argument dim={dim!r} is not supported; {DIM_RULE}")
        self.dim = dim
        layer = f"layer {name!r} (Softmax)"
        self._require(cfg, layer, "input", "output")
        lbp = cfg.learn_binary_point
        if isinstance(lbp, frozenset) and lbp & {"input", "output"}:
            raise ValueError(f"{layer}: learn_binary_point names {sorted(lbp & {'input', 'output'})}, but a softmax's "
                             "formats stay fixed (its exp table is defined on them); drop them from the list")
        exp_fmt = cfg.exp if cfg.exp is not None else parse_type(tables.SOFTMAX_EXP_DEFAULT)
        recip = cfg.reciprocal if cfg.reciprocal is not None else parse_type(tables.SOFTMAX_RECIPROCAL_DEFAULT)
        self._setup_quantizers(cfg.updated(learn_binary_point=False),
                               {"input": (cfg.input, ()), "output": (cfg.output, ())})
        self.config = cfg
        self.exp_format: FixedType = exp_fmt
        self.reciprocal_format: FixedType = recip
        self.spec = tables.softmax_plan(cfg.input, cfg.table_size, cfg.table_range)
        tables.softmax_check_formats(self.spec, cfg.input, exp_fmt, recip, cfg.output)
        self._cache: dict = {}

    def table_codes(self) -> "tuple[tables.TableSpec, FixedType, FixedType, Any]":
        """``(spec, input format, exp format, exp-table contents as int64 codes)``."""
        xi = self.quant["input"].effective_format()
        return self.spec, xi, self.exp_format, tables.contents(self.spec, tables.softmax_diff_format(xi), self.exp_format)

    def formats(self) -> dict[str, Any]:
        return {**super().formats(), "exp": self.exp_format, "reciprocal": self.reciprocal_format}

    def _table(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(self.table_codes()[3], dtype=torch.int64, device=device)
        return self._cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"layer {self.name!r} (Softmax) expects a floating-point tensor, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        dim = softmax_dim(self.dim, x.dim())
        if dim is None:
            raise ValueError(f"layer {self.name!r} (Softmax): a softmax over dim {self.dim} of a rank-{x.dim()} tensor "
                             f"{list(x.shape)} is not supported; {DIM_RULE}")
        xq = self.quant["input"](x).double()
        xi = self.quant["input"].effective_format()
        s, fe = self.spec, self.exp_format.frac_bits
        with torch.no_grad():
            c = torch.round(xq.detach() * 2.0**xi.frac_bits).to(torch.int64)
            d = c.max(dim=dim, keepdim=True).values - c
            e = self._table(x.device)[(d.clamp(s.lo_code, s.hi_code) - s.lo_code) >> s.shift]
            ssum = e.sum(dim=dim, keepdim=True)
            k, g = tables.softmax_quotient_format(self.exp_format, self.reciprocal_format)
            num = 1 << k
            t = (num // ssum) * 2 + (num % ssum != 0).to(torch.int64)
            r = quantize(t.double() * 2.0**-g, self.reciprocal_format)
            y = self.quant["output"](e.double() * 2.0**-fe * r)
        if torch.is_grad_enabled() and xq.requires_grad:
            f = torch.softmax(xq, dim=dim)
            y = f + (y - f).detach()
        return self._result(y, x.dtype)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"dim={self.dim}, exp={self.exp_format}, reciprocal={self.reciprocal_format}, size={s.size}, "
                f"shift={s.shift}")
