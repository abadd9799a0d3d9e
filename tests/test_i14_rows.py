"""Issue 14: the row-wise ops of a small transformer encoder over token tensors, four ways.

* Dense (nn.Linear) per token on ``[N, T, F]`` (weights reused for each row, the dense accumulation
  order, here with a rounding, saturating accumulator so the order shows), LayerNorm over the last dim
  of ``[N, T, F]`` (each row on its own, :mod:`qfx.layernorm`'s rule), softmax over the last dim of
  ``[N, T, S]`` / ``[N, H, T, S]`` (``dim=-1``, attention scores) and over the channels of
  ``[N, C, H, W]`` (``dim=1``, per pixel; manifest ``params.axis = 0``) go float -> convert -> short
  QAT -> export -> reference == emulation on every layer -> qfx-gen (rtl, hls) -> verify (Verilator RTL,
  g++ C simulation) with 0 mismatches.
* Oracles from outside: every vector of the multi-row / strided softmax and every row of the
  multi-row layernorm equals the independent Fraction / mpmath computations of the single-vector rule
  (tests/test_i14_softmax.py, tests/test_i14_layernorm.py); the multi-row and strided RTL engines
  (Amaranth simulation) give row for row what the existing single-row engine gives on each row alone;
  softmax / layernorm against float within the documented table error.
* The cycle model of the multi-row engines against the Amaranth simulation; the cost model covers them;
  bad inputs.

Expected values come from the reference, the emulation or the independent computations, never from
the hardware.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qfx
from qfx.export import emulate, export
from qfx.intops import cast_codes
from qfx.manifest import ManifestError, load
from qfx.reference import run, run_codes
from qfx.types import parse_type
from tests.fourway import (assert_reference_equals_emulation, assert_rtl_and_hls_bit_exact, assert_verilog_lints_clean,
                           short_qat)
from tests.test_i14_layernorm import ACCURACY, LN_FORMATS, _layernorm_fraction
from tests.test_i14_softmax import _independent

X_FMT = "ap_fixed<8,3,AP_RND,AP_SAT>"
CFG = {
    "default": {
        "input": X_FMT,
        "weight": "ap_fixed<8,1,AP_RND_CONV,AP_SAT>",
        "bias": "ap_fixed<12,4,AP_RND>",
        "accum": "auto",
        "output": X_FMT,
        "learn_binary_point": True,
    },
    "types": {"LayerNorm": dict(LN_FORMATS), "Softmax": {"output": "ap_ufixed<10,0,AP_RND,AP_SAT>"}},
    # a rounding, saturating accumulator: the order of the terms shows in the result
    "layers": {"fc2": {"accum": "ap_fixed<12,4,AP_RND,AP_SAT>"}},
}


class TokenEncoder(nn.Module):
    """Linear over the tokens of [N, 6, 12] -> LayerNorm(16) per token -> Linear -> softmax(dim=-1)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.ln, self.fc2 = nn.Linear(12, 16), nn.LayerNorm(16), nn.Linear(16, 8)

    def forward(self, x):
        return F.softmax(self.fc2(F.relu(self.ln(self.fc1(x)))), dim=-1)


class HeadScores(nn.Module):
    """[N, 2, 4, 6] (heads, queries, features) -> a dense per row -> softmax over the last dim ([H, T, S])."""

    def __init__(self) -> None:
        super().__init__()
        self.fc2 = nn.Linear(6, 5)

    def forward(self, x):
        return self.fc2(x).softmax(-1)


class ConvChannelSoftmax(nn.Module):
    """conv -> softmax over the channels of [N, 4, 3, 4] (dim=1) -> 1x1 conv -> softmax(dim=1) again."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 3, 1)
        self.sm = nn.Softmax(dim=1)

    def forward(self, x):
        return torch.softmax(self.conv2(self.sm(self.conv1(x))), dim=1)


MODELS = {
    "token_encoder": (TokenEncoder, (6, 12), {"dense", "layernorm", "softmax"}),
    "head_scores": (HeadScores, (2, 4, 6), {"dense", "softmax"}),
    "conv_channel_softmax": (ConvChannelSoftmax, (2, 3, 4), {"conv2d", "softmax"}),
}
CFGS = {
    "token_encoder": CFG,
    "head_scores": CFG,
    "conv_channel_softmax": {k: v for k, v in CFG.items() if k != "layers"},
}


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory):
    name = request.param
    make, shape, _ops = MODELS[name]
    q, x = short_qat(make, shape, CFGS[name], n_test=40, test_scale=2.5, ramp=(0.0, 1.0))
    d = tmp_path_factory.mktemp(name)
    export(q, x, d / "manifest")
    return name, q, x, d


def test_reference_equals_emulation_on_every_layer(exported):
    name, q, x, d = exported
    man = load(d / "manifest")
    ref = assert_reference_equals_emulation(name, q, x, man, MODELS[name][2])
    for n in man:
        if n.op == "softmax":
            # last axis: no param (as every manifest before it); channels of [C, H, W]: axis 0
            assert n.params.get("axis") == (0 if name == "conv_channel_softmax" else None), (n.name, n.params)
            y = ref[n.name] * n.output_format.lsb
            ax = 1 if name == "conv_channel_softmax" else -1
            assert np.all(np.abs(y.sum(axis=ax) - 1) < 0.05)  # probabilities along the softmax dim
        if n.op in ("dense", "layernorm"):
            assert len(n.input_shapes[0]) >= 2  # per token / per row, not flattened
    if name == "token_encoder":
        fc2 = man.node("fc2")
        assert str(fc2.formats["accum"]) == "ap_fixed<12,4,AP_RND,AP_SAT>" and not fc2.params["accum_exact"]


def test_rtl_and_hls_bit_exact(exported):
    _name, q, _x, d = exported
    assert_rtl_and_hls_bit_exact(q, d)


def test_verilog_lints_clean_and_is_deterministic(exported, tmp_path):
    name, _q, _x, d = exported
    assert_verilog_lints_clean(d / "manifest", tmp_path, name)


def test_each_vector_is_the_independent_single_vector_rule(exported):
    """The reference's multi-row / strided nodes, vector by vector (the producer's codes cast to the
    node's input format), against the Fraction / mpmath computations of the single-vector rule
    (independent of qfx.tables and the reference's vector arithmetic)."""
    _name, _q, x, d = exported
    man = load(d / "manifest")
    ref = run(man, x)
    for n in man:
        src = ref[n.inputs[0]] if n.inputs else None
        if n.op == "softmax":
            fi, xi = man.node(n.inputs[0]).output_format, n.formats["input"]
            codes = np.asarray(cast_codes(src, fi.frac_bits, xi), dtype=np.int64)  # c = code(cast(x, input))
            ax = 1 + n.params.get("axis", len(n.input_shapes[0]) - 1)
            vecs = np.moveaxis(codes, ax, -1).reshape(-1, codes.shape[ax])
            size, shift, lo = n.params["size"], n.params["shift"], n.params["lo_code"]
            want = _independent(vecs, xi, n.formats["exp"], n.formats["reciprocal"], n.output_format,
                                Fraction(lo, 2 ** xi.frac_bits), size << shift, size)
            got = np.moveaxis(ref[n.name], ax, -1).reshape(-1, codes.shape[ax])
            assert np.array_equal(got, want), n.name
        elif n.op == "layernorm":
            fi, fm = man.node(n.inputs[0]).output_format, n.formats
            rows = np.asarray(cast_codes(src, fi.frac_bits, fm["input"]), dtype=np.int64).reshape(-1, src.shape[-1])
            gamma, beta = n.arrays.get("scale"), n.arrays.get("shift")
            recip = int(n.arrays["reciprocal"]) if "reciprocal" in n.arrays else None
            want = [_layernorm_fraction([int(c) for c in r], fm, n.params["eps"], gamma, beta, recip) for r in rows]
            assert np.array_equal(ref[n.name].reshape(len(rows), -1), np.array(want)), n.name


# ---------------------------------------------------------------------------
# The multi-row engines against the single-row engine (Amaranth simulation), and their cycle model
# ---------------------------------------------------------------------------


def _pair(kind: str, tmp_path):
    """A one-layer model on a multi-row tensor and the same module exported on single vectors:
    ``(module, multi manifest, single manifest, x multi, to_vectors, from_vectors)``."""
    torch.manual_seed(5)
    if kind == "softmax_rows":  # dense 6 -> 5 per row (a rounding accumulator), then softmax(-1) of [3, 5]
        mod = nn.Sequential(
            qfx.nn.QLinear(6, 5, input=X_FMT, weight="ap_fixed<8,1,AP_RND_CONV,AP_SAT>", bias="ap_fixed<8,3>",
                           accum="ap_fixed<10,3,AP_RND,AP_SAT>", output=X_FMT),
            qfx.nn.QSoftmax(-1, input=X_FMT, output="ap_ufixed<16,0,AP_RND,AP_SAT>")).eval()
        x = torch.randn(8, 3, 6) * 2

        def vec(a):
            return a.reshape(-1, a.shape[-1])

        def unvec(a, n):
            return a.reshape(n, -1)
    elif kind == "layernorm_rows":
        fm = dict(input=X_FMT, **{k: v for k, v in LN_FORMATS.items() if k != "reciprocal"}, output=X_FMT)
        fm["inv_std"] = "ap_ufixed<12,5,AP_TRN,AP_SAT>"
        mod = nn.Sequential(qfx.nn.QLayerNorm(8, **fm)).eval()
        with torch.no_grad():
            mod[0].weight.uniform_(-1.5, 1.5)
            mod[0].bias.uniform_(-1, 1)
        x = torch.randn(8, 3, 8) * 2

        def vec(a):
            return a.reshape(-1, a.shape[-1])

        def unvec(a, n):
            return a.reshape(n, -1)
    else:  # softmax over the channels of [4, 2, 3]
        mod = nn.Sequential(qfx.nn.QSoftmax(1, input=X_FMT, output="ap_ufixed<16,0,AP_RND,AP_SAT>")).eval()
        x = torch.randn(8, 4, 2, 3) * 2

        def vec(a):  # [N, C, H, W] -> [N * H * W, C]
            a = a.reshape(a.shape[0], 4, 2, 3)
            return np.moveaxis(np.asarray(a), 1, -1).reshape(-1, 4)

        def unvec(a, n):
            return np.moveaxis(np.asarray(a).reshape(n, 2, 3, 4), -1, 1).reshape(n, -1)
    export(mod, x, tmp_path / "multi")
    xs = torch.as_tensor(vec(x.numpy() if kind == "softmax_channels" else x))
    export(mod, xs, tmp_path / "single")
    return mod, load(tmp_path / "multi"), load(tmp_path / "single"), x, vec, unvec


@pytest.mark.parametrize("kind", ["softmax_rows", "layernorm_rows", "softmax_channels"])
def test_multi_row_engine_equals_the_single_row_engine_and_its_cycle_model(kind, tmp_path):
    from qfx.hw.accel import Accelerator
    from qfx.hw.accel.engines import engine_cycles
    from qfx.sim.amaranth_run import run_accelerator

    _mod, multi, single, x, vec, unvec = _pair(kind, tmp_path)
    ref = run(multi, x)
    codes = ref[multi.input]
    n = len(codes)
    acc_m, acc_s = Accelerator(multi), Accelerator(single)
    acc_m._MustUse__silence = acc_s._MustUse__silence = True  # simulated, not elaborated to Verilog
    est = acc_m.cycle_estimate()
    node = next(nd for nd in multi if nd.op in ("softmax", "layernorm"))
    c = engine_cycles(node)
    if kind == "softmax_rows":
        assert c == {"load": 15, "compute": 3 * (2 * 5 + 2), "outputs": 15}
    elif kind == "layernorm_rows":
        assert c == {"load": 24, "compute": 3 * (3 * 8 + 12 + 4), "outputs": 24}
    else:
        assert "axis" in node.params and c == {"load": 24, "compute": 6 * (3 * 4 + 3), "outputs": 24}
    assert est["engines"][node.name]["ii"] == c["compute"]
    assert est["ii"] == max(e["ii"] for e in est["engines"].values())  # softmax_rows: the dense engine's
    r_m = run_accelerator(acc_m, codes, back_to_back=True, max_cycles=40 * n * est["total"])
    want = ref[multi.output].reshape(n, -1)
    assert np.array_equal(r_m.outputs, want) and len(np.unique(want)) > 10
    # the existing single-vector engine on each row (or pixel vector) alone
    s_in = run(single, torch.as_tensor(vec(x.numpy() if kind == "softmax_channels" else x)))[single.input]
    r_s = run_accelerator(acc_s, s_in, back_to_back=True, max_cycles=100 * len(s_in) * acc_s.cycle_estimate()["total"])
    assert np.array_equal(unvec(np.asarray(r_s.outputs), n), np.asarray(r_m.outputs))
    # the cycle model: one tensor alone, back to back, backpressure
    r = run_accelerator(acc_m, codes[:1], max_cycles=3 * est["total"])
    if kind == "softmax_rows":  # fed by a dense engine in bursts of rows: the model (rows one beat a cycle
        # up to the last) is an upper bound; exact for a lone softmax (test_softmax_rows_alone_cycles_exact)
        assert est["total"] - 20 <= r.cycles[0] <= est["total"], (r.cycles, est["total"])
    else:
        assert r.cycles == [est["total"]]
    r = run_accelerator(acc_m, codes[:3], back_to_back=True, max_cycles=10 * est["total"])
    assert np.diff(r.done_at).tolist() == [est["ii"]] * 2
    r = run_accelerator(acc_m, codes, stall_in=0.3, stall_out=0.3, seed=1, max_cycles=60 * n * est["total"])
    assert np.array_equal(r.outputs, want)


@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 5)])
def test_softmax_rows_alone_cycles_exact(shape, tmp_path):
    """A lone softmax(dim=-1) on [T, S] / [H, T, S], fed by the input port one beat a cycle (faster than
    the engine takes rows): one tensor takes the modelled total, back to back every R (2S + 2) cycles."""
    from qfx.hw.accel import Accelerator
    from qfx.sim.amaranth_run import run_accelerator

    model = nn.Sequential(qfx.nn.QSoftmax(-1, input=X_FMT, output="ap_ufixed<16,0,AP_RND,AP_SAT>")).eval()
    x = torch.randn(4, *shape) * 2
    export(model, x, tmp_path / "m")
    man = load(tmp_path / "m")
    ref = run(man, x)
    acc = Accelerator(man)
    acc._MustUse__silence = True
    est = acc.cycle_estimate()
    rows, s = int(np.prod(shape[:-1])), shape[-1]
    assert est["ii"] == rows * (2 * s + 2)
    want = ref[man.output].reshape(len(x), -1)
    r = run_accelerator(acc, ref[man.input][:1], max_cycles=5 * est["total"])
    assert r.cycles == [est["total"]] and np.array_equal(r.outputs, want[:1])
    r = run_accelerator(acc, ref[man.input], back_to_back=True, max_cycles=20 * est["total"])
    assert np.diff(r.done_at).tolist() == [est["ii"]] * 3 and np.array_equal(r.outputs, want)


def test_softmax_rows_latency_model_when_the_input_outruns_the_engine():
    """Rows arrive one beat a cycle, faster than the engine takes them (2F + 2 a row): the modelled
    latency follows the two banks (row r loads after row r - 2 left its bank), independent of qfx's
    engine code: a hand count for F = 5, R = 3 with the last input beat at cycle 100 (unstalled)."""
    from qfx.hw.accel.engines_softmax import softmax_latency
    from qfx.manifest import Node

    node = Node("s", "softmax", "s", ["x"], [(3, 5)], (3, 5), {"size": 256, "shift": 0, "lo_code": 0}, {}, {})
    # beats of row 0 at 86..90, row 1 at 91..95; row 0 starts at 91 (bank full), frees its bank at 91 + 5 + 1 = 97;
    # row 2 loads 97..101 (the last beat held back to 101); row 1 starts at 91 + 12 = 103, row 2 at 115, ends 115 + 12
    assert softmax_latency(node, 100) == 127
    one = Node("s", "softmax", "s", ["x"], [(5,)], (5,), {"size": 256, "shift": 0, "lo_code": 0}, {}, {})
    assert softmax_latency(one, 100) == 100 + 2 * 5 + 3


# ---------------------------------------------------------------------------
# Against float, the cost model, bad inputs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dim,shape", [(-1, (3, 10)), (-1, (2, 3, 5)), (1, (5, 3, 4))])
def test_softmax_over_rows_and_channels_against_float(dim, shape):
    """At the defaults (exp / reciprocal ap_ufixed<16,1>, 1024 entries, one per d code) and a 16-bit
    output, against float64 softmax of the same quantized inputs along the same dim: below 1e-4 (the
    README's accuracy table: 6.85e-5 at F = 5, 8.41e-5 at F = 10, a few exp / reciprocal lsbs), and not
    the float computation itself."""
    sm = qfx.nn.QSoftmax(dim, input=X_FMT, output="ap_ufixed<16,0,AP_RND,AP_SAT>").eval()
    torch.manual_seed(2)
    x = qfx.quantize(torch.randn(400, *shape, dtype=torch.float64) * 2.5, parse_type(X_FMT))
    y = sm(x).double()
    err = float((y - torch.softmax(x, dim=dim)).abs().max())
    assert 2.0 ** -18 < err < 1e-4, err


def test_layernorm_over_tokens_against_float():
    """QLayerNorm on [N, T, F] against torch's LayerNorm of the same values (the 8-bit bound of
    tests/test_i14_layernorm.py's accuracy table), each token normalized on its own."""
    fmts, bound = ACCURACY[8]
    torch.manual_seed(7)
    ln = qfx.nn.QLayerNorm(32, **fmts).eval()
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    x = qfx.quantize((torch.randn(64, 6, 32) * 0.9 + torch.randn(64, 6, 1) * 0.5).double(), parse_type(fmts["input"]))
    y = ln(x).double()
    g = qfx.quantize(ln.weight.detach().double(), parse_type(fmts["scale"]))
    b = qfx.quantize(ln.bias.detach().double(), parse_type(fmts["shift"]))
    out = parse_type(fmts["output"])
    want = F.layer_norm(x, (32,), g, b, eps=1e-5).clamp(out.min, out.max)
    assert float((y.detach() - want).abs().max()) < bound
    assert torch.equal(y.reshape(-1, 32), ln(x.reshape(-1, 32)).double())  # rows independent of T


def test_cost_model_covers_the_multi_row_engines(exported):
    from qfx.cost.energy import energy_per_inference
    from qfx.cost.estimate import engine_features, estimate
    from qfx.hw.accel import Accelerator, estimate_resources
    from qfx.tables import softmax_geometry

    name, _q, _x, d = exported
    man = load(d / "manifest")
    est, res, feats = estimate(man), estimate_resources(man), engine_features(man)
    acc = Accelerator(man)
    acc._MustUse__silence = True
    cyc = acc.cycle_estimate()
    e = energy_per_inference(man, {k: v["dsp"] for k, v in res["per_layer"].items()}, {})
    for n in man:
        if n.op == "softmax":
            outer, f, inner = softmax_geometry(n.params, n.input_shapes[0])
            per = 3 * f + 3 if inner > 1 else 2 * f + 2
            assert cyc["engines"][n.name]["compute"] == outer * inner * per
            assert est["per_layer"][n.name]["lut"] > 0 and feats[n.name]["div_luts"] > 0
            assert res["per_layer"][n.name]["dsp"] >= 1
            if inner > 1:  # the strided engine buffers the tensor (two slots)
                assert res["per_layer"][n.name]["memory_bits"] >= 2 * outer * f * inner * n.formats["input"].width
            assert e["per_layer"][n.name]["other_pj"] > 0
        if n.op == "layernorm":
            rows = int(np.prod(n.input_shapes[0][:-1]))
            nf = n.params["num_features"]
            assert rows == 6
            assert cyc["engines"][n.name]["compute"] == rows * (3 * nf + n.formats["inv_std"].width + 4)
            assert res["per_layer"][n.name]["memory_bits"] >= 2 * rows * nf * n.formats["input"].width
        if n.op == "dense":
            assert cyc["engines"][n.name]["compute"] >= int(np.prod(n.input_shapes[0][:-1])) * n.params["out_features"]


def test_bad_softmax_axes(tmp_path):
    import yaml

    model = nn.Sequential(qfx.nn.QSoftmax(-1, input=X_FMT, output="ap_ufixed<8,0,AP_RND,AP_SAT>"))
    with pytest.raises(ValueError, match=r"a softmax over dim -1 of a rank-1 tensor \[5\] is not supported; a "
                                         r"softmax runs over one non-batch dim"):
        model(torch.randn(5))
    with pytest.raises(ValueError, match=r"dim -3 of a rank-3 tensor"):  # the batch dim, counted from the end
        nn.Sequential(qfx.nn.QSoftmax(-3, input=X_FMT, output="ap_ufixed<8,0,AP_RND,AP_SAT>"))(torch.randn(2, 3, 4))
    export(model, torch.randn(4, 3, 5), tmp_path / "m")
    doc = yaml.safe_load((tmp_path / "m" / "manifest.yaml").read_text())
    sm = next(nd for nd in doc["nodes"] if nd["op"] == "softmax")
    assert "axis" not in sm["params"]  # the last axis: the params every manifest had
    for bad, pat in ((2, r"softmax axis 2 does not fit input \[3, 5\]"), (-1, r"params.axis must be an int >= 0"),
                     ("0", r"params.axis must be an int >= 0")):
        sm["params"]["axis"] = bad
        (tmp_path / "m" / "manifest.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        with pytest.raises(ManifestError, match=pat):
            load(tmp_path / "m")
    sm["params"]["axis"] = 0  # a valid axis: the columns of [3, 5]; reference along it
    (tmp_path / "m" / "manifest.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    man = load(tmp_path / "m")
    codes = np.random.default_rng(0).integers(-128, 128, size=(6, 3, 5))
    got = run_codes(man, codes)[man.output].reshape(6, 3, 5)
    cols = run_codes(man, codes)  # same manifest; each column's vector against the row rule on its transpose
    sm2 = nn.Sequential(qfx.nn.QSoftmax(1, input=X_FMT, output="ap_ufixed<8,0,AP_RND,AP_SAT>"))
    export(sm2, torch.randn(4, 3), tmp_path / "m2")
    man2 = load(tmp_path / "m2")
    want = run_codes(man2, np.moveaxis(codes, 1, -1).reshape(-1, 3))[man2.output].reshape(6, 5, 3)
    assert np.array_equal(got, np.moveaxis(want, -1, 1)) and cols[man.output].shape[0] == 6


def test_softmax_over_a_middle_axis(tmp_path):
    """dim=2 of [N, 2, 3, 4] (outer 2, F 3, inner 4: the strided engine's outer blocks): reference ==
    emulation, the vectors against the independent rule, the RTL (Amaranth simulation, alone in the
    modelled total) and the HLS C simulation equal the reference."""
    from qfx import hls
    from qfx.hw.accel import Accelerator
    from qfx.sim.amaranth_run import run_accelerator

    model = nn.Sequential(qfx.nn.QSoftmax(2, input=X_FMT, output="ap_ufixed<12,0,AP_RND,AP_SAT>")).eval()
    torch.manual_seed(1)
    x = torch.randn(6, 2, 3, 4) * 2
    export(model, x, tmp_path / "m")
    man = load(tmp_path / "m")
    node = next(n for n in man if n.op == "softmax")
    assert node.params["axis"] == 1
    ref = run(man, x)
    xi = node.formats["input"]
    assert np.array_equal(ref[node.name], qfx.to_codes(emulate(model, x)[node.name], node.output_format).numpy())
    codes = ref[man.input]
    vecs = np.moveaxis(codes, 2, -1).reshape(-1, 3)
    want = _independent(vecs, xi, node.formats["exp"], node.formats["reciprocal"], node.output_format,
                        Fraction(node.params["lo_code"], 2 ** xi.frac_bits), node.params["size"] << node.params["shift"],
                        node.params["size"])
    assert np.array_equal(np.moveaxis(ref[node.name], 2, -1).reshape(-1, 3), want)
    acc = Accelerator(man)
    acc._MustUse__silence = True
    est = acc.cycle_estimate()
    assert est["ii"] == 2 * 4 * (3 * 3 + 3)
    out = ref[man.output].reshape(len(x), -1)
    r = run_accelerator(acc, codes[:1], max_cycles=3 * est["total"])
    assert r.cycles == [est["total"]] and np.array_equal(r.outputs, out[:1])
    r = run_accelerator(acc, codes, stall_in=0.3, stall_out=0.3, seed=2, max_cycles=40 * len(x) * est["total"])
    assert np.array_equal(r.outputs, out)
    hls.generate(man, tmp_path / "g")
    assert np.array_equal(hls.csim(tmp_path / "g", codes), out)
