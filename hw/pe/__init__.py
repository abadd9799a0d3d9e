"""Processing elements: one multiply (or shift-add) and accumulate per cycle.

Product units (combinational, :mod:`qfx.hw.pe.multiply`), one per weight kind:

* :class:`FixedMultiplier`, :class:`KHotMultiplier` (shifts and adds, no DSP),
  :class:`MinifloatMultiplier` (exact), :class:`LMulMultiplier` (L-Mul);
  :func:`multiplier_for` picks one from the formats and the ``multiply`` mode,
  :func:`weight_shape` / :func:`weight_words` say what the ``w`` port carries.

Processing elements (a product unit and the accumulator):

* :class:`KHotPE` -- K-hot weights as (shift, sign) digit pairs: shifts and adds, no multiplier.
* :class:`MACPE` -- a fixed-point multiply-accumulate meant for one DSP48E2.

All accumulate as a Vitis HLS loop does: ``acc = cast(acc + x * w, acc_fmt)``
every valid cycle, the cast being a :class:`qfx.hw.cast.CastUnit`.
"""

from .khot import KHotPE
from .mac import MACPE
from .multiply import (
    FixedMultiplier,
    KHotMultiplier,
    LMulMultiplier,
    MinifloatMultiplier,
    multiplier_for,
    weight_shape,
    weight_words,
)

__all__ = [
    "KHotPE",
    "MACPE",
    "FixedMultiplier",
    "KHotMultiplier",
    "LMulMultiplier",
    "MinifloatMultiplier",
    "multiplier_for",
    "weight_shape",
    "weight_words",
]
