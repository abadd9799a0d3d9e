"""qfx.nn: gradients, learnable binary points (calibration, freeze, state_dict), config and errors."""

from __future__ import annotations

import math

import pytest
import torch

import qfx
from qfx.nn import LayerConfig, QAdd, QAvgPool2d, QBatchNorm2d, QConv2d, QLeakyReLU, QLinear, QReLU, TensorQuantizer
from qfx.types import FixedType


CFG = {
    "input": "ap_fixed<8,3,AP_RND,AP_SAT>",
    "weight": "ap_fixed<8,1,AP_RND_CONV,AP_SAT>",
    "bias": "ap_fixed<16,6>",
    "accum": "auto",
    "output": "ap_fixed<8,3,AP_RND,AP_SAT>",
    "learn_binary_point": True,
}


def _model(per_channel: bool = False, accum: str = "auto") -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = dict(CFG, weight_per_channel=per_channel, accum=accum)
    return torch.nn.Sequential(
        QConv2d(2, 3, 3, padding=1, config=cfg),
        QReLU(config=cfg, output="ap_ufixed<8,3,AP_RND,AP_SAT>"),
        qfx.nn.QFlatten(),
        QLinear(3 * 4 * 4, 5, config=cfg),
    )


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("per_channel, accum", [(False, "auto"), (True, "auto"), (False, "ap_fixed<12,4,AP_RND,AP_SAT>")])
def test_gradients_reach_weights_inputs_and_binary_points(per_channel, accum):
    model = _model(per_channel, accum)
    x = (torch.randn(4, 2, 4, 4) * 2).requires_grad_()
    model(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name.endswith("frac_bits") and name.startswith(("0.", "3.")) and name != "3.quant.input.frac_bits":
            # (the ReLU and the linear input re-cast values already on their grid: no rounding
            # error and no saturation, so no gradient)
            assert p.grad.abs().sum() > 0, name
    conv_w = model[0].quant["weight"].frac_bits
    assert conv_w.shape == ((3, 1, 1, 1) if per_channel else ())


def test_straight_through_gradient_is_zero_where_the_input_saturates():
    layer = QLinear(3, 1, bias=False, input="ap_fixed<6,2,AP_RND,AP_SAT>", weight="ap_fixed<8,1,AP_RND>", output="ap_fixed<12,5,AP_RND,AP_SAT>")
    with torch.no_grad():
        layer.weight.fill_(0.5)
    x = torch.tensor([[0.3, 5.0, -7.0]], requires_grad=True)  # range of <6,2> is [-2, 1.9375]
    layer(x).sum().backward()
    assert x.grad.tolist() == [[0.5, 0.0, 0.0]]


def test_lmul_and_khot_layers_train():
    for weight, mult in (("fp8_e4m3fn", "lmul"), ("khot<2,ap_fixed<8,1>>", "exact")):
        layer = QLinear(6, 2, config=CFG, weight=weight, multiply=mult)
        assert "weight" in layer.quant and not layer.quant["weight"].learnable  # no binary point to learn
        x = torch.randn(3, 6)
        layer(x).sum().backward()
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_a_few_training_steps_change_the_binary_points_and_stay_exact():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, target = torch.randn(8, 2, 4, 4), torch.randn(8, 5)
    model(x)  # calibrate
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("frac_bits")}
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), target).backward()
        opt.step()
    after = {n: p.detach() for n, p in model.named_parameters() if n.endswith("frac_bits")}
    assert any(not torch.equal(before[n], after[n]) for n in before)
    y = model(x)
    out_fmt = model[3].effective_format("output")
    assert torch.equal(qfx.quantize(y.double(), out_fmt), y.double())  # outputs on the output grid


# ---------------------------------------------------------------------------
# Calibration, freeze, state_dict
# ---------------------------------------------------------------------------


def test_calibration_picks_the_finest_binary_point_that_holds_the_max():
    q = TensorQuantizer(qfx.parse_type("ap_fixed<8,3,AP_RND,AP_SAT>"), learnable=True, frac_shape=(3, 1))
    w = torch.tensor([[0.3, -0.1], [5.0, 2.0], [-1.0, 0.25]])
    q(w)
    assert bool(q.calibrated)
    fmts = q.effective_format()
    for row, t in zip(w.abs().amax(dim=1).tolist(), fmts):
        assert row <= t.max  # fits
        assert row > t.with_int_bits(t.int_bits - 1).max  # one more fractional bit would not
    assert [t.int_bits for t in fmts] == [0, 4, 2]  # 1.0 needs a second integer bit
    q.reset_calibration()
    assert not bool(q.calibrated)


@pytest.mark.parametrize("per_channel", [False, True])
def test_freeze_gives_identical_outputs_and_concrete_formats(per_channel):
    model = _model(per_channel)
    x = torch.randn(6, 2, 4, 4) * 2
    with torch.no_grad():
        model(x)  # calibrate
        for n, p in model.named_parameters():
            if n.endswith("frac_bits"):
                p.add_(0.4)  # off-integer values: freeze must round exactly as the forward does
    model.eval()
    before = model(x)
    conv_fmts = model[0].formats()
    qfx.nn.freeze(model)
    after = model(x)
    assert torch.equal(before, after)
    assert all(not q.learnable for m in model if isinstance(m, qfx.nn.QuantizedModule) for q in m.quant.values())
    assert model[0].formats() == conv_fmts
    fmt = model[3].effective_format("output")
    assert isinstance(fmt, FixedType) and model[3].quant["output"].fmt == fmt
    w = model[0].effective_format("weight")
    assert isinstance(w, tuple) if per_channel else isinstance(w, FixedType)
    assert isinstance(model[0].effective_format("accum"), FixedType)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "frac" in n)


def test_state_dict_round_trips_calibration_and_frozen_state():
    model = _model(True)
    x = torch.randn(4, 2, 4, 4) * 2
    model(x)
    model.eval()
    want = model(x)
    fresh = _model(True)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    assert bool(fresh[0].quant["input"].calibrated)
    assert torch.equal(fresh(x), want)
    qfx.nn.freeze(model)
    again = _model(True)
    again.load_state_dict(model.state_dict())  # frozen buffers load into learnable parameters
    again.eval()
    assert torch.equal(again(x), want)


def test_accum_auto_follows_learned_formats():
    layer = QLinear(4, 2, config=CFG)
    assert str(layer.effective_format("accum")) == "ap_fixed<19,7>"  # <16,4> x 4 -> <18,6>; + <16,6> bias
    with torch.no_grad():
        layer.quant["input"].calibrated.fill_(True)
        layer.quant["input"].frac_bits.sub_(3)  # input <8,6>: products <16,7>
    assert str(layer.product_format()) == "ap_fixed<16,7>"
    assert str(layer.effective_format("accum")) == "ap_fixed<20,10>"  # <18,9> + <16,6>


# ---------------------------------------------------------------------------
# Config and errors
# ---------------------------------------------------------------------------


def test_config_round_trip_and_overrides():
    cfg = LayerConfig.from_dict(CFG)
    assert LayerConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.accum_is_auto and cfg.learns("weight") and not cfg.learns("accum")
    layer = QLinear(3, 2, config=cfg, weight="khot<2,ap_fixed<8,1>>")
    assert isinstance(layer.effective_format("weight"), qfx.KHot)
    assert not cfg.updated(learn_binary_point=["output"]).learns("input")


@pytest.mark.parametrize(
    "build, exc, match",
    [
        (lambda: QLinear(3, 2, config=dict(CFG, weight="fp8_e4m3fn", accum="fp8_e4m3fn")), ValueError, "accum"),
        (lambda: QLinear(3, 2, config=dict(CFG, accum="khot<2,ap_fixed<8,1>>")), ValueError, "accum"),
        (lambda: QLinear(3, 2, config=dict(CFG, weight="ap_fixd<8,1>")), ValueError, "weight"),
        (lambda: QLinear(3, 2, config=dict(CFG, output="fp8_e5m2")), ValueError, "output"),
        (lambda: QLinear(3, 2, config=dict(CFG, wieght="ap_fixed<8,1>")), ValueError, "unknown layer config keys"),
        (lambda: QLinear(3, 2, config=dict(CFG, multiply="lmul")), ValueError, "minifloat"),
        (lambda: QLinear(3, 2, config=dict(CFG, multiply="log")), ValueError, "multiply"),
        (lambda: QLinear(3, 2, config=dict(CFG, input=None)), ValueError, "input"),
        (lambda: QLinear(3, 2, config=dict(CFG, bias=None)), ValueError, "bias"),
        (lambda: QLinear(3, 2, config=dict(CFG, weight=8)), TypeError, "weight"),
        (lambda: QLinear(3, 2, config=dict(CFG, weight="khot<2,ap_fixed<8,1>>", learn_binary_point=["weight"])), ValueError, "not fixed point"),
        (lambda: QLinear(3, 2, config=dict(CFG, learn_binary_point=["accum"])), ValueError, "learnable"),
        (lambda: QLinear(0, 2, config=CFG), ValueError, "in_features"),
        (lambda: QConv2d(2, 2, 3, padding_mode="reflect", config=CFG), ValueError, "zeros"),
        (lambda: QConv2d(2, 2, 2, padding="same", config=CFG), ValueError, "asymmetric"),
        (lambda: QLeakyReLU(0.1, config=CFG), ValueError, "power-of-two"),
        (lambda: QReLU(input="ap_fixed<8,3>"), ValueError, "output"),
        (lambda: QAvgPool2d(3, config=CFG), ValueError, "reciprocal"),
        (lambda: QAvgPool2d(2, ceil_mode=True, config=CFG), ValueError, "ceil_mode"),
        (lambda: QBatchNorm2d(3, config=CFG), ValueError, "scale"),
        (lambda: QAdd(output="ap_fixed<8,3>"), ValueError, "in_a"),
        (lambda: QLinear(3, 2, config="ap_fixed<8,3>"), TypeError, "mapping"),
    ],
)
def test_bad_configs_raise_clear_errors(build, exc, match):
    with pytest.raises(exc, match=match):
        build()


def test_bad_inputs_raise_clear_errors():
    lin = QLinear(3, 2, config=CFG)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        lin(torch.randn(4, 5))
    with pytest.raises(TypeError, match="floating-point"):
        lin(torch.ones(4, 3, dtype=torch.int64))
    conv = QConv2d(2, 3, 3, config=CFG)
    with pytest.raises(ValueError, match=r"\[N, 2, H, W\]"):
        conv(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        conv(torch.randn(1, 2, 2, 2))
    assert conv(torch.randn(2, 5, 5)).shape == (3, 3, 3)  # unbatched works as in torch
    add = QAdd(input="ap_fixed<8,3>", output="ap_fixed<8,3>")
    with pytest.raises(ValueError, match="same shape"):
        add(torch.randn(2, 3), torch.randn(3, 2))
    bn = QBatchNorm2d(3, config=CFG, scale="ap_fixed<8,2>", shift="ap_fixed<8,2>")
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        bn(torch.randn(2, 4, 3, 3))
    mf = QLinear(3, 2, config=dict(CFG, weight="fp8_e4m3fn", learn_binary_point=False))
    with torch.no_grad():
        mf.weight.fill_(1000.0)  # beyond e4m3fn's 448: NaN in a non-saturating format
    with pytest.raises(ValueError, match="saturate"):
        mf(torch.randn(1, 3))


def test_output_dtype_follows_input_where_exact():
    lin = QLinear(3, 2, config=CFG)
    assert lin(torch.randn(2, 3)).dtype == torch.float32
    assert lin(torch.randn(2, 3, dtype=torch.float64)).dtype == torch.float64
    wide = QLinear(3, 2, config=dict(CFG, output="ap_fixed<30,10>", learn_binary_point=False))
    assert wide(torch.randn(2, 3)).dtype == torch.float64  # float32 cannot hold 30-bit values


def test_from_float_copies_weights():
    f = torch.nn.Linear(4, 3)
    q = QLinear.from_float(f, CFG)
    assert torch.equal(q.weight, f.weight) and torch.equal(q.bias, f.bias)
    c = torch.nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2)
    qc = QConv2d.from_float(c, CFG)
    assert qc.groups == 2 and qc.stride == (2, 2) and torch.equal(qc.weight, c.weight)
    bn = torch.nn.BatchNorm2d(3)
    bn.running_mean.fill_(0.5)
    qb = QBatchNorm2d.from_float(bn, CFG, scale="ap_fixed<8,2>", shift="ap_fixed<8,2>")
    assert torch.equal(qb.running_mean, bn.running_mean)
    assert math.isclose(qb.eps, bn.eps)
