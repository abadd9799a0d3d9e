"""Formats and helpers shared by the tests that build small qfx models and export them
(the reference, HLS and interop tests)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from qfx.nn import (
    QAdd,
    QAvgPool2d,
    QBatchNorm2d,
    QConv2d,
    QFlatten,
    QLeakyReLU,
    QLinear,
    QMaxPool2d,
    QReLU,
    QReLU6,
    set_track_overflow,
)

X = "ap_fixed<8,3,AP_RND,AP_SAT>"
W = "ap_fixed<8,1,AP_RND_CONV,AP_SAT>"
B = "ap_fixed<12,4,AP_RND>"
Y = "ap_fixed<10,4,AP_RND_CONV,AP_SAT>"
U = "ap_ufixed<8,3,AP_RND,AP_SAT>"
NARROW = "ap_fixed<10,3,AP_RND_CONV,AP_SAT>"
NARROW_WRAP = "ap_fixed<9,2,AP_TRN,AP_WRAP>"
KHOT = "khot<2,ap_fixed<8,1>>"


def init_weights(model: nn.Module, seed: int) -> nn.Module:
    """Deterministic random weights, biases and BatchNorm statistics of a useful size."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (QLinear, QConv2d)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.45)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
            if isinstance(m, QBatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def accum_overflows(model: nn.Module, x: torch.Tensor) -> int:
    """How many accumulator casts of the model's dense/conv layers overflow on ``x``."""
    set_track_overflow(model, True)
    with torch.no_grad():
        model.eval()(x)
    n = sum(m.overflow_counts().get("accum", 0) for m in model.modules() if isinstance(m, (QLinear, QConv2d)))
    set_track_overflow(model, False)
    return n


def mlp(weight: str = W, accum: str = "auto") -> nn.Module:
    return nn.Sequential(
        QLinear(12, 10, input=X, weight=weight, bias=B, accum=accum, output=Y),
        QReLU(output=U),
        QLinear(10, 6, input=X, weight=weight, bias=B, accum=accum, output=Y),
        QLeakyReLU(0.25, input=Y, output="ap_fixed<8,3,AP_RND_INF,AP_WRAP_SM>"),
        QLinear(6, 4, bias=False, input=X, weight=weight, accum=accum, output=Y),
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        QConv2d(2, 4, 3, padding=1, input=X, weight=W, bias=B, output=Y),
        QBatchNorm2d(4, input=Y, scale="ap_fixed<10,2,AP_RND>", shift="ap_fixed<10,3,AP_RND_CONV>", output=Y),
        QReLU(input="ap_fixed<9,4,AP_RND>", output=U),
        QMaxPool2d(3, 2, 1),
        QConv2d(4, 4, (3, 2), padding=1, dilation=(1, 2), groups=2, input=X, weight=W, bias=B, accum=NARROW, output=Y),
        QAvgPool2d(3, 1, 1, input=X, output=Y, reciprocal="ap_ufixed<8,-3,AP_RND>"),
        QReLU6(input="ap_fixed<9,4,AP_RND>", output=U),
        QMaxPool2d(2, 1, ceil_mode=True, output="ap_fixed<6,2,AP_TRN,AP_SAT_SYM>"),
        QAvgPool2d(2, 1, input=X, output=Y),
        QFlatten(),
        QLinear(4 * 2 * 1, 5, input=X, weight=KHOT, bias=B, accum=NARROW_WRAP, output=Y),
    )


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        a = "ap_fixed<9,3,AP_RND,AP_SAT>"
        self.stem = QConv2d(2, 4, 3, padding=1, input=X, weight=W, bias=B, output=a)
        self.conv1 = QConv2d(4, 4, 3, padding=1, input=a, weight=W, bias=B, output=a, accum=NARROW)
        self.bn = QBatchNorm2d(4, input=a, scale="ap_fixed<10,2,AP_RND>", shift="ap_fixed<10,3>", output=a)
        self.act1 = QReLU(output=a)
        self.conv2 = QConv2d(4, 4, 1, bias=False, input=a, weight="fp8_e4m3fn", output=a)
        self.add = QAdd(in_a="ap_fixed<10,4,AP_RND>", in_b=a, output="ap_fixed<8,3,AP_RND_ZERO,AP_WRAP_SM>")
        self.act = QLeakyReLU(0.125, output="ap_fixed<8,3,AP_RND_MIN_INF,AP_SAT_ZERO>")
        self.pool = QAvgPool2d(2, input=X, output=Y)
        self.fc = QLinear(4 * 3 * 3, 3, input=X, weight=W, bias=B, output=Y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        y = self.conv2(self.act1(self.bn(self.conv1(s))))
        y = self.act(self.add(s, y))
        return self.fc(torch.flatten(self.pool(y), 1))


def per_channel(x: torch.Tensor) -> nn.Module:
    cfg = dict(input=X, weight=W, bias=B, output=Y, learn_binary_point=True, weight_per_channel=True)
    model = nn.Sequential(QConv2d(2, 3, 3, config=cfg), QReLU(output=U), QFlatten(),
                          QLinear(3 * 2 * 2, 4, config=cfg, accum=NARROW))
    init_weights(model, 7)
    with torch.no_grad():
        model[0].weight.mul_(torch.tensor([0.05, 1.0, 4.0])[:, None, None, None])
        model(x)  # calibrates every learnable binary point
    return model


def coarse() -> nn.Module:
    # strided conv onto lsb 4 (6 is off that grid before ReLU6), divisor_override (a reciprocal), a dense on
    # [C, H, W] (rows of the last axis), dilated max pool, an ap_int output
    return init_weights(nn.Sequential(
        QConv2d(1, 2, 3, stride=2, padding=1, input=X, weight=W, bias=B, output="ap_fixed<6,8,AP_RND,AP_SAT>"),
        QReLU6(output="ap_ufixed<6,4,AP_RND_CONV,AP_SAT>"),
        QAvgPool2d(2, 1, divisor_override=3, input=U, reciprocal="ap_ufixed<6,0,AP_RND_INF>", output=Y),
        QLinear(2, 3, input=X, weight=W, bias=B, output=Y),
        QMaxPool2d((2, 1), (1, 2), dilation=(2, 1), input="ap_fixed<7,3,AP_TRN_ZERO,AP_WRAP>"),
        QReLU(output="ap_int<4>"),
        QFlatten(),
    ), 15)


# The layer x format matrix of the hardware tests (HLS C simulation, RTL accelerator).
# id -> (model factory, input shape without batch, random scale, ops it must contain)
MODELS = {
    "mlp_auto": (lambda: init_weights(mlp(), 1), (12,), 2.0, {"dense", "relu", "leaky_relu"}),
    "mlp_narrow": (lambda: init_weights(mlp(accum=NARROW), 1), (12,), 2.0, {"dense"}),
    "cnn": (lambda: init_weights(cnn(), 3), (2, 7, 6), 2.0,
            {"conv2d", "batchnorm", "relu", "relu6", "maxpool2d", "avgpool2d", "flatten", "dense"}),
    "residual": (lambda: init_weights(Residual(), 5), (2, 6, 6), 3.0, {"conv2d", "add", "batchnorm", "flatten"}),
    "khot_mlp": (lambda: init_weights(mlp(KHOT, NARROW), 11), (12,), 2.0, {"dense"}),
    "per_channel": (per_channel, (2, 4, 4), 2.0, {"conv2d", "relu", "flatten", "dense"}),
    "coarse": (coarse, (1, 7, 5), 40.0, {"conv2d", "relu6", "avgpool2d", "dense", "maxpool2d", "relu", "flatten"}),
}

def lmul_mlp() -> nn.Module:
    return init_weights(nn.Sequential(
        QLinear(6, 5, input=X, weight="fp8_e4m3fn<saturate=true>", bias=B, output=Y, multiply="lmul"),
        QReLU(output=U),
        QLinear(5, 3, input=X, weight="fp6_e2m3fn", bias=B, output=Y, multiply="lmul", accum=NARROW),
    ), 21)


def lmul_formats() -> nn.Module:
    # One L-Mul dense per corner of the activation -> minifloat rounding: subnormals and saturation (e2m3
    # with bias 2: emin -1, largest 3.75; the first layer's X codes hit ties in every binade), an unsigned
    # input flushed to zero without subnormals, a coarse input grid (F < 0) onto M = 1, an input entirely
    # below the smallest normal (every activation subnormal), M = 0 with fn's top binade reserved, a
    # non-saturating IEEE format (the reference accepts it: no activation overflows) and a wide output.
    return init_weights(nn.Sequential(
        QLinear(12, 8, input=X, weight="e2m3<bias=2,inf_nan=none,saturate=true>", bias=B, output=Y, multiply="lmul"),
        QLinear(8, 8, input=U, weight="e3m2<subnormals=false,saturate=true>", bias=B, output=Y, multiply="lmul",
                accum=NARROW),
        QLinear(8, 6, input="ap_fixed<6,8,AP_RND,AP_SAT>", weight="fp4_e2m1fn", bias=B, output=Y,
                multiply="lmul", accum=NARROW_WRAP),
        QLinear(6, 6, input="ap_ufixed<4,0,AP_RND,AP_SAT>", weight="fp6_e2m3fn", bias=B, output=Y, multiply="lmul"),
        QLinear(6, 5, input=X, weight="e3m0<inf_nan=fn,saturate=true>", bias=False, output=Y, multiply="lmul"),
        QLinear(5, 4, input=X, weight="e4m3", bias=B, output="ap_fixed<16,6,AP_RND_CONV,AP_SAT>",
                multiply="lmul"),
    ), 23)


def lmul_cnn() -> nn.Module:
    return init_weights(nn.Sequential(
        QConv2d(2, 4, 3, padding=1, input=X, weight="e4m3", bias=B, output=Y, multiply="lmul"),
        QReLU(output=U),
        QConv2d(4, 4, (3, 2), padding=1, dilation=(1, 2), groups=2, input=U, weight="fp8_e4m3fn<saturate=true>",
                bias=B, accum=NARROW, output=Y, multiply="lmul"),
        QMaxPool2d(2, 2),
        QFlatten(),
        QLinear(4 * 3 * 2, 5, input=X, weight="fp6_e3m2fn", bias=B, output=Y, multiply="lmul"),
    ), 25)


# L-Mul layers (multiply: lmul) for the HLS C simulation (the RTL tests keep MODELS).
LMUL_MODELS = {
    "lmul_mlp": (lmul_mlp, (6,), 2.0, {"dense", "relu"}),
    "lmul_formats": (lmul_formats, (12,), 3.0, {"dense"}),
    "lmul_cnn": (lmul_cnn, (2, 6, 5), 2.0, {"conv2d", "relu", "maxpool2d", "flatten", "dense"}),
}


def khot_cnn() -> nn.Module:
    # K-hot weights on conv2d: two digits with a bias, then three digits, grouped and strided without bias
    return init_weights(nn.Sequential(
        QConv2d(2, 4, 3, padding=1, input=X, weight=KHOT, bias=B, accum=NARROW, output=Y),
        QReLU(output=U),
        QConv2d(4, 4, (2, 3), stride=(1, 2), groups=2, bias=False, input=X, weight="khot<3,ap_fixed<8,2>>",
                output=Y),
        QFlatten(),
        QLinear(4 * 5 * 2, 5, input=X, weight=W, bias=B, output=Y),
    ), 31)


def minifloat_mlp() -> nn.Module:
    # minifloat weights with exact products (multiply: exact): OCP fp8, an fp6 with subnormals, an e3m2
    # without subnormals and a narrow accumulator that rounds and overflows, an e3m0 (no mantissa bits)
    return init_weights(nn.Sequential(
        QLinear(12, 8, input=X, weight="fp8_e4m3fn", bias=B, output=Y),
        QReLU(output=U),
        QLinear(8, 6, input=X, weight="fp6_e2m3fn", bias=B, output=Y),
        QLeakyReLU(0.25, input=Y, output=X),
        QLinear(6, 6, input=X, weight="e3m2<subnormals=false,saturate=true>", bias=B, accum=NARROW, output=Y),
        QLinear(6, 4, input=X, weight="e3m0<inf_nan=fn,saturate=true>", bias=False, output=Y),
    ), 33)


# Format kinds the HLS C simulation covers beyond MODELS: K-hot weights on conv2d, minifloat weights with
# exact products on dense (the RTL tests keep MODELS).
FORMAT_MODELS = {
    "khot_cnn": (khot_cnn, (2, 6, 5), 2.0, {"conv2d", "relu", "flatten", "dense"}),
    "minifloat_mlp": (minifloat_mlp, (12,), 2.0, {"dense", "relu", "leaky_relu"}),
}
N_RANDOM = 64


def model_inputs(shape: tuple[int, ...], scale: float, seed: int) -> torch.Tensor:
    """64 random vectors (some saturate at the input) + corner vectors, as exact values of X's codes."""
    n = int(np.prod(shape))
    g = torch.Generator().manual_seed(seed)
    rnd = torch.randn(N_RANDOM, n, generator=g, dtype=torch.float64) * scale
    lo, hi = -128, 127  # codes of X = ap_fixed<8,3>
    ramp = torch.arange(n, dtype=torch.float64)
    corners = torch.stack([
        torch.zeros(n, dtype=torch.float64),
        torch.full((n,), float(hi)),
        torch.full((n,), float(lo)),
        torch.where(ramp % 2 == 0, float(hi), float(lo)),
        torch.where(ramp % 2 == 0, float(lo), float(hi)),
        torch.remainder(ramp * 37, 256) - 128,
        torch.full((n,), 1.0),
        torch.full((n,), -1.0),
    ]) * 2.0**-5
    return torch.cat([rnd, corners]).reshape(-1, *shape).float().double()


def code_sweep(shape: tuple[int, ...], rows: int = 64) -> torch.Tensor:
    """Every code of X at every position (256 codes, ``rows`` of them per position, shifted by row)."""
    n = int(np.prod(shape))
    r = torch.arange(rows, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    out = []
    for start in range(0, 256, rows):
        out.append(torch.remainder(start + r + 5 * i, 256) - 128)
    return (torch.cat(out) * 2.0**-5).reshape(-1, *shape)


def calibrated_digits_export(config: str, out, n: int = 300):
    """A demo model (``configs/<config>``: model and quant sections) converted, its learned binary
    points calibrated on the first 256 of ``n`` digit images, exported to ``out`` (8 example inputs).
    Returns ``(x, model)``: the ``n`` images as ``[n, 1, 8, 8]`` and the eval-mode qfx model."""
    from sklearn.datasets import load_digits

    from qfx.cli import load_run_config
    from qfx.conversion import convert
    from qfx.demo.models import build_model
    from qfx.export import export

    cfg = load_run_config(f"configs/{config}")
    torch.manual_seed(0)
    model = convert(build_model(cfg["model"], seed=0), cfg["quant"])
    x = torch.tensor(load_digits().images[:n] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    with torch.no_grad():
        model.train()(x[:256])  # calibrates the learned binary points
    model.eval()
    export(model, x[:8], out)
    return x, model
