"""Issue 14: Softmax inside the model, four ways (qfx.nn.QSoftmax, manifest op ``softmax``).

Semantics (qfx.nn.softmax, qfx.reference): per vector of F codes ``c = code(cast(x, input))``,
``d = max(c) - c``, ``e = exp_table[index(d)]`` (qfx.tables: ``exp(-d)`` cast to ``exp``), ``S = sum(e)``
exact, ``r = cast(2**Fe / S, reciprocal)`` by exact integer division, ``y = cast(e * r, output)``.

* A jet-tagging style MLP 16-64-32-32-5 ending in ``nn.Softmax(dim=1)`` and an MLP with a softmax
  inside (``F.softmax(dim=-1)``, then a dense layer, then ``x.softmax(1)`` with a narrower exp table of
  4 codes per entry, saturating, and other rounding modes) go float -> convert -> 4 QAT steps -> export
  -> integer reference == emulation on every layer -> qfx-gen (rtl, hls) -> verify (Verilator RTL, g++
  C simulation against the real ap_types headers) with 0 mismatches.
* The reference against an independent Fraction / mpmath computation of the documented semantics on
  random codes with ties and extreme values (and the emulation on the same codes).
* The engine's cycle model against the Amaranth simulation; bad inputs; drop_final_softmax.

Expected values come from the reference, the emulation or the independent computation, never from
the hardware.
"""

from __future__ import annotations

from fractions import Fraction

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qfx
from qfx.conversion import ConversionError
from qfx.export import emulate, export
from qfx.manifest import ManifestError, load
from qfx.reference import run, run_codes
from qfx.tables import TableError
from qfx.types import Overflow, Rounding, parse_type
from tests.fourway import config, assert_rtl_and_hls_bit_exact, assert_verilog_lints_clean, short_qat

CFG = config(
    {"reciprocal": "ap_ufixed<8,0,AP_RND>"},  # the pools' (a softmax takes its own)
    types={"Softmax": {"output": "ap_ufixed<10,0,AP_RND,AP_SAT>"}},
)
INNER_LAYERS = {
    # 4 input codes per entry over d in [0, 4): saturating beyond; other rounding modes
    "softmax_1": {"table_size": 32, "table_range": [0, 4], "exp": "ap_ufixed<12,1,AP_RND_CONV,AP_SAT>",
                  "reciprocal": "ap_ufixed<10,2,AP_TRN,AP_SAT>", "output": "ap_fixed<9,1,AP_RND_CONV,AP_SAT>"},
}


class JetSoftmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.fc4 = nn.Linear(16, 64), nn.Linear(64, 32), nn.Linear(32, 32), nn.Linear(32, 5)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        y = torch.relu(self.fc1(x))
        y = torch.relu(self.fc2(y))
        y = torch.relu(self.fc3(y))
        return self.softmax(self.fc4(y))


class InnerSoftmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 6), nn.Linear(6, 7), nn.Linear(7, 4)

    def forward(self, x):
        y = self.fc2(F.softmax(self.fc1(x), dim=-1))
        return self.fc3(torch.relu(y.softmax(1)))


MODELS = {
    "jet": (JetSoftmax, 16, CFG),
    "inner": (InnerSoftmax, 8, dict(CFG, layers=INNER_LAYERS)),
}


def _qat(name: str):
    make, n_in, cfg = MODELS[name]
    return short_qat(make, (n_in,), cfg, n_test=60, test_scale=2.5, ramp=(0.0, 1.0))


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
    sm = [n for n in man if n.op == "softmax"]
    assert len(sm) == (1 if name == "jet" else 2)
    if name == "inner":
        assert sm[1].params["shift"] == 2 and sm[1].params["size"] == 32
        assert str(sm[1].formats["reciprocal"]) == "ap_ufixed<10,2,AP_TRN,AP_SAT>"
    assert str(sm[0].formats["exp"]) == qfx.tables.SOFTMAX_EXP_DEFAULT  # not the default section's reciprocal
    ref, emu = run(man, x), emulate(q, x)
    for node in man:
        codes = qfx.to_codes(emu[node.name], node.output_format).numpy()
        bad = np.argwhere(ref[node.name] != codes)
        assert bad.size == 0, f"{name}: node {node.name} ({node.op}) differs first at {bad[0].tolist()}"
    for n in sm:
        y = ref[n.name]
        assert len(np.unique(y)) > 5
        # probabilities: rows sum to about 1 (each element within its rounding of e * r)
        s = y.sum(axis=1) * n.output_format.lsb
        assert np.all(np.abs(s - 1) < 0.1), s


def test_rtl_and_hls_bit_exact(exported):
    _name, q, _x, d = exported
    assert_rtl_and_hls_bit_exact(q, d)


def test_cost_model_covers_the_softmax_engine(exported):
    from qfx.cost.energy import energy_per_inference
    from qfx.cost.estimate import engine_features, estimate
    from qfx.hw.accel import Accelerator, estimate_resources

    _name, _q, _x, d = exported
    man = load(d / "manifest")
    est = estimate(man)
    res = estimate_resources(man)
    feats = engine_features(man)
    for n in man:
        if n.op == "softmax":
            assert est["per_layer"][n.name]["lut"] > 0 and feats[n.name]["div_luts"] > 0
            assert res["per_layer"][n.name]["dsp"] >= 1  # the e * r product
    acc = Accelerator(man)
    acc._MustUse__silence = True
    cyc = acc.cycle_estimate()
    for n in man:
        if n.op == "softmax":
            f = n.output_shape[0]
            assert cyc["engines"][n.name] == {"load": f, "compute": 2 * f + 2, "outputs": f, "ii": 2 * f + 2}
    e = energy_per_inference(man, {k: v["dsp"] for k, v in res["per_layer"].items()}, {})
    assert all(e["per_layer"][n.name]["other_pj"] > 0 for n in man if n.op == "softmax")


def test_verilog_lints_clean_and_is_deterministic(exported, tmp_path):
    """The softmax engine passes ``verilator --lint-only -Wall`` with the project's waivers only."""
    name, _q, _x, d = exported
    assert_verilog_lints_clean(d / "manifest", tmp_path, name)


# ---------------------------------------------------------------------------
# The reference against an independent computation of the documented semantics
# ---------------------------------------------------------------------------


def _round(v: Fraction, fmt) -> int:
    """cast(v, fmt) for the modes used here, with Fractions (independent of qfx.intops)."""
    s = v * 2**fmt.frac_bits
    fl = s.numerator // s.denominator
    rem = s - fl
    r = fmt.rounding
    if r is Rounding.AP_TRN:
        c = fl
    elif r is Rounding.AP_RND:
        c = fl + (rem >= Fraction(1, 2))
    elif r is Rounding.AP_RND_CONV:
        c = fl + (rem > Fraction(1, 2) or (rem == Fraction(1, 2) and fl % 2 == 1))
    else:  # pragma: no cover
        raise AssertionError(r)
    lo, hi = fmt.min_code, fmt.max_code
    assert fmt.overflow is Overflow.AP_SAT
    return min(max(c, lo), hi)


def _independent(codes: np.ndarray, in_fmt, exp_fmt, rec_fmt, out_fmt, lo_v: Fraction, span_codes: int, size: int):
    """Softmax of each row of input codes, from the README's semantics, with mpmath and Fractions."""
    lsb = Fraction(1, 2**in_fmt.frac_bits)
    per = span_codes // size  # input codes per entry
    lo_code = int(lo_v / lsb)
    out = []
    for row in codes.tolist():
        m = max(row)
        e = []
        for c in row:
            d = min(max(m - c, lo_code), lo_code + span_codes - 1)
            i = (d - lo_code) // per
            mid = (lo_code + Fraction(2 * i * per + per - 1, 2)) * lsb  # midpoint of the entry's d values
            with mpmath.workdps(80):
                ev = mpmath.exp(-mpmath.mpf(mid.numerator) / mid.denominator)
                fl = int(mpmath.floor(ev * 2**(exp_fmt.frac_bits + 70)))
            # 70 more bits than the exp grid: the exact value's rounding decided by the floor (exp(-q) is irrational)
            e.append(_round(Fraction(fl, 2**(exp_fmt.frac_bits + 70)) + Fraction(1, 2**(exp_fmt.frac_bits + 72)), exp_fmt))
        s = sum(e)
        r = _round(Fraction(2**exp_fmt.frac_bits, s), rec_fmt)
        out.append([_round(Fraction(ei * r, 2**(exp_fmt.frac_bits + rec_fmt.frac_bits)), out_fmt) for ei in e])
    return np.array(out, dtype=np.int64)


@pytest.mark.parametrize("case", [
    # input, exp, reciprocal, output, table_size, table_range (None: the whole d range)
    ("ap_fixed<8,3,AP_RND,AP_SAT>", "ap_ufixed<16,1,AP_RND,AP_SAT>", "ap_ufixed<16,1,AP_RND,AP_SAT>",
     "ap_ufixed<8,0,AP_RND,AP_SAT>", None, None),
    ("ap_fixed<8,3,AP_RND,AP_SAT>", "ap_ufixed<12,1,AP_RND_CONV,AP_SAT>", "ap_ufixed<10,2,AP_TRN,AP_SAT>",
     "ap_fixed<9,1,AP_RND_CONV,AP_SAT>", 32, [0, 4]),
    ("ap_fixed<6,4,AP_TRN,AP_SAT>", "ap_ufixed<8,0,AP_RND,AP_SAT>", "ap_ufixed<6,4,AP_RND,AP_SAT>",
     "ap_ufixed<6,1,AP_TRN,AP_SAT>", 16, None),
])
def test_reference_against_an_independent_computation(case, tmp_path):
    xi, ef, rf, of, size, rng = case
    kw = {"table_size": size} if size else {}
    if rng:
        kw["table_range"] = rng
    sm = qfx.nn.QSoftmax(1, input=xi, exp=ef, reciprocal=rf, output=of, **kw)
    model = nn.Sequential(sm)
    in_fmt = parse_type(xi)
    n_f = 7
    g = np.random.default_rng(5)
    lo, hi = in_fmt.min_code, in_fmt.max_code
    rows = [g.integers(lo, hi + 1, size=n_f) for _ in range(150)]
    rows += [np.full(n_f, lo), np.full(n_f, hi), np.full(n_f, 0), np.array([hi, lo] * 3 + [hi]),
             np.array([lo] * 6 + [hi]), np.array([hi] * 6 + [lo]), g.integers(-2, 3, size=n_f),
             np.array([5, 5, 5, 4, 4, 3, 5])[: n_f] % (hi + 1)]
    codes = np.stack(rows).astype(np.int64)
    x = torch.tensor(codes, dtype=torch.float64) * in_fmt.lsb
    export(model, x, tmp_path / "m")
    man = load(tmp_path / "m")
    node = next(n for n in man if n.op == "softmax")
    ref = run_codes(man, codes)[node.name]
    span = 2**in_fmt.width if rng is None else int(Fraction(rng[1] - rng[0]) * 2**in_fmt.frac_bits)
    want = _independent(codes, in_fmt, parse_type(ef), parse_type(rf), parse_type(of),
                        Fraction(0 if rng is None else rng[0]), span, min(size or 1024, span))
    bad = np.argwhere(ref != want)
    assert bad.size == 0, f"first difference at {bad[0].tolist()}: {ref[tuple(bad[0])]} != {want[tuple(bad[0])]}"
    emu = qfx.to_codes(emulate(model, x)[node.name], node.output_format).numpy()
    assert np.array_equal(emu, ref)
    assert len(np.unique(ref)) > 4


def test_engine_cycles_measured(tmp_path):
    """The softmax engine as the slowest (F = 8 features: ii 2F + 2 = 18 > the dense engine's 16): one
    vector alone takes the modelled ``total``, back-to-back vectors leave every ``ii`` cycles, the
    outputs are the reference's, also under backpressure (Amaranth simulation of the accelerator)."""
    from qfx.hw.accel import Accelerator
    from qfx.hw.accel.engines import engine_cycles, engine_latency
    from qfx.hw.accel.folding import Folding
    from qfx.sim.amaranth_run import run_accelerator

    torch.manual_seed(3)
    x_fmt = "ap_fixed<8,3,AP_RND,AP_SAT>"
    model = nn.Sequential(
        qfx.nn.QLinear(2, 8, input=x_fmt, weight="ap_fixed<8,2,AP_RND_CONV,AP_SAT>", bias="ap_fixed<8,3>", output=x_fmt),
        qfx.nn.QSoftmax(1, input=x_fmt, output="ap_ufixed<16,0,AP_RND,AP_SAT>"),  # fine: shows a 1-lsb slip of r
    )
    x = torch.randn(40, 2) * 2
    export(model, x, tmp_path / "m")
    man = load(tmp_path / "m")
    ref = run(man, x)
    sm = next(n for n in man if n.op == "softmax")
    assert engine_cycles(sm) == {"load": 8, "compute": 18, "outputs": 8}
    assert engine_latency(sm, Folding(), 100) == 100 + 2 * 8 + 3
    acc = Accelerator(man)
    est = acc.cycle_estimate()
    assert est["ii"] == est["engines"][sm.name]["ii"] == 18
    r = run_accelerator(acc, ref[man.input], back_to_back=True, max_cycles=60 * est["total"])
    assert np.array_equal(r.outputs, ref[man.output].reshape(len(x), -1))  # 40 vectors, bit-exact
    xs, want = ref[man.input][:3], ref[man.output].reshape(len(x), -1)[:3]
    assert len(np.unique(want)) > 6
    r = run_accelerator(acc, xs[:1], max_cycles=3 * est["total"])
    assert np.array_equal(r.outputs, want[:1]) and r.cycles == [est["total"]]
    r = run_accelerator(acc, xs, back_to_back=True, max_cycles=10 * est["total"])
    assert np.array_equal(r.outputs, want)
    assert np.diff(r.done_at).tolist() == [est["ii"]] * 2
    r = run_accelerator(acc, xs, stall_in=0.3, stall_out=0.3, seed=1, max_cycles=40 * est["total"])
    assert np.array_equal(r.outputs, want)


# ---------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------


class _Dim(nn.Module):
    def __init__(self, form: str, dim) -> None:
        super().__init__()
        self.fc, self.fc2, self.form, self.dim = nn.Linear(4, 3), nn.Linear(3, 2), form, dim
        self.sm = nn.Softmax(dim=dim)

    def forward(self, x):
        y = self.fc(x)
        if self.form == "module":
            y = self.sm(y)
        elif self.form == "function":
            y = F.softmax(y, dim=self.dim)
        else:
            y = y.softmax(self.dim)
        return self.fc2(y)  # the softmax inside the model


@pytest.mark.parametrize("form,label", [("module", r"module 'sm' \(Softmax\)"),
                                        ("function", r"torch.nn.functional.softmax \(node 'softmax'\)"),
                                        ("method", r"method .softmax\(\) \(node 'softmax'\)")])
def test_softmax_over_the_batch_dim_is_refused_by_name(form, label):
    with pytest.raises(ConversionError, match=label + r": argument dim=0 is not supported; a softmax runs over one "
                                                      r"non-batch dim .*\(not the batch dim 0\)"):
        qfx.convert(_Dim(form, 0), CFG)
    # a dim the tensor does not have (or the batch dim counted from the end): at the first forward pass
    for dim in (2, -2):
        q = qfx.convert(_Dim(form, dim), CFG)
        with pytest.raises(ValueError, match=rf"\(Softmax\): a softmax over dim {dim} of a rank-2 tensor \[3, 3\] is "
                                             r"not supported; a softmax runs over one non-batch dim"):
            q(torch.randn(3, 4))


def test_other_bad_softmax_inputs(tmp_path):
    class NoDim(nn.Module):
        def forward(self, x):
            return F.softmax(x)

    with pytest.raises(ConversionError, match=r"node 'softmax'\): argument dim=None is not supported"):
        qfx.convert(NoDim(), CFG)

    class WithDtype(nn.Module):
        def forward(self, x):
            return F.softmax(x, dim=1, dtype=torch.float64)

    with pytest.raises(ConversionError, match=r"unsupported arguments \['dtype'\]; supported: dim \(an int, not 0\)"):
        qfx.convert(WithDtype(), CFG)

    class Conv(nn.Module):  # over the channels of [N, C, H, W] (dim=1) is supported (tests/test_i14_rows.py); dim 4 is not
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 1)

        def forward(self, x):
            return torch.softmax(self.conv(x), dim=4)

    q = qfx.convert(Conv(), CFG)
    with pytest.raises(ValueError, match=r"layer 'softmax' \(Softmax\): a softmax over dim 4 of a rank-4 tensor "
                                         r"\[2, 3, 2, 2\] is not supported; a softmax runs over one non-batch dim"):
        q(torch.randn(2, 1, 2, 2))
    bad_cfgs = [
        ({"exp": "ap_fixed<16,2,AP_RND,AP_SAT>"}, TableError, r"exp format must be unsigned fixed point"),
        ({"reciprocal": "ap_fixed<16,2>"}, TableError, r"reciprocal format must be unsigned fixed point"),
        ({"exp": "ap_ufixed<8,0,AP_TRN,AP_WRAP>"}, TableError, r"entry for x = max .* is 0, so the sum could be 0"),
        ({"table_range": [0, 3]}, TableError, r"not a power of two"),
        ({"table_range": [-1, 3]}, TableError, r"not inside the range"),
        ({"exp": "ap_ufixed<40,1>", "reciprocal": "ap_ufixed<30,1>"}, TableError, r"too wide together"),
        ({"output": "fp8_e4m3fn"}, ValueError, r"output"),
    ]
    for extra, err, pat in bad_cfgs:
        with pytest.raises(err, match=pat):
            qfx.nn.QSoftmax(1, input="ap_fixed<8,3,AP_RND,AP_SAT>", **{"output": "ap_ufixed<8,0,AP_RND,AP_SAT>", **extra})
    with pytest.raises(ConversionError, match=r"layer 'softmax' \(Softmax\): .*not a power of two"):
        qfx.convert(_Dim("function", 1), dict(CFG, layers={"softmax": {"table_range": [0, 3]}}))


def test_qonnx_refuses_softmax_and_load_refuses_a_wrong_table(tmp_path):
    model = nn.Sequential(
        qfx.nn.QLinear(3, 4, input="ap_fixed<8,3,AP_RND,AP_SAT>", weight="ap_fixed<8,1,AP_RND_CONV,AP_SAT>",
                       bias="ap_fixed<8,3>", output="ap_fixed<8,3,AP_RND,AP_SAT>"),
        qfx.nn.QSoftmax(-1, input="ap_fixed<8,3,AP_RND,AP_SAT>", output="ap_ufixed<8,0,AP_RND,AP_SAT>"),
    )
    x = torch.randn(5, 3)
    export(model, x, tmp_path / "m")
    pytest.importorskip("onnx")
    from qfx.qonnx_export import QonnxExportError, manifest_to_qonnx

    with pytest.raises(QonnxExportError, match=r"node 'n1' \(softmax, source '1'\): a softmax has no exact QONNX lowering"):
        manifest_to_qonnx(tmp_path / "m")
    # a manifest whose exp table is not qfx.tables' is refused on load
    npz = tmp_path / "m" / "tensors.npz"
    data = dict(np.load(npz))
    key = next(k for k in data if k.endswith("table"))
    data[key] = data[key].copy()
    data[key][3] -= 1
    np.savez(npz, **data)
    with pytest.raises(ManifestError, match=r"array 'table' differs from qfx.tables.contents of exp_neg at 1 entries, "
                                            r"first at 3"):
        load(tmp_path / "m")


# ---------------------------------------------------------------------------
# drop_final_softmax
# ---------------------------------------------------------------------------


def test_drop_final_softmax(tmp_path):
    torch.manual_seed(0)
    kept = qfx.convert(JetSoftmax(), CFG)
    assert isinstance(kept.softmax, qfx.nn.QSoftmax) and kept.meta["qfx"]["dropped_softmax"] == []
    for q in (qfx.convert(JetSoftmax(), CFG, drop_final_softmax=True),
              qfx.convert(JetSoftmax(), dict(CFG, drop_final_softmax=True))):
        assert q.meta["qfx"]["dropped_softmax"] == ["softmax"]
        assert not any(isinstance(m, qfx.nn.QSoftmax) for m in q.modules())
        x = torch.randn(20, 16)
        with torch.no_grad():
            logits, probs = q(x), kept(x)
        assert logits.shape == (20, 5)
        export(q, x, tmp_path / "d", force=True)
        man = load(tmp_path / "d")
        assert [n.op for n in man][-2:] == ["dense", "output"]
    # convert's argument overrides the config key
    assert qfx.convert(JetSoftmax(), dict(CFG, drop_final_softmax=True), drop_final_softmax=False) \
        .meta["qfx"]["dropped_softmax"] == []
    # only a final softmax is dropped; one inside stays a QSoftmax
    q = qfx.convert(InnerSoftmax(), dict(CFG, layers=INNER_LAYERS), drop_final_softmax=True)
    assert q.meta["qfx"]["dropped_softmax"] == []  # the last one feeds a ReLU and a dense layer
    assert sum(isinstance(m, qfx.nn.QSoftmax) for m in q.modules()) == 2
    with pytest.raises(ConversionError, match="drop_final_softmax must be true or false"):
        qfx.convert(JetSoftmax(), dict(CFG, drop_final_softmax="yes"))
