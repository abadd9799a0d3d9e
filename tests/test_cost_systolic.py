"""``qfx cost`` / ``qfx-gen --report`` of ``--arch systolic`` designs (qfx.cost.systolic).

The report's cycles are checked against the Amaranth simulation of the same design (start to done
of each tensor), its MAC count against one counted from the layers' shapes, the MAC energy against
:func:`qfx.cost.energy.mac_op_energy` per MAC, and the Yosys run of a small array against the
array's DSP count; an untrusted design.json (bad array, a cycle model from another manifest) is
refused with the reason and nothing written.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from qfx.cost.cli import cmd_cost
from qfx.cost.energy import mac_op_energy
from qfx.export import export
from qfx.gen import generate, main
from qfx.hw.accel.systolic_top import SystolicAccelerator
from qfx.manifest import load
from qfx.reference import run
from qfx.sim.amaranth_run import run_accelerator
from tests.test_systolic_conv import small_cnn


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:8] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    root = tmp_path_factory.mktemp("cost_sys")
    export(small_cnn().eval(), x, root / "m")
    man = load(root / "m")
    ref = run(man, x)
    return root / "m", man, ref[man.input].reshape(len(x), -1)[:2]


def _cost(out, *, no_synth=True, clock=None):
    return cmd_cost(argparse.Namespace(out=str(out), no_synth=no_synth, manifest=None, board=None, clock_mhz=clock))


def _macs(man) -> int:
    """MACs per inference counted from the layers' shapes (not from the systolic plan)."""
    total = 0
    for n in man:
        if n.op == "dense":
            total += n.params["in_features"] * n.params["out_features"]
        elif n.op == "conv2d":
            co, ho, wo = n.output_shape
            kh, kw = n.params["kernel"]
            total += co * ho * wo * n.params["in_channels"] * kh * kw
    return total


def test_report_of_a_systolic_cnn(cnn, tmp_path, capsys):
    mdir, man, x_codes = cnn
    out = tmp_path / "o"
    generate(mdir, out, arch="systolic", array="4x4", targets=("rtl",))
    assert _cost(out) == 0
    printed = capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    assert rep["arch"] == "systolic" and rep["systolic"]["rows"] == 4 and rep["systolic"]["cols"] == 4
    for name in ("report.md", "report_resources.png", "report_energy.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "## Systolic array" in md and "% busy" in md and "Whole design" in md

    # cycles: the report's latency is what the Amaranth simulation of this design takes per tensor
    acc = SystolicAccelerator(man, 4, 4)
    sim = run_accelerator(acc, x_codes, max_cycles=4 * acc.cycle_estimate()["total"] * len(x_codes))
    th = rep["throughput"]
    assert sim.cycles == [th["latency_cycles"]] * len(x_codes)
    macs = _macs(man)
    assert th["macs_per_inference"] == macs
    assert rep["systolic"]["array_busy"] == pytest.approx(macs / th["cycles_per_inference"] / 16, abs=1e-5)
    assert f"{100 * rep['systolic']['array_busy']:.1f} % busy" in printed
    assert sum(v["cycles"] for v in rep["systolic"]["layers"].values()) < th["cycles_per_inference"]

    # energy: MAC part = MACs x (product + accumulate) of one MAC; layers sum to the total
    en = rep["energy"]
    p = acc.plan
    one = mac_op_energy(p.x_fmt, p.w_fmt, "exact", p.x_fmt * p.w_fmt, acc.acc_fmt.width, dsp=True)
    assert en["mac"]["macs"] == macs
    assert en["mac"]["pj_per_mac"] == pytest.approx(one["product_pj"] + one["accumulate_pj"], rel=1e-3)
    assert sum(v["total_pj"] for v in en["per_layer"].values()) == pytest.approx(en["total_dynamic_pj"], rel=1e-4)
    assert all(v["memory_pj"] > 0 for v in en["per_layer"].values())
    # the uniform-factor variant prices the DSP products at the soft-logic factor: dearer
    assert en["mac_uniform_factor"]["pj_per_mac"] > en["mac"]["pj_per_mac"]
    # the resources are the structural estimate without synthesis, said so
    assert "structural estimate" in rep["resources"]["basis"] and rep["timing"]["fmax_mhz"] is None


def test_a_larger_array_is_less_busy_on_the_same_cnn(cnn, tmp_path):
    """Same MACs, more multipliers: the busy fraction falls, the weight-row traffic per K-tile grows."""
    mdir, _man, _x = cnn
    reps = {}
    for arr in ("2x2", "8x8"):
        generate(mdir, tmp_path / arr, arch="systolic", array=arr, targets=("rtl",))
        assert _cost(tmp_path / arr) == 0
        reps[arr] = json.loads((tmp_path / arr / "report.json").read_text())
    small, big = reps["2x2"], reps["8x8"]
    assert small["throughput"]["macs_per_inference"] == big["throughput"]["macs_per_inference"]
    assert big["throughput"]["cycles_per_inference"] < small["throughput"]["cycles_per_inference"]
    assert big["systolic"]["array_busy"] < small["systolic"]["array_busy"]


def test_yosys_report_of_a_small_array(cnn, tmp_path):
    """With synthesis: Yosys counts of the whole design, the array's DSPs among them, an Fmax estimate."""
    mdir, _man, _x = cnn
    out = tmp_path / "o"
    generate(mdir, out, arch="systolic", array="2x2", targets=("rtl",))
    assert _cost(out, no_synth=False) == 0
    rep = json.loads((out / "report.json").read_text())
    r = rep["resources"]
    assert "Yosys" in r["basis"] and r["lut"] > 0 and r["ff"] > 0
    acc = SystolicAccelerator(load(mdir), 2, 2)
    acc._MustUse__silence = True  # for its sizes only
    # the array's multipliers (R x G) plus the batchnorm multiply of the vector unit
    assert r["dsp"] >= acc.rows * acc.grid_cols
    f = rep["timing"]["fmax_mhz"]
    assert f and math.isfinite(f) and f > 0
    assert rep["throughput"]["at_fmax"]["clock_mhz"] == f
    assert set(r["estimator_error"]) == {"lut", "ff", "dsp", "bram36"}


def test_qfx_gen_report_on_systolic(cnn, tmp_path, capsys):
    mdir, _man, _x = cnn
    out = tmp_path / "g"
    assert main([str(mdir), "-o", str(out), "--arch", "systolic", "--array", "2x2", "--report"]) == 0
    assert "systolic array" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["arch"] == "systolic"


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d["array"].update(rows="sixteen"), "does not match the manifest"),
    (lambda d: d["array"].update(rows=65), "does not match the manifest"),
    (lambda d: d["array"].update(pack="yes"), "array.pack must be true or false"),
    (lambda d: d.pop("array"), "without an 'array' entry"),
    (lambda d: d["cycle_model"].update(ii=d["cycle_model"]["ii"] + 1), "built from another manifest"),
])
def test_untrusted_design_json_is_refused(cnn, tmp_path, capsys, edit, needle):
    mdir, _man, _x = cnn
    out = tmp_path / "o"
    generate(mdir, out, arch="systolic", array="4x4", targets=("rtl",))
    dj = out / "design.json"
    design = json.loads(dj.read_text())
    edit(design)
    dj.write_text(json.dumps(design))
    assert _cost(out) == 2
    assert needle in capsys.readouterr().err
    assert not (out / "report.md").exists() and not (out / "report.json").exists()


def test_busy_fraction_matches_the_cycle_model_field(cnn):
    """The report's busy fraction and the cycle model's utilization are one quantity."""
    _mdir, man, _x = cnn
    acc = SystolicAccelerator(man, 4, 4)
    acc._MustUse__silence = True
    est = acc.cycle_estimate()
    assert np.isclose(est["utilization"], _macs(man) / est["ii"] / 16)
