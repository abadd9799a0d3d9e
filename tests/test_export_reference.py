"""Export -> manifest -> integer reference, against the PyTorch emulation, bit for bit.

* ``cast_codes`` (the reference's integer ap_fixed cast) against ``qfx.to_codes``
  (itself proven against the Xilinx headers) on exact values, every mode.
* Random small models (MLP, CNN, residual block; fixed, K-hot, minifloat and
  L-Mul weights; auto and narrow accumulators): every node's reference codes
  equal the emulation's codes, 0 mismatches.
* Round trip, determinism, and the errors (each clear, nothing partial left).
"""

from __future__ import annotations

import itertools
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import qfx
from qfx import _fixed
from qfx.export import ExportError, emulate, export, write_npz
from qfx.manifest import ManifestError, is_valid_name, load, sanitize_name
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
)
from qfx.reference import cast_codes, run, to_real, values
from qfx.types import FixedType, Overflow, Rounding
from tests.qmodels import B, NARROW, NARROW_WRAP, U, W, X, Y, accum_overflows, init_weights



# ---------------------------------------------------------------------------
# cast_codes vs qfx.to_codes
# ---------------------------------------------------------------------------


def _to_codes_exact(value: float, t: FixedType) -> int:
    x = torch.tensor([value], dtype=torch.float64)
    if not t.signed and t.width == 64:  # to_codes refuses codes >= 2**63: read the bit pattern
        c = int(_fixed.codes_fixed(x, t, t.frac_bits, bit_pattern=True)[0])
        return c + (1 << 64) if c < 0 else c
    return int(qfx.to_codes(x, t)[0])


@st.composite
def _fixed_types(draw) -> FixedType:
    width = draw(st.integers(1, 64))
    signed = draw(st.booleans())
    int_bits = draw(st.integers(-8, 72))
    rounding = draw(st.sampled_from(list(Rounding)))
    modes = [o for o in Overflow if signed or o is not Overflow.AP_WRAP_SM]
    return FixedType(width, int_bits, signed, rounding, draw(st.sampled_from(modes)))


@settings(max_examples=500, deadline=None)
@given(
    t=_fixed_types(),
    mantissa=st.integers(-(2**53) + 1, 2**53 - 1),
    scale=st.integers(0, 24),
    src_frac=st.integers(-16, 80),
)
def test_cast_codes_matches_to_codes(t, mantissa, scale, src_frac):
    code = mantissa << scale  # at most 53 significant bits: its value is exact in float64
    value = float(mantissa) * 2.0 ** (scale - src_frac)
    want = _to_codes_exact(value, t)
    got = cast_codes(np.array([code], dtype=object), src_frac, t)
    assert int(got[0]) == want, (str(t), code, src_frac)
    if -(2**63) <= code < 2**63:  # the int64 path too
        assert int(cast_codes(np.array([code], dtype=np.int64), src_frac, t)[0]) == want


@pytest.mark.parametrize("signed, width, int_bits, src_frac", [(True, 6, 2, 7), (False, 5, 1, 7), (True, 4, 6, 0)])
def test_cast_codes_all_modes_exhaustive(signed, width, int_bits, src_frac):
    codes = np.arange(-(2**11), 2**11, dtype=np.int64)
    xs = torch.from_numpy(codes.astype(np.float64) * 2.0**-src_frac)
    for rounding, overflow in itertools.product(Rounding, Overflow):
        if overflow is Overflow.AP_WRAP_SM and not signed:
            continue
        t = FixedType(width, int_bits, signed, rounding, overflow)
        want = qfx.to_codes(xs, t).numpy()
        got = cast_codes(codes, src_frac, t)
        assert got.dtype == np.int64
        bad = np.flatnonzero(got != want)
        assert bad.size == 0, f"{t}: code {codes[bad[0]]} -> {got[bad[0]]}, to_codes gives {want[bad[0]]}"
        assert np.array_equal(cast_codes(codes.astype(object), src_frac, t), want)


def test_cast_codes_wrap_sm_uses_the_truncated_bit():
    # ap_fixed<4,4,AP_RND,AP_WRAP_SM>: 19.0 -> -4, -19.0 -> 2 (UG1399); 7.5 rounds up to 8 -> carry case
    t = qfx.parse_type("ap_fixed<4,4,AP_RND,AP_WRAP_SM>")
    assert cast_codes(np.array([19 * 2, -19 * 2, 15]), 1, t).tolist() == [
        _to_codes_exact(v, t) for v in (19.0, -19.0, 7.5)
    ]


def test_cast_codes_rejects_floats():
    with pytest.raises(TypeError, match="integer codes"):
        cast_codes(np.array([0.5]), 0, "ap_fixed<8,3>")


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


def mlp(weight: str, multiply: str, accum: str) -> nn.Module:
    return nn.Sequential(
        QLinear(12, 10, input=X, weight=weight, bias=B, accum=accum, output=Y, multiply=multiply),
        QReLU(output=U),
        QLinear(10, 6, input=X, weight=weight, bias=B, accum=accum, output=Y, multiply=multiply),
        QLeakyReLU(0.25, input=Y, output="ap_fixed<8,3,AP_RND_INF,AP_WRAP_SM>"),
        QLinear(6, 4, bias=False, input=X, weight=weight, accum=accum, output=Y, multiply=multiply),
    )


def cnn(weight: str = W, multiply: str = "exact", accum: str = NARROW) -> nn.Module:
    return nn.Sequential(
        QConv2d(2, 4, 3, padding=1, input=X, weight=W, bias=B, output=Y),
        QBatchNorm2d(4, input=Y, scale="ap_fixed<10,2,AP_RND>", shift="ap_fixed<10,3,AP_RND_CONV>", output=Y),
        QReLU6(input="ap_fixed<9,4,AP_RND>", output=U),
        QMaxPool2d(3, 2, 1),
        QConv2d(4, 4, (3, 2), padding=1, dilation=(1, 2), groups=2, input=X, weight=weight, bias=B, accum=accum,
                output=Y, multiply=multiply),
        QAvgPool2d(3, 1, 1, input=X, output=Y, reciprocal="ap_ufixed<8,-3,AP_RND>"),
        QMaxPool2d(2, 1, ceil_mode=True, output="ap_fixed<6,2,AP_TRN,AP_SAT_SYM>"),
        QAvgPool2d(2, 1, input=X, output=Y),
        QFlatten(),
        QLinear(4 * 2 * 1, 5, input=X, weight="khot<2,ap_fixed<8,1>>", bias=B, accum=NARROW_WRAP, output=Y),
    )


class Residual(nn.Module):
    def __init__(self, accum: str = "auto") -> None:
        super().__init__()
        a = "ap_fixed<9,3,AP_RND,AP_SAT>"
        self.stem = QConv2d(2, 4, 3, padding=1, input=X, weight=W, bias=B, output=a)
        self.body = nn.ModuleDict(
            {
                "conv1": QConv2d(4, 4, 3, padding=1, input=a, weight=W, bias=B, output=a, accum=accum),
                "bn": QBatchNorm2d(4, input=a, scale="ap_fixed<10,2,AP_RND>", shift="ap_fixed<10,3>", output=a),
                "act": QReLU(output=a),
                "conv2": QConv2d(4, 4, 1, bias=False, input=a, weight="fp8_e4m3fn", output=a, accum=accum),
            }
        )
        self.add = QAdd(in_a="ap_fixed<10,4,AP_RND>", in_b=a, output="ap_fixed<8,3,AP_RND_ZERO,AP_WRAP_SM>")
        self.act = QLeakyReLU(0.125, output="ap_fixed<8,3,AP_RND_MIN_INF,AP_SAT_ZERO>")
        self.drop = nn.Dropout(0.1)
        self.pool = QAvgPool2d(2, input=X, output=Y)
        self.fc = QLinear(4 * 3 * 3, 3, input=X, weight=W, bias=B, output=Y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        y = self.body["conv1"](s)
        y = self.body["conv2"](self.body["act"](self.body["bn"](y)))
        y = self.drop(self.act(self.add(s, y)))
        return self.fc(torch.flatten(self.pool(y), 1))


class ViewNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = QConv2d(1, 2, 2, input=X, weight=W, bias=False, output=Y)
        self.fc = QLinear(2 * 3 * 3, 2, input=X, weight=W, bias=B, output=Y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(x.size(0), -1))


def _data(seed: int, *shape: int, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def assert_bit_exact(model: nn.Module, x: torch.Tensor, out_dir: Path, **run_kw) -> dict:
    export(model, x, out_dir)
    man = load(out_dir)
    ref = run(man, x, **run_kw)
    emu = emulate(model, x)
    assert list(ref) == list(emu) == man.names
    with torch.no_grad():
        want_y = model.eval()(x)
    assert torch.equal(emu[man.output].double(), want_y.double())  # emulate is the model
    for node in man:
        fmt = node.output_format
        v = emu[node.name]
        codes = qfx.to_codes(v, fmt).numpy()
        assert torch.equal(qfx.from_codes(torch.from_numpy(codes), fmt), v.double()), f"{node.name}: not values of {fmt}"
        got = ref[node.name]
        assert got.shape == codes.shape, node.name
        bad = np.argwhere(got != codes)
        assert bad.size == 0, (
            f"node {node.name} ({node.op}): {len(bad)} mismatches, first at {bad[0].tolist()}: reference "
            f"{got[tuple(bad[0])]}, emulation {codes[tuple(bad[0])]}, formats {node.formats}"
        )
    return {"manifest": man, "ref": ref}


WEIGHTS = [
    pytest.param(W, "exact", id="fixed"),
    pytest.param("khot<2,ap_fixed<8,1>>", "exact", id="khot"),
    pytest.param("fp8_e4m3fn", "exact", id="minifloat"),
    pytest.param("fp6_e3m2fn", "lmul", id="lmul-e3m2"),
    pytest.param("fp8_e4m3fn<saturate=true>", "lmul", id="lmul-e4m3-sat"),
]


@pytest.mark.parametrize("weight, multiply", WEIGHTS)
@pytest.mark.parametrize("accum", ["auto", NARROW])
def test_mlp_bit_exact(tmp_path, weight, multiply, accum):
    model = init_weights(mlp(weight, multiply, accum), 1)
    x = _data(2, 7, 12)
    assert_bit_exact(model, x, tmp_path / "m")
    if accum != "auto":
        assert accum_overflows(model, x) > 0  # the narrow accumulator really overflows (and rounds)


@pytest.mark.parametrize(
    "weight, multiply, accum",
    [(W, "exact", "auto"), ("khot<3,ap_fixed<8,1>>", "exact", NARROW), ("fp4_e2m1fn", "lmul", NARROW_WRAP), ("e3m3", "exact", "auto")],
)
def test_cnn_bit_exact(tmp_path, weight, multiply, accum):
    model = init_weights(cnn(weight, multiply, accum), 3)
    x = _data(4, 3, 2, 7, 6)
    r = assert_bit_exact(model, x, tmp_path / "m")
    ops = [n.op for n in r["manifest"]]
    assert {"conv2d", "batchnorm", "relu6", "maxpool2d", "avgpool2d", "flatten", "dense"} <= set(ops)
    if accum != "auto":
        assert accum_overflows(model, x) > 0


@pytest.mark.parametrize("accum", ["auto", NARROW])
def test_residual_block_bit_exact(tmp_path, accum):
    model = init_weights(Residual(accum), 5)
    x = _data(6, 4, 2, 6, 6, scale=3.0)
    r = assert_bit_exact(model, x, tmp_path / "m")
    man = r["manifest"]
    add = next(n for n in man if n.op == "add")
    assert add.inputs == ("stem", "body_conv2") and add.source == "add"
    assert man.node("body_conv1").source == "body.conv1"
    assert "drop" not in man.names  # dropout is the identity in eval mode
    assert [n.op for n in man][-3:] == ["flatten", "dense", "output"]


def test_coarse_grids_strides_and_dense_on_feature_maps(tmp_path):
    # lsb 4 before ReLU6 (6 is off that grid), strided conv, divisor_override, a dense on [C, H, W]
    model = nn.Sequential(
        QConv2d(1, 2, 3, stride=2, padding=1, input=X, weight=W, bias=B, output="ap_fixed<6,8,AP_RND,AP_SAT>"),
        QReLU6(output="ap_ufixed<6,4,AP_RND_CONV,AP_SAT>"),
        QAvgPool2d(2, 1, divisor_override=3, input=U, reciprocal="ap_ufixed<6,0,AP_RND_INF>", output=Y),
        QLinear(2, 3, input=X, weight=W, bias=B, output=Y),
        QMaxPool2d((2, 1), (1, 2), dilation=(2, 1), input="ap_fixed<7,3,AP_TRN_ZERO,AP_WRAP>"),
        QFlatten(),
    )
    init_weights(model, 15)
    x = _data(16, 3, 1, 7, 5, scale=40.0)
    r = assert_bit_exact(model, x, tmp_path / "m")
    man = r["manifest"]
    assert man.node("n3").input_shapes == ((2, 3, 2),) and man.node("n3").output_shape == (2, 3, 3)
    assert str(man.node("n1").formats["input"]) == "ap_fixed<6,8,AP_RND,AP_SAT>"  # taken as it comes
    assert (r["ref"]["n1"] == 6 * 4).any()  # some values really clamp at 6


def test_per_channel_learned_weight_formats(tmp_path):
    cfg = dict(input=X, weight=W, bias=B, output=Y, learn_binary_point=True, weight_per_channel=True)
    model = nn.Sequential(QConv2d(2, 3, 3, config=cfg), QReLU(output=U), QFlatten(), QLinear(3 * 2 * 2, 4, config=cfg, accum=NARROW))
    init_weights(model, 7)
    with torch.no_grad():
        model[0].weight.mul_(torch.tensor([0.05, 1.0, 4.0])[:, None, None, None])
    x = _data(8, 5, 2, 4, 4)
    model(x)  # calibrates every learnable binary point
    before = model[0].quant["weight"].learnable
    r = assert_bit_exact(model, x, tmp_path / "m")
    assert before and model[0].quant["weight"].learnable  # export froze a copy, not the model
    w = r["manifest"].node("n0").formats["weight"]
    assert isinstance(w, tuple) and len({t.int_bits for t in w}) == 3
    text = (tmp_path / "m" / "manifest.yaml").read_text()
    assert "weight: [" in text


def test_view_flatten_and_big_int_fallback(tmp_path):
    model = init_weights(ViewNet(), 9)
    x = _data(10, 2, 1, 4, 4)
    r = assert_bit_exact(model, x, tmp_path / "m")
    assert [n.op for n in r["manifest"]] == ["input", "conv2d", "flatten", "dense", "output"]
    big = run(r["manifest"], x, big_ints=True)
    for name, codes in r["ref"].items():
        assert np.array_equal(np.asarray(big[name], dtype=np.int64), codes), name
    vals = values(r["manifest"], r["ref"])
    assert np.array_equal(vals["output_node"], model(x).detach().double().numpy())


def test_big_int_fallback_on_every_op(tmp_path):
    model = init_weights(cnn("fp4_e2m1fn", "lmul", NARROW), 11)
    x = _data(12, 2, 2, 7, 6)
    export(model, x, tmp_path / "m")
    man = load(tmp_path / "m")
    small, big = run(man, x), run(man, x, big_ints=True)
    for name in small:
        assert np.array_equal(np.asarray(big[name], dtype=np.int64), small[name]), name


def test_wide_formats_use_python_ints(tmp_path):
    """A manifest beyond float64 (so beyond the emulation): 70-bit products, a 64-bit accumulator.

    The reference must switch to Python ints; the expected values come from
    an exact rational loop (tests/oracles/exact_model.py), one cast per step.
    """
    from fractions import Fraction as Fr

    from tests.oracles.ap_types_oracle import FixedConfig
    from tests.oracles.exact_model import exact_cast

    export(nn.Sequential(QLinear(3, 2, bias=False, input=X, weight=W, output=Y)), _data(1, 4, 3), tmp_path / "m")
    fi, fw = qfx.parse_type("ap_fixed<40,4,AP_RND,AP_SAT>"), qfx.parse_type("ap_fixed<30,2,AP_RND,AP_SAT>")
    fa, fo = qfx.parse_type("ap_fixed<64,8,AP_RND_CONV,AP_SAT>"), qfx.parse_type("ap_fixed<48,8,AP_RND,AP_SAT>")

    def edit(doc):
        n = doc["nodes"][1]
        n["formats"] = {"input": str(fi), "weight": str(fw), "accum": str(fa), "output": str(fo)}
        n["params"]["accum_exact"] = False
        doc["nodes"][0]["formats"]["output"] = str(fi)
        doc["nodes"][2]["formats"]["output"] = str(fo)

    _edit_yaml(tmp_path / "m", edit)
    rng = np.random.default_rng(0)
    w = rng.integers(fw.min_code, fw.max_code, size=(2, 3), endpoint=True)
    _edit_npz(tmp_path / "m", lambda a: a.update({"n0.weight": w.astype(np.int64)}))
    man = load(tmp_path / "m")
    x = _data(2, 4, 3, scale=3.0).double()
    got = run(man, x)["n0"]

    def cast(t, v):
        return exact_cast(FixedConfig(t.width, t.int_bits, t.signed, t.rounding.value, t.overflow.value), v)

    for b in range(4):
        xs = [Fr(cast(fi, Fr(float(v)))) / 2**fi.frac_bits for v in x[b]]
        for o in range(2):
            acc = Fr(0)
            for k in range(3):
                acc = Fr(cast(fa, acc + xs[k] * Fr(int(w[o, k])) / 2**fw.frac_bits)) / 2**fa.frac_bits
            assert int(got[b, o]) == cast(fo, acc), (b, o)
    assert got.dtype == np.int64


# ---------------------------------------------------------------------------
# Manifest contents, round trip, determinism
# ---------------------------------------------------------------------------


def _small(seed: int = 0) -> nn.Module:
    return init_weights(mlp("khot<2,ap_fixed<8,1>>", "exact", "auto"), seed)


def test_manifest_contents_and_round_trip(tmp_path):
    model = _small()
    x = _data(1, 3, 12)
    export(model, x, tmp_path / "m")
    doc = yaml.safe_load((tmp_path / "m" / "manifest.yaml").read_text())
    assert doc["schema"] == "qfx.manifest" and doc["version"] == 1
    man = load(tmp_path / "m")
    assert load(tmp_path / "m" / "manifest.yaml").names == man.names
    for nd, node in zip(doc["nodes"], man):
        assert is_valid_name(node.name)
        for key, spelling in nd["formats"].items():
            assert str(node.formats[key]) == spelling  # every format round-trips through its spelling
    fc = man.node("n0")
    assert fc.params["accum_order"] == ["bias", "in_feature"] and fc.params["accum_exact"]
    assert str(fc.formats["accum"]) == str(model[0].effective_format("accum"))  # auto resolved
    assert fc.arrays["weight"].dtype == np.int64
    assert np.array_equal(fc.arrays["weight"], qfx.to_codes(model[0].weight, model[0].effective_format("weight")).numpy())
    shifts, signs = qfx.khot_digits(fc.arrays["weight"], fc.formats["weight"])
    assert np.array_equal(fc.arrays["weight_khot_shifts"], shifts) and np.array_equal(fc.arrays["weight_khot_signs"], signs)
    assert man.node("n2").input_shapes == ((10,),) and man.node("n2").output_shape == (6,)
    real = to_real(run(man, x)["n4"], man.node("n4").output_format)
    assert np.array_equal(real, model(x).detach().double().numpy())


def test_export_is_deterministic(tmp_path):
    model = init_weights(Residual(), 2)
    x = _data(3, 2, 2, 6, 6)
    export(model, x, tmp_path / "a")
    export(model, x, tmp_path / "b")
    for name in ("manifest.yaml", "tensors.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    with zipfile.ZipFile(tmp_path / "a" / "tensors.npz") as z:
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}  # fixed: older numpy savez stamped the current time
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


def test_sanitize_name():
    taken: set[str] = set()
    assert sanitize_name("features.0", taken) == "features_0"
    assert sanitize_name("features_0", taken) == "features_0_2"
    assert sanitize_name("0", taken) == "n0"
    assert sanitize_name("input", taken) == "input_node"
    assert sanitize_name("__a..b__", taken) == "a_b"
    assert sanitize_name("wire", taken) == "wire_node"
    assert all(is_valid_name(n) for n in taken)
    assert not is_valid_name("module") and not is_valid_name("a__b") and not is_valid_name("1x")


# ---------------------------------------------------------------------------
# Errors: clear, and nothing partial left behind
# ---------------------------------------------------------------------------


@pytest.fixture()
def exported(tmp_path) -> Path:
    export(_small(), _data(1, 3, 12), tmp_path / "m")
    return tmp_path / "m"


def _edit_yaml(path: Path, edit) -> None:
    f = path / "manifest.yaml"
    doc = yaml.safe_load(f.read_text())
    edit(doc)
    f.write_text(yaml.safe_dump(doc, sort_keys=False))


def _edit_npz(path: Path, edit) -> None:
    with np.load(path / "tensors.npz") as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    write_npz(path / "tensors.npz", arrays)


def test_corrupt_yaml(exported):
    (exported / "manifest.yaml").write_text("schema: qfx.manifest\nnodes: [unclosed\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load(exported)


def test_duplicate_yaml_key(exported):
    f = exported / "manifest.yaml"
    f.write_text(f.read_text().replace("version: 1\n", "version: 1\nversion: 1\n"))
    with pytest.raises(ManifestError, match="duplicate key 'version'"):
        load(exported)


def test_unknown_key_suggests_the_close_name(exported):
    def edit(doc):
        doc["nodes"][1]["fromats"] = doc["nodes"][1].pop("formats")

    _edit_yaml(exported, edit)
    with pytest.raises(ManifestError, match=r"node 'n0'.*unknown node key 'fromats' \(did you mean 'formats'\?\)"):
        load(exported)


def test_unknown_param_and_op_suggestions(exported):
    _edit_yaml(exported, lambda d: d["nodes"][1]["params"].update(in_feature=3))
    with pytest.raises(ManifestError, match=r"unknown param 'in_feature' \(did you mean 'in_features'\?\)"):
        load(exported)
    _edit_yaml(exported, lambda d: (d["nodes"][1]["params"].pop("in_feature"), d["nodes"][1].update(op="dens")))
    with pytest.raises(ManifestError, match=r"unknown op 'dens' \(did you mean 'dense'\?\)"):
        load(exported)


def test_version_and_format_errors(exported):
    _edit_yaml(exported, lambda d: d.update(version=2))
    with pytest.raises(ManifestError, match="unsupported schema version 2"):
        load(exported)
    _edit_yaml(exported, lambda d: (d.update(version=1), d["nodes"][1]["formats"].update(output="ap_fixd<8,3>")))
    with pytest.raises(ManifestError, match=r"node 'n0' \(dense\): formats.output: unknown type name 'ap_fixd'.*did you mean ap_fixed"):
        load(exported)


def test_shape_mismatch_between_nodes(exported):
    _edit_yaml(exported, lambda d: d["nodes"][2].update(input_shapes=[[9]]))
    with pytest.raises(ManifestError, match=r"node 'n1' \(relu\): input_shapes\[0\] = \[9\] but its producer 'n0' outputs \[10\]"):
        load(exported)


def test_missing_npz_array(exported):
    _edit_npz(exported, lambda a: a.pop("n2.bias"))
    with pytest.raises(ManifestError, match=r"node 'n2' \(dense\): array 'bias': key 'n2.bias' is missing"):
        load(exported)


def test_wrong_array_shape_and_dtype(exported):
    _edit_npz(exported, lambda a: a.update({"n0.weight": a["n0.weight"][:, :5]}))
    with pytest.raises(ManifestError, match=r"node 'n0' \(dense\): array 'weight' \(n0.weight\) has shape \[10, 5\], expected \[10, 12\]"):
        load(exported)
    _edit_npz(exported, lambda a: a.update({"n0.weight": np.zeros((10, 12), dtype=np.int32)}))
    with pytest.raises(ManifestError, match="has dtype int32, expected int64"):
        load(exported)


def test_codes_out_of_range_and_khot_unrepresentable(exported):
    def big_bias(a):
        a["n0.bias"] = a["n0.bias"].copy()
        a["n0.bias"][3] = 5000

    _edit_npz(exported, big_bias)
    with pytest.raises(ManifestError, match=r"node 'n0'.*'bias': codes .* outside -2048..2047"):
        load(exported)

    def bad_khot(a):
        a["n0.bias"][3] = 0
        a["n0.weight"] = a["n0.weight"].copy()
        a["n0.weight"][0, 0] = 0b1010101  # 4 nonzero digits in khot<2,...>

    _edit_npz(exported, bad_khot)
    with pytest.raises(ManifestError, match=r"node 'n0'.*code 85 at \[0, 0\] is not representable"):
        load(exported)


def test_unreferenced_array_and_missing_npz(exported):
    _edit_npz(exported, lambda a: a.update(stray=np.zeros(2, dtype=np.int64)))
    with pytest.raises(ManifestError, match=r"\['stray'\] are not referenced"):
        load(exported)
    (exported / "tensors.npz").unlink()
    with pytest.raises(ManifestError, match="tensors.npz: missing"):
        load(exported)
    (exported / "tensors.npz").write_bytes(b"not a zip")
    with pytest.raises(ManifestError, match="not a readable .npz"):
        load(exported)


def test_nan_weight_names_the_layer_and_leaves_nothing(tmp_path):
    model = _small()
    with torch.no_grad():
        model[2].weight[1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"layer '2' \(QLinear\): weight holds 1 NaN/Inf"):
        export(model, _data(1, 3, 12), tmp_path / "m")
    assert os.listdir(tmp_path) == []


def test_existing_output_dir_needs_force(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty; pass force=True"):
        export(_small(), _data(1, 3, 12), out)
    assert os.listdir(out) == ["keep.txt"]
    export(_small(), _data(1, 3, 12), out, force=True)
    assert sorted(os.listdir(out)) == ["manifest.yaml", "tensors.npz"]
    assert sorted(os.listdir(tmp_path)) == ["m"]  # no temporary or backup folder left
    empty = tmp_path / "e"
    empty.mkdir()
    export(_small(), _data(1, 3, 12), empty)  # an empty folder is fine
    load(empty)


def test_failure_while_writing_leaves_nothing_partial(tmp_path, monkeypatch):
    import qfx.export as ex

    def boom(path, arrays):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(ex, "write_npz", boom)
    with pytest.raises(OSError, match="disk full"):
        export(_small(), _data(1, 3, 12), tmp_path / "m")
    assert os.listdir(tmp_path) == []
    # forced over an existing export: the old one is kept intact
    monkeypatch.undo()
    export(_small(), _data(1, 3, 12), tmp_path / "m")
    before = (tmp_path / "m" / "tensors.npz").read_bytes()
    monkeypatch.setattr(ex, "write_npz", boom)
    with pytest.raises(OSError):
        export(_small(1), _data(1, 3, 12), tmp_path / "m", force=True)
    assert (tmp_path / "m" / "tensors.npz").read_bytes() == before and os.listdir(tmp_path) == ["m"]


def test_unsupported_modules_are_named(tmp_path):
    model = nn.Sequential(QLinear(4, 3, input=X, weight=W, bias=B, output=Y), nn.Linear(3, 2))
    with pytest.raises(ExportError, match=r"unsupported module '1' \(torch.nn.modules.linear.Linear\)"):
        export(model, _data(1, 2, 4), tmp_path / "m")

    class Fn(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = QLinear(4, 3, input=X, weight=W, bias=B, output=Y)

        def forward(self, x):
            return torch.relu(self.fc(x))

    with pytest.raises(ExportError, match="unsupported function .*relu"):
        export(Fn(), _data(1, 2, 4), tmp_path / "m")
    assert os.listdir(tmp_path) == []


def test_input_format_must_be_defined_and_unique(tmp_path):
    with pytest.raises(ExportError, match="has no input format"):
        export(nn.Sequential(QReLU(output=U), QLinear(4, 2, input=X, weight=W, bias=B, output=Y)), _data(1, 2, 4), tmp_path / "m")

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = QLinear(4, 4, input=X, weight=W, bias=B, output=Y)
            self.add = QAdd(in_a="ap_fixed<6,3>", in_b=Y, output=Y)

        def forward(self, x):
            return self.add(x, self.fc(x))

    with pytest.raises(ExportError, match="different input formats"):
        export(Two(), _data(1, 2, 4), tmp_path / "m")


def test_uncalibrated_binary_point_is_refused(tmp_path):
    model = nn.Sequential(QLinear(4, 2, input=X, weight=W, bias=B, output=Y, learn_binary_point=True))
    with pytest.raises(ExportError, match="never calibrated; run the model forward once"):
        export(model, _data(1, 2, 4), tmp_path / "m")


def test_reference_rejects_wrong_input_shape(exported):
    with pytest.raises(ValueError, match=r"does not match \[N, 12\]"):
        run(load(exported), np.zeros((2, 11)))


def test_lmul_activation_overflow_is_an_error_in_both(tmp_path):
    model = nn.Sequential(QLinear(3, 2, bias=False, input="ap_fixed<16,12,AP_RND,AP_SAT>", weight="fp8_e4m3fn",
                                  multiply="lmul", output="ap_fixed<16,10>"))
    export(model, torch.ones(1, 3), tmp_path / "m")
    x = torch.tensor([[1000.0, 2.0, 3.0]])  # 1000 > 464: NaN in the non-saturating e4m3fn
    with pytest.raises(ValueError, match="overflow the weight format"):
        model(x)
    with pytest.raises(ValueError, match=r"node 'n0': L-Mul: some activations overflow the weight format fp8_e4m3fn"):
        run(load(tmp_path / "m"), x)


def test_a_layer_failing_on_the_example_input_is_named(tmp_path):
    model = nn.Sequential(QLinear(3, 2, bias=False, input=X, weight="fp8_e5m2", multiply="lmul", output=Y))
    with pytest.raises(ExportError, match=r"module '0' \(node '_0'\) fails on example_input: the products .* wider than qfx emulates"):
        export(model, torch.ones(1, 3), tmp_path / "m")
    assert os.listdir(tmp_path) == []
