"""qfx.cost: Yosys resources per engine / whole design, the calibrated analytic estimator, Fmax from the
mapped netlist, throughput, the energy model, the report files and ``qfx cost`` / ``qfx-gen --report``.

Synthesis runs on two small test MLPs (fixed-point and K-hot weights); Yosys results are cached by
content (``~/.cache/qfx/yosys``), so a second run takes seconds.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from qfx.cost.energy import E, F_SOFT, mac_op_energy
from qfx.cost.estimate import estimate
from qfx.cost.report import write_report
from qfx.cost.timing import DELAYS_NS, critical_path, fmax_mhz, throughput
from qfx.export import export
from qfx.manifest import load
from qfx.types import FixedType, parse_type
from tests.qmodels import KHOT, init_weights, mlp, model_inputs

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    root = tmp_path_factory.mktemp("cost")
    out = {}
    # The same models, seeds and inputs as bench/cost_calibration.py (so Yosys' cache hits).
    for name, make, i in (("mlp_auto", lambda: init_weights(mlp(), 1), 0),
                          ("khot_mlp", lambda: init_weights(mlp(KHOT, "ap_fixed<10,3,AP_RND_CONV,AP_SAT>"), 11), 4)):
        export(make(), model_inputs((12,), 2.0, 300 + i), root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def reports(manifests, tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    return {n: (write_report(root / n, p, synth=True), root / n) for n, p in manifests.items()}


def test_estimator_within_bounds_of_yosys(reports):
    """Calibration subset: DSP exact, LUT within 15 %, FF within 25 % of Yosys on the whole design."""
    for name, (rep, _) in reports.items():
        r = rep["resources"]
        err = r["estimator_error"]
        assert rep["resources"]["analytic"]["dsp"] == r["dsp"], (name, r["analytic"], r["dsp"])
        assert abs(err["lut"]) <= 0.15, (name, err, r["analytic"]["lut"], r["lut"])
        assert abs(err["ff"]) <= 0.25, (name, err, r["analytic"]["ff"], r["ff"])


def test_khot_uses_no_dsp_and_fixed_does(reports):
    assert reports["khot_mlp"][0]["resources"]["dsp"] == 0
    assert reports["mlp_auto"][0]["resources"]["dsp"] > 0
    per = reports["mlp_auto"][0]["resources"]["per_layer"]
    assert all(v["dsp"] >= 1 for n, v in per.items() if n.startswith(("0", "2", "4")) or "linear" in n.lower()) or per


def test_report_contents_and_files(reports):
    rep, out = reports["mlp_auto"]
    for f in ("report.md", "report.json", "report_resources.png", "report_energy.png"):
        assert (out / f).stat().st_size > 0
    assert json.loads((out / "report.json").read_text())["schema"] == "qfx.cost"
    r = rep["resources"]
    assert r["lut"] > 0 and r["ff"] > 0 and r["carry"] > 0
    assert set(r["per_layer"]) == {n.name for n in load(rep["manifest"]) if n.op not in ("input", "flatten", "output")}
    assert rep["fit"]["fits"] and rep["fit"]["problems"] == []
    t = rep["timing"]
    assert 20 < t["fmax_mhz"] < 1000 and t["critical_path"]["lut_levels"] >= 1
    th = rep["throughput"]
    assert th["at_clock"]["clock_mhz"] == 100.0
    assert th["at_fmax"]["inferences_per_s"] == pytest.approx(t["fmax_mhz"] * 1e6 / th["cycles_per_inference"], rel=1e-3)
    md = (out / "report.md").read_text()
    assert "Horowitz" in md and "Kuon" in md and "ASSUMPTION" in md and "Fmax estimate" in md


def test_energy_breakdown_adds_up(reports):
    for rep, _ in reports.values():
        en = rep["energy"]
        assert sum(en["per_kind_pj"].values()) == pytest.approx(en["total_dynamic_pj"], rel=1e-3)
        assert sum(v["total_pj"] for v in en["per_layer"].values()) == pytest.approx(en["total_dynamic_pj"], rel=1e-3)
    assert "shift_add" in reports["khot_mlp"][0]["energy"]["per_kind_pj"]
    assert "dsp" in reports["mlp_auto"][0]["energy"]["per_kind_pj"]


def test_op_energies_follow_the_sources():
    x = FixedType(8, 3)
    w = FixedType(8, 1)
    p = x * w
    dsp = mac_op_energy(x, w, "exact", p, 20, dsp=True, f_hard=1.0, f_soft=1.0)
    assert dsp["kind"] == "dsp" and dsp["product_pj"] == pytest.approx(E["mult8"])  # Horowitz int8 mult
    assert dsp["accumulate_pj"] == pytest.approx(E["add8"] * 20 / 8)
    lut = mac_op_energy(x, w, "exact", p, 20, dsp=False)
    assert lut["kind"] == "lut_mult" and lut["product_pj"] == pytest.approx(E["mult8"] * F_SOFT)
    kh = parse_type(KHOT)
    assert mac_op_energy(x, kh, "exact", p, 20, dsp=False)["kind"] == "shift_add"


def test_critical_path_on_a_hand_netlist():
    def cell(t, ins, outs, params=None):
        conns = {**{k: v for k, v in ins.items()}, **{k: v for k, v in outs.items()}}
        dirs = {**{k: "input" for k in ins}, **{k: "output" for k in outs}}
        return {"type": t, "parameters": params or {}, "connections": conns, "port_directions": dirs}

    net = {"modules": {"top": {"cells": {
        "r0": cell("FDRE", {"D": [9], "C": [1]}, {"Q": [2]}),
        "l1": cell("LUT2", {"I0": [2], "I1": [2]}, {"O": [3]}),
        "l2": cell("LUT6", {"I0": [3]}, {"O": [4]}),
        "c1": cell("CARRY8", {"S": [4]}, {"O": [5]}),
        "r1": cell("FDRE", {"D": [5], "C": [1]}, {"Q": [9]}),
    }}}}
    p = critical_path(net, "top")
    assert p["lut_levels"] == 2 and p["carry_blocks"] == 1
    assert p["delay_ns"] == pytest.approx(2 * DELAYS_NS["lut"] + DELAYS_NS["carry"] + DELAYS_NS["overhead"])
    assert fmax_mhz(p) == pytest.approx(1000 / p["delay_ns"], rel=1e-3)
    # a shift-register LUT clocks its data in: a DSP feeding an SRL16E ends a path there, and the
    # SRL's output starts the next one (a delay line, not a combinational DSP -> SRL -> LUT chain)
    net["modules"]["top"]["cells"].update({
        "d0": cell("DSP48E2", {"A": [2]}, {"P": [6]}),
        "s0": cell("SRL16E", {"D": [6], "A0": [1]}, {"Q": [7]}),
        "l3": cell("LUT2", {"I0": [7]}, {"O": [8]}),
        "r2": cell("FDRE", {"D": [8], "C": [1]}, {"Q": [10]}),
    })
    p = critical_path(net, "top")
    assert p["delay_ns"] == pytest.approx(DELAYS_NS["dsp_comb"] + DELAYS_NS["overhead"])
    assert p["end"] == "SRL16E" and p["start"] == "FDRE"
    # a LUT RAM reads combinationally (read address -> data out) but writes at the clock edge: a
    # path through its write data ends there (6 LUTs to DIA), it does not go on through DOA
    chain = {f"w{k}": cell("LUT6", {"I0": [50 + k]}, {"O": [51 + k]}) for k in range(6)}
    net["modules"]["top"]["cells"].update({
        "r3": cell("FDRE", {"D": [30], "C": [1]}, {"Q": [50]}), **chain,
        "m0": cell("RAM64M8", {"DIA": [56], "WE": [50], "WCLK": [1], "ADDRA": [31], "ADDRH": [31]},
                   {"DOA": [25]}),
        "r4": cell("FDRE", {"D": [1], "C": [1]}, {"Q": [31]}),
        "l4": cell("LUT2", {"I0": [25]}, {"O": [26]}),
        "r5": cell("FDRE", {"D": [26], "C": [1]}, {"Q": [30]}),
    })
    p = critical_path(net, "top")
    assert p["delay_ns"] == pytest.approx(6 * DELAYS_NS["lut"] + DELAYS_NS["overhead"])
    assert p["end"] == "RAM64M8" and p["lut_levels"] == 6
    # the read side stays combinational: a deeper read-address path goes through to the register
    net["modules"]["top"]["cells"].update({f"a{k}": cell("LUT6", {"I0": [40 + k]}, {"O": [41 + k]}) for k in range(5)})
    net["modules"]["top"]["cells"]["r4"] = cell("FDRE", {"D": [1], "C": [1]}, {"Q": [40]})
    net["modules"]["top"]["cells"]["m0"]["connections"]["ADDRA"] = [45]
    p = critical_path(net, "top")
    assert p["delay_ns"] == pytest.approx(6 * DELAYS_NS["lut"] + DELAYS_NS["lutram"] + DELAYS_NS["overhead"])
    assert p["end"] == "FDRE" and p["lut_levels"] == 6
    t = throughput(1000, 500, 100.0)
    assert t["latency_us"] == 10.0 and t["inferences_per_s"] == 1e5 and t["gops"] == pytest.approx(0.1)
    t = throughput(250, 500, 100.0, latency_cycles=1200)  # overlapped: one leaves every II cycles
    assert t["latency_us"] == 12.0 and t["inferences_per_s"] == 4e5 and t["gops"] == pytest.approx(0.4)


def test_analytic_estimate_is_fast_and_structural(manifests):
    est = estimate(load(manifests["khot_mlp"]))
    assert est["dsp"] == 0 and est["lut"] > 0 and est["ff"] > 0


def _gen(manifest, out, *extra):
    return subprocess.run([PY, "-m", "qfx.gen", str(manifest), "-o", str(out), *extra], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def _cost(*args, env=None):
    return subprocess.run([PY, "-m", "qfx.cli", "cost", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env=env)


def test_cli_no_synth_and_deterministic(manifests, tmp_path):
    out = tmp_path / "g"
    assert _gen(manifests["khot_mlp"], out).returncode == 0
    r1 = _cost(out, "--no-synth", "--manifest", manifests["khot_mlp"])
    assert r1.returncode == 0, r1.stderr
    first = {f: (out / f).read_bytes() for f in ("report.json", "report.md", "report_resources.png", "report_energy.png")}
    r2 = _cost(out, "--no-synth", "--manifest", manifests["khot_mlp"])
    assert r2.returncode == 0
    for f, data in first.items():
        assert (out / f).read_bytes() == data, f"{f} differs between two runs"


def test_cost_reports_the_design_qfx_gen_built(manifests, tmp_path):
    """qfx cost of a folded design: its foldings (design.json), the II as cycles per inference,
    the folded resource estimate; a design.json whose folding does not match the manifest is refused."""
    from qfx.hw.accel.folding import folded_estimate, parse_foldings

    out = tmp_path / "g"
    assert _gen(manifests["mlp_auto"], out).returncode == 0
    design = json.loads((out / "design.json").read_text())
    fold = design["folding"]["foldings"]
    assert any(f["pe"] * f["simd"] > 1 for f in fold.values())  # the planner folded something
    r = _cost(out, "--no-synth")
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    th = rep["throughput"]
    assert th["foldings"] == fold
    assert th["cycles_per_inference"] == design["latency"]["ii_cycles"]
    assert th["latency_cycles"] == design["latency"]["cycles"]
    man = load(manifests["mlp_auto"])
    folded = folded_estimate(man, parse_foldings({n.name: n for n in man}, fold))
    assert rep["resources"]["dsp"] == folded["dsp"] == design["resources_estimate"]["dsp"]
    assert rep["resources"]["lut"] == folded["lut"] == design["resources_estimate"]["lut"]
    design["folding"]["foldings"] = {"no_such_layer": {"pe": 1, "simd": 1}}
    (out / "design.json").write_text(json.dumps(design))
    r = _cost(out, "--no-synth")
    assert r.returncode == 2 and "does not match the manifest" in r.stderr and "Traceback" not in r.stderr


def test_cli_bad_input(manifests, tmp_path):
    r = _cost(tmp_path / "nothing")
    assert r.returncode == 2 and "not a qfx-gen output folder" in r.stderr
    out = tmp_path / "g"
    assert _gen(manifests["mlp_auto"], out).returncode == 0
    design = json.loads((out / "design.json").read_text())
    if "manifest" not in design:
        r = _cost(out, "--no-synth")
        assert r.returncode == 2 and "--manifest" in r.stderr
    r = _cost(out, "--no-synth", "--manifest", manifests["mlp_auto"], "--board", "nosuchboard")
    assert r.returncode == 2 and "unknown board" in r.stderr
    r = _cost(out, "--no-synth", "--manifest", tmp_path / "missing")
    assert r.returncode == 2 and "not found" in r.stderr


def test_yosys_failure_shows_its_error(manifests, tmp_path, monkeypatch):
    """A Yosys that fails: exit 2 and its error lines in the message."""
    fake = tmp_path / "bin" / "yosys"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nif [ \"$1\" = -V ]; then echo 'Yosys 0.0 (fake)'; exit 0; fi\n"
                    "echo 'ERROR: fake synthesis failure for the test' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    import qfx.cost.synthesis as syn

    monkeypatch.setattr(syn, "yosys_command", lambda: [str(fake)])
    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path / "cache"))
    from qfx.cost.cli import cmd_cost
    import argparse

    out = tmp_path / "g"
    assert _gen(manifests["mlp_auto"], out).returncode == 0
    rc = cmd_cost(argparse.Namespace(out=str(out), no_synth=False, manifest=str(manifests["mlp_auto"]), board=None,
                                     clock_mhz=None))
    assert rc == 2
    # The message holds Yosys' own error line (printed to stderr by cmd_cost).
    with pytest.raises(syn.SynthError, match="fake synthesis failure"):
        syn.synth_module("module t(input a, output b); assign b = a; endmodule", "t")
