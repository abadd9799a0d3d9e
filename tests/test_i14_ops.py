"""Issue 14 structural ops, four ways: BatchNorm1d, global average pooling (AdaptiveAvgPool2d(1) and
``mean((2, 3))``), ``torch.cat`` along channels, Hardtanh / clamp, element-wise ``sub`` and ``mul``.

Each model of the issue that these ops make possible goes float -> ``qfx.convert`` -> a few QAT steps
(learned binary points) -> export -> integer reference == emulation on every layer -> ``qfx-gen``
(rtl, hls) -> ``verify`` (Verilator RTL and g++ C simulation against the reference, and the emulation)
with 0 mismatches. Expected values come from the integer reference and the emulation, never from the
hardware. Models stay small: the Verilator builds share 2 cores.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qfx
from qfx.conversion import ConversionError
from qfx.export import ExportError, export
from qfx.manifest import ManifestError, load
from tests.fourway import config, assert_reference_equals_emulation, assert_rtl_and_hls_bit_exact, assert_verilog_lints_clean, short_qat

CFG = config(
    {"reciprocal": "ap_ufixed<8,0,AP_RND>"},
    types={"BatchNorm1d": {"scale": "ap_fixed<8,2,AP_RND,AP_SAT>", "shift": "ap_fixed<10,3,AP_RND,AP_SAT>"}},
)


class MLPBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn1, self.fc2 = nn.Linear(10, 12), nn.BatchNorm1d(12), nn.Linear(12, 4)

    def forward(self, x):
        return self.fc2(F.relu(self.bn1(self.fc1(x))))


class SequenceBatchNorm(nn.Module):
    """BatchNorm1d on [N, C, L], then flatten and a dense layer."""

    def __init__(self) -> None:
        super().__init__()
        self.bn, self.fc = nn.BatchNorm1d(3), nn.Linear(3 * 5, 4)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.bn(x)), 1))


class ResNetGAP(nn.Module):
    """A residual block, then AdaptiveAvgPool2d(1) (4x4: power-of-two divisor) and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.gap = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        y = torch.relu(s + self.bn(self.conv(s)))
        return self.fc(torch.flatten(self.gap(y), 1))


class BranchConcat(nn.Module):
    """Two branches joined by torch.cat, Hardtanh, clamp, a difference, a gate, mean over (H, W) of 3x3
    (divisor 9: the quantized reciprocal), BatchNorm1d on the pooled features."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3, padding=1)
        self.b = nn.Conv2d(2, 2, 1)
        self.ht = nn.Hardtanh(-0.7, 0.9)
        self.bn = nn.BatchNorm1d(5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), self.ht(self.b(x))], dim=1)
        y = (y - torch.clamp(y, min=0.1, max=1.3)) * y
        return self.fc(self.bn(y.mean(dim=(-2, -1))))


class AutoencoderMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU())
        self.dec = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 12), nn.Hardtanh())

    def forward(self, x):
        return self.dec(self.enc(x))


class PaddedCNN(nn.Module):
    """ZeroPad2d on the model input (asymmetric) and between convs, a keepdim mean, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.pad0 = nn.ZeroPad2d((1, 0, 2, 1))
        self.conv1 = nn.Conv2d(2, 3, 3)
        self.pad1 = nn.ZeroPad2d(1)
        self.conv2 = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.conv2(self.pad1(torch.relu(self.conv1(self.pad0(x)))))
        return self.fc(torch.flatten(torch.mean(torch.relu(y), (2, 3), keepdim=True), 1))


MODELS = {
    "mlp_batchnorm1d": (MLPBatchNorm, (10,), {"batchnorm", "dense", "relu"}),
    "sequence_batchnorm1d": (SequenceBatchNorm, (3, 5), {"batchnorm", "flatten", "dense"}),
    "resnet_gap": (ResNetGAP, (2, 4, 4), {"conv2d", "add", "batchnorm", "avgpool2d", "flatten", "dense"}),
    "branch_concat": (BranchConcat, (2, 3, 3), {"concat", "clamp", "sub", "mul", "avgpool2d", "flatten", "batchnorm"}),
    "autoencoder_mlp": (AutoencoderMLP, (12,), {"dense", "relu", "clamp"}),
    "padded_cnn": (PaddedCNN, (2, 3, 4), {"pad", "conv2d", "avgpool2d", "flatten", "dense"}),
}


def _qat(name: str):
    """Convert, a few QAT steps (reconstruction / random-target MSE), eval; returns (model, test batch)."""
    make, shape, _ops = MODELS[name]
    return short_qat(make, shape, CFG, target=(lambda x, _y: x) if name == "autoencoder_mlp" else None)


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory):
    name = request.param
    q, x = _qat(name)
    d = tmp_path_factory.mktemp(name)
    export(q, x, d / "manifest")
    return name, q, x, d


def test_reference_equals_emulation_on_every_layer(exported):
    name, q, x, d = exported
    assert_reference_equals_emulation(name, q, x, load(d / "manifest"), MODELS[name][2])


def test_rtl_and_hls_bit_exact(exported):
    _name, q, _x, d = exported
    assert_rtl_and_hls_bit_exact(q, d)


def test_cost_model_covers_the_new_engines(exported):
    from qfx.cost.estimate import estimate
    from qfx.hw.accel import Accelerator

    name, _q, _x, d = exported
    man = load(d / "manifest")
    est = estimate(man)
    computing = [n.name for n in man if n.op not in ("input", "flatten", "output")]
    assert set(est["per_layer"]) == set(computing) and est["lut"] > 0
    acc = Accelerator(man)
    acc._MustUse__silence = True  # only its cycle model is used here
    cyc = acc.cycle_estimate()
    assert set(cyc["engines"]) == set(computing) and cyc["total"] > 0


# ---------------------------------------------------------------------------
# Semantics stated in the docstrings, checked against torch / by hand
# ---------------------------------------------------------------------------


def test_global_avgpool_is_avgpool_with_the_whole_window():
    x = torch.randn(4, 3, 3, 3) * 2
    X, Y, R = "ap_fixed<8,3,AP_RND,AP_SAT>", "ap_fixed<10,3,AP_RND_CONV,AP_SAT>", "ap_ufixed<8,0,AP_RND>"
    g = qfx.nn.QGlobalAvgPool2d(False, input=X, output=Y, reciprocal=R)
    p = qfx.nn.QAvgPool2d(3, input=X, output=Y, reciprocal=R)
    assert torch.equal(g(x), p(x).flatten(1))
    with pytest.raises(ValueError, match="reciprocal"):
        qfx.nn.QGlobalAvgPool2d(input=X, output=Y)(x)


def test_clamp_bounds_are_cast_to_the_output_format():
    c = qfx.nn.QClamp(-0.7, 0.9, output="ap_fixed<6,2,AP_TRN,AP_SAT>")  # lsb 1/16: -0.75 and 0.875
    y = c(torch.tensor([-5.0, -0.72, 0.3, 0.95, 5.0]))
    assert y.tolist() == [-0.75, -0.75, 0.25, 0.875, 0.875]


def test_mul_is_exact_then_one_cast():
    m = qfx.nn.QMul(input="ap_fixed<8,3,AP_RND,AP_SAT>", output="ap_fixed<8,3,AP_TRN,AP_SAT>")
    a, b = torch.tensor([0.40625, -3.0]), torch.tensor([0.40625, 2.0])
    # 0.40625**2 = 0.1650390625 -> truncated to 5 fractional bits: 0.15625; -6 saturates to -4
    assert m(a, b).tolist() == [0.15625, -4.0]


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
    (lambda y: y.mean(1), ["mean", "dim=1", "(2, 3)"]),
    (lambda y: torch.cat([y, y], dim=0), ["cat", "dim=0", "dim=1"]),
    (lambda y: y * 2.0, ["mul", "constant", "two tensors"]),
    (lambda y: torch.sub(y, y, alpha=2), ["sub", "alpha"]),
    (lambda y: torch.clamp(y, min=y), ["clamp", "min=", "constant"]),
])
def test_unsupported_arguments_are_named(fn, words):
    with pytest.raises(ConversionError) as info:
        qfx.convert(_Fn(fn), CFG)
    msg = str(info.value)
    for w in words:
        assert w in msg, (w, msg)
    assert "GlobalAvgPool2d" in msg and "cat" in msg and "Hardtanh" in msg  # the supported table


def test_adaptive_pool_to_more_than_one_is_refused():
    m = nn.Sequential(nn.Conv2d(2, 2, 1), nn.AdaptiveAvgPool2d(2))
    with pytest.raises(ConversionError, match=r"module '1' \(AdaptiveAvgPool2d\): output_size 2 is not supported; only 1"):
        qfx.convert(m, CFG)


def test_cat_along_width_is_refused_at_export(tmp_path):
    m = qfx.convert(_Fn(lambda y: torch.cat([y, y], dim=-1)), CFG)
    x = torch.randn(2, 2, 3, 3)
    m(x)
    with pytest.raises(ExportError, match="layer 'cat': QCat along dim -1 of a rank-4 tensor is not supported; only dim=1"):
        export(m, x, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_non_power_of_two_mean_without_reciprocal_names_the_layer(tmp_path):
    cfg = {"default": {k: v for k, v in CFG["default"].items() if k != "reciprocal"}}
    m = qfx.convert(_Fn(lambda y: y.mean((2, 3))), cfg)
    with pytest.raises(ValueError, match="divisor of 9 .* needs a 'reciprocal' format"):
        m(torch.randn(2, 2, 3, 3))


def test_manifest_checks_the_new_ops(tmp_path):
    import yaml

    q, x = _qat("branch_concat")
    export(q, x, tmp_path / "m")
    path = tmp_path / "m" / "manifest.yaml"
    text = path.read_text()
    doc = yaml.safe_load(text)
    clamp = next(n for n in doc["nodes"] if n["op"] == "clamp")
    clamp["params"]["max_code"] = 10_000
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(ManifestError, match="max_code 10000 lies outside"):
        load(tmp_path / "m")
    doc = yaml.safe_load(text)
    cat = next(n for n in doc["nodes"] if n["op"] == "concat")
    cat["inputs"], cat["input_shapes"] = cat["inputs"][:1], cat["input_shapes"][:1]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(ManifestError, match="inputs must list 2 or more node name"):
        load(tmp_path / "m")


def test_verilog_lints_clean_and_is_deterministic(exported, tmp_path):
    """The new engines pass ``verilator --lint-only -Wall`` with the project's waivers only."""
    name, _q, _x, d = exported
    assert_verilog_lints_clean(d / "manifest", tmp_path, name)


@pytest.mark.parametrize("shape", [(16, 5), (8, 5, 6)])
def test_batchnorm1d_training_statistics_are_torchs(shape):
    """In training the batch statistics (and running-statistics update) are BatchNorm1d's, over N (and L),
    of the quantized input."""
    X = "ap_fixed<12,4,AP_RND,AP_SAT>"
    q = qfx.nn.QBatchNorm1d(5, input=X, scale="ap_fixed<16,4,AP_RND>", shift="ap_fixed<16,4,AP_RND>", output=X)
    ref = nn.BatchNorm1d(5)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3)) * 2
    q.train(), ref.train()
    q(x)
    ref(qfx.quantize(x, qfx.parse_type(X)))
    assert torch.allclose(q.running_mean, ref.running_mean, rtol=0, atol=1e-6)
    assert torch.allclose(q.running_var, ref.running_var, rtol=0, atol=1e-6)


def test_negative_zero_padding_is_refused():
    with pytest.raises(ConversionError, match=r"layer '1' \(ZeroPad2d\): QZeroPad2d needs padding amounts >= 0"):
        qfx.convert(nn.Sequential(nn.Conv2d(2, 2, 1), nn.ZeroPad2d((1, -1, 0, 0))), CFG)
    with pytest.raises(ConversionError, match="ConstantPad2d"):
        qfx.convert(nn.Sequential(nn.Conv2d(2, 2, 1), nn.ConstantPad2d(1, 0.5)), CFG)
