"""qfx.convert: torch.fx conversion of float models, config resolution, errors."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qfx
from qfx.conversion import ConversionError, convert, layer_names, load_config
from qfx.demo.models import build_model
from qfx.nn import QAdd, QAvgPool2d, QBatchNorm2d, QFlatten, QLeakyReLU, QLinear, QMaxPool2d, QReLU, QReLU6

# Wide formats: the converted model must compute (almost) what the float model computes.
WIDE = {
    "default": {
        "input": "ap_fixed<24,8,AP_RND,AP_SAT>",
        "weight": "ap_fixed<20,4,AP_RND,AP_SAT>",
        "bias": "ap_fixed<24,8,AP_RND,AP_SAT>",
        "output": "ap_fixed<24,8,AP_RND,AP_SAT>",
        "scale": "ap_fixed<24,8,AP_RND,AP_SAT>",
        "shift": "ap_fixed<24,8,AP_RND,AP_SAT>",
        "reciprocal": "ap_ufixed<20,0,AP_RND,AP_SAT>",
    }
}
TOL = 1e-3  # lsb of <24,8> is 2**-16; a few roundings per layer


class Residual(nn.Module):
    """Every supported spelling: modules, a + b, torch.add, .add, F.relu, torch.flatten, removed layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.act = nn.LeakyReLU(0.125)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.ident = nn.Identity()
        self.relu6 = nn.ReLU6()
        self.avg = nn.AvgPool2d(2)
        self.max = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        a = self.act(self.bn1(self.conv1(x)))
        b = self.bn2(self.conv2(a))
        y = F.relu(a + b)  # add, relu
        y = torch.add(y, self.ident(a))  # add_1
        y = self.relu6(y.add(a))  # add_2
        y = self.max(self.avg(self.drop(y)))
        return self.fc(torch.flatten(y, 1))


def _randomise_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model


def test_sequential_with_wide_formats_matches_float():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 10)).eval()
    q = convert(model, WIDE)
    assert isinstance(q, torch.fx.GraphModule)
    assert [type(m) for m in q.children()] == [QFlatten, QLinear, QReLU, QLinear]
    assert layer_names(model) == {"0": "Flatten", "1": "Linear", "2": "ReLU", "4": "Linear"}
    x = torch.rand(16, 1, 8, 8)
    assert torch.allclose(q(x).double(), model(x).double(), atol=TOL)
    # weights copied, the float model untouched
    assert torch.equal(q.get_submodule("1").weight, model[1].weight)
    assert q.get_submodule("1").weight is not model[1].weight
    assert isinstance(model[1], nn.Linear) and not isinstance(model[1], QLinear)


def test_residual_model_with_every_spelling_matches_float():
    torch.manual_seed(0)
    model = _randomise_bn(Residual()).eval()
    names = layer_names(model)
    assert names["add"] == names["add_1"] == names["add_2"] == "add"
    assert names["relu"] == "ReLU" and names["flatten"] == "Flatten"
    assert "drop" not in names and "ident" not in names
    q = convert(model, WIDE)
    kinds = {n: type(m) for n, m in q.named_children()}
    assert kinds["add"] is kinds["add_1"] is kinds["add_2"] is QAdd
    assert kinds["bn1"] is QBatchNorm2d and kinds["act"] is QLeakyReLU and kinds["relu6"] is QReLU6
    assert kinds["avg"] is QAvgPool2d and kinds["max"] is QMaxPool2d and kinds["relu"] is QReLU
    assert "drop" not in kinds and "ident" not in kinds
    x = torch.randn(8, 2, 8, 8)
    assert torch.allclose(q(x).double(), model(x).double(), atol=TOL)
    assert set(q.meta["qfx"]["layers"]) == set(names)


def test_demo_cnn_fold_bn_and_train_mode_gradients():
    model = _randomise_bn(build_model("digits_cnn", seed=0)).eval()
    x = torch.rand(8, 1, 8, 8)
    q = convert(model, {**WIDE, "fold_bn": True})
    assert not any(isinstance(m, QBatchNorm2d) for m in q.modules())
    assert q.meta["qfx"]["folded_batchnorms"] == {"bn1": "conv1", "block.bn1": "block.conv1", "block.bn2": "block.conv2"}
    assert q.get_submodule("conv1").bias is not None
    assert torch.allclose(q(x).double(), model(x).double(), atol=TOL)
    unfolded = convert(model, WIDE)
    assert torch.allclose(unfolded(x).double(), model(x).double(), atol=TOL)
    # train mode: gradients reach weights and learned binary points
    q = convert(model.train(), {"default": {**WIDE["default"], "learn_binary_point": True}})
    assert q.training
    q(x).sum().backward()
    assert q.get_submodule("block.conv2").weight.grad is not None
    assert q.get_submodule("add").quant["output"].frac_bits.grad is not None


def test_default_config_and_overrides_per_layer_and_kind(tmp_path):
    model = build_model("digits_cnn", seed=0).eval()
    cfg_text = """
default:
  input:  ap_fixed<8,3,AP_RND,AP_SAT>
  weight: ap_fixed<8,1,AP_RND_CONV,AP_SAT>
  bias:   ap_fixed<16,6>
  accum:  auto
  output: ap_fixed<8,3,AP_RND,AP_SAT>
types:
  ReLU: {output: "ap_ufixed<8,3,AP_RND,AP_SAT>"}
  BatchNorm2d: {scale: "ap_fixed<8,2>"}
layers:
  fc: {weight: "khot<2,ap_fixed<8,1>>", accum: "ap_fixed<24,8>"}
  block.relu2: {output: "ap_ufixed<6,2,AP_RND,AP_SAT>", input: "ap_fixed<10,4>"}
  add: {in_b: "ap_fixed<10,4>", output: "ap_fixed<9,4,AP_RND,AP_SAT>"}
  pool: {output: "ap_ufixed<5,2>"}
"""
    path = tmp_path / "q.yaml"
    path.write_text(cfg_text)
    q = convert(model, path)
    fmt = lambda layer, t: str(q.get_submodule(layer).effective_format(t))  # noqa: E731
    assert fmt("fc", "weight") == "khot<2,ap_fixed<8,1>>"
    assert fmt("fc", "accum") == "ap_fixed<24,8>"
    assert fmt("conv1", "weight") == "ap_fixed<8,1,AP_RND_CONV,AP_SAT>"
    assert fmt("relu1", "output") == "ap_ufixed<8,3,AP_RND,AP_SAT>"  # types
    assert "input" not in q.get_submodule("relu1").quant  # activations take their input as it comes
    assert fmt("block.relu2", "output") == "ap_ufixed<6,2,AP_RND,AP_SAT>"  # layers over types
    assert fmt("block.relu2", "input") == "ap_fixed<10,4>"  # an explicit input cast
    assert fmt("add", "in_a") == "ap_fixed<8,3,AP_RND,AP_SAT>" and fmt("add", "in_b") == "ap_fixed<10,4>"
    assert fmt("block.bn1", "scale") == "ap_fixed<8,2>"
    assert fmt("block.bn1", "shift") == "ap_fixed<16,6>"  # shift falls back to the bias format
    assert "input" not in q.get_submodule("block.conv1").quant or fmt("block.conv1", "input") == "ap_fixed<8,3,AP_RND,AP_SAT>"
    assert list(q.get_submodule("pool").quant) == ["output"]  # max pooling: no cast unless asked
    assert q.meta["qfx"]["layers"]["fc"]["config"]["weight"] == "khot<2,ap_fixed<8,1>>"
    # no config: the DESIGN.md defaults (binary points learnable)
    d = convert(build_model("digits_mlp", seed=0))
    assert d.get_submodule("fc1").quant["weight"].learnable
    # a whole run config (with a quant: section) is accepted too
    assert load_config({"model": "x", "quant": {"default": {"output": "ap_fixed<8,3>"}}})["default"] == {"output": "ap_fixed<8,3>"}


@pytest.mark.parametrize(
    "model, config, match",
    [
        (build_model("digits_cnn", seed=0), {"layers": {"block.conv3": {}}}, r"block\.conv3.*close: block\.conv2, block\.conv1"),
        (build_model("digits_cnn", seed=0), {"layers": {"add_1": {}}}, r"'add_1'.*close: add"),
        (build_model("digits_mlp", seed=0), {"types": {"Relu": {}}}, r"unknown layer kind 'Relu'.*ReLU"),
        (build_model("digits_mlp", seed=0), {"default": {"wieght": "ap_fixed<8,1>"}}, r"'wieght'.*did you mean 'weight'"),
        (build_model("digits_mlp", seed=0), {"defaults": {}}, r"'defaults'.*did you mean 'default'"),
        (build_model("digits_mlp", seed=0), {"default": {"input": "ap_fixed<8,3>", "weight": "ap_fixd<8,1>"}}, r"'default'.*weight"),
        (build_model("digits_mlp", seed=0), {"layers": {"fc2": {"output": "fp8_e4m3fn"}}}, r"'layers.fc2'.*output"),
        (build_model("digits_mlp", seed=0), {"default": {"input": "ap_fixed<8,3>", "weight": "ap_fixed<8,1>", "output": "ap_fixed<8,3>"}}, r"layer 'fc1' \(Linear\).*bias"),
        (build_model("digits_mlp", seed=0), {"fold_bn": "yes"}, "fold_bn"),
        (nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(0.1)), None, r"layer '1' \(LeakyReLU\).*power-of-two"),
    ],
)
def test_config_errors(model, config, match):
    with pytest.raises(ValueError, match=match):
        convert(model, config)


class _Unsupported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.gelu = nn.Softplus()  # (GELU and sigmoid are lookup tables now)

    def forward(self, x):
        return torch.erf(self.gelu(self.fc(x))) + 1.0


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.fc(x))


class _DataDependent(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


def test_unsupported_models_name_every_offender_and_list_what_is_supported():
    with pytest.raises(ConversionError) as info:
        convert(_Unsupported())
    text = str(info.value)
    assert "module 'gelu' (torch.nn.modules.activation.Softplus)" in text
    assert "torch.erf" in text and "node 'erf'" in text
    assert "constant" in text  # `+ 1.0`
    assert "supported:" in text and "nn.Conv2d" in text and "torch.add" in text
    with pytest.raises(ConversionError, match="called more than once"):
        convert(_Twice())
    with pytest.raises(ConversionError, match="could not trace"):
        convert(_DataDependent())
    with pytest.raises(ConversionError, match="already contains qfx layers"):
        convert(nn.Sequential(QLinear(4, 2, input="ap_fixed<8,3>", weight="ap_fixed<8,1>", bias=False, output="ap_fixed<8,3>")))
    with pytest.raises(TypeError, match="nn.Module"):
        convert(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        convert(build_model("digits_mlp"), "/nonexistent/config.yaml")


def test_named_sequential_and_qfx_namespace():
    model = nn.Sequential(OrderedDict(fc=nn.Linear(3, 2), act=nn.ReLU6()))
    q = qfx.convert(model, WIDE)
    assert isinstance(q.fc, QLinear) and isinstance(q.act, QReLU6)
    assert q.meta["qfx"]["layers"]["act"]["kind"] == "ReLU6"
