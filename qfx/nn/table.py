"""Nonlinear activations as fixed-point lookup tables: QSigmoid, QTanh, QSiLU, QGELU, QHardsigmoid, QHardswish.

Each is the one table of :mod:`qfx.tables` (the same contents the integer reference, the HLS
C++ and the RTL ROM use)::

    c = codes of cast(x, input)                           # lsb 2**-F of the input format
    i = (clamp(c, lo_code, hi_code) - lo_code) >> shift   # qfx.tables.index
    y = table[i]                                          # codes of the output format

``table[i] = cast(f(midpoint of the input codes entry i covers), output)``, correctly rounded
(:func:`qfx.tables.contents`). The geometry comes from :func:`qfx.tables.plan` with the config
keys ``table_size`` (at most that many entries, a power of two) and ``table_range`` (the input
range ``[lo, hi)`` covered; default the input format's whole range); inputs outside the range
take the first / last entry. A range the input format cannot cover, off the input grid or not
a power-of-two number of codes is a :class:`qfx.tables.TableError` when the layer is built.

The formats of a table layer stay fixed (``learn_binary_point`` is not applied to them: the
table is defined on them). Training: the forward value is the table entry; the gradient is the
float function's derivative at ``cast(x, input)`` (a straight-through estimator around the table,
the input cast's own STE before it). The manifest op is ``table`` (:mod:`qfx.manifest`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import tables
from ..types import FixedType
from .base import QuantizedModule
from .config import ConfigLike, as_config

__all__ = ["QTable", "QSigmoid", "QTanh", "QSiLU", "QGELU", "QHardsigmoid", "QHardswish", "TABLE_FUNCTIONS"]

#: table function -> the float function (whose derivative trains the layer)
TABLE_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "silu": F.silu,
    "gelu": F.gelu,
    "hardsigmoid": F.hardsigmoid,
    "hardswish": F.hardswish,
}


class QTable(QuantizedModule, nn.Module):
    """``y = table[index(codes(cast(x, input)))]`` for one function of :data:`TABLE_FUNCTIONS`.

    Parameters
    ----------
    function : str
        ``sigmoid``, ``tanh``, ``silu``, ``gelu``, ``hardsigmoid`` or ``hardswish``.
    config : LayerConfig or dict, optional
        Uses ``input`` and ``output`` (both required, fixed point), ``table_size``,
        ``table_range``.
    **overrides
        Config keys given directly.

    Raises
    ------
    qfx.tables.TableError
        The table cannot cover its declared input range (see :func:`qfx.tables.plan`).
    """

    _function: "str | None" = None

    def __init__(self, function: "str | None" = None, *, config: ConfigLike = None, **overrides: Any) -> None:
        cfg = as_config(config, **overrides)
        super().__init__()
        fn = function if function is not None else self._function
        if fn not in TABLE_FUNCTIONS:
            raise ValueError(f"QTable function must be one of {', '.join(TABLE_FUNCTIONS)}, not {fn!r}")
        self.function = fn
        layer = type(self).__name__
        self._require(cfg, layer, "input", "output")
        lbp = cfg.learn_binary_point
        if isinstance(lbp, frozenset) and lbp & {"input", "output"}:
            raise ValueError(f"{layer}: learn_binary_point names {sorted(lbp & {'input', 'output'})}, but a lookup "
                             "table's formats stay fixed (the table is defined on them); drop them from the list")
        self._setup_quantizers(cfg.updated(learn_binary_point=False),
                               {"input": (cfg.input, ()), "output": (cfg.output, ())})
        self.config = cfg
        self.spec = tables.plan(fn, cfg.input, cfg.table_size, cfg.table_range)
        self._cache: dict = {}

    def table_codes(self) -> "tuple[tables.TableSpec, FixedType, FixedType, Any]":
        """``(spec, input format, output format, contents as int64 codes)``."""
        xi, out = self.quant["input"].effective_format(), self.quant["output"].effective_format()
        return self.spec, xi, out, tables.contents(self.spec, xi, out)

    def _values(self, device: torch.device) -> torch.Tensor:
        key = (str(device),)
        if key not in self._cache:
            _spec, _xi, out, codes = self.table_codes()
            self._cache[key] = torch.as_tensor(codes, dtype=torch.float64, device=device) * out.lsb
        return self._cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} expects a floating-point tensor, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        xq = self.quant["input"](x).double()
        xi = self.quant["input"].effective_format()
        s = self.spec
        codes = torch.round(xq.detach() * 2.0**xi.frac_bits).to(torch.int64)
        idx = (codes.clamp(s.lo_code, s.hi_code) - s.lo_code) >> s.shift
        y = self._values(x.device)[idx]
        if torch.is_grad_enabled() and xq.requires_grad:
            f = TABLE_FUNCTIONS[self.function](xq)
            y = f + (y - f).detach()
        return self._result(y, x.dtype)

    def extra_repr(self) -> str:
        s = self.spec
        return f"function={self.function!r}, size={s.size}, shift={s.shift}, lo_code={s.lo_code}"


class QSigmoid(QTable):
    """:class:`QTable` of ``sigmoid``."""

    _function = "sigmoid"


class QTanh(QTable):
    """:class:`QTable` of ``tanh``."""

    _function = "tanh"


class QSiLU(QTable):
    """:class:`QTable` of ``silu`` (``x * sigmoid(x)``)."""

    _function = "silu"


class QGELU(QTable):
    """:class:`QTable` of the exact (erf) ``gelu``."""

    _function = "gelu"


class QHardsigmoid(QTable):
    """:class:`QTable` of ``hardsigmoid`` (``clip(x / 6 + 1/2, 0, 1)``; exact rational contents)."""

    _function = "hardsigmoid"


class QHardswish(QTable):
    """:class:`QTable` of ``hardswish`` (``x * hardsigmoid(x)``; exact rational contents)."""

    _function = "hardswish"
