"""Issue 14 item 3 models not already covered by tests/test_i14_ops.py (which runs the BatchNorm1d MLP,
the ResNet-style CNN with global average pooling, the autoencoder MLP and the concatenation block four
ways): a 1-D CNN (Conv1d / MaxPool1d / AvgPool1d as height-1 2-D layers) and a depthwise-separable CNN
(groups=C conv + 1x1 conv).

Each: convert -> 4 QAT steps -> export -> integer reference == emulation on every layer -> ``qfx-gen``
(rtl, hls) -> ``verify`` (Verilator RTL and g++ C simulation vs the reference, and the emulation) with
0 mismatches. Expected values come from the reference and the emulation, never from the hardware.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qfx.export import export
from qfx.manifest import load
from tests.fourway import assert_reference_equals_emulation, assert_rtl_and_hls_bit_exact, short_qat
from tests.test_i14_conv1d import CNN1d
from tests.test_i14_ops import CFG


class DepthwiseSeparable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(3, 3, 3, padding=1, groups=3)
        self.pw = nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        y = torch.relu(self.pw(torch.relu(self.dw(x))))
        return self.fc(torch.flatten(y, 1))


MODELS = {
    "cnn1d": (CNN1d, (2, 16), {"conv2d", "maxpool2d", "avgpool2d", "flatten", "dense"}),
    "depthwise_separable": (DepthwiseSeparable, (3, 4, 4), {"conv2d", "flatten", "dense"}),
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
    assert_reference_equals_emulation(name, q, x, load(d / "manifest"), MODELS[name][2])


def test_rtl_and_hls_bit_exact(exported):
    _name, q, _x, d = exported
    assert_rtl_and_hls_bit_exact(q, d)
