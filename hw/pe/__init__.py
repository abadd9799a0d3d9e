"""Processing elements: one multiply (or shift-add) and accumulate per cycle.

* :class:`KHotPE` -- K-hot weights as (shift, sign) digit pairs: shifts and adds, no multiplier.
* :class:`MACPE` -- a fixed-point multiply-accumulate meant for one DSP48E2.

Both accumulate as a Vitis HLS loop does: ``acc = cast(acc + x * w, acc_fmt)``
every valid cycle, the cast being a :class:`qfx.hw.cast.CastUnit`.
"""

from .khot import KHotPE
from .mac import MACPE

__all__ = ["KHotPE", "MACPE"]
