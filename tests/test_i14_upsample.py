"""nn.Upsample / F.interpolate (mode='nearest', integer scale factors) four ways.

Models: a 2-D CNN (conv 1->4 3x3 on 8x8, nn.Upsample(scale_factor=2), conv, global average pooling,
a classifier), a functional one (F.interpolate with a per-dim scale_factor (1, 2) and with a size
twice the input, on the model input and between convs) and a 1-D CNN (Conv1d, Upsample of [N, C, L]
by 2 and by size, written to the manifest as height-1 2-D tensors).

Each: convert -> 4 QAT steps -> export -> integer reference == emulation on every layer -> ``qfx-gen``
(rtl, hls) -> ``verify`` (Verilator RTL and g++ C simulation vs the reference, and the emulation) with
0 mismatches. Expected values come from the reference, the emulation and torch's own interpolate,
never from the hardware. Then: the RTL engine's cycle model against the Amaranth simulation (one
tensor alone in ``total`` cycles, back-to-back tensors every ``ii`` cycles, the upsample engine the
slowest), the reference against ``F.interpolate`` on integer codes, and the bad inputs (each error
names the layer, the argument and what is supported).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qfx
from qfx.conversion import ConversionError
from qfx.export import ExportError, export
from qfx.manifest import ManifestError, load
from qfx.reference import run, run_codes
from tests.fourway import assert_reference_equals_emulation, assert_rtl_and_hls_bit_exact, assert_verilog_lints_clean, short_qat
from tests.test_i14_ops import CFG

X = "ap_fixed<8,3,AP_RND,AP_SAT>"


class UpCNN(nn.Module):
    """conv 1->4 3x3 on 8x8 (6x6), Upsample x2 (12x12), conv 4->4 3x3 stride 2 (5x5), GAP, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3)
        self.up = nn.Upsample(scale_factor=2)
        self.c2 = nn.Conv2d(4, 4, 3, stride=2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = torch.relu(self.c2(self.up(torch.relu(self.c1(x)))))
        return self.fc(torch.flatten(self.gap(y), 1))


class InterpCNN(nn.Module):
    """F.interpolate on the model input (scale (1, 2)), a conv, F.interpolate to twice its size, a
    strided padded conv, F.interpolate by (2.0, 1.0), flatten, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, 3)
        self.c2 = nn.Conv2d(3, 2, 3, padding=1, stride=2)
        self.fc = nn.Linear(2 * 2 * 6, 3)

    def forward(self, x):  # x: [N, 2, 3, 4]
        y = torch.relu(self.c1(F.interpolate(x, scale_factor=(1, 2), mode="nearest")))  # [N, 3, 1, 6]
        y = F.interpolate(y, size=(2, 12))  # factors (2, 2): [N, 3, 2, 12]
        y = torch.relu(self.c2(y))  # [N, 2, 1, 6]
        y = F.interpolate(y, scale_factor=(2.0, 1.0))  # [N, 2, 2, 6]
        return self.fc(torch.flatten(y, 1))


class UpCNN1d(nn.Module):
    """Conv1d, nn.Upsample(scale_factor=2) of [N, C, L], Conv1d, nn.Upsample(size=...) (x3), a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(2, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2)
        self.c2 = nn.Conv1d(4, 3, 3, stride=2)
        self.up2 = nn.Upsample(size=21)
        self.fc = nn.Linear(3 * 21, 3)

    def forward(self, x):  # [N, 2, 8]
        y = self.c2(self.up(torch.relu(self.c1(x))))  # [N, 3, 7]
        return self.fc(torch.flatten(torch.relu(self.up2(y)), 1))


MODELS = {
    "up_cnn": (UpCNN, (1, 8, 8), {"conv2d", "upsample", "avgpool2d", "flatten", "dense"}),
    "interp_cnn": (InterpCNN, (2, 3, 4), {"upsample", "conv2d", "flatten", "dense"}),
    "up_cnn1d": (UpCNN1d, (2, 8), {"conv2d", "upsample", "flatten", "dense"}),
}


def _qat(name: str):
    make, shape, _ops = MODELS[name]
    return short_qat(make, shape, CFG)


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory):
    name = request.param
    q, x = _qat(name)
    d = tmp_path_factory.mktemp(name)
    export(q, x, d / "manifest")
    return name, q, x, d


def test_reference_equals_emulation_on_every_layer(exported):
    name, q, x, d = exported
    man = load(d / "manifest")
    ref = assert_reference_equals_emulation(name, q, x, man, MODELS[name][2])
    for node in man:
        if node.op == "upsample":  # the reference's upsample is torch's nearest interpolate of its input codes
            (src,) = node.inputs
            want = F.interpolate(torch.from_numpy(ref[src]).double(), scale_factor=tuple(node.params["scale"]),
                                 mode="nearest")
            assert np.array_equal(ref[node.name], want.numpy().astype(np.int64)), node.name
            assert node.output_format == man.node(src).output_format
    assert len(np.unique(ref[man.output])) > 3


def test_manifest_scales(exported):
    name, _q, _x, d = exported
    man = load(d / "manifest")
    scales = [list(n.params["scale"]) for n in man if n.op == "upsample"]
    assert scales == {"up_cnn": [[2, 2]], "interp_cnn": [[1, 2], [2, 2], [2, 1]], "up_cnn1d": [[1, 2], [1, 3]]}[name]


def test_rtl_and_hls_bit_exact(exported):
    _name, q, _x, d = exported
    assert_rtl_and_hls_bit_exact(q, d)


def test_cost_model_covers_the_upsample_engine(exported):
    from qfx.cost.estimate import estimate
    from qfx.hw.accel import Accelerator, estimate_resources

    name, _q, _x, d = exported
    man = load(d / "manifest")
    est = estimate(man)
    computing = [n.name for n in man if n.op not in ("input", "flatten", "output")]
    assert set(est["per_layer"]) == set(computing) and est["lut"] > 0
    res = estimate_resources(man)
    for n in man:
        if n.op == "upsample":  # the double-buffered input tensor, in its own format
            assert res["per_layer"][n.name]["memory_bits"] == 2 * int(np.prod(n.input_shapes[0])) * n.output_format.width
    acc = Accelerator(man)
    acc._MustUse__silence = True  # only its cycle model is used here
    cyc = acc.cycle_estimate()
    assert set(cyc["engines"]) == set(computing) and cyc["total"] > 0


def test_verilog_lints_clean_and_is_deterministic(exported, tmp_path):
    """The upsample engine passes ``verilator --lint-only -Wall`` with the project's waivers only."""
    name, _q, _x, d = exported
    assert_verilog_lints_clean(d / "manifest", tmp_path, name)


def test_upsample_engine_cycles_measured(tmp_path):
    """The upsample engine as the slowest (its ii = its output count): one tensor alone takes the
    modelled ``total`` cycles, back-to-back tensors leave every ``ii`` cycles, the outputs (the
    upsampled tensor itself, after a ReLU) are the reference's (Amaranth simulation of the whole
    accelerator)."""
    from qfx.hw.accel import Accelerator
    from qfx.hw.accel.engines import engine_cycles, engine_latency
    from qfx.hw.accel.folding import Folding
    from qfx.sim.amaranth_run import run_accelerator

    torch.manual_seed(4)
    model = nn.Sequential(
        qfx.nn.QConv2d(1, 2, 1, input=X, weight="ap_fixed<8,1,AP_RND_CONV,AP_SAT>", bias="ap_fixed<8,3>", output=X),
        qfx.nn.QUpsample(scale_factor=(2, 3)),
        qfx.nn.QReLU(output="ap_ufixed<8,3,AP_RND,AP_SAT>"),
    )
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([0.75, -0.5]).reshape(2, 1, 1, 1))
        model[0].bias.copy_(torch.tensor([0.25, -0.125]))
    x = torch.randn(6, 1, 3, 3) * 2
    export(model, x, tmp_path / "m")
    man = load(tmp_path / "m")
    ref = run(man, x)
    up = next(n for n in man if n.op == "upsample")
    assert engine_cycles(up) == {"load": 18, "compute": 108, "outputs": 108}
    assert engine_latency(up, Folding(), 100) == 100 + 108 + 2
    acc = Accelerator(man)
    est = acc.cycle_estimate()
    assert est["ii"] == est["engines"][up.name]["ii"] == 108
    xs, want = ref[man.input][:3], ref[man.output].reshape(len(x), -1)[:3]
    assert len(np.unique(want)) > 10  # the codes vary: a wrong read address shows
    r = run_accelerator(acc, xs[:1], max_cycles=3 * est["total"])
    assert np.array_equal(r.outputs, want[:1]) and r.cycles == [est["total"]]
    r = run_accelerator(acc, xs, back_to_back=True, max_cycles=10 * est["total"])
    assert np.array_equal(r.outputs, want)
    assert np.diff(r.done_at).tolist() == [est["ii"]] * 2
    r = run_accelerator(acc, xs, stall_in=0.3, stall_out=0.3, seed=1, max_cycles=40 * est["total"])
    assert np.array_equal(r.outputs, want)  # backpressure on both sides


# ---------------------------------------------------------------------------
# Semantics: the emulation and the reference against torch's interpolate
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kw, spatial", [
    ({"scale_factor": 2}, (3, 5)),
    ({"scale_factor": (3, 1)}, (4, 2)),
    ({"scale_factor": (1, 4)}, (2, 3)),
    ({"scale_factor": (2.0, 3.0)}, (3, 3)),
    ({"size": (6, 10)}, (3, 5)),
    ({"size": 12}, (4, 3)),
    ({"scale_factor": 3}, (7,)),
    ({"size": 20}, (5,)),
    ({"scale_factor": 1}, (2, 2)),
])
def test_qupsample_is_torchs_nearest_interpolate(kw, spatial):
    x = qfx.quantize(torch.randn(3, 2, *spatial, generator=torch.Generator().manual_seed(5)) * 3, qfx.parse_type(X))
    up = qfx.nn.QUpsample(**kw)
    assert torch.equal(up(x), F.interpolate(x, mode="nearest", **kw))
    assert torch.equal(up(x), nn.Upsample(mode="nearest", **kw)(x))
    # gradients pass as torch's (each output's gradient summed into its source)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(up(x).shape, generator=torch.Generator().manual_seed(6))
    (up(xa) * g).sum().backward()
    (F.interpolate(xb, mode="nearest", **kw) * g).sum().backward()
    assert torch.allclose(xa.grad, xb.grad, rtol=0, atol=1e-5)  # summation order aside


@pytest.mark.parametrize("scale", [(1, 1), (2, 2), (3, 1), (1, 4), (3, 2), (5, 7)])
def test_reference_upsample_equals_interpolate_on_codes(scale, tmp_path):
    """qfx.reference on random integer codes (every code of the format) vs F.interpolate of those codes."""
    model = nn.Sequential(qfx.nn.QAvgPool2d(1, input=X, output=X), qfx.nn.QUpsample(scale_factor=scale))
    x = torch.randn(4, 3, 5, 4)
    export(model, x, tmp_path / "m")
    man = load(tmp_path / "m")
    up = next(n for n in man if n.op == "upsample")
    assert tuple(up.params["scale"]) == scale and up.output_shape == (3, 5 * scale[0], 4 * scale[1])
    fmt = man.input_node.output_format
    codes = np.random.default_rng(7).integers(fmt.min_code, fmt.max_code + 1, size=(6, 3, 5, 4))
    got = run_codes(man, codes)[up.name]
    want = F.interpolate(torch.from_numpy(codes).double(), scale_factor=scale, mode="nearest").numpy()
    assert got.dtype.kind == "i" and np.array_equal(got, want.astype(np.int64))


def test_manifest_checks_upsample(tmp_path):
    import yaml

    model = nn.Sequential(qfx.nn.QAvgPool2d(1, input=X, output=X), qfx.nn.QUpsample(scale_factor=2))
    export(model, torch.randn(2, 2, 3, 3), tmp_path / "m")
    path = tmp_path / "m" / "manifest.yaml"
    text = path.read_text()

    def edited(fn) -> None:
        doc = yaml.safe_load(text)
        fn(next(n for n in doc["nodes"] if n["op"] == "upsample"))
        path.write_text(yaml.safe_dump(doc, sort_keys=False))

    edited(lambda n: n["params"].update(scale=[2, 0]))
    with pytest.raises(ManifestError, match=r"params.scale must be \[sh, sw\] of ints >= 1, got \[2, 0\]"):
        load(tmp_path / "m")
    edited(lambda n: n["params"].update(scale=[2, 3]))
    with pytest.raises(ManifestError, match=r"output_shape \[2, 6, 6\] disagrees .*: \[2, 6, 9\]"):
        load(tmp_path / "m")
    edited(lambda n: n["formats"].update(output="ap_fixed<9,3,AP_RND,AP_SAT>"))
    with pytest.raises(ManifestError, match="formats.output .* must equal"):
        load(tmp_path / "m")


# ---------------------------------------------------------------------------
# Bad input: the layer, the argument and what is supported
# ---------------------------------------------------------------------------


class _Fn(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.conv(x))


@pytest.mark.parametrize("fn, words", [
    (lambda y: F.interpolate(y, scale_factor=2, mode="bilinear"), ["interpolate", "mode='bilinear'", "only mode='nearest'"]),
    (lambda y: F.interpolate(y, scale_factor=2, mode="bicubic", align_corners=True), ["mode='bicubic'", "nearest"]),
    (lambda y: F.interpolate(y, scale_factor=1.5), ["interpolate", "scale_factor=1.5", "integer scale factors"]),
    (lambda y: F.interpolate(y, scale_factor=(2, 2.5)), ["scale_factor=(2, 2.5)", "integer scale factors"]),
    (lambda y: F.interpolate(y, scale_factor=0.5), ["scale_factor=0.5", "integer scale factors >= 1"]),
    (lambda y: F.interpolate(y, scale_factor=2, align_corners=False), ["align_corners=False", "only align_corners=None"]),
    (lambda y: F.interpolate(y, scale_factor=2, antialias=True), ["antialias=True", "only antialias=False"]),
    (lambda y: F.interpolate(y, size=(y.shape[2] * 2, 4)), ["argument size", "constants"]),
])
def test_unsupported_interpolate_arguments_are_named(fn, words):
    with pytest.raises(ConversionError) as info:
        qfx.convert(_Fn(fn), CFG)
    msg = str(info.value)
    for w in words:
        assert w in msg, (w, msg)
    assert "node 'interpolate'" in msg or "node '" in msg
    assert "Upsample" in msg and "supported:" in msg  # the supported table


@pytest.mark.parametrize("module, words", [
    (nn.Upsample(scale_factor=2, mode="bilinear"), ["mode='bilinear'", "only mode='nearest'"]),
    (nn.UpsamplingBilinear2d(scale_factor=2), ["mode='bilinear'"]),
    (nn.Upsample(scale_factor=2.5), ["scale_factor=2.5", "integer scale factors"]),
    (nn.Upsample(scale_factor=(2, 1.5)), ["scale_factor=(2.0, 1.5)", "integer scale factors"]),
    (nn.Upsample(size=(6, 6.5)), ["size=(6, 6.5)", "ints"]),
])
def test_unsupported_upsample_modules_are_named(module, words):
    with pytest.raises(ConversionError) as info:
        qfx.convert(nn.Sequential(nn.Conv2d(2, 2, 1), module), CFG)
    msg = str(info.value)
    assert "module '1' (Upsample)" in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def test_align_corners_with_nearest_is_refused_by_name():
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)
            self.up = nn.Upsample(scale_factor=2)

        def forward(self, x):
            return self.up(self.conv(x))

    m = M()
    m.up.align_corners = True  # torch only refuses this at the forward pass
    with pytest.raises(ConversionError, match=r"module 'up' \(Upsample\): argument align_corners=True is not supported; "
                                              r"only align_corners=None"):
        qfx.convert(m, CFG)


def test_size_not_a_multiple_names_the_layer(tmp_path):
    q = qfx.convert(nn.Sequential(nn.Conv2d(2, 2, 1), nn.Upsample(size=(6, 7))), CFG)
    with pytest.raises(ValueError, match=r"layer '1' \(Upsample\): size \(6, 7\) is not an integer multiple of the "
                                         r"input's spatial size \(3, 3\); only integer scale factors"):
        q(torch.randn(2, 2, 3, 3))
    fixed = {"default": {**CFG["default"], "learn_binary_point": False}}  # exportable without a forward pass
    q2 = qfx.convert(_Fn(lambda y: F.interpolate(y, size=5)), fixed)
    with pytest.raises(ExportError, match=r"layer 'interpolate' \(Upsample\): size \(5, 5\) is not an integer multiple"):
        export(q2, torch.randn(2, 2, 2, 2), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_qupsample_direct_errors():
    with pytest.raises(ValueError, match=r"QUpsample: argument mode='nearest-exact' is not supported; only mode='nearest'"):
        qfx.nn.QUpsample(scale_factor=2, mode="nearest-exact")
    with pytest.raises(ValueError, match="needs exactly one of size and scale_factor"):
        qfx.nn.QUpsample()
    with pytest.raises(ValueError, match="needs exactly one of size and scale_factor"):
        qfx.nn.QUpsample(size=4, scale_factor=2)
    with pytest.raises(ValueError, match=r"scale_factor \(2, 2\) has 2 entries for an input with 1 spatial dim"):
        qfx.nn.QUpsample(scale_factor=(2, 2))(torch.randn(1, 2, 3))
    with pytest.raises(ValueError, match=r"only \[N, C, L\] and \[N, C, H, W\] inputs are supported"):
        qfx.nn.QUpsample(scale_factor=2)(torch.randn(1, 2, 3, 3, 3))


def test_one_d_upsample_takes_the_height_one_layout():
    up = qfx.nn.QUpsample(scale_factor=3)
    x = torch.randn(2, 4, 5)
    y = up(x)
    assert torch.equal(y, F.interpolate(x, scale_factor=3)) and up.one_d
    assert torch.equal(up(x[:, :, None, :]), y[:, :, None, :])  # [N, C, 1, L]: only L upsampled
    assert qfx.nn.QUpsample(scale_factor=3)(x[:, :, None, :]).shape == (2, 4, 3, 15)  # a 2-D layer: both dims
