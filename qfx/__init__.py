"""qfx: train FPGA-ready models with bit-exact Vitis HLS fixed-point (and minifloat)
arithmetic, and generate the hardware that computes the same bits.

Formats (:mod:`qfx.types`), quantizers (:mod:`qfx.quant`), L-Mul (:mod:`qfx.lmul`),
quantized layers (:mod:`qfx.nn`), conversion (:func:`qfx.convert`), training
(:mod:`qfx.train`), manifest export (:mod:`qfx.export`, :mod:`qfx.manifest`) and the
integer reference interpreter (:mod:`qfx.reference`).
"""

from .lmul import lmul, lmul_offset_bits
from .quant import count_overflow, from_codes, overflow_mask, quantize, to_codes
from .types import (
    OCP_MINIFLOATS,
    FixedType,
    Format,
    KHot,
    MinifloatType,
    Overflow,
    Rounding,
    parse_type,
)
from ._khot import khot_digits
from . import nn  # noqa: E402  (quantized layers)
from .convert import convert  # noqa: E402  (float model -> qfx model)
from . import train  # noqa: E402  (qfx.train.fit / ptq / evaluate)
from . import export, manifest, reference  # noqa: E402  (manifest export/load, integer reference)

__version__ = "0.1.0"

__all__ = [
    "FixedType",
    "MinifloatType",
    "KHot",
    "Format",
    "Rounding",
    "Overflow",
    "OCP_MINIFLOATS",
    "parse_type",
    "quantize",
    "to_codes",
    "from_codes",
    "overflow_mask",
    "count_overflow",
    "khot_digits",
    "lmul",
    "lmul_offset_bits",
    "convert",
]
