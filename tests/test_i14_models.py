"""Issue 14 item 3 models not already covered by tests/test_i14_ops.py (which runs the BatchNorm1d MLP,
the ResNet-style CNN with global average pooling, the autoencoder MLP and the concatenation block four
ways): a 1-D CNN (Conv1d / MaxPool1d / AvgPool1d as height-1 2-D layers) and a depthwise-separable CNN
(groups=C conv + 1x1 conv).

Each: convert -> 4 QAT steps -> export -> integer reference == emulation on every layer -> ``qfx-gen``
(rtl, hls) -> ``verify`` (Verilator RTL and g++ C simulation vs the reference, and the emulation) with
0 mismatches. Expected values come from the reference and the emulation, never from the hardware.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qfx
from qfx.export import emulate, export
from qfx.manifest import load
from qfx.reference import run
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
    torch.manual_seed(0)
    q = qfx.convert(make(), CFG)
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    q.train()
    for _ in range(4):
        x = torch.randn(32, *shape, generator=g) * 1.5
        y = q(x)
        loss = F.mse_loss(y, torch.zeros_like(y) + torch.linspace(-1, 1, y.shape[-1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    q.eval()
    return q, torch.randn(40, *shape, generator=g) * 2.0


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
    assert MODELS[name][2] <= {n.op for n in man}
    ref, emu = run(man, x), emulate(q, x)
    for node in man:
        codes = qfx.to_codes(emu[node.name], node.output_format).numpy()
        bad = np.argwhere(ref[node.name] != codes)
        assert bad.size == 0, f"{name}: node {node.name} ({node.op}) differs first at {bad[0].tolist()}"
    assert len(np.unique(ref[man.output])) > 3


def test_rtl_and_hls_bit_exact(exported):
    from qfx.gen import generate
    from qfx.sim import verilator as qv
    from qfx.sim.check import verify

    name, q, x, d = exported
    try:
        qv.find_verilator()
    except qv.VerilatorNotFound:
        pytest.skip("no Verilator")
    generate(d / "manifest", d / "gen", board="ultra96", targets=("rtl", "hls"))
    rep = verify(d / "gen", vectors=60, model=q, seed=2)
    assert rep.ok, rep.table()
    names = [c.name for c in rep.checks]
    assert any(n.startswith("RTL") for n in names) and any(n.startswith("HLS") for n in names)
    assert all(c.mismatches == 0 for c in rep.checks)
    man = load(d / "manifest")
    fr = man.input_node.formats["output"].frac_bits
    xf = (rep.inputs * 2.0 ** -fr).reshape((len(rep.inputs),) + tuple(man.input_node.output_shape))
    assert np.array_equal(rep.rtl_outputs.reshape(len(xf), -1), run(man, xf)[man.output].reshape(len(xf), -1))
