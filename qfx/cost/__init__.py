"""qfx.cost: what a generated design costs on the board (torch-free).

* :mod:`.synthesis` -- Yosys ``synth_xilinx`` per engine and for the whole accelerator (cached).
* :mod:`.estimate` -- the fast analytic estimator (LUT/FF calibrated on Yosys counts; DSP/BRAM structural).
* :mod:`.timing` -- Fmax estimate from the mapped netlist's weighted logic depth; throughput.
* :mod:`.energy` -- per-operation energy model (Horowitz ISSCC 2014 x FPGA factors), energy per inference.
* :mod:`.report` -- ``OUT/report.md``, ``report.json``, PNG plots; :mod:`.cli` -- ``qfx cost OUT``.
"""

from .energy import energy_per_inference
from .estimate import estimate
from .report import CostError, cost_report, write_report

__all__ = ["CostError", "cost_report", "energy_per_inference", "estimate", "write_report"]
