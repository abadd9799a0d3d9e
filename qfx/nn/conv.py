"""QConv2d: a 2-D convolution with HLS fixed-point arithmetic."""

from __future__ import annotations

from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from ..types import Format
from .config import ConfigLike, as_config
from .mac import _split_bias
from .mac import MACLayer
from .plan import compiling

__all__ = ["QConv2d"]

IntOrPair = Union[int, tuple[int, int]]


def _resolve_padding(padding: "IntOrPair | str", kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError("padding='same' needs stride 1 (as in torch)")
            total = [d * (k - 1) for d, k in zip(dilation, kernel)]
            if any(t % 2 for t in total):
                raise ValueError(
                    f"padding='same' with kernel {kernel} and dilation {dilation} pads asymmetrically; "
                    "QConv2d supports symmetric zero padding only: give explicit padding"
                )
            return (total[0] // 2, total[1] // 2)
        raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', not {padding!r}")
    p = _pair(padding)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in p):
        raise ValueError(f"padding must be non-negative ints, got {padding!r}")
    return p  # type: ignore[return-value]


class QConv2d(MACLayer, nn.Conv2d):
    """A 2-D convolution computed as a Vitis HLS loop would, bit for bit.

    For every batch element ``n``, output channel ``o`` (in group ``g``) and
    output position ``(oy, ox)``::

        acc = cast(bias[o], accum)                   # 0 without a bias
        for c in the group's input channels (ascending):
            for i in 0 .. KH-1:                      # kernel row
                for j in 0 .. KW-1:                  # kernel column
                    acc = cast(acc + x[n, c, oy*s + i*d, ox*s + j*d] * w[o, c, i, j], accum)
        y[n, o, oy, ox] = cast(acc, output)

    with zero padding (padded taps contribute exact zero products, which no
    cast changes). Inputs, weights and bias are cast to their formats first;
    ``accum="auto"`` and the fast path (``F.conv2d`` in float64 on exact
    operands) are as for :class:`qfx.nn.QLinear`; a narrower accumulator is
    emulated step by step over the ``C/groups * KH * KW`` reduction index
    (slow). L-Mul (``multiply="lmul"``) materialises all products
    ``[N, groups, O/groups, C/groups*KH*KW, positions]`` at once.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, device, dtype
        As for :class:`torch.nn.Conv2d`; ``padding`` may be ``'valid'`` or a
        symmetric ``'same'``; ``padding_mode`` must be ``'zeros'``. ``bias``
        may also be a bias format (a bias with that format).
    config : LayerConfig or dict, optional
        Formats and options, as for :class:`qfx.nn.QLinear`.
    **overrides
        Config keys given directly.

    Attributes
    ----------
    quant : nn.ModuleDict
        The :class:`qfx.nn.TensorQuantizer` of each tensor.
    n_terms : int
        Products per output (``in_channels // groups * KH * KW``).
    """

    _f32_needs_nnpack_off = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: "IntOrPair | str" = 0,
        dilation: IntOrPair = 1,
        groups: int = 1,
        bias: "bool | str | Format" = True,
        padding_mode: str = "zeros",
        *,
        config: ConfigLike = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
        **overrides: Any,
    ) -> None:
        bias, overrides = _split_bias(bias, overrides)
        cfg = as_config(config, **overrides)
        if padding_mode != "zeros":
            raise ValueError(f"QConv2d supports padding_mode='zeros' only, not {padding_mode!r}")
        k, s, d = _pair(kernel_size), _pair(stride), _pair(dilation)
        pad = _resolve_padding(padding, k, s, d)
        super().__init__(
            in_channels, out_channels, k, s, pad, d, groups, bias, padding_mode, device=device, dtype=dtype
        )
        self.n_terms = (in_channels // groups) * k[0] * k[1]
        self._setup_mac(cfg, "QConv2d", (out_channels, 1, 1, 1), bias)

    @classmethod
    def from_float(cls, module: nn.Conv2d, config: ConfigLike = None, **overrides: Any) -> "QConv2d":
        """A QConv2d with the geometry and float weights of ``module``."""
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"from_float needs an nn.Conv2d, not {type(module).__name__}")
        q = cls(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.groups,
            module.bias is not None,
            module.padding_mode,
            config=config,
            device=module.weight.device,
            dtype=module.weight.dtype,
            **overrides,
        )
        return q._copy_float_params(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"QConv2d expects a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        unbatched = x.dim() == 3
        if unbatched:
            x = x[None]
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"QConv2d expects input of shape [N, {self.in_channels}, H, W] (or unbatched "
                f"[{self.in_channels}, H, W]), got {list(x.shape)}"
            )
        kh, kw = self.kernel_size
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        n, _, h, w = x.shape
        ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if ho < 1 or wo < 1:
            raise ValueError(
                f"QConv2d: input {h}x{w} with padding {self.padding} is smaller than the kernel "
                f"{self.kernel_size} (dilation {self.dilation})"
            )
        g = self.groups
        f32 = self.float32_exact(x.device)
        cdt = torch.float32 if f32 else torch.float64
        xq = self.quant["input"](x).to(cdt)
        wq, bq = self._quantized_params(cdt)
        o = self.out_channels

        def conv(xv: torch.Tensor, wv: torch.Tensor, bv: "torch.Tensor | None") -> torch.Tensor:
            if xv.dtype == torch.float32 and not compiling():
                # Exact (float32_exact); NNPACK, which may use Winograd or FFT, stays off.
                # (Compiled: the plan picks float32 only with NNPACK off, see MACLayer.refresh_plan.)
                with torch.backends.nnpack.flags(enabled=False):
                    return F.conv2d(xv, wv, bv, self.stride, self.padding, self.dilation, g)
            return F.conv2d(xv, wv, bv, self.stride, self.padding, self.dilation, g)

        def to_columns(v: torch.Tensor) -> torch.Tensor:
            # unfold rows are ordered (channel, kernel row, kernel column): the documented order.
            cols = F.unfold(v, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
            return cols.reshape(n, g, -1, cols.shape[-1])

        acc = self._accumulate(
            xq,
            wq,
            bq,
            fast=conv,
            to_columns=to_columns,
            w_rows=wq.reshape(g, o // g, -1),
            from_columns=lambda a: a.reshape(n, o, ho, wo),
        )
        y = self.quant["output"](acc)
        y = self._result(y, x.dtype)
        return y[0] if unbatched else y
