"""Jinja2 templates of the Vitis HLS C++ generator (:mod:`qfx.hls`); data only."""
