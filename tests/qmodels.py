"""Formats and helpers shared by the tests that build small qfx models and export them
(the reference, HLS and interop tests)."""

from __future__ import annotations

import torch
from torch import nn

from qfx.nn import QBatchNorm2d, QConv2d, QLinear, set_track_overflow

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
