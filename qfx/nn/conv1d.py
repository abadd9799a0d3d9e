"""1-D layers as height-1 2-D layers: QConv1d, QMaxPool1d, QAvgPool1d.

A 1-D tensor ``[N, C, L]`` is the 2-D tensor ``[N, C, 1, L]`` (same element order, so a flatten
gives the same vector). Each 1-D layer is the corresponding 2-D qfx layer with kernel ``(1, k)``,
stride ``(1, s)``, padding ``(0, p)``, dilation ``(1, d)``: its forward pass unsqueezes the height
axis, runs the 2-D arithmetic (the same code, bit for bit) and squeezes it again. Export writes the
2-D nodes (``conv2d``, ``maxpool2d``, ``avgpool2d``) on ``[C, 1, L]``, so the integer reference, the
HLS and the RTL generators handle them unchanged.

The layers also accept the height-1 layout ``[N, C, 1, L]`` itself (the manifest's shapes, e.g. the
vectors of ``qfx sim``), returning ``[N, C', 1, L']``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..types import Format
from .config import ConfigLike
from .conv import QConv2d
from .pool import QAvgPool2d, QMaxPool2d

__all__ = ["QConv1d", "QMaxPool1d", "QAvgPool1d"]


def _one(v: Any, layer: str, arg: str) -> int:
    """An int or a 1-tuple (torch's 1-D argument forms) as an int."""
    if isinstance(v, (tuple, list)):
        if len(v) != 1:
            raise ValueError(f"{layer}: {arg} must be an int or a 1-tuple, got {v!r}")
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{layer}: {arg} must be an int, got {v!r}")
    return v


def _to_2d(x: Any, layer: str) -> "tuple[torch.Tensor, int]":
    """``x`` as ``[N, C, 1, L]`` and how many axes to remove again (2: unbatched, 1: [N, C, L], 0)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{layer} expects a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() == 2:
        return x[None, :, None, :], 2
    if x.dim() == 3:
        return x[:, :, None, :], 1
    if x.dim() == 4 and x.shape[2] == 1:
        return x, 0
    raise ValueError(f"{layer} expects input of shape [N, C, L] (or [C, L], or the height-1 layout [N, C, 1, L]), "
                     f"got {list(x.shape)}")


def _from_2d(y: torch.Tensor, removed: int) -> torch.Tensor:
    if removed == 2:
        return y[0, :, 0, :]
    if removed == 1:
        return y[:, :, 0, :]
    return y


class QConv1d(QConv2d):
    """A 1-D convolution: :class:`qfx.nn.QConv2d` with kernel ``(1, k)`` on ``[N, C, 1, L]``.

    For output channel ``o`` and position ``t``::

        acc = cast(bias[o], accum)
        for c in the group's input channels (ascending):
            for j in 0 .. k-1:
                acc = cast(acc + x[n, c, t*s + j*d - p] * w[o, c, j], accum)
        y[n, o, t] = cast(acc, output)

    (zero padding; the conv2d order with one kernel row). The weight is stored as
    ``[O, C/groups, 1, k]`` (the 2-D layout); :meth:`from_float` reshapes a ``nn.Conv1d`` weight.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        As for :class:`torch.nn.Conv1d` (ints or 1-tuples; ``padding`` may be ``'valid'`` or
        ``'same'`` when ``dilation * (k - 1)`` is even); ``padding_mode`` must be ``'zeros'``.
    config, **overrides
        As for :class:`qfx.nn.QConv2d` (the same keys).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: "int | tuple[int]",
        stride: "int | tuple[int]" = 1,
        padding: "int | tuple[int] | str" = 0,
        dilation: "int | tuple[int]" = 1,
        groups: int = 1,
        bias: "bool | str | Format" = True,
        padding_mode: str = "zeros",
        *,
        config: ConfigLike = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
        **overrides: Any,
    ) -> None:
        if padding_mode != "zeros":
            raise ValueError(f"QConv1d: padding_mode {padding_mode!r} is not supported; only padding_mode='zeros'")
        k = _one(kernel_size, "QConv1d", "kernel_size")
        s = _one(stride, "QConv1d", "stride")
        d = _one(dilation, "QConv1d", "dilation")
        if isinstance(padding, str):
            if padding == "valid":
                p = 0
            elif padding == "same":
                if s != 1:
                    raise ValueError("QConv1d: padding='same' needs stride 1 (as in torch)")
                if d * (k - 1) % 2:
                    raise ValueError(f"QConv1d: padding='same' with kernel {k} and dilation {d} pads asymmetrically; "
                                     "only symmetric zero padding is supported: give an explicit padding")
                p = d * (k - 1) // 2
            else:
                raise ValueError(f"QConv1d: padding must be an int, 'valid' or 'same', not {padding!r}")
        else:
            p = _one(padding, "QConv1d", "padding")
        super().__init__(in_channels, out_channels, (1, k), (1, s), (0, p), (1, d), groups, bias, "zeros",
                         config=config, device=device, dtype=dtype, **overrides)

    @classmethod
    def from_float(cls, module: nn.Conv1d, config: ConfigLike = None, **overrides: Any) -> "QConv1d":  # type: ignore[override]
        """A QConv1d with the geometry and float weights of ``module`` (an ``nn.Conv1d``)."""
        if not isinstance(module, nn.Conv1d):
            raise TypeError(f"QConv1d.from_float needs an nn.Conv1d, not {type(module).__name__}")
        q = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, module.groups, module.bias is not None, module.padding_mode, config=config,
                device=module.weight.device, dtype=module.weight.dtype, **overrides)
        with torch.no_grad():
            q.weight.copy_(module.weight[:, :, None, :])
            if module.bias is not None:
                q.bias.copy_(module.bias)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2, removed = _to_2d(x, "QConv1d")
        return _from_2d(super().forward(x2), removed)


class QMaxPool1d(QMaxPool2d):
    """1-D max pooling: :class:`qfx.nn.QMaxPool2d` with kernel ``(1, k)``, stride ``(1, s)``, padding
    ``(0, p)``, dilation ``(1, d)`` on ``[N, C, 1, L]``. Arguments as for :class:`torch.nn.MaxPool1d`
    (``return_indices`` is not supported); config as for :class:`qfx.nn.QMaxPool2d`."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                 ceil_mode: bool = False, *, config: ConfigLike = None, **overrides: Any) -> None:
        k = _one(kernel_size, "QMaxPool1d", "kernel_size")
        s = k if stride is None or stride == () or stride == [] else _one(stride, "QMaxPool1d", "stride")
        p = _one(padding, "QMaxPool1d", "padding")
        d = _one(dilation, "QMaxPool1d", "dilation")
        super().__init__((1, k), (1, s), (0, p), (1, d), ceil_mode, config=config, **overrides)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2, removed = _to_2d(x, "QMaxPool1d")
        return _from_2d(super().forward(x2), removed)


class QAvgPool1d(QAvgPool2d):
    """1-D average pooling: :class:`qfx.nn.QAvgPool2d` with kernel ``(1, k)``, stride ``(1, s)``,
    padding ``(0, p)`` on ``[N, C, 1, L]`` (divisor ``k``, padded taps included). Arguments as for
    :class:`torch.nn.AvgPool1d` (``ceil_mode=False``; ``count_include_pad=False`` only without
    padding); config as for :class:`qfx.nn.QAvgPool2d`."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True, *, config: ConfigLike = None, **overrides: Any) -> None:
        k = _one(kernel_size, "QAvgPool1d", "kernel_size")
        s = k if stride is None or stride == () or stride == [] else _one(stride, "QAvgPool1d", "stride")
        p = _one(padding, "QAvgPool1d", "padding")
        super().__init__((1, k), (1, s), (0, p), ceil_mode, count_include_pad, None, config=config, **overrides)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2, removed = _to_2d(x, "QAvgPool1d")
        return _from_2d(super().forward(x2), removed)
