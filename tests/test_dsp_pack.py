"""WP486 packing in the folded engines: two int8 products sharing their input in one DSP48E2.

* the packed multiplier's RTL (hw/pe/dsp_pipe.py) against Python's ``x * w`` on corner and
  hypothesis-drawn int8 operands (signed and unsigned inputs), one vector per cycle through its
  three registers;
* the unpacking identity (low field as signed, high field plus the borrow bit) exhaustively over
  every int8 x int8 x int8 triple, in NumPy, as the RTL spells it;
* a packed MAC engine (pe=4, simd=2) bit-exact with the integer reference and its cycle model;
* Yosys ``synth_xilinx -family xcup``: the packed multiplier is one DSP48E2 (two unpacked are two),
  and the packed engine uses ceil(pe/2) x simd DSPs, what the resource model says.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qfx.export import export
from qfx.hw.accel import Accelerator
from qfx.hw.accel.engines import MACEngine
from qfx.hw.accel.folding import Folding, folded_resources
from qfx.hw.pe.dsp_pipe import PRODUCT_LATENCY, PackedMultiplier, packable
from qfx.manifest import load
from qfx.nn import QLinear
from qfx.reference import run
from qfx.sim.amaranth_run import run_accelerator
from qfx.types import parse_type

S8, U8, W8 = parse_type("ap_int<8>"), parse_type("ap_uint<8>"), parse_type("ap_fixed<8,1>")


def _simulate(x_fmt, triples):
    """Drive ``(x, w0, w1)`` one per cycle; return the ``(p0, p1)`` seen PRODUCT_LATENCY cycles later."""
    dut = PackedMultiplier(x_fmt, W8)
    got = []

    async def bench(ctx):
        for k in range(len(triples) + PRODUCT_LATENCY):
            if k < len(triples):
                x, w0, w1 = triples[k]
                ctx.set(dut.x, x)
                ctx.set(dut.w0, w0)
                ctx.set(dut.w1, w1)
            if k >= PRODUCT_LATENCY:
                got.append((ctx.get(dut.p0), ctx.get(dut.p1)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got


_CORNERS = [-128, -127, -1, 0, 1, 126, 127]


@pytest.mark.parametrize("x_fmt", [S8, U8], ids=["int8", "uint8"])
def test_packed_multiplier_corners(x_fmt):
    xs = [0, 1, 127, 128, 254, 255] if not x_fmt.signed else _CORNERS
    triples = [(x, a, b) for x in xs for a in _CORNERS for b in _CORNERS]
    got = _simulate(x_fmt, triples)
    assert got == [(x * a, x * b) for x, a, b in triples]


@settings(max_examples=15, deadline=None)
@given(st.booleans(), st.lists(st.tuples(st.integers(-128, 255), st.integers(-128, 127), st.integers(-128, 127)),
                               min_size=1, max_size=24))
def test_packed_multiplier_hypothesis(signed_x, raw):
    x_fmt = S8 if signed_x else U8
    triples = [((x if x < 128 else x - 256) if signed_x else x & 0xFF, a, b) for x, a, b in raw]
    assert _simulate(x_fmt, triples) == [(x * a, x * b) for x, a, b in triples]


def test_unpacking_identity_exhaustive():
    """Every int8 x, w0, w1 (and every uint8 x): the packed product's fields give both products."""
    w0 = np.arange(-128, 128, dtype=np.int64)[:, None]
    for x in range(-128, 256):
        for w1 in range(-128, 128, 1):
            p = ((w1 << 18) + w0) * x                       # the 27 x 18 multiply
            lo = ((p & 0x3FFFF) ^ 0x20000) - 0x20000        # low 18 bits as signed
            hi = (p >> 18) + ((p >> 17) & 1)                # arithmetic shift + the borrow bit
            assert np.array_equal(lo, w0 * x) and np.all(hi == w1 * x), (x, w1)


def test_packable_limits():
    assert packable(S8, W8) and packable(U8, W8)
    assert not packable(S8, parse_type("ap_fixed<9,1>"))   # A operand would overflow
    assert not packable(parse_type("ap_int<12>"), W8)     # low product field of 18 bits overflows
    assert not packable(S8, W8, "lmul")


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """A 4 -> 4 dense layer, int8-class input and weights (packable), random weights."""
    torch.manual_seed(3)
    model = nn.Sequential(QLinear(4, 4, input="ap_fixed<8,3,AP_RND,AP_SAT>", weight="ap_fixed<8,1,AP_RND_CONV,AP_SAT>",
                                  bias="ap_fixed<16,4>", output="ap_fixed<8,3,AP_RND,AP_SAT>")).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(4, 4) * 0.6)
    x = torch.cat([torch.randn(5, 4) * 2, torch.tensor([[3.99, -4.0, 3.99, -4.0]])])
    with torch.no_grad():
        model(x)
    root = tmp_path_factory.mktemp("pack")
    export(model, x, root / "m")
    man = load(root / "m")
    ref = run(man, x)
    return man, ref[man.input], ref[man.output].reshape(len(x), -1)


@pytest.mark.parametrize("fold", [Folding(2, 2), Folding(4, 1)], ids=str)
def test_packed_engine_equals_reference(dense, fold):
    man, x_codes, want = dense
    node = next(n for n in man if n.op == "dense")
    assert MACEngine._packs(node, fold)
    acc = Accelerator(man, folding={node.name: fold})
    est = acc.cycle_estimate()
    # one tensor at a time: back-to-back streams into a dense engine whose II is its load floor
    # lose an output beat on main too (pe=2, simd=2 on 4 -> 4), a bug outside the packing
    r = run_accelerator(acc, x_codes, max_cycles=20 * est["total"] * len(x_codes))
    assert np.array_equal(r.outputs, want)
    assert r.cycles == [est["total"]] * len(x_codes)


def test_yosys_counts_half_the_dsps(dense):
    from qfx.hw.pe.multiply import FixedMultiplier
    from qfx.hw.synth import SynthError, synth_xilinx, yosys_command
    from qfx.hw.verilog import to_verilog

    try:
        yosys_command()
    except SynthError as err:
        pytest.skip(str(err))
    assert synth_xilinx(to_verilog(PackedMultiplier(S8, W8), "qfx_pk"), "qfx_pk").dsp == 1
    two = FixedMultiplier(S8, W8)
    assert synth_xilinx(to_verilog(two, "qfx_one"), "qfx_one").dsp == 1  # one unpacked product: one DSP each
    man, _, _ = dense
    node = next(n for n in man if n.op == "dense")
    fold = Folding(4, 2)
    eng = Accelerator(man, folding={node.name: fold}).engines()[node.name]
    got = synth_xilinx(to_verilog(eng, "qfx_dense_pk"), "qfx_dense_pk").dsp
    assert got == 4 == folded_resources(man, node, fold)["dsp"]  # 8 products, 4 DSP48E2
