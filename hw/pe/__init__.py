"""Processing elements: one multiply (or shift-add) and accumulate per cycle.

Product units (combinational, :mod:`qfx.hw.pe.multiply`), one per weight kind:

* :class:`FixedMultiplier`, :class:`KHotMultiplier` (shifts and adds, no DSP),
  :class:`MinifloatMultiplier` (exact), :class:`LMulMultiplier` (L-Mul);
  :func:`multiplier_for` picks one from the formats and the ``multiply`` mode,
  :func:`weight_shape` / :func:`weight_words` say what the ``w`` port carries.

Processing elements (a product unit and the accumulator):

* :class:`KHotPE` -- K-hot weights as (shift, sign) digit pairs: shifts and adds, no multiplier.
* :class:`MACPE` -- a fixed-point multiply-accumulate meant for one DSP48E2.
* :class:`PackedMACPE` -- two int8-class MACs sharing ``x`` in one DSP48E2 multiply (WP486).
* :class:`MinifloatMACPE` -- minifloat weights (raw bit patterns), exact products.
* :class:`LMulPE` -- minifloat weights, L-Mul products.

All accumulate as a Vitis HLS loop does: ``acc = cast(acc + x * w, acc_fmt)``
every valid cycle, the cast being a :class:`qfx.hw.cast.CastUnit`.
"""

from .khot import KHotPE
from .lmul import LMulPE
from .mac import MACPE
from .minifloat import MinifloatMACPE
from .multiply import (
    FixedMultiplier,
    KHotMultiplier,
    LMulMultiplier,
    MinifloatMultiplier,
    multiplier_for,
    weight_shape,
    weight_words,
)
from .packed import PackedMACPE

__all__ = [
    "KHotPE",
    "MACPE",
    "PackedMACPE",
    "MinifloatMACPE",
    "LMulPE",
    "FixedMultiplier",
    "KHotMultiplier",
    "LMulMultiplier",
    "MinifloatMultiplier",
    "multiplier_for",
    "weight_shape",
    "weight_words",
]
