"""qfx.hw: Amaranth generators (PEs, systolic arrays, accelerators). Built by the RTL issue."""
