"""nn.LayerNorm over the last dim (manifest op ``layernorm``) four ways.

Models: an MLP ``Linear(16, 32) -> LayerNorm(32) -> ReLU -> Linear(32, 4)`` (F a power of two,
elementwise affine with bias) and ``Linear(12, 24) -> LayerNorm(24, elementwise_affine=False) ->
ReLU -> Linear(24, 3)`` (F not a power of two: the reciprocal format). Each: convert -> 4 QAT steps
-> export -> integer reference == emulation on every layer -> ``qfx-gen`` (rtl, hls) -> ``verify``
(Verilator RTL and g++ C simulation vs the reference, and the emulation) with 0 mismatches.

Expected values come from the reference, the emulation and an independent ``Fraction``
computation of the documented rule (:mod:`qfx.layernorm`), never from the hardware. Then: the
inverse square root against ``math.isqrt`` exhaustively, the RTL engine's cycle model against the
Amaranth simulation (LayerNorm with ``bias=False`` on the model input, constant vectors and
extremes included), accuracy against torch's float LayerNorm, and the bad inputs.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qfx
from qfx import layernorm as lnx
from qfx.conversion import ConversionError
from qfx.export import emulate, export
from qfx.manifest import ManifestError, load
from qfx.reference import run, run_codes
from qfx.types import Overflow, Rounding, parse_type
from tests.fourway import config, assert_rtl_and_hls_bit_exact, assert_verilog_lints_clean

LN_FORMATS = {"mean": "ap_fixed<12,3,AP_RND,AP_SAT>", "var": "ap_ufixed<16,5,AP_RND,AP_SAT>",
              "inv_std": "ap_ufixed<16,6,AP_TRN,AP_SAT>", "scale": "ap_fixed<8,2,AP_RND,AP_SAT>",
              "shift": "ap_fixed<10,3,AP_RND,AP_SAT>", "reciprocal": "ap_ufixed<16,0,AP_RND>"}
CFG = config(types={"LayerNorm": dict(LN_FORMATS)})


class MLPLayerNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.ln, self.fc2 = nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(F.relu(self.ln(self.fc1(x))))


class MLPLayerNormPlain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.ln, self.fc2 = nn.Linear(12, 24), nn.LayerNorm(24, elementwise_affine=False), nn.Linear(24, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.ln(self.fc1(x))))


MODELS = {"mlp_layernorm": (MLPLayerNorm, (16,)), "mlp_layernorm_plain": (MLPLayerNormPlain, (12,))}


def _qat(name: str):
    make, shape = MODELS[name]
    torch.manual_seed(0)
    q = qfx.convert(make(), CFG)
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    q.train()
    before = {k: v.detach().clone() for k, v in q.named_parameters()}
    for _ in range(4):
        x = torch.randn(32, *shape, generator=g) * 1.5
        y = q(x)
        loss = F.mse_loss(y, torch.zeros_like(y) + torch.linspace(-1, 1, y.shape[-1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    moved = {k for k, v in q.named_parameters() if not torch.equal(v.detach(), before[k])}
    q.eval()
    return q, torch.randn(40, *shape, generator=g) * 2.0, moved


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory):
    name = request.param
    q, x, moved = _qat(name)
    d = tmp_path_factory.mktemp(name)
    export(q, x, d / "manifest")
    return name, q, x, d, moved


def test_training_moves_the_layernorm_and_the_layers_before_it(exported):
    name, q, _x, _d, moved = exported
    assert "fc1.weight" in moved  # the gradient passes through the layernorm
    if name == "mlp_layernorm":
        assert {"ln.weight", "ln.bias"} <= moved


def test_reference_equals_emulation_on_every_layer(exported):
    name, q, x, d, _ = exported
    man = load(d / "manifest")
    ln = next(n for n in man if n.op == "layernorm")
    assert ln.params["affine"] == (name == "mlp_layernorm") and ln.params["bias"] == (name == "mlp_layernorm")
    assert ("reciprocal" in ln.formats) == (name == "mlp_layernorm_plain")
    assert ln.params["eps_code"] == math.ceil(Fraction(1e-5) * 2 ** ln.formats["var"].frac_bits)
    ref, emu = run(man, x), emulate(q, x)
    for node in man:
        codes = qfx.to_codes(emu[node.name], node.output_format).numpy()
        bad = np.argwhere(ref[node.name] != codes)
        assert bad.size == 0, f"{name}: node {node.name} ({node.op}) differs first at {bad[0].tolist()}"
    assert len(np.unique(ref[ln.name])) > 20 and len(np.unique(ref[man.output])) > 3
    big = run(man, x, big_ints=True)  # the Python-int path gives the same codes
    assert all(np.array_equal(np.asarray(ref[k], dtype=object), big[k]) for k in ref)


def test_rtl_and_hls_bit_exact(exported):
    _name, q, _x, d, _ = exported
    assert_rtl_and_hls_bit_exact(q, d)


def test_cost_model_covers_the_layernorm_engine(exported):
    from qfx.cost.estimate import estimate
    from qfx.hw.accel import Accelerator, estimate_resources

    _name, _q, _x, d, _ = exported
    man = load(d / "manifest")
    ln = next(n for n in man if n.op == "layernorm")
    est = estimate(man)["per_layer"][ln.name]
    assert est["lut"] > 0 and est["ff"] > 0 and est["dsp"] >= 2
    assert estimate_resources(man)["per_layer"][ln.name]["memory_bits"] >= 2 * ln.params["num_features"] * 8
    acc = Accelerator(man)
    acc._MustUse__silence = True  # only its cycle model is used here
    f, ws = ln.params["num_features"], ln.formats["inv_std"].width
    assert acc.cycle_estimate()["engines"][ln.name] == {"load": f, "compute": 3 * f + ws + 4, "outputs": f,
                                                        "ii": 3 * f + ws + 4}


# ---------------------------------------------------------------------------
# The documented rule, independently (Fractions), on chosen and random codes
# ---------------------------------------------------------------------------


def _cast(v: Fraction, fmt) -> int:
    """The ap_fixed cast of an exact rational (the modes these tests use), as a code."""
    s = v * 2 ** fmt.frac_bits
    fl = math.floor(s)
    rem = s - fl
    half = Fraction(1, 2)
    if fmt.rounding is Rounding.AP_TRN:
        c = fl
    elif fmt.rounding is Rounding.AP_RND:
        c = fl + (rem >= half)
    elif fmt.rounding is Rounding.AP_RND_CONV:
        c = fl + (rem > half or (rem == half and fl % 2 == 1))
    elif fmt.rounding is Rounding.AP_RND_ZERO:
        c = fl + (rem > half or (rem == half and s < 0))
    else:  # pragma: no cover
        raise AssertionError(fmt)
    if fmt.overflow is Overflow.AP_SAT:
        return min(max(c, fmt.min_code), fmt.max_code)
    assert fmt.overflow is Overflow.AP_WRAP
    w = fmt.width
    c &= (1 << w) - 1
    return c - (1 << w) if fmt.signed and c >> (w - 1) else c


def _inv_std_search(nv: Fraction, fmt) -> int:
    """The largest code k of ``fmt`` with (k * 2**-F)**2 * nv <= 1 (binary search on exact rationals)."""
    lo, hi = 0, fmt.max_code
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if Fraction(mid, 2 ** fmt.frac_bits) ** 2 * nv <= 1:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _layernorm_fraction(codes: list[int], fm: dict, eps: float, gamma, beta, recip_code) -> list[int]:
    nf = len(codes)
    xi = fm["input"]
    x = [Fraction(c, 2 ** xi.frac_bits) for c in codes]
    div = Fraction(1, nf) if recip_code is None else Fraction(recip_code, 2 ** fm["reciprocal"].frac_bits)
    mean = Fraction(_cast(sum(x) * div, fm["mean"]), 2 ** fm["mean"].frac_bits)
    d = [v - mean for v in x]
    var = Fraction(_cast(sum(t * t for t in d) * div, fm["var"]), 2 ** fm["var"].frac_bits)
    eps_q = Fraction(math.ceil(Fraction(eps) * 2 ** fm["var"].frac_bits), 2 ** fm["var"].frac_bits)
    s = Fraction(_inv_std_search(var + eps_q, fm["inv_std"]), 2 ** fm["inv_std"].frac_bits)
    out = []
    for i, t in enumerate(d):
        v = t * s
        if gamma is not None:
            v = v * Fraction(int(gamma[i]), 2 ** fm["scale"].frac_bits)
            if beta is not None:
                v = v + Fraction(int(beta[i]), 2 ** fm["shift"].frac_bits)
        out.append(_cast(v, fm["output"]))
    return out


CASES = {
    # F = 8 (2**3), ties in the mean (mean has the input's lsb), AP_RND_CONV, affine with bias
    "pow2_affine": (8, dict(input="ap_fixed<8,3,AP_RND,AP_SAT>", mean="ap_fixed<8,3,AP_RND_CONV,AP_SAT>",
                            var="ap_ufixed<12,4,AP_RND,AP_SAT>", inv_std="ap_ufixed<12,5,AP_TRN,AP_SAT>",
                            scale="ap_fixed<8,2,AP_RND,AP_SAT>", shift="ap_fixed<8,2,AP_RND,AP_SAT>",
                            output="ap_fixed<8,3,AP_RND_CONV,AP_SAT>"), dict(eps=1e-5)),
    # F = 12 (the reciprocal), gamma without beta, a large eps (several var lsbs)
    "recip_nobias": (12, dict(input="ap_fixed<6,2,AP_RND,AP_SAT>", mean="ap_fixed<10,2,AP_RND_ZERO,AP_SAT>",
                              var="ap_ufixed<10,3,AP_TRN,AP_SAT>", inv_std="ap_ufixed<10,4,AP_TRN,AP_SAT>",
                              scale="ap_fixed<6,2,AP_RND,AP_SAT>", reciprocal="ap_ufixed<10,0,AP_RND>",
                              output="ap_fixed<8,3,AP_RND,AP_SAT>"), dict(eps=0.05, bias=False)),
    # F = 5, no affine, a wrapping output
    "plain_wrap": (5, dict(input="ap_fixed<8,4,AP_RND,AP_SAT>", mean="ap_fixed<12,4,AP_RND,AP_SAT>",
                           var="ap_ufixed<14,7,AP_RND,AP_SAT>", inv_std="ap_ufixed<8,2,AP_TRN,AP_SAT>",
                           reciprocal="ap_ufixed<12,0,AP_RND>", output="ap_fixed<6,1,AP_RND,AP_WRAP>"),
                   dict(eps=1e-3, elementwise_affine=False)),
}


def _single_layer(case: str, tmp_path):
    nf, fmts, kw = CASES[case]
    torch.manual_seed(3)
    ln = qfx.nn.QLayerNorm(nf, **kw, **fmts)
    if ln.weight is not None:
        with torch.no_grad():
            ln.weight.uniform_(-1.8, 1.8)
            if ln.bias is not None:
                ln.bias.uniform_(-1.5, 1.5)
    model = nn.Sequential(ln).eval()
    x = torch.randn(16, nf) * 2
    export(model, x, tmp_path / "m")
    return model, load(tmp_path / "m")


def _special_codes(fmt, nf: int, rng: np.random.Generator, n_random: int) -> np.ndarray:
    lo, hi = fmt.min_code, fmt.max_code
    rows = [np.full(nf, v) for v in (0, 1, -1, lo, hi, 7)]  # constant vectors: variance 0
    rows.append(np.array([lo, hi] * nf)[:nf])
    rows.append(np.array([hi] + [lo] * (nf - 1)))
    rows.append(np.array([lo] + [hi] * (nf - 1)))
    rows.append(np.array([0] * (nf - 1) + [1]))  # a tiny variance: inv_std saturates
    rows.append(np.arange(nf) - nf // 2)
    rows += list(rng.integers(lo, hi + 1, size=(n_random, nf)))
    rows += list(rng.integers(-3, 4, size=(n_random, nf)))  # small spreads: ties in the mean and var casts
    return np.array(rows, dtype=np.int64)


@pytest.mark.parametrize("case", list(CASES))
def test_reference_equals_the_fraction_rule(case, tmp_path):
    model, man = _single_layer(case, tmp_path)
    node = next(n for n in man if n.op == "layernorm")
    fm, nf = node.formats, node.params["num_features"]
    codes = _special_codes(fm["input"], nf, np.random.default_rng(5), 150)
    got = run_codes(man, codes)[node.name]
    gamma = node.arrays.get("scale")
    beta = node.arrays.get("shift")
    recip = int(node.arrays["reciprocal"]) if "reciprocal" in node.arrays else None
    eps = CASES[case][2]["eps"]
    want = np.array([_layernorm_fraction(list(map(int, row)), fm, eps, gamma, beta, recip) for row in codes])
    bad = np.argwhere(got != want)
    assert bad.size == 0, f"{case}: row {bad[0][0]} {codes[bad[0][0]].tolist()}: {got[bad[0][0]].tolist()} != {want[bad[0][0]].tolist()}"
    assert len(np.unique(got)) > 10
    # the emulation of the same codes
    xi = fm["input"]
    emu = model(torch.tensor(codes, dtype=torch.float64) * 2.0 ** -xi.frac_bits)
    assert np.array_equal(qfx.to_codes(emu, fm["output"]).numpy(), got)


@pytest.mark.parametrize("fmts", [("ap_ufixed<16,5>", "ap_ufixed<16,6,AP_TRN,AP_SAT>", 1),
                                  ("ap_ufixed<12,4>", "ap_ufixed<12,5,AP_TRN,AP_SAT>", 1),
                                  ("ap_ufixed<10,3>", "ap_ufixed<10,4,AP_TRN,AP_SAT>", 52),
                                  ("ap_ufixed<8,8>", "ap_ufixed<6,0,AP_TRN,AP_SAT>", 1)])
def test_inverse_sqrt_equals_math_isqrt_exhaustively(fmts):
    """Every n = var_code + eps_code the var format can give: the hardware's digit-by-digit search
    (qfx.layernorm.inv_sqrt_digits, what the RTL and the C++ do), the reference's definition and the
    emulation's vectorised int64 version all equal min(math.isqrt(2**E // n), 2**W - 1)."""
    from qfx.nn.layernorm import _inv_sqrt

    vf, sf, eps = parse_type(fmts[0]), parse_type(fmts[1]), fmts[2]
    e, w = 2 * sf.frac_bits + vf.frac_bits, sf.width
    ns = list(range(eps, vf.max_code + eps + 1))
    want = [min(math.isqrt((1 << e) // n), (1 << w) - 1) for n in ns]
    assert [lnx.inv_sqrt_digits(n, e, w) for n in ns] == want
    assert [lnx.inv_sqrt_code(n, e, w) for n in ns] == want
    assert _inv_sqrt(torch.tensor(ns, dtype=torch.int64), e, w).tolist() == want
    assert len(set(want)) > 10
    if w == 6:  # 2**6 / sqrt(n) for n = 1 is 64: saturated to the max code 63
        assert want[0] == 63 and want[1] == 45


def test_inv_sqrt_digits_small_ranges_exhaustively():
    for e in range(0, 21):
        for w in range(1, 12):
            for n in range(1, 300):
                assert lnx.inv_sqrt_digits(n, e, w) == min(math.isqrt((1 << e) // n), (1 << w) - 1), (n, e, w)


def test_layernorm_engine_cycles_measured(tmp_path):
    """LayerNorm (F = 24: the reciprocal; gamma without beta) as the model's first and slowest
    layer: one tensor alone takes the modelled ``total`` cycles, back-to-back tensors leave every
    ``ii`` cycles, with backpressure on both sides the outputs are the reference's (Amaranth
    simulation of the whole accelerator), constant vectors and extremes included."""
    from qfx.hw.accel import Accelerator
    from qfx.hw.accel.engines import engine_cycles, engine_latency
    from qfx.hw.accel.folding import Folding
    from qfx.sim.amaranth_run import run_accelerator

    fm = dict(input="ap_fixed<8,3,AP_RND,AP_SAT>", **{k: v for k, v in LN_FORMATS.items() if k != "shift"},
              output="ap_fixed<8,3,AP_RND,AP_SAT>")
    fm["inv_std"] = "ap_ufixed<12,5,AP_TRN,AP_SAT>"
    torch.manual_seed(4)
    model = nn.Sequential(qfx.nn.QLayerNorm(24, bias=False, **fm)).eval()
    with torch.no_grad():
        model[0].weight.uniform_(-1.5, 1.5)
    export(model, torch.randn(6, 24) * 2, tmp_path / "m")
    man = load(tmp_path / "m")
    ln = next(n for n in man if n.op == "layernorm")
    assert engine_cycles(ln) == {"load": 24, "compute": 3 * 24 + 12 + 4, "outputs": 24}
    assert engine_latency(ln, Folding(), 100) == 100 + 88 + 2
    acc = Accelerator(man)
    est = acc.cycle_estimate()
    assert est["ii"] == est["engines"][ln.name]["ii"] == 88
    codes = _special_codes(parse_type(fm["input"]), 24, np.random.default_rng(2), 3)
    want = run_codes(man, codes)[man.output].reshape(len(codes), -1)
    assert len(np.unique(want)) > 20
    r = run_accelerator(acc, codes[:1], max_cycles=3 * est["total"])
    assert np.array_equal(r.outputs, want[:1]) and r.cycles == [est["total"]]
    r = run_accelerator(acc, codes[:4], back_to_back=True, max_cycles=10 * est["total"])
    assert np.array_equal(r.outputs, want[:4])
    assert np.diff(r.done_at).tolist() == [est["ii"]] * 3
    r = run_accelerator(acc, codes, stall_in=0.3, stall_out=0.3, seed=1, max_cycles=60 * est["total"])
    assert np.array_equal(r.outputs, want)


def test_hls_csim_of_a_lone_layernorm_with_rows(tmp_path):
    """[N, 3, F] (three rows per tensor): the reference equals the emulation, the C simulation
    equals the reference on special and random codes, and so does the RTL (Amaranth simulation)."""
    from qfx import hls
    from qfx.hw.accel import Accelerator

    nf, fmts, kw = CASES["recip_nobias"]
    torch.manual_seed(3)
    ln = qfx.nn.QLayerNorm(nf, **kw, **fmts)
    with torch.no_grad():
        ln.weight.uniform_(-1.8, 1.8)
    model = nn.Sequential(ln).eval()
    x = torch.randn(20, 3, nf) * 2
    export(model, x, tmp_path / "m")
    man = load(tmp_path / "m")
    node = next(n for n in man if n.op == "layernorm")
    assert node.input_shapes[0] == (3, nf)
    ref = run(man, x)
    assert np.array_equal(ref[node.name], qfx.to_codes(emulate(model, x)[node.name], node.output_format).numpy())
    hls.generate(man, tmp_path / "g")
    codes = _special_codes(node.formats["input"], 3 * nf, np.random.default_rng(1), 10).reshape(-1, 3, nf)
    got = hls.csim(tmp_path / "g", codes)
    want = run_codes(man, codes)[man.output].reshape(len(codes), -1)
    assert np.array_equal(got, want)
    # the RTL engine takes the rows one after another (tests/test_i14_rows.py: row by row against the one-row engine)
    from qfx.sim.amaranth_run import run_accelerator

    r = run_accelerator(Accelerator(man), codes[:4], back_to_back=True, max_cycles=20_000)
    assert np.array_equal(r.outputs, want[:4])


# ---------------------------------------------------------------------------
# Accuracy against torch's float LayerNorm
# ---------------------------------------------------------------------------

ACCURACY = {  # word length: (formats, stated bound on max |qfx - float| over the test batch)
    8: (dict(input="ap_fixed<8,3,AP_RND,AP_SAT>", mean="ap_fixed<12,3,AP_RND,AP_SAT>",
             var="ap_ufixed<12,5,AP_RND,AP_SAT>", inv_std="ap_ufixed<12,4,AP_TRN,AP_SAT>",
             scale="ap_fixed<8,2,AP_RND,AP_SAT>", shift="ap_fixed<8,2,AP_RND,AP_SAT>",
             output="ap_fixed<8,3,AP_RND,AP_SAT>"), 0.15),
    12: (dict(input="ap_fixed<12,4,AP_RND,AP_SAT>", mean="ap_fixed<16,4,AP_RND,AP_SAT>",
              var="ap_ufixed<16,6,AP_RND,AP_SAT>", inv_std="ap_ufixed<16,4,AP_TRN,AP_SAT>",
              scale="ap_fixed<12,3,AP_RND,AP_SAT>", shift="ap_fixed<12,3,AP_RND,AP_SAT>",
              output="ap_fixed<12,4,AP_RND,AP_SAT>"), 0.02),
    16: (dict(input="ap_fixed<16,4,AP_RND,AP_SAT>", mean="ap_fixed<18,4,AP_RND,AP_SAT>",
              var="ap_ufixed<20,6,AP_RND,AP_SAT>", inv_std="ap_ufixed<16,4,AP_TRN,AP_SAT>",
              scale="ap_fixed<12,2,AP_RND,AP_SAT>", shift="ap_fixed<16,3,AP_RND,AP_SAT>",
              output="ap_fixed<16,4,AP_RND,AP_SAT>"), 0.002),
}


@pytest.mark.parametrize("bits", list(ACCURACY))
def test_accuracy_against_float_layernorm(bits):
    """On inputs the input format holds (|x| < 4, spread ~1), against torch's LayerNorm of the same
    values with the quantized gamma/beta: max |error| below the stated bound (0.15 at 8 bits, 0.02 at
    12, 0.002 at 16 bits: a few output lsbs; the mean/var casts, the truncated inverse square root and
    eps on the var grid add less than one output lsb here)."""
    fmts, bound = ACCURACY[bits]
    torch.manual_seed(7)
    ln = qfx.nn.QLayerNorm(32, **fmts).eval()
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    xi = parse_type(fmts["input"])
    x = qfx.quantize((torch.randn(256, 32) * 0.9 + torch.randn(256, 1) * 0.5).double(), xi)
    y = ln(x).double()
    g = qfx.quantize(ln.weight.detach().double(), parse_type(fmts["scale"]))
    b = qfx.quantize(ln.bias.detach().double(), parse_type(fmts["shift"]))
    ref = F.layer_norm(x, (32,), g, b, eps=1e-5)
    out = parse_type(fmts["output"])
    ref = ref.clamp(out.min_code * 2.0 ** -out.frac_bits, out.max_code * 2.0 ** -out.frac_bits)
    err = float((y.detach() - ref).abs().max())
    assert err < bound, f"{bits}-bit: max error {err}"
    lsb = 2.0 ** -parse_type(fmts["output"]).frac_bits
    assert err >= lsb / 4  # not the float computation itself


# ---------------------------------------------------------------------------
# Bad inputs: each error names the layer and says what is supported
# ---------------------------------------------------------------------------


class _Wrap(nn.Module):
    def __init__(self, ln: nn.Module, f: int = 8) -> None:
        super().__init__()
        self.fc, self.ln = nn.Linear(4, f), ln

    def forward(self, x):
        return self.ln(self.fc(x))


@pytest.mark.parametrize("ln, words", [
    (nn.LayerNorm((2, 4)), ["'ln'", "normalized_shape=(2, 4)", "last dim"]),
    (nn.LayerNorm(8, eps=0.0), ["'ln'", "eps=0.0", "> 0"]),
])
def test_unsupported_layernorm_modules_are_named(ln, words):
    with pytest.raises(ConversionError) as err:
        qfx.convert(_Wrap(ln), CFG)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("change, words", [
    ({"mean": None}, ["'ln'", "LayerNorm", "mean"]),
    ({"inv_std": "ap_ufixed<16,6,AP_RND,AP_SAT>"}, ["'ln'", "inv_std", "AP_TRN", "AP_SAT"]),
    ({"var": "ap_fixed<16,5,AP_RND,AP_SAT>"}, ["'ln'", "var", "unsigned"]),
    ({"inv_std": "ap_ufixed<40,6,AP_TRN,AP_SAT>"}, ["'ln'", "inv_std", "0..60"]),
])
def test_bad_layernorm_formats_are_named(change, words):
    types = {k: v for k, v in {**LN_FORMATS, **change}.items() if v is not None}
    cfg = {"default": {k: v for k, v in CFG["default"].items()}, "types": {"LayerNorm": types}}
    with pytest.raises(ConversionError) as err:
        qfx.convert(_Wrap(nn.LayerNorm(8)), cfg)
    for w in words:
        assert w in str(err.value)


def test_non_power_of_two_needs_a_reciprocal():
    types = {k: v for k, v in LN_FORMATS.items() if k != "reciprocal"}
    cfg = {"default": dict(CFG["default"]), "types": {"LayerNorm": types}}
    with pytest.raises(ConversionError, match=r"'ln'.*reciprocal"):
        qfx.convert(_Wrap(nn.LayerNorm(12), 12), cfg)
    qfx.convert(_Wrap(nn.LayerNorm(16), 16), cfg)  # 16 = 2**4: no reciprocal needed


def test_layernorm_variants_convert():
    for ln in (nn.LayerNorm(8, elementwise_affine=False), nn.LayerNorm(8, bias=False), nn.LayerNorm([8])):
        q = qfx.convert(_Wrap(ln), CFG)
        assert (q.ln.weight is None) == (not ln.elementwise_affine)
        assert (q.ln.bias is None) == (getattr(ln, "bias", None) is None)
        assert q.ln(torch.randn(3, 8)).shape == (3, 8)


def test_wrong_last_dim_and_direct_errors():
    ln = qfx.nn.QLayerNorm(8, input="ap_fixed<8,3>", output="ap_fixed<8,3>", **LN_FORMATS)
    with pytest.raises(ValueError, match=r"\[N, \.\.\., 8\]"):
        ln(torch.randn(3, 6))
    with pytest.raises(ValueError, match="normalized_shape"):
        qfx.nn.QLayerNorm((2, 4), **LN_FORMATS)
    with pytest.raises(ValueError, match="eps"):
        qfx.nn.QLayerNorm(8, eps=-1.0, **LN_FORMATS)


def test_qonnx_export_refuses_layernorm_by_name(tmp_path):
    pytest.importorskip("onnx")
    from qfx.qonnx_export import QonnxExportError, manifest_to_qonnx

    q = qfx.convert(_Wrap(nn.LayerNorm(8)), CFG)
    q(torch.randn(8, 4))
    q.eval()
    export(q, torch.randn(8, 4), tmp_path / "m")
    with pytest.raises(QonnxExportError, match=r"'ln'.*LayerNorm.*no QONNX export"):
        manifest_to_qonnx(load(tmp_path / "m"))


def test_manifest_checks_layernorm(tmp_path):
    import yaml

    q = qfx.convert(_Wrap(nn.LayerNorm(8)), CFG)
    q(torch.randn(8, 4))
    q.eval()
    export(q, torch.randn(8, 4), tmp_path / "m")
    path = tmp_path / "m" / "manifest.yaml"
    doc = yaml.safe_load(path.read_text())
    node = next(n for n in doc["nodes"] if n["op"] == "layernorm")
    for edit, words in [(("params", "eps_code", 7), "eps_code"), (("formats", "inv_std", "ap_ufixed<16,6>"), "AP_TRN"),
                        (("params", "bias", False), "params.bias")]:
        bad = yaml.safe_load(path.read_text())
        nb = next(n for n in bad["nodes"] if n["name"] == node["name"])
        nb[edit[0]][edit[1]] = edit[2]
        (tmp_path / "bad").mkdir(exist_ok=True)
        for f in (tmp_path / "m").iterdir():
            (tmp_path / "bad" / f.name).write_bytes(f.read_bytes())
        (tmp_path / "bad" / "manifest.yaml").write_text(yaml.safe_dump(bad))
        with pytest.raises(ManifestError, match=words):
            load(tmp_path / "bad")


@pytest.mark.parametrize("n_bits, e, width", [(10, 20, 10), (9, 17, 8), (8, 12, 6), (7, 0, 3)])
def test_rtl_inverse_sqrt_unit_exhaustively(n_bits, e, width):
    """The engine's InvSqrtUnit in Amaranth simulation, every n in 1 .. 2**n_bits - 1 (E even and
    odd, saturating and not): ``k == min(math.isqrt(2**e // n), 2**width - 1)``, held after the
    ``width`` steps."""
    from amaranth.sim import Simulator

    from qfx.hw.accel.engines_norm import InvSqrtUnit

    dut = InvSqrtUnit(n_bits, e, width)
    ns = list(range(1, 1 << n_bits))
    got: list[int] = []

    async def bench(ctx):
        for n in ns:
            ctx.set(dut.n, n)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            await ctx.tick().repeat(width)
            k = ctx.get(dut.k)
            await ctx.tick().repeat(2)  # held
            assert ctx.get(dut.k) == k
            got.append(k)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == [min(math.isqrt((1 << e) // n), (1 << width) - 1) for n in ns]


def test_verilog_lints_clean_and_is_deterministic(exported, tmp_path):
    name, _q, _x, d, _ = exported
    assert_verilog_lints_clean(d / "manifest", tmp_path, name)


def test_cost_report_covers_the_layernorm(exported, tmp_path):
    from qfx.cost.report import cost_report

    _name, _q, _x, d, _ = exported
    rep = cost_report(d / "manifest", synth=False)
    man = load(d / "manifest")
    ln = next(n for n in man if n.op == "layernorm")
    assert rep["throughput"]["per_engine_cycles"][ln.name]["compute"] == 3 * ln.params["num_features"] + \
        ln.formats["inv_std"].width + 4
    row = rep["energy"]["per_layer"][ln.name]
    assert row["product_pj"] > 0 and row["memory_pj"] > 0 and row["total_pj"] > row["product_pj"]
    assert rep["resources"]["per_layer"][ln.name]["dsp"] >= 2


def test_gradient_is_the_float_layernorms():
    """Backward: the float LayerNorm's gradient of the quantized input / gamma / beta (straight
    through the integer statistics and the casts; nothing saturates here), while the forward
    values are the integer rule's."""
    fm = dict(input="ap_fixed<12,4,AP_RND,AP_SAT>", mean="ap_fixed<16,4,AP_RND,AP_SAT>",
              var="ap_ufixed<16,6,AP_RND,AP_SAT>", inv_std="ap_ufixed<16,4,AP_TRN,AP_SAT>",
              scale="ap_fixed<12,3,AP_RND,AP_SAT>", shift="ap_fixed<12,3,AP_RND,AP_SAT>",
              output="ap_fixed<16,6,AP_RND,AP_SAT>")
    torch.manual_seed(11)
    ln = qfx.nn.QLayerNorm(16, **fm)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    x = qfx.quantize(torch.randn(8, 16, dtype=torch.float64), parse_type(fm["input"])).requires_grad_(True)
    w = torch.randn(8, 16, dtype=torch.float64)
    (ln(x) * w).sum().backward()
    g_q = qfx.quantize(ln.weight.detach().double(), parse_type(fm["scale"])).requires_grad_(True)
    b_q = qfx.quantize(ln.bias.detach().double(), parse_type(fm["shift"])).requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    (F.layer_norm(x2, (16,), g_q, b_q, eps=ln.eps) * w).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-9)
    assert torch.allclose(ln.weight.grad.double(), g_q.grad, atol=1e-9)
    assert torch.allclose(ln.bias.grad.double(), b_q.grad, atol=1e-9)


@pytest.mark.parametrize("case", ["pow2_affine", "recip_nobias"])
def test_hls_inverse_sqrt_exhaustively(case, tmp_path):
    """The generated C++ helper ``<node>_inv_sqrt`` (g++ against the real ap_types headers), for
    every n = var code + eps_code the node's var format can give, equals min(math.isqrt(2**E // n),
    2**W - 1)."""
    import subprocess

    from qfx import hls

    _model, man = _single_layer(case, tmp_path)
    node = next(n for n in man if n.op == "layernorm")
    d = hls.generate(man, tmp_path / "g")
    vf, sf, eps = node.formats["var"], node.formats["inv_std"], int(node.params["eps_code"])
    e, w = 2 * sf.frac_bits + vf.frac_bits, sf.width
    wn = max(vf.width, eps.bit_length()) + 1
    top = next(p for p in d.glob("*.cpp") if not p.name.endswith("_tb.cpp"))
    main = tmp_path / "isqrt_main.cpp"
    main.write_text(f'#include "{top.name}"\n#include <cstdio>\nint main() {{\n'
                    f'    for (long n = {eps}; n <= {vf.max_code + eps}; n++) {{\n'
                    f'        ap_uint<{wn}> nv = n;\n        const ap_uint<{w}> c = {node.name}_inv_sqrt(nv).range({w - 1}, 0);\n'
                    f'        printf("%llu\\n", (unsigned long long)c.to_uint64());\n    }}\n    return 0;\n}}\n')
    exe = tmp_path / "isqrt_main"
    cxx = __import__("shutil").which("g++")
    if cxx is None:
        pytest.skip("no g++")
    r = subprocess.run([cxx, *hls.CXX_FLAGS, "-isystem", str(hls.include_dir()), "-I", str(d), str(main), "-o", str(exe)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = [int(v) for v in subprocess.run([str(exe)], capture_output=True, text=True, timeout=60).stdout.split()]
    want = [min(math.isqrt((1 << e) // n), (1 << w) - 1) for n in range(eps, vf.max_code + eps + 1)]
    assert got == want
