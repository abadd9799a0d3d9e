"""The mixin every quantized layer shares: its quantizers, formats, freeze, overflow counts."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..types import FixedType, Format
from .config import LayerConfig
from .quantizer import TensorQuantizer

__all__ = ["QuantizedModule", "freeze", "set_track_overflow", "reset_overflow_counts"]


class QuantizedModule:
    """Mixin for the layers of :mod:`qfx.nn` (used next to ``nn.Module`` or a torch layer).

    Attributes
    ----------
    config : LayerConfig
        The validated config the layer was built from.
    quant : nn.ModuleDict
        One :class:`TensorQuantizer` per quantized tensor that has a format
        (keys among ``input``, ``weight``, ``bias``, ``accum``, ``output``, ...).
    """

    config: LayerConfig
    quant: nn.ModuleDict

    def _setup_quantizers(
        self,
        config: LayerConfig,
        specs: dict[str, tuple[Format | None, tuple[int, ...]]],
    ) -> None:
        """Create ``self.quant`` from ``{name: (format or None, frac_shape)}``."""
        self.config = config
        quant = nn.ModuleDict()
        for name, (fmt, frac_shape) in specs.items():
            if fmt is None:
                continue
            learn = config.learns(name)
            if learn and not isinstance(fmt, FixedType):
                raise ValueError(
                    f"learn_binary_point names {name!r}, whose format {fmt} is not fixed point"
                )
            quant[name] = TensorQuantizer(
                fmt,
                name=name,
                learnable=learn,
                frac_shape=frac_shape if learn else (),
                track_overflow=config.track_overflow,
            )
        self.quant = quant

    @staticmethod
    def _require(config: LayerConfig, layer: str, *keys: str) -> None:
        missing = [k for k in keys if getattr(config, k) is None]
        if missing:
            raise ValueError(
                f"{layer} needs the format(s) {', '.join(missing)}; give them in the config or as "
                f"keyword arguments, e.g. {missing[0]}='ap_fixed<8,3,AP_RND,AP_SAT>'"
            )

    # -- formats --------------------------------------------------------------
    def effective_format(self, name: str) -> "Format | tuple[FixedType, ...] | None":
        """The format of tensor ``name`` now (learned binary points rounded); None if it has none.

        A per-channel binary point gives a tuple of FixedTypes.
        """
        if name in self.quant:
            return self.quant[name].effective_format()
        if not hasattr(self.config, name):
            raise KeyError(f"{type(self).__name__} has no tensor {name!r}")
        return None

    def formats(self) -> dict[str, Any]:
        """Every tensor's effective format, by name."""
        return {name: q.effective_format() for name, q in self.quant.items()}

    # -- compile plan -----------------------------------------------------------
    def refresh_plan(self) -> None:
        """Record the decisions the compiled forward reads (:mod:`qfx.nn.plan`); run eagerly, after
        the quantizers' own plans. Layers that decide nothing from values keep this default."""

    def plan_key(self) -> Any:
        """What :meth:`refresh_plan` depends on, beyond which an unchanged key keeps the plan
        (:func:`qfx.nn.refresh_compile_plan` then skips the refresh); None (the default): refresh
        every time. A layer whose plan reads only its quantizers' formats returns
        :meth:`_quantizer_keys` and the settings it reads."""
        return None

    def _quantizer_keys(self) -> "tuple | None":
        """The plan keys of this layer's quantizers (format, kind, rounded binary points), or None
        where one has no plan yet."""
        keys = tuple(q.__dict__.get("_plan_key") for q in self.quant.values())
        return None if any(k is None for k in keys) else keys

    # -- freezing and overflow --------------------------------------------------
    def freeze(self) -> "QuantizedModule":
        """Write learned binary points back as concrete formats and stop learning them.

        The outputs before and after are identical: the forward pass already
        used the rounded binary points. Returns ``self``.
        """
        for q in self.quant.values():
            q.freeze()
        return self

    @property
    def frozen(self) -> bool:
        return not any(q.learnable for q in self.quant.values())

    def overflow_counts(self) -> dict[str, int]:
        """Saturated/wrapped elements per tensor since the last reset (when tracking)."""
        return {name: int(q.overflow_count) for name, q in self.quant.items()}

    def _result(self, y: torch.Tensor, dtype: torch.dtype, name: str = "output") -> torch.Tensor:
        """``y`` in ``dtype`` where that dtype holds the format exactly, else float64."""
        target = self.quant[name].result_dtype(dtype) if name in self.quant else torch.float64
        if not dtype.is_floating_point:
            target = torch.float64
        return y if y.dtype == target else y.to(target)


def _quantized_modules(model: nn.Module):
    return (m for m in model.modules() if isinstance(m, QuantizedModule))


def freeze(model: nn.Module) -> nn.Module:
    """:meth:`QuantizedModule.freeze` on every quantized layer of ``model``; returns ``model``."""
    for m in _quantized_modules(model):
        m.freeze()
    return model


def set_track_overflow(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch overflow counting on or off for every quantizer of ``model``."""
    for m in model.modules():
        if isinstance(m, TensorQuantizer):
            m.track_overflow = bool(enabled)
    return model


def reset_overflow_counts(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, TensorQuantizer):
            m.overflow_count.zero_()
    return model
