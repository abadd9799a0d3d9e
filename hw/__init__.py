"""qfx.hw: Amaranth generators (PEs, systolic arrays, accelerators).

Arithmetic units so far, each an ``amaranth.lib.wiring.Component`` whose
formats come from :mod:`qfx.types`:

* :class:`~qfx.hw.cast.CastUnit` -- the ap_fixed cast (every rounding and overflow mode).
* :class:`~qfx.hw.pe.KHotPE` -- shift-add multiply-accumulate for K-hot weights.
* :class:`~qfx.hw.pe.MACPE` -- multiply-accumulate for one DSP48E2.
* :class:`~qfx.hw.systolic.SystolicArray` -- weight-stationary systolic array (``Y = cast(X @ W)``).
* :func:`~qfx.hw.verilog.to_verilog` -- Verilog text of a component.
"""

from .cast import CastUnit, fixed_shape
from .pe import KHotPE, MACPE
from .systolic import SystolicArray
from .verilog import to_verilog

__all__ = ["CastUnit", "fixed_shape", "KHotPE", "MACPE", "SystolicArray", "to_verilog"]
