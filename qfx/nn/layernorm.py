"""QLayerNorm: ``nn.LayerNorm`` over the last dim in fixed point, bit-exact with :mod:`qfx.layernorm`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import layernorm as lnx
from ..types import FixedType
from .accumulate import check_float64_exact
from .base import QuantizedModule
from .config import ConfigLike, as_config

__all__ = ["QLayerNorm", "layernorm_problem"]


def layernorm_problem(normalized_shape: Any, eps: Any, elementwise_affine: Any = True) -> "str | None":
    """Why an ``nn.LayerNorm`` has no qfx version (None: it has one). Supported: ``normalized_shape``
    one int (the last dim), ``eps`` a finite number > 0, ``elementwise_affine`` True or False, with
    or without ``bias``."""
    shape = tuple(normalized_shape) if isinstance(normalized_shape, (tuple, list, torch.Size)) else (normalized_shape,)
    if len(shape) != 1 or isinstance(shape[0], bool) or not isinstance(shape[0], int) or shape[0] < 1:
        return (f"normalized_shape={tuple(shape)!r} is not supported; only normalization over the last dim "
                "(normalized_shape=(F,) or F, an int >= 1)")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps == eps or not 0 < eps < float("inf"):
        return (f"eps={eps!r} is not supported; eps must be a finite number > 0 (it is added to the variance as "
                "ceil(eps * 2**F_var) codes of the var format, at least one lsb)")
    if not isinstance(elementwise_affine, bool):
        return f"elementwise_affine={elementwise_affine!r} must be True or False"
    return None


class _Exact(torch.autograd.Function):
    """Forward: the exact value; backward: the gradient of the float surrogate (straight-through)."""

    @staticmethod
    def forward(ctx, surrogate: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:  # noqa: D401
        return exact.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def _inv_sqrt(n: torch.Tensor, e: int, width: int) -> torch.Tensor:
    """``min(isqrt(2**e // n), 2**width - 1)`` on int64 (float sqrt, then exact integer corrections)."""
    y = torch.div(torch.full_like(n, 1 << e), n, rounding_mode="floor")
    k = torch.floor(torch.sqrt(y.double())).to(torch.int64)
    for _ in range(2):
        k = torch.where(k * k > y, k - 1, k)
        k = torch.where((k + 1) * (k + 1) <= y, k + 1, k)
    return torch.clamp(k, max=(1 << width) - 1)


class QLayerNorm(QuantizedModule, nn.Module):
    """LayerNorm over the last dim with integer statistics (the rule of :mod:`qfx.layernorm`)::

        mean = cast(sum(q) / F, mean)           (sum exact; 2**-k or cast(1/F, reciprocal))
        var  = cast(sum((q - mean)**2) / F, var)
        s    = floor(1 / sqrt(var + eps)) in inv_std (an exact integer square root, saturating)
        y    = cast((q - mean) * s * gamma_q + beta_q, output)

    ``q = cast(x, input)``, ``gamma_q = cast(weight, scale)``, ``beta_q = cast(bias, shift)``. The
    forward pass computes exactly these values (float64 and int64, checked exact); the backward
    pass is the float LayerNorm's gradient of the quantized input and parameters (straight through
    the integer statistics and the casts), the output cast's own gradient as every qfx layer's.

    Parameters
    ----------
    normalized_shape : int or 1-tuple
        ``F``, the size of the last dim.
    eps : float
        > 0; added to the variance as ``ceil(eps * 2**F_var)`` codes (at least one lsb of ``var``).
    elementwise_affine, bias : bool
        As :class:`torch.nn.LayerNorm` (``bias`` only with ``elementwise_affine``).
    config : LayerConfig or dict, optional
        Uses ``input``, ``mean``, ``var``, ``inv_std``, ``output`` (required), ``scale``
        (gamma; with ``elementwise_affine``), ``shift`` (beta; with a bias), ``reciprocal``
        (when ``F`` is not a power of two), ``learn_binary_point``, ``track_overflow``.
    name : str, optional
        The layer's name in error messages (:func:`qfx.convert` sets it).
    """

    def __init__(self, normalized_shape: Any, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 *, config: ConfigLike = None, name: "str | None" = None, device: Any = None,
                 dtype: "torch.dtype | None" = None, **overrides: Any) -> None:
        cfg = as_config(config, **overrides)
        super().__init__()
        self.layer = name
        why = layernorm_problem(normalized_shape, eps, elementwise_affine)
        if why:
            raise ValueError(f"{self._label()}: {why}")
        f = int(normalized_shape[0] if isinstance(normalized_shape, (tuple, list, torch.Size)) else normalized_shape)
        self.normalized_shape = (f,)
        self.num_features = f
        self.eps = float(eps)
        self.elementwise_affine = bool(elementwise_affine)
        has_bias = self.elementwise_affine and bool(bias)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(f, **kw)) if self.elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(f, **kw)) if has_bias else None
        keys = ["input", "mean", "var", "inv_std", "output"]
        if self.elementwise_affine:
            keys.append("scale")
        if has_bias:
            keys.append("shift")
        if not lnx.is_pow2(f):
            keys.append("reciprocal")
        missing = [k for k in keys if getattr(cfg, k) is None]
        if missing:
            raise ValueError(f"{self._label()} needs the format(s) {', '.join(missing)}; give them in the config "
                             f"(e.g. types: {{LayerNorm: {{mean: 'ap_fixed<12,3,AP_RND,AP_SAT>', var: "
                             f"'ap_ufixed<16,5,AP_RND,AP_SAT>', inv_std: 'ap_ufixed<16,6,AP_TRN,AP_SAT>', scale: ..., "
                             f"shift: ...}}}}) or as keyword arguments")
        specs = {k: (getattr(cfg, k), ()) for k in keys}
        self._setup_quantizers(cfg, specs)
        try:
            lnx.check_formats(self._formats(), f)
        except ValueError as err:
            raise ValueError(f"{self._label()}: {err}") from None
        self.eps_code = lnx.eps_code(self.eps, self.quant["var"].fmt)

    @classmethod
    def from_float(cls, module: nn.LayerNorm, config: ConfigLike = None, *, name: "str | None" = None,
                   **overrides: Any) -> "QLayerNorm":
        """A QLayerNorm with the parameters of ``module``."""
        if not isinstance(module, nn.LayerNorm):
            raise TypeError(f"from_float needs an nn.LayerNorm, not {type(module).__name__}")
        q = cls(module.normalized_shape, module.eps, module.elementwise_affine,
                getattr(module, "bias", None) is not None, config=config, name=name, **overrides)
        with torch.no_grad():
            if q.weight is not None:
                q.weight.copy_(module.weight.detach())
            if q.bias is not None:
                q.bias.copy_(module.bias.detach())
        return q

    def _label(self) -> str:
        return f"layer {self.layer!r} (LayerNorm)" if self.layer else "QLayerNorm"

    def _formats(self) -> dict[str, FixedType]:
        return {k: q.effective_format() for k, q in self.quant.items()}

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self.bias is not None}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{self._label()} expects a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        f = self.num_features
        if x.dim() < 2 or x.shape[-1] != f:
            raise ValueError(f"{self._label()} expects input [N, ..., {f}] (normalized over the last dim), "
                             f"got {list(x.shape)}")
        xq = self.quant["input"](x)
        g_q = self.quant["scale"](self.weight) if self.weight is not None else None
        b_q = self.quant["shift"](self.bias) if self.bias is not None else None
        fm = self._formats()
        try:
            lnx.check_formats(fm, f)
            tt = lnx.types(fm, f)
            for key, t in tt.items():
                check_float64_exact(t, f"the exact {key}")
        except ValueError as err:
            raise ValueError(f"{self._label()}: {err}") from None
        from ..quant import quantize

        with torch.no_grad():
            q = xq.detach().double()
            s = q.sum(dim=-1, keepdim=True)
            if lnx.is_pow2(f):
                recip = 1.0 / f
            else:
                recip = float(quantize(torch.tensor(1.0 / f, dtype=torch.float64), fm["reciprocal"]))
            mean = quantize(s * recip, fm["mean"])
            d = q - mean
            v = quantize((d * d).sum(dim=-1, keepdim=True) * recip, fm["var"])
            fv, fs = fm["var"].frac_bits, fm["inv_std"].frac_bits
            n = torch.round(torch.ldexp(v, torch.tensor(fv, dtype=torch.float64))).to(torch.int64) + self.eps_code
            k = _inv_sqrt(n, 2 * fs + fv, fm["inv_std"].width)
            inv = torch.ldexp(k.double(), torch.tensor(-fs, dtype=torch.float64))
            pre = d * inv
            if g_q is not None:
                pre = pre * g_q.detach().double()
                if b_q is not None:
                    pre = pre + b_q.detach().double()
        # the float LayerNorm of the quantized tensors: the gradient's path
        qf = xq.double()
        mu = qf.mean(dim=-1, keepdim=True)
        sur = (qf - mu) / torch.sqrt(((qf - mu) ** 2).mean(dim=-1, keepdim=True) + self.eps)
        if g_q is not None:
            sur = sur * g_q.double()
            if b_q is not None:
                sur = sur + b_q.double()
        y = self.quant["output"](_Exact.apply(sur, pre))
        return self._result(y, x.dtype)
