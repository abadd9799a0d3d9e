"""qfx: train FPGA-ready models with bit-exact Vitis HLS fixed-point (and minifloat)
arithmetic, and generate the hardware that computes the same bits.

Formats (:mod:`qfx.types`), quantizers (:mod:`qfx.quant`), L-Mul (:func:`qfx.lmul`),
quantized layers (:mod:`qfx.nn`), conversion (:func:`qfx.convert`), training
(:mod:`qfx.train`), manifest export (:mod:`qfx.export`, :mod:`qfx.manifest`), the
integer reference interpreter (:mod:`qfx.reference`) and the HLS generator (:mod:`qfx.hls`).

Only the formats are imported eagerly: everything that needs PyTorch loads on first
use, so the generators (which read manifests, never models) run without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .types import (
    OCP_MINIFLOATS,
    FixedType,
    Format,
    KHot,
    MinifloatType,
    MXType,
    Overflow,
    Rounding,
    parse_type,
)

__version__ = "0.1.0"

# name -> (submodule, attribute or None for the submodule itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "quantize": ("quant", "quantize"),
    "to_codes": ("quant", "to_codes"),
    "from_codes": ("quant", "from_codes"),
    "overflow_mask": ("quant", "overflow_mask"),
    "count_overflow": ("quant", "count_overflow"),
    "mx_encode": ("quant", "mx_encode"),
    "mx_decode": ("quant", "mx_decode"),
    "khot_digits": ("_khot", "khot_digits"),
    "lmul": ("_lmul", "lmul"),
    "lmul_offset_bits": ("_lmul", "lmul_offset_bits"),
    "convert": ("conversion", "convert"),
    "conversion": ("conversion", None),
    "nn": ("nn", None),
    "train": ("train", None),
    "export": ("export", None),
    "from_qonnx": ("qonnx_import", "from_qonnx"),
    "manifest": ("manifest", None),
    "reference": ("reference", None),
    "hls": ("hls", None),
    "quant": ("quant", None),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'qfx' has no attribute {name!r}") from None
    module = importlib.import_module(f".{module_name}", __name__)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # also replaces the submodule the import bound (qfx.convert is the function)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "FixedType",
    "MinifloatType",
    "KHot",
    "MXType",
    "Format",
    "Rounding",
    "Overflow",
    "OCP_MINIFLOATS",
    "parse_type",
    *_LAZY,
]
