"""qfx.sim: cocotb/Verilator and C-simulation runners. Built by the verification issue."""
