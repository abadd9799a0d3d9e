"""The issue-14 transformer-encoder target: one encoder layer (d=32, 2 heads, sequence 16) on the
digits, through convert -> QAT -> export -> reference == emulation -> qfx-gen (rtl, hls) -> verify,
and within 2 points of its float model's test accuracy.

The model is ``qfx.demo.models.digits_encoder`` with an ``nn.MultiheadAttention``, converted as
the qfx attention block (``qfx.attention``); its formats are ``configs/digits_encoder_w8.yaml``'s.
Expected values come from the reference and the emulation, never from the hardware.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

import qfx
from qfx import train as qtrain
from qfx.data import digits_splits
from qfx.demo.models import digits_encoder
from qfx.export import export
from qfx.manifest import load
from qfx.reference import run
from tests.fourway import assert_reference_equals_emulation, assert_rtl_and_hls_bit_exact

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits_encoder_w8.yaml"
OPS = {"reshape", "dense", "permute", "matmul", "softmax", "add", "layernorm", "relu", "flatten"}


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Float training (30 epochs, Adam), conversion with the config's formats, calibration and
    3 QAT epochs; the frozen qfx model exported with 64 test images."""
    cfg = yaml.safe_load(CONFIG.read_text())
    torch.manual_seed(0)
    s = digits_splits(0, image=False)
    xt, yt = s.train.tensors
    xs, ys = s.test.tensors
    fmodel = digits_encoder()
    opt = torch.optim.Adam(fmodel.parameters(), lr=cfg["train"]["float_lr"])
    g = torch.Generator().manual_seed(0)
    for _ in range(cfg["train"]["float_epochs"]):
        fmodel.train()
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            b = perm[i:i + 64]
            loss = F.cross_entropy(fmodel(xt[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    fmodel.eval()
    q = qfx.convert(fmodel, cfg["quant"])
    loader = torch.utils.data.DataLoader(s.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(1))
    val = torch.utils.data.DataLoader(s.val, batch_size=512)
    qtrain.calibrate(q, loader, batches=8)
    qtrain.fit(q, loader, val, epochs=cfg["train"]["epochs"], lr=cfg["train"]["lr"], seed=0, frac_lr=cfg["train"]["frac_lr"], progress=False)
    qfx.nn.freeze(q)
    q.eval()
    d = tmp_path_factory.mktemp("encoder")
    export(q, xs[:64], d / "manifest")
    return fmodel, q, (xs, ys), d


def test_encoder_converts_to_the_attention_pieces(trained):
    _f, q, _data, d = trained
    man = load(d / "manifest")
    assert OPS <= {n.op for n in man}
    assert sum(n.op == "matmul" for n in man) == 4 and sum(n.op == "softmax" for n in man) == 2
    score = next(n for n in man if n.op == "matmul")
    assert tuple(score.output_shape) == (16, 16)  # [T, T] attention scores per image
    assert sum(n.op == "layernorm" for n in man) == 2


def test_encoder_within_two_points_of_float(trained):
    fmodel, q, (xs, ys), d = trained
    f_acc, q_acc = _accuracy(fmodel, xs, ys), _accuracy(q, xs, ys)
    assert f_acc > 0.9, f_acc
    assert q_acc >= f_acc - 0.02, (f_acc, q_acc)
    # the integer reference classifies as the qfx model does (its argmax on the exported codes)
    man = load(d / "manifest")
    codes = np.asarray(run(man, xs[:64])[man.output]).reshape(64, -1)
    with torch.no_grad():
        want = q(xs[:64]).argmax(1).numpy()
    assert np.array_equal(codes.argmax(1), want)


def test_encoder_reference_equals_emulation(trained):
    _f, q, (xs, _ys), d = trained
    assert_reference_equals_emulation("encoder", q, xs[:64], load(d / "manifest"), OPS)


def test_encoder_rtl_and_hls_bit_exact(trained):
    _f, q, _data, d = trained
    assert_rtl_and_hls_bit_exact(q, d, vectors=12)
