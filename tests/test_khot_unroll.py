"""Hard-wired K-hot products at full unroll (issue 13, item 2): every weight its own product
unit, so each product is a constant shift-add (hw/accel/khot_wired.py), with no weight ROM and
no barrel shifter.

Expected codes come from qfx.reference (and the PyTorch emulation in the four-way test), never
from the hardware. A mutation test shows the checks see the constants: one changed weight in the
hardware's manifest makes the outputs differ from the original model's reference.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from qfx.export import export
from qfx.hw.accel import Accelerator
from qfx.hw.accel.folding import Folding, mac_dims
from qfx.hw.accel.khot_wired import hardwired, hardwired_cost, weight_codes
from qfx.manifest import Manifest, load
from qfx.nn import QConv2d, QLinear
from qfx.reference import run
from qfx.sim.amaranth_run import run_accelerator

KHOT = "khot<2,ap_fixed<8,2,AP_RND_CONV,AP_SAT>>"
X = "ap_fixed<8,3,AP_RND,AP_SAT>"
OUT = "ap_fixed<8,3,AP_RND,AP_SAT>"


def _dense(tmp_path, accum: str, n_in: int = 16, n_out: int = 6):
    torch.manual_seed(5)
    model = nn.Sequential(QLinear(n_in, n_out, input=X, weight=KHOT, bias="ap_fixed<12,4>", accum=accum,
                                  output=OUT))
    x = torch.randn(8, n_in) * 2
    export(model, x, tmp_path / "m")
    return model, x, load(tmp_path / "m")


def _conv(tmp_path):
    torch.manual_seed(6)
    model = nn.Sequential(QConv2d(2, 3, 3, padding=1, input=X, weight=KHOT, bias="ap_fixed<12,4>",
                                  accum="auto", output=OUT))
    x = torch.randn(6, 2, 5, 5) * 2
    export(model, x, tmp_path / "m")
    return model, x, load(tmp_path / "m")


def _full(node) -> Folding:
    o, _p, k = mac_dims(node)
    return Folding(o, k)


def _check(man: Manifest, x: torch.Tensor, *, want_man: "Manifest | None" = None) -> bool:
    """Run the accelerator of ``man`` fully unrolled on ``x`` back to back; True if its outputs
    equal the reference of ``want_man`` (default ``man``)."""
    ref = run(want_man or man, x)
    node = next(n for n in man if n.op in ("dense", "conv2d"))
    acc = Accelerator(man, folding={node.name: _full(node)})
    eng = acc.engines()[node.name]
    eng._MustUse__silence = True  # built to ask, not to elaborate
    assert eng.hardwired
    est = acc.cycle_estimate()
    xs = run(man, x)[man.input][:4]
    r = run_accelerator(acc, xs, back_to_back=True, max_cycles=20 * est["total"])
    assert np.diff(r.done_at).tolist() == [est["ii"]] * (len(xs) - 1)
    return bool(np.array_equal(r.outputs, ref[man.output].reshape(len(x), -1)[: len(xs)]))


@pytest.mark.parametrize("accum", ["auto", "ap_fixed<14,5,AP_RND,AP_SAT>"])
def test_dense_hardwired_equals_reference(tmp_path, accum):
    _model, x, man = _dense(tmp_path, accum)
    node = next(n for n in man if n.op == "dense")
    assert hardwired(node, _full(node)) and not hardwired(node, Folding(3, 16))
    codes = weight_codes(node)
    assert (codes == 0).any() or len(np.unique(codes)) > 4  # non-trivial constants
    assert _check(man, x)


def test_conv_hardwired_equals_reference(tmp_path):
    _model, x, man = _conv(tmp_path)
    assert _check(man, x)


def test_mutated_constant_is_seen(tmp_path):
    """One weight changed in the hardware's copy: the hard-wired outputs must leave the reference."""
    _model, x, man = _dense(tmp_path, "auto")
    node = next(n for n in man if n.op == "dense")
    w = np.array(node.arrays["weight"], copy=True)
    w.reshape(-1)[np.argmax(np.abs(w.reshape(-1)))] *= -1  # still a valid K-hot code
    bad = dataclasses.replace(node, arrays={**node.arrays, "weight": w})
    mutant = dataclasses.replace(man, nodes=tuple(bad if n.name == node.name else n for n in man.nodes))
    assert not _check(mutant, x, want_man=man)


def test_no_rom_and_constant_cost(tmp_path):
    """Hard-wired: no weight ROM in the Verilog; the structural adder count is what the digits say."""
    from amaranth.back import verilog

    _model, _x, man = _dense(tmp_path, "auto")
    node = next(n for n in man if n.op == "dense")
    def engine(f: Folding):
        acc = Accelerator(man, folding={node.name: f})
        acc._MustUse__silence = True
        return acc.engines()[node.name]

    text = verilog.convert(engine(_full(node)), name="eng")
    assert "wrom" not in text
    rolled = verilog.convert(engine(Folding(3, 16)), name="eng")
    assert "wrom" in rolled
    c = hardwired_cost(node)
    from qfx._khot import khot_digits

    _sh, sg = khot_digits(weight_codes(node), node.formats["weight"])
    nnz = (sg != 0).sum(-1)
    assert c["adders"] == np.maximum(nnz - 1, 0).sum() and c["weights"] == nnz.size
    assert c["zero_weights"] == (nnz == 0).sum()


def test_four_way_generated_full_unroll(tmp_path):
    """qfx-gen (rtl, hls) with a full-unroll folding YAML, then Verilator + C sim vs the reference
    and the PyTorch emulation: 0 mismatches; design.json says the engine is hard-wired."""
    import json

    from qfx.gen import generate
    from qfx.sim import verilator as qv
    from qfx.sim.check import verify

    try:
        qv.find_verilator()
    except qv.VerilatorNotFound:
        pytest.skip("no Verilator")
    model, _x, man = _dense(tmp_path, "ap_fixed<14,5,AP_RND,AP_SAT>")
    node = next(n for n in man if n.op == "dense")
    f = _full(node)
    spec = tmp_path / "fold.yaml"
    spec.write_text(f"{node.name}: {{pe: {f.pe}, simd: {f.simd}}}\n")
    design = generate(tmp_path / "m", tmp_path / "gen", board="ultra96", targets=("rtl", "hls"), folding=spec)
    layer = next(e for e in design["layers"] if e["name"] == node.name)
    assert layer["folding"] == {"pe": f.pe, "simd": f.simd} and layer.get("khot_hardwired") is True
    rep = verify(tmp_path / "gen", vectors=80, model=model, seed=4)
    assert rep.ok, rep.table()
    assert any(c.name.startswith("RTL") for c in rep.checks) and any(c.name.startswith("HLS") for c in rep.checks)
    assert all(c.mismatches == 0 for c in rep.checks)
    # the cost report compares the hard-wired layer with its DSP twin (analytic, no synthesis)
    from qfx.cost.report import cost_report, design_foldings, load_design

    d, _ = load_design(tmp_path / "gen")
    cost = cost_report(tmp_path / "m", synth=False, folding=design_foldings(d, man))
    kv = cost["khot_vs_dsp"]["layers"][node.name]
    assert kv["hardwired"] and kv["khot"]["dsp"] == 0 and kv["dsp_twin"]["dsp"] > 0 and kv["dsp_saved"] > 0
    assert kv["khot"]["product_pj"] < kv["dsp_twin"]["product_pj"] * 4  # same order: a shift-add vs a DSP multiply
    json.dumps(cost)


@pytest.mark.parametrize("design", ["dense_auto", "dense_declared", "conv"])
def test_yosys_zero_dsp_lut_per_mac_and_estimate(tmp_path, design):
    """Yosys synth_xilinx (xcup) of the hard-wired engine: 0 DSP48E2, far fewer LUTs per MAC than
    a LUT-mapped 8x8 multiplier (Yosys -nodsp: 134 LUT; the issue's ~80), the structural estimate
    (folded_resources) near the Yosys count, and the DSP twin (same codes as the K-hot base's
    fixed-point format, same folding) using DSPs where the K-hot design uses none."""
    from qfx.cost.khot import dsp_twin
    from qfx.cost.estimate import estimate
    from qfx.cost.synthesis import synth_accelerator
    from qfx.hw.accel.folding import folded_resources

    _model, _x, man = {"dense_auto": lambda: _dense(tmp_path, "auto"),
                       "dense_declared": lambda: _dense(tmp_path, "ap_fixed<14,5,AP_RND,AP_SAT>"),
                       "conv": lambda: _conv(tmp_path)}[design]()
    node = next(n for n in man if n.op in ("dense", "conv2d"))
    f = _full(node)
    s = synth_accelerator(man, folding={node.name: f}, whole=False)["engines"][node.name].summary()
    assert s["dsp"] == 0
    assert s["lut"] / (f.pe * f.simd) < 60, s
    est = folded_resources(man, node, f, estimate(man)["per_layer"][node.name])
    assert est["dsp"] == 0
    assert abs(est["lut"] / s["lut"] - 1) <= 0.30, (est, s)
    assert abs(est["ff"] / s["ff"] - 1) <= 0.40, (est, s)
    d = dsp_twin(man)
    dnode = d.node(node.name)
    assert not hardwired(dnode, f)
    ds = synth_accelerator(d, folding={node.name: f}, whole=False)["engines"][node.name].summary()
    assert ds["dsp"] >= f.pe * f.simd // 2, ds  # one DSP per product pair at least (WP486 packing)


def _mlp(tmp_path, widths: tuple[int, ...], name: str = "mlp") -> Manifest:
    torch.manual_seed(7)
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers.append(QLinear(a, b, input=X, weight=KHOT, bias="ap_fixed<12,4>", accum="auto", output=OUT))
    export(nn.Sequential(*layers), torch.randn(4, widths[0]), tmp_path / name)
    return load(tmp_path / name)


def test_planner_khot_unroll_hardwires_where_it_pays(tmp_path):
    """plan(khot_unroll=True): a K-hot conv with one input channel needs a wide rolled folding to
    keep up with its stream; its full unroll (hard-wired, 0 DSP) costs fewer LUT and FF and the
    II does not get worse. Without the option the plan is unchanged."""
    from qfx.hw.accel.folding import plan

    torch.manual_seed(8)
    model = nn.Sequential(QConv2d(1, 8, 3, padding=1, input=X, weight=KHOT, bias="ap_fixed<12,4>",
                                  accum="auto", output=OUT))
    export(model, torch.randn(4, 1, 8, 8), tmp_path / "c")
    man = load(tmp_path / "c")
    node = next(n for n in man if n.op == "conv2d")
    default = plan(man, "ultra96")
    p = plan(man, "ultra96", khot_unroll=True)
    assert p.khot_unrolled == (node.name,) and p.khot_kept == {}
    assert p.foldings[node.name] == _full(node) and hardwired(node, p.foldings[node.name])
    assert not hardwired(node, default.foldings[node.name])
    assert p.ii <= default.ii and p.resources["dsp"] == 0
    assert p.resources["lut"] < default.resources["lut"] and p.resources["ff"] < default.resources["ff"]
    assert default.khot_unrolled == () and "khot_unroll" not in default.as_dict()
    assert p.as_dict()["khot_unroll"] == {"unrolled": [node.name], "kept": {}}
    # an override is respected and named
    held = plan(man, "ultra96", khot_unroll=True, overrides={node.name: Folding(2, 3)})
    assert held.foldings[node.name] == Folding(2, 3)
    assert "override" in held.khot_kept[node.name] and held.khot_unrolled == ()
    # qfx-gen --khot-unroll builds it: design.json and the summary say so
    from qfx.gen import main

    assert main([str(tmp_path / "c"), "-o", str(tmp_path / "g"), "--khot-unroll"]) == 0
    import json

    d = json.loads((tmp_path / "g" / "design.json").read_text())
    assert d["folding"]["request"]["khot_unroll"] is True and d["folding"]["khot_unroll"]["unrolled"] == [node.name]
    assert next(e for e in d["layers"] if e["name"] == node.name)["khot_hardwired"] is True


def test_planner_khot_unroll_keeps_a_dense_layer_rolled_where_it_costs_more(tmp_path):
    """A dense layer fed one element per beat needs only ``out_features`` MACs a cycle to keep up:
    its full unroll would cost more LUT, so it stays at the balanced folding and the plan says why."""
    from qfx.hw.accel.folding import plan

    man = _mlp(tmp_path, (64, 32, 10))
    p = plan(man, "ultra96", khot_unroll=True)
    default = plan(man, "ultra96")
    assert p.khot_unrolled == () and p.foldings == default.foldings
    for n in (n for n in man if n.op == "dense"):
        assert "the full unroll would need" in p.khot_kept[n.name]
