"""Structural layers of real models (issue 14): QBatchNorm1d, QGlobalAvgPool2d, QCat, QClamp, QSub, QMul,
QZeroPad2d, QUpsample.

Each states its cast points; the integer reference (:mod:`qfx.reference`), the HLS
templates and the RTL engines compute the same thing from the manifest.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from .. import _fixed
from ..quant import _assume_constant, quantize
from ..types import FixedType
from .accumulate import check_float64_exact
from .base import QuantizedModule
from .config import ConfigLike, as_config
from .norm import QBatchNorm2d
from .plan import compiling

__all__ = ["QBatchNorm1d", "QGlobalAvgPool2d", "QCat", "QClamp", "QSub", "QMul", "QZeroPad2d", "QUpsample", "upsample_problem", "avg_factor"]


def _check_float(t: object, layer: str, name: str = "x") -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise TypeError(f"{layer} expects floating-point tensors, got {getattr(t, 'dtype', type(t).__name__)} for {name}")
    return t


class QBatchNorm1d(QBatchNorm2d):
    """:class:`QBatchNorm2d` on ``[N, C]`` (after a Linear) or ``[N, C, L]``::

        y[n, c, ...] = cast(cast(x[n, c, ...], input) * scale_q[c] + shift_q[c], output)

    Exactly QBatchNorm2d's definition (scale and shift from gamma, beta and the
    running or batch statistics, each cast to its format; the product and the sum
    exact; one rounding at the output cast): the input is viewed as ``[N, C, L, 1]``
    (``L = 1`` for ``[N, C]``), so the batch statistics are over ``N`` (and ``L``),
    as :class:`torch.nn.BatchNorm1d`'s. The manifest op is ``batchnorm`` on ``[C]``
    or ``[C, L]``.

    Parameters
    ----------
    As :class:`QBatchNorm2d`.
    """

    @classmethod
    def from_float(cls, module: nn.BatchNorm1d, config: ConfigLike = None, **overrides: Any) -> "QBatchNorm1d":
        """A QBatchNorm1d with the parameters and running statistics of ``module``."""
        if not isinstance(module, nn.BatchNorm1d):
            raise TypeError(f"from_float needs an nn.BatchNorm1d, not {type(module).__name__}")
        q = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                config=config, **overrides)
        q.load_state_dict(module.state_dict(), strict=False)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_float(x, "QBatchNorm1d")
        if x.dim() not in (2, 3) or x.shape[1] != self.num_features:
            raise ValueError(f"QBatchNorm1d expects input of shape [N, {self.num_features}] or "
                             f"[N, {self.num_features}, L], got {list(x.shape)}")
        x4 = x.reshape(x.shape[0], x.shape[1], -1, 1)
        return super().forward(x4).reshape(x.shape)


def avg_factor(divisor: int, reciprocal: "FixedType | None") -> float:
    """The factor an exact window sum is multiplied by: ``2**-k`` for ``divisor = 2**k``, else
    ``cast(1/divisor, reciprocal)`` (the rule of :class:`qfx.nn.QAvgPool2d`)."""
    if divisor & (divisor - 1) == 0:
        return 1.0 / divisor
    if reciprocal is None:
        raise ValueError(f"a divisor of {divisor} (not a power of two) needs a 'reciprocal' format, e.g. "
                         "reciprocal='ap_ufixed<8,0,AP_RND>'")
    return float(quantize(torch.tensor(1.0 / divisor, dtype=torch.float64), reciprocal))


@_assume_constant
def _avg_factor_constant(divisor: int, reciprocal: "FixedType | None") -> float:
    """:func:`avg_factor`, a constant for torch.compile (it reads a quantized scalar)."""
    return avg_factor(divisor, reciprocal)


class QGlobalAvgPool2d(QuantizedModule, nn.Module):
    """Global average pooling (``AdaptiveAvgPool2d(1)``, ``x.mean((2, 3))``) with QAvgPool2d's rule::

        s = sum over H x W of cast(x, input)                  (exact)
        y = cast(s * 2**-k, output)                 if H * W = 2**k
        y = cast(s * cast(1/(H*W), reciprocal), output)   otherwise

    The divisor is known only from the input's size, so a missing ``reciprocal``
    format for a non-power-of-two ``H * W`` is an error at the first forward
    (conversion records the layer; export names it). The manifest op is
    ``avgpool2d`` with kernel = stride = ``[H, W]``.

    Parameters
    ----------
    keepdim : bool
        Output ``[N, C, 1, 1]`` (True, as AdaptiveAvgPool2d) or ``[N, C]`` (as ``mean``).
    config : LayerConfig or dict, optional
        Uses ``input``, ``output`` (required), ``reciprocal`` (for a non-power-of-two
        ``H * W``), ``learn_binary_point``, ``track_overflow``.
    """

    def __init__(self, keepdim: bool = True, *, config: ConfigLike = None, **overrides: Any) -> None:
        cfg = as_config(config, **overrides)
        super().__init__()
        self.keepdim = bool(keepdim)
        self._require(cfg, "QGlobalAvgPool2d", "input", "output")
        self._setup_quantizers(cfg, {"input": (cfg.input, ()), "reciprocal": (cfg.reciprocal, ()),
                                     "output": (cfg.output, ())})

    def reciprocal_format(self) -> "FixedType | None":
        return self.quant["reciprocal"].fmt if "reciprocal" in self.quant else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_float(x, "QGlobalAvgPool2d")
        if x.dim() != 4:
            raise ValueError(f"QGlobalAvgPool2d expects input of shape [N, C, H, W], got {list(x.shape)}")
        h, w = int(x.shape[2]), int(x.shape[3])
        n = h * w
        # The checks depend on the word lengths only: compiled, the format with its initial binary
        # point stands in for the learned one (no value read in the graph).
        x_fmt = self.quant["input"].fmt if compiling() else self.quant["input"].effective_format()
        assert isinstance(x_fmt, FixedType)
        sum_fmt = x_fmt.accumulator(n)
        factor = _avg_factor_constant(n, self.reciprocal_format()) if compiling() else avg_factor(n, self.reciprocal_format())
        if n & (n - 1):
            check_float64_exact(sum_fmt * self.reciprocal_format(), "QGlobalAvgPool2d's sum times the reciprocal")
        else:
            check_float64_exact(sum_fmt, "QGlobalAvgPool2d's sum")
        s = self.quant["input"](x).double().sum(dim=(2, 3), keepdim=self.keepdim)
        return self._result(self.quant["output"](s * factor), x.dtype)

    def extra_repr(self) -> str:
        return f"keepdim={self.keepdim}"


class QCat(QuantizedModule, nn.Module):
    """``y = cat([cast(x_i, output) for x_i in xs], dim)``: every input cast to the output format.

    Parameters
    ----------
    dim : int
        The concatenation axis; 1 (channels / features) is what export supports.
    config : LayerConfig or dict, optional
        Uses ``output`` (required), ``learn_binary_point`` and ``track_overflow``.
    """

    def __init__(self, dim: int = 1, *, config: ConfigLike = None, **overrides: Any) -> None:
        cfg = as_config(config, **overrides)
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"QCat dim must be an int, not {type(dim).__name__}")
        self.dim = dim
        self._require(cfg, "QCat", "output")
        self._setup_quantizers(cfg, {"output": (cfg.output, ())})

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if len(xs) == 1 and isinstance(xs[0], (list, tuple)):
            xs = tuple(xs[0])
        if len(xs) < 2:
            raise ValueError(f"QCat needs two or more tensors, got {len(xs)}")
        for i, t in enumerate(xs):
            _check_float(t, "QCat", f"input {i}")
        q = self.quant["output"]
        dtype = functools.reduce(torch.promote_types, [t.dtype for t in xs])
        return self._result(torch.cat([q(t.double()) for t in xs], dim=self.dim), dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class QClamp(QuantizedModule, nn.Module):
    """Hardtanh / clamp with constants on the output grid::

        y = min(max(cast(cast(x, input), output), cast(min_val, output)), cast(max_val, output))

    Both bounds are cast to the output format (``min_val`` / ``max_val`` may be
    None for a one-sided ``clamp``); clamping values of one format to values of
    that format is exact, so the output cast is the only rounding.

    Parameters
    ----------
    min_val, max_val : float or None
        As :class:`torch.nn.Hardtanh` (-1, 1) or :func:`torch.clamp`; at least one given,
        ``min_val <= max_val``.
    config : LayerConfig or dict, optional
        Uses ``output`` (required), ``input`` (optional, as QReLU), ``learn_binary_point``,
        ``track_overflow``.
    """

    def __init__(self, min_val: "float | None" = -1.0, max_val: "float | None" = 1.0, *,
                 config: ConfigLike = None, **overrides: Any) -> None:
        cfg = as_config(config, **overrides)
        super().__init__()
        for label, v in (("min_val", min_val), ("max_val", max_val)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v != v):
                raise TypeError(f"QClamp {label} must be a number or None, got {v!r}")
        if min_val is None and max_val is None:
            raise ValueError("QClamp needs min_val or max_val (or both)")
        if min_val is not None and max_val is not None and min_val > max_val:
            raise ValueError(f"QClamp needs min_val <= max_val, got {min_val} > {max_val}")
        self.min_val = None if min_val is None else float(min_val)
        self.max_val = None if max_val is None else float(max_val)
        self._require(cfg, "QClamp", "output")
        self._setup_quantizers(cfg, {"input": (cfg.input, ()), "output": (cfg.output, ())})

    def bounds(self) -> "tuple[float | None, float | None]":
        """``(cast(min_val, output), cast(max_val, output))`` with the output's current format."""
        fmt = self.quant["output"].effective_format()
        q = [None if v is None else float(quantize(torch.tensor(v, dtype=torch.float64), fmt))
             for v in (self.min_val, self.max_val)]
        return q[0], q[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_float(x, "QClamp")
        xq = self.quant["input"](x) if "input" in self.quant else x
        y = self.quant["output"](xq.double())
        lo, hi = self.bounds()
        y = torch.clamp(y, lo, hi)
        return self._result(y, x.dtype)

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}"


@functools.lru_cache(maxsize=1024)
def _result_fits_float32(ta: FixedType, tb: FixedType, op: str) -> bool:
    t = ta - tb if op == "sub" else ta * tb
    check_float64_exact(t, f"Q{op.capitalize()}'s exact result")
    return _fixed.holds_exactly(t, torch.float32)


class _QBinary(QuantizedModule, nn.Module):
    """``y = cast(f(cast(a, in_a), cast(b, in_b)), output)`` with ``f`` exact (ap_fixed result type)."""

    _op = ""

    def __init__(self, *, config: ConfigLike = None, **overrides: Any) -> None:
        cfg = as_config(config, **overrides)
        cfg = cfg.updated(in_a=cfg.in_a or cfg.input, in_b=cfg.in_b or cfg.input)
        super().__init__()
        self._require(cfg, type(self).__name__, "in_a", "in_b", "output")
        self._setup_quantizers(cfg, {"in_a": (cfg.in_a, ()), "in_b": (cfg.in_b, ()), "output": (cfg.output, ())})

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        layer = type(self).__name__
        _check_float(a, layer, "a")
        _check_float(b, layer, "b")
        if a.shape != b.shape:
            raise ValueError(f"{layer} needs operands of the same shape (no broadcasting), got {list(a.shape)} "
                             f"and {list(b.shape)}")
        ta, tb = self.quant["in_a"].effective_format(), self.quant["in_b"].effective_format()
        assert isinstance(ta, FixedType) and isinstance(tb, FixedType)
        try:
            _result_fits_float32(ta, tb, self._op)
        except ValueError as err:
            raise ValueError(f"{layer}: {err}") from None
        qa, qb = self.quant["in_a"](a).double(), self.quant["in_b"](b).double()
        r = qa - qb if self._op == "sub" else qa * qb
        return self._result(self.quant["output"](r), torch.promote_types(a.dtype, b.dtype))


class QSub(_QBinary):
    """``y = cast(cast(a, in_a) - cast(b, in_b), output)``; the difference is exact (ap_fixed ``-``).

    Config as :class:`qfx.nn.QAdd` (``in_a`` / ``in_b`` default to ``input``; same shapes, no broadcasting).
    """

    _op = "sub"


class QMul(_QBinary):
    """``y = cast(cast(a, in_a) * cast(b, in_b), output)``; the product is exact (W_a + W_b bits).

    Element-wise gating of two tensors of the same shape (no broadcasting); config as :class:`qfx.nn.QAdd`.
    """

    _op = "mul"


class QZeroPad2d(nn.ZeroPad2d):
    """:class:`torch.nn.ZeroPad2d` in a quantized model: values pass unchanged, zeros around them.

    Zero is a value of every format, so the output format is the producer's (no cast, no config key).
    The manifest op is ``pad`` with ``padding = [left, right, top, bottom]``.

    Parameters
    ----------
    padding : int or 4-tuple
        As for :class:`torch.nn.ZeroPad2d`; every amount >= 0 (cropping is not supported).
    """

    def __init__(self, padding: Any, *, config: ConfigLike = None, **overrides: Any) -> None:
        as_config(config, **overrides)
        super().__init__(padding)
        if any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in self.padding):
            raise ValueError(f"QZeroPad2d needs padding amounts >= 0 (no cropping), got {self.padding}")


def _int_factor(v: Any) -> "int | None":
    """``v`` as an int >= 1 when it is one (``2`` or ``2.0``), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if v >= 1 else None
    if isinstance(v, float) and v.is_integer() and v >= 1:
        return int(v)
    return None


def _as_tuple(v: Any) -> "tuple | None":
    if v is None:
        return None
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def upsample_problem(size: Any = None, scale_factor: Any = None, mode: Any = "nearest", align_corners: Any = None,
                     antialias: Any = False) -> "str | None":
    """Why an ``nn.Upsample`` / ``F.interpolate`` call has no qfx version (None: it has one).

    Supported: ``mode='nearest'`` with an integer ``scale_factor`` (an int, or a tuple of ints,
    one per spatial dim) or a ``size`` (checked at the first forward pass to be an integer
    multiple of the input's spatial size); ``align_corners`` unset, ``antialias=False``."""
    if mode != "nearest":
        return (f"argument mode={mode!r} is not supported; only mode='nearest' (with integer scale factors: "
                "values are copied, never interpolated)")
    if align_corners is not None:
        return (f"argument align_corners={align_corners!r} is not supported; only align_corners=None (the default; "
                "mode='nearest' does not interpolate)")
    if antialias:
        return f"argument antialias={antialias!r} is not supported; only antialias=False"
    if (size is None) == (scale_factor is None):
        return "needs exactly one of size and scale_factor (an integer scale factor, or a size that is an integer " \
               "multiple of the input)"
    if scale_factor is not None:
        sf = _as_tuple(scale_factor)
        if not sf or len(sf) > 2 or any(_int_factor(s) is None for s in sf):
            return (f"argument scale_factor={scale_factor!r} is not supported; only integer scale factors >= 1 "
                    "(an int such as 2, or a tuple of ints such as (2, 3), one per spatial dim)")
    else:
        sz = _as_tuple(size)
        if not sz or len(sz) > 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sz):
            return (f"argument size={size!r} is not supported; only constant ints >= 1 (an int, or a tuple of ints "
                    "one per spatial dim), each an integer multiple of the input's size")
    return None


class QUpsample(nn.Module):
    """``nn.Upsample`` / ``F.interpolate`` with ``mode='nearest'`` and integer scale factors, in a
    quantized model: every input element repeated ``sh x sw`` times (``s`` for ``[N, C, L]``)::

        y[n, c, oy, ox] = x[n, c, oy // sh, ox // sw]

    Values are copied, never computed, so the output format is the producer's (no cast, no
    config key). The manifest op is ``upsample`` with ``scale = [sh, sw]`` (``[1, s]`` for a
    1-D input, written as the height-1 ``[C, 1, L]``). The emulation indexes with integers
    (``repeat_interleave``), not with torch's floating-point source index.

    Once called on an ``[N, C, L]`` tensor, the layer is 1-D: it then also takes the height-1
    layout ``[N, C, 1, L]`` (the manifest's shape, as :class:`qfx.nn.QConv1d` does) and upsamples
    only its last dim.

    Parameters
    ----------
    size : int or tuple of int, optional
        The output's spatial size; each must be an integer multiple of the input's (checked at
        every forward pass).
    scale_factor : int or tuple of int, optional
        Integer factors >= 1 (``2.0`` counts as 2); exactly one of ``size`` and ``scale_factor``.
    mode : str
        Must be ``'nearest'``.
    align_corners : None
        Must be None.
    name : str, optional
        The layer's name, used in error messages (:func:`qfx.convert` sets it).
    """

    def __init__(self, size: Any = None, scale_factor: Any = None, mode: str = "nearest",
                 align_corners: Any = None, *, name: "str | None" = None, config: ConfigLike = None,
                 **overrides: Any) -> None:
        as_config(config, **overrides)
        super().__init__()
        self.layer = name
        why = upsample_problem(size, scale_factor, mode, align_corners)
        if why:
            raise ValueError(f"{self._label()}: {why}")
        self.mode = "nearest"
        self.size = None if size is None else tuple(int(s) for s in _as_tuple(size))
        self.scale_factor = None if scale_factor is None else tuple(_int_factor(s) for s in _as_tuple(scale_factor))
        self.one_d = False  # set by the first [N, C, L] input

    def _label(self) -> str:
        return f"layer {self.layer!r} (Upsample)" if self.layer else "QUpsample"

    def extra_repr(self) -> str:
        return f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"

    def scales(self, spatial: "tuple[int, ...]") -> tuple[int, ...]:
        """The integer factor of each spatial dim for an input of spatial size ``spatial``."""
        k = len(spatial)
        if k not in (1, 2):
            raise ValueError(f"{self._label()}: only [N, C, L] and [N, C, H, W] inputs are supported, got "
                             f"{k} spatial dims")
        if self.scale_factor is not None:
            sf = self.scale_factor if len(self.scale_factor) == k else (
                self.scale_factor * k if len(self.scale_factor) == 1 else None)
            if sf is None:
                raise ValueError(f"{self._label()}: scale_factor {self.scale_factor} has {len(self.scale_factor)} "
                                 f"entries for an input with {k} spatial dim(s); give one, or one per spatial dim")
            return tuple(sf)
        sz = self.size if len(self.size) == k else (self.size * k if len(self.size) == 1 else None)
        if sz is None:
            raise ValueError(f"{self._label()}: size {self.size} has {len(self.size)} entries for an input with "
                             f"{k} spatial dim(s); give one, or one per spatial dim")
        if any(o % i for o, i in zip(sz, spatial)):
            raise ValueError(f"{self._label()}: size {tuple(sz)} is not an integer multiple of the input's spatial "
                             f"size {tuple(spatial)}; only integer scale factors are supported (mode='nearest' "
                             "repeating each element)")
        return tuple(o // i for o, i in zip(sz, spatial))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_float(x, "QUpsample")
        if x.dim() not in (3, 4):
            raise ValueError(f"{self._label()}: only [N, C, L] and [N, C, H, W] inputs are supported, got "
                             f"shape {list(x.shape)}")
        if x.dim() == 3:
            self.one_d = True
        first = 3 if (self.one_d and x.dim() == 4 and x.shape[2] == 1) else 2  # the height-1 layout of [N, C, L]
        y = x
        for d, s in zip(range(first, x.dim()), self.scales(tuple(x.shape[first:]))):
            if s > 1:
                y = y.repeat_interleave(s, dim=d)
        return y
