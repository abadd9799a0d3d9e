"""Conv1d / MaxPool1d / AvgPool1d: convert -> export (height-1 2-D nodes) -> integer reference == emulation."""

import numpy as np
import pytest
import torch
from torch import nn

import qfx
from qfx.conversion import ConversionError
from qfx.export import emulate, export
from qfx.manifest import load
from qfx.reference import run
from tests.test_i14_ops import CFG


class CNN1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.p1 = nn.Conv1d(2, 4, 3, padding=1), nn.MaxPool1d(2)
        self.c2, self.p2, self.fc = nn.Conv1d(4, 4, 3), nn.AvgPool1d(3), nn.Linear(8, 3)

    def forward(self, x):
        y = self.p1(torch.relu(self.c1(x)))
        return self.fc(torch.flatten(self.p2(self.c2(y)), 1))


def test_cnn1d_reference_equals_emulation(tmp_path):
    torch.manual_seed(0)
    q = qfx.convert(CNN1d(), CFG)
    x = torch.randn(16, 2, 16) * 2
    q(x)  # calibrates the learned binary points
    export(q, x, tmp_path / "m")
    man = load(tmp_path / "m")
    assert {"conv2d", "maxpool2d", "avgpool2d", "flatten", "dense"} <= {n.op for n in man}
    assert man.node("c1").params["kernel"] == (1, 3) and man.input_node.output_shape == (2, 1, 16)
    ref, emu = run(man, x), emulate(q, x)
    for node in man:
        codes = qfx.to_codes(emu[node.name], node.output_format).numpy()
        assert np.array_equal(ref[node.name], codes), node.name
    assert len(np.unique(ref[man.output])) > 3


def test_bad_conv1d_args_are_named():
    with pytest.raises(ConversionError, match=r"layer '0' \(Conv1d\).*padding_mode 'reflect'.*zeros"):
        qfx.convert(nn.Sequential(nn.Conv1d(2, 2, 3, padding=1, padding_mode="reflect")), CFG)
