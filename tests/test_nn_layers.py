"""qfx.nn layers against independent integer/rational reference loops.

The references here never call qfx.quantize or the layer code: casts go
through tests/oracles/exact_model.py (exact rationals), minifloat rounding
through tests/oracles/minifloat_exact.py, K-hot through brute-force
enumeration, L-Mul through the paper's formula. Accumulation is the explicit
HLS loop in the documented order, one cast per step.
"""

from __future__ import annotations

import math
from fractions import Fraction as Fr

import pytest
import torch

import qfx
from qfx.nn import QConv2d, QLinear
from qfx.types import FixedType, KHot, Overflow
from tests.oracles.ap_types_oracle import FixedConfig
from tests.oracles.exact_model import exact_cast, round_scaled
from tests.oracles.minifloat_exact import round_minifloat
from tests.test_khot_lmul import brute_force_khot_codes, nearest_toward_zero


X_FMT = "ap_fixed<8,3,AP_RND,AP_SAT>"
W_FMT = "ap_fixed<8,1,AP_RND_CONV,AP_SAT>"
B_FMT = "ap_fixed<12,4,AP_RND>"
Y_FMT = "ap_fixed<10,4,AP_RND_CONV,AP_SAT>"


# ---------------------------------------------------------------------------
# The reference: exact rationals, explicit loops
# ---------------------------------------------------------------------------


def _cfg(t: FixedType) -> FixedConfig:
    return FixedConfig(t.width, t.int_bits, t.signed, t.rounding.value, t.overflow.value)


def cast(t: FixedType, v: Fr) -> Fr:
    return Fr(exact_cast(_cfg(t), Fr(v))) / Fr(2) ** t.frac_bits


def overflows(t: FixedType, v: Fr) -> bool:
    n = round_scaled(Fr(v) * Fr(2) ** t.frac_bits, t.rounding.value)
    lo, hi = t.min_code, t.max_code
    if t.signed and t.overflow is Overflow.AP_SAT_SYM:
        lo = -hi
    return not lo <= n <= hi


def weight_value(fmt, w: float) -> Fr:
    if isinstance(fmt, FixedType):
        return cast(fmt, Fr(w))
    if isinstance(fmt, KHot):
        lsb = Fr(2) ** -fmt.base.frac_bits
        codes = _khot_codes(fmt)
        return nearest_toward_zero(Fr(w) / lsb, codes) * lsb
    return Fr(round_minifloat(w, fmt))


_KHOT_CACHE: dict = {}


def _khot_codes(fmt: KHot) -> list[int]:
    if fmt not in _KHOT_CACHE:
        _KHOT_CACHE[fmt] = brute_force_khot_codes(fmt.base, fmt.k)
    return _KHOT_CACHE[fmt]


def _floor_log2(v: Fr) -> int:
    e = v.numerator.bit_length() - v.denominator.bit_length()
    while Fr(2) ** e > v:
        e -= 1
    while Fr(2) ** (e + 1) <= v:
        e += 1
    return e


def lmul_value(a: Fr, b: Fr, m: int) -> Fr:
    """Luo & Sun's L-Mul on exact operands: (1 + xa + xb + 2**-l(m)) * 2**(ea + eb)."""
    if a == 0 or b == 0:
        return Fr(0)
    ea, eb = _floor_log2(abs(a)), _floor_log2(abs(b))
    xa, xb = abs(a) / Fr(2) ** ea - 1, abs(b) / Fr(2) ** eb - 1
    ell = m if m <= 3 else (3 if m == 4 else 4)
    mag = (1 + xa + xb + Fr(1, 2**ell)) * Fr(2) ** (ea + eb)
    return mag if (a < 0) == (b < 0) else -mag


class Mac:
    """One HLS accumulation: acc = cast(bias, A); acc = cast(acc + p, A) ...; A=None: exact."""

    def __init__(self, accum: FixedType | None, stats: dict):
        self.accum, self.stats = accum, stats

    def start(self, bias: Fr) -> Fr:
        return self._cast(bias)

    def step(self, acc: Fr, p: Fr) -> Fr:
        return self._cast(acc + p)

    def _cast(self, v: Fr) -> Fr:
        if self.accum is None:
            return v
        if overflows(self.accum, v):
            self.stats["overflow"] += 1
        c = cast(self.accum, v)
        if c != v:
            self.stats["changed"] += 1
        return c


def product(x: Fr, w: Fr, wfmt, multiply: str) -> Fr:
    if multiply == "lmul":
        xm = Fr(round_minifloat(float(x), wfmt))
        return lmul_value(xm, w, wfmt.mantissa_bits)
    return x * w


def ref_linear(x, w, b, *, wfmt, accum, out, multiply="exact"):
    """x: [B][K] floats, w: [O][K] floats, b: [O] floats or None -> ([B][O] Fractions, stats).

    ``wfmt`` may be a list: one weight format per output row.
    """
    xf, of = qfx.parse_type(X_FMT), qfx.parse_type(out)
    stats = {"overflow": 0, "changed": 0}
    mac = Mac(accum, stats)
    row_fmts = wfmt if isinstance(wfmt, (list, tuple)) else [wfmt] * len(w)
    wv = [[weight_value(f, v) for v in row] for f, row in zip(row_fmts, w)]
    bv = [cast(qfx.parse_type(B_FMT), Fr(v)) for v in b] if b is not None else None
    ys = []
    for row in x:
        xv = [cast(xf, Fr(v)) for v in row]
        out_row = []
        for o in range(len(w)):
            acc = mac.start(bv[o] if bv is not None else Fr(0))
            for k in range(len(xv)):  # ascending input feature index
                acc = mac.step(acc, product(xv[k], wv[o][k], wfmt, multiply))
            out_row.append(cast(of, acc))
        ys.append(out_row)
    return ys, stats


def ref_conv(x, w, b, *, wfmt, accum, out, stride, padding, dilation, groups, multiply="exact"):
    """Direct 7-deep loop; x [N][C][H][W], w [O][C/g][KH][KW] (nested lists of floats)."""
    xf, of = qfx.parse_type(X_FMT), qfx.parse_type(out)
    stats = {"overflow": 0, "changed": 0}
    mac = Mac(accum, stats)
    n_, c_, h_, w_ = len(x), len(x[0]), len(x[0][0]), len(x[0][0][0])
    o_, cg, kh, kw = len(w), len(w[0]), len(w[0][0]), len(w[0][0][0])
    xv = [[[[cast(xf, Fr(v)) for v in r] for r in ch] for ch in img] for img in x]
    wv = [[[[weight_value(wfmt, v) for v in r] for r in ch] for ch in oc] for oc in w]
    bv = [cast(qfx.parse_type(B_FMT), Fr(v)) for v in b] if b is not None else None
    ho = (h_ + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (w_ + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    per_group = o_ // groups
    y = []
    for n in range(n_):
        img = []
        for o in range(o_):
            g = o // per_group
            plane = []
            for oy in range(ho):
                row = []
                for ox in range(wo):
                    acc = mac.start(bv[o] if bv is not None else Fr(0))
                    for c in range(cg):  # input channel, then kernel row, then kernel column
                        for i in range(kh):
                            for j in range(kw):
                                iy, ix = oy * stride - padding + i * dilation, ox * stride - padding + j * dilation
                                inside = 0 <= iy < h_ and 0 <= ix < w_
                                xval = xv[n][g * cg + c][iy][ix] if inside else Fr(0)
                                acc = mac.step(acc, product(xval, wv[o][c][i][j], wfmt, multiply))
                    row.append(cast(of, acc))
                plane.append(row)
            img.append(plane)
        y.append(img)
    return y, stats


def as_fractions(t: torch.Tensor):
    return [Fr(v) for v in t.detach().double().reshape(-1).tolist()]


def flat(nested) -> list:
    if isinstance(nested, list):
        return [v for item in nested for v in flat(item)]
    return [nested]


# ---------------------------------------------------------------------------
# Dense and conv vs the reference
# ---------------------------------------------------------------------------

WEIGHTS = [
    pytest.param(W_FMT, "exact", id="fixed"),
    pytest.param("khot<2,ap_fixed<8,1>>", "exact", id="khot"),
    pytest.param("fp8_e4m3fn", "exact", id="minifloat"),
    pytest.param("fp6_e3m2fn", "lmul", id="lmul-e3m2"),
    pytest.param("fp8_e4m3fn", "lmul", id="lmul-e4m3"),
]
# "auto", then accumulators that really round and overflow (checked in the tests).
ACCUMS = ["auto", "ap_fixed<10,3,AP_RND_CONV,AP_SAT>", "ap_fixed<9,2,AP_TRN,AP_WRAP>"]


def _data(seed, *shapes, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g) * scale for s in shapes]


def _check_narrow(accum, stats):
    if accum != "auto":
        # Otherwise the comparison would not test the step-by-step cast at all.
        assert stats["overflow"] > 0 and stats["changed"] > stats["overflow"], stats


@pytest.mark.parametrize("weight, multiply", WEIGHTS)
@pytest.mark.parametrize("accum", ACCUMS)
def test_linear_matches_integer_loop(weight, multiply, accum):
    x, w, b = _data(1, (5, 9), (3, 9), (3,))
    w = w * 0.6
    layer = QLinear(9, 3, input=X_FMT, weight=weight, bias=B_FMT, accum=accum, output=Y_FMT, multiply=multiply)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    got = layer(x)
    a = None if accum == "auto" else qfx.parse_type(accum)
    want, stats = ref_linear(x.tolist(), w.tolist(), b.tolist(), wfmt=qfx.parse_type(weight), accum=a, out=Y_FMT, multiply=multiply)
    _check_narrow(accum, stats)
    assert got.shape == (5, 3)
    assert as_fractions(got) == flat(want)


@pytest.mark.parametrize("weight, multiply", WEIGHTS)
@pytest.mark.parametrize("accum", ACCUMS[:2])
def test_conv_matches_integer_loop(weight, multiply, accum):
    x, w, b = _data(2, (2, 4, 5, 5), (4, 2, 3, 3), (4,))
    w = w * 0.6
    geometry = dict(stride=2, padding=1, dilation=1, groups=2)
    layer = QConv2d(4, 4, 3, **geometry, input=X_FMT, weight=weight, bias=B_FMT, accum=accum, output=Y_FMT, multiply=multiply)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    got = layer(x)
    a = None if accum == "auto" else qfx.parse_type(accum)
    want, stats = ref_conv(x.tolist(), w.tolist(), b.tolist(), wfmt=qfx.parse_type(weight), accum=a, out=Y_FMT, multiply=multiply, **geometry)
    _check_narrow(accum, stats)
    assert got.shape == (2, 4, 3, 3)
    assert as_fractions(got) == flat(want)


@pytest.mark.parametrize("accum", ACCUMS)
def test_conv_dilation_no_bias_wrap(accum):
    x, w = _data(3, (1, 3, 6, 6), (2, 3, 2, 3))
    geometry = dict(stride=1, padding=2, dilation=2, groups=1)
    layer = QConv2d(3, 2, (2, 3), **geometry, bias=False, input=X_FMT, weight=W_FMT, accum=accum, output=Y_FMT)
    with torch.no_grad():
        layer.weight.copy_(w)
    got = layer(x)
    a = None if accum == "auto" else qfx.parse_type(accum)
    want, stats = ref_conv(x.tolist(), w.tolist(), None, wfmt=qfx.parse_type(W_FMT), accum=a, out=Y_FMT, **geometry)
    _check_narrow(accum, stats)
    assert as_fractions(got) == flat(want)


@pytest.mark.parametrize("accum", ACCUMS[:2])
def test_per_channel_weight_binary_points_match_reference(accum):
    x, w, b = _data(13, (4, 7), (3, 7), (3,))
    w = w * torch.tensor([[0.05], [0.5], [3.0]])
    layer = QLinear(7, 3, input=X_FMT, weight=W_FMT, bias=B_FMT, accum=accum, output=Y_FMT,
                    learn_binary_point=["weight"], weight_per_channel=True)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    layer(x)  # calibrates one binary point per output row
    fmts = layer.effective_format("weight")
    assert len({t.int_bits for t in fmts}) == 3
    got = layer(x)
    a = None if accum == "auto" else qfx.parse_type(accum)
    want, stats = ref_linear(x.tolist(), w.tolist(), b.tolist(), wfmt=list(fmts), accum=a, out=Y_FMT)
    _check_narrow(accum, stats)
    assert as_fractions(got) == flat(want)
    layer.freeze()
    assert torch.equal(layer(x), got)


def test_accum_overflow_counter_matches_reference():
    x, w, b = _data(4, (5, 9), (3, 9), (3,))
    accum = "ap_fixed<9,2,AP_TRN,AP_WRAP>"
    layer = QLinear(9, 3, input=X_FMT, weight=W_FMT, bias=B_FMT, accum=accum, output=Y_FMT, track_overflow=True)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    layer(x)
    _, stats = ref_linear(x.tolist(), w.tolist(), b.tolist(), wfmt=qfx.parse_type(W_FMT), accum=qfx.parse_type(accum), out=Y_FMT)
    counts = layer.overflow_counts()
    assert counts["accum"] == stats["overflow"] > 0
    assert counts["input"] == qfx.count_overflow(x, X_FMT)


# ---------------------------------------------------------------------------
# Accumulator sizing and the fast path
# ---------------------------------------------------------------------------


def test_auto_accum_is_the_exact_type():
    layer = QLinear(9, 3, input=X_FMT, weight=W_FMT, bias=B_FMT, output=Y_FMT)
    # <8,3> * <8,1> = <16,4>; 9 terms: 4 more bits <20,8>; + <12,4> bias: <21,9>
    assert str(layer.effective_format("accum")) == "ap_fixed<21,9>"
    mf = QLinear(9, 3, input=X_FMT, weight="fp8_e4m3fn", bias=False, output=Y_FMT)
    # e4m3fn values: |w| < 2**9, step 2**-9: <19,10>; product <27,13>; 9 terms <31,17>
    assert str(mf.effective_format("accum")) == "ap_fixed<31,17>"
    lm = QLinear(1, 1, bias=False, input=X_FMT, weight="fp8_e4m3fn", multiply="lmul", output=Y_FMT)
    t = lm.effective_format("accum")
    # every L-Mul product of two e4m3fn values (from the formula) lies in that type
    vals = sorted({abs(Fr(round_minifloat(float(v), qfx.parse_type("fp8_e4m3fn")))) for v in torch.logspace(-10, 8.5, 60, base=2).tolist()})
    for a in vals:
        p = lmul_value(a, Fr(448), 3)
        assert p * 2**t.frac_bits == int(p * 2**t.frac_bits) and p <= t.max
        p = lmul_value(a, Fr(1, 512), 3)
        assert p * 2**t.frac_bits == int(p * 2**t.frac_bits)


def test_fast_path_for_auto_and_wide_accum(monkeypatch):
    import qfx.nn.mac as mac

    def fail(*args, **kwargs):
        raise AssertionError("the step-by-step loop ran")

    x, w = _data(5, (4, 9), (3, 9))
    ref = QLinear(9, 3, bias=False, input=X_FMT, weight=W_FMT, accum="ap_fixed<10,3,AP_RND_CONV,AP_SAT>", output=Y_FMT)
    with torch.no_grad():
        ref.weight.copy_(w)
    wide = QLinear(9, 3, bias=False, input=X_FMT, weight=W_FMT, accum="ap_fixed<40,20,AP_TRN,AP_WRAP>", output=Y_FMT)
    auto = QLinear(9, 3, bias=False, input=X_FMT, weight=W_FMT, output=Y_FMT)
    wide.load_state_dict(ref.state_dict())
    auto.load_state_dict(ref.state_dict())
    assert wide.accum_is_exact() and auto.accum_is_exact() and not ref.accum_is_exact()
    narrow_y = ref(x)
    monkeypatch.setattr(mac, "accumulate_steps", fail)
    assert torch.equal(wide(x), auto(x))
    assert not torch.equal(narrow_y, auto(x))
    with pytest.raises(AssertionError, match="step-by-step"):
        ref(x)


def test_too_wide_for_float64_is_an_error():
    layer = QLinear(4, 2, bias=False, input="ap_fixed<30,10>", weight="ap_fixed<30,2>", output=Y_FMT)
    with pytest.raises(ValueError, match="53 bits"):
        layer(torch.randn(1, 4))


# ---------------------------------------------------------------------------
# Element-wise layers vs the reference
# ---------------------------------------------------------------------------


def _elementwise(values, f, in_fmt, out_fmt):
    ti, to = qfx.parse_type(in_fmt), qfx.parse_type(out_fmt)
    return [cast(to, f(cast(ti, Fr(v)))) for v in values]


def test_activations_match_reference():
    (x,) = _data(6, (2, 3, 4, 4), scale=4.0)
    out = "ap_ufixed<6,3,AP_RND,AP_SAT>"
    sout = "ap_fixed<7,3,AP_RND_INF,AP_SAT>"
    vals = x.reshape(-1).tolist()
    relu = qfx.nn.QReLU(input=X_FMT, output=out)(x)
    assert as_fractions(relu) == _elementwise(vals, lambda v: max(v, Fr(0)), X_FMT, out)
    relu6 = qfx.nn.QReLU6(input="ap_fixed<10,5,AP_RND>", output="ap_ufixed<8,3,AP_RND,AP_SAT>")(x * 2)
    assert as_fractions(relu6) == _elementwise((x * 2).reshape(-1).tolist(), lambda v: min(max(v, Fr(0)), Fr(6)), "ap_fixed<10,5,AP_RND>", "ap_ufixed<8,3,AP_RND,AP_SAT>")
    leaky = qfx.nn.QLeakyReLU(0.125, input=X_FMT, output=sout)
    assert leaky.slope_shift == 3
    assert as_fractions(leaky(x)) == _elementwise(vals, lambda v: v if v >= 0 else v / 8, X_FMT, sout)


def test_add_matches_reference():
    a, b = _data(7, (2, 3, 4), (2, 3, 4), scale=3.0)
    ta, tb, to = "ap_fixed<8,3,AP_RND>", "ap_fixed<6,2,AP_TRN,AP_SAT>", "ap_fixed<7,3,AP_RND_CONV,AP_SAT>"
    got = qfx.nn.QAdd(in_a=ta, in_b=tb, output=to)(a, b)
    want = [
        cast(qfx.parse_type(to), cast(qfx.parse_type(ta), Fr(u)) + cast(qfx.parse_type(tb), Fr(v)))
        for u, v in zip(a.reshape(-1).tolist(), b.reshape(-1).tolist())
    ]
    assert as_fractions(got) == want
    # in_a / in_b default to input
    q = qfx.nn.QAdd(input=ta, output=to)
    assert q.effective_format("in_b") == qfx.parse_type(ta)


def _windows(x, k, s, p):
    n, c, h, w = x.shape
    for ni in range(n):
        for ci in range(c):
            for oy in range((h + 2 * p - k) // s + 1):
                for ox in range((w + 2 * p - k) // s + 1):
                    yield [
                        x[ni, ci, oy * s - p + i, ox * s - p + j].item() if (0 <= oy * s - p + i < h and 0 <= ox * s - p + j < w) else None
                        for i in range(k)
                        for j in range(k)
                    ]


def test_max_pool_matches_reference():
    (x,) = _data(8, (2, 2, 5, 5), scale=3.0)
    out = "ap_fixed<6,2,AP_RND,AP_SAT>"
    got = qfx.nn.QMaxPool2d(3, 2, 1, input=X_FMT, output=out)(x)
    ti, to = qfx.parse_type(X_FMT), qfx.parse_type(out)
    want = [cast(to, max(cast(ti, Fr(v)) for v in win if v is not None)) for win in _windows(x, 3, 2, 1)]
    assert as_fractions(got) == want


@pytest.mark.parametrize("k, recip", [(2, None), (3, "ap_ufixed<8,-3,AP_RND>")])
def test_avg_pool_matches_reference(k, recip):
    (x,) = _data(9, (2, 2, 6, 6), scale=3.0)
    out = "ap_fixed<8,3,AP_RND_CONV,AP_SAT>"
    kw = {"reciprocal": recip} if recip else {}
    layer = qfx.nn.QAvgPool2d(k, 1, 1, input=X_FMT, output=out, **kw)
    got = layer(x)
    ti, to = qfx.parse_type(X_FMT), qfx.parse_type(out)
    factor = Fr(1, k * k) if recip is None else cast(qfx.parse_type(recip), Fr(1.0 / (k * k)))
    if recip:
        assert factor != Fr(1, 9)  # really an approximate reciprocal
    want = [cast(to, sum(cast(ti, Fr(v)) if v is not None else Fr(0) for v in win) * factor) for win in _windows(x, k, 1, 1)]
    assert as_fractions(got) == want


def test_batchnorm_eval_matches_reference():
    torch.manual_seed(0)
    bn = qfx.nn.QBatchNorm2d(3, input=X_FMT, scale="ap_fixed<10,2,AP_RND>", shift="ap_fixed<10,3,AP_RND_CONV>", output=Y_FMT)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.5, -0.7]))
        bn.bias.copy_(torch.tensor([0.1, -0.3, 0.25]))
        bn.running_mean.copy_(torch.tensor([0.2, -0.1, 0.4]))
        bn.running_var.copy_(torch.tensor([0.8, 2.5, 0.3]))
    bn.eval()
    (x,) = _data(10, (2, 3, 3, 3), scale=2.0)
    got = bn(x)
    ts, tb = qfx.parse_type("ap_fixed<10,2,AP_RND>"), qfx.parse_type("ap_fixed<10,3,AP_RND_CONV>")
    want = []
    for n in range(2):
        for c in range(3):
            g, beta = bn.weight[c].item(), bn.bias[c].item()
            mean, var = bn.running_mean[c].item(), bn.running_var[c].item()
            scale = g / math.sqrt(var + bn.eps)
            s, sh = cast(ts, Fr(scale)), cast(tb, Fr(beta - mean * scale))
            for v in x[n, c].reshape(-1).tolist():
                want.append(cast(qfx.parse_type(Y_FMT), cast(qfx.parse_type(X_FMT), Fr(v)) * s + sh))
    assert as_fractions(got) == want
    scale_q, shift_q = bn.quantized_scale_shift()
    assert scale_q.shape == (3,) and shift_q.shape == (3,)


def test_batchnorm_training_updates_running_stats_like_torch():
    (x,) = _data(11, (4, 3, 5, 5), scale=2.0)
    q = qfx.nn.QBatchNorm2d(3, input="ap_fixed<16,6,AP_RND>", scale="ap_fixed<16,4,AP_RND>", shift="ap_fixed<16,4,AP_RND>", output="ap_fixed<16,5,AP_RND>")
    ref = torch.nn.BatchNorm2d(3).double()
    y = q(x)
    xq = qfx.quantize(x, "ap_fixed<16,6,AP_RND>").double()
    yr = ref(xq)
    assert torch.allclose(q.running_mean.double(), ref.running_mean, atol=1e-6)
    assert torch.allclose(q.running_var.double(), ref.running_var, atol=1e-5)
    assert (y.double() - yr).abs().max() < 2e-3  # output lsb 2**-11 plus scale/shift rounding


def test_fold_batchnorm_is_the_float_fold():
    torch.manual_seed(1)
    wide = dict(input="ap_fixed<16,5,AP_RND>", weight="ap_fixed<16,3,AP_RND>", bias="ap_fixed<20,6,AP_RND>", output="ap_fixed<20,7,AP_RND>")
    conv = QConv2d(3, 4, 3, padding=1, bias=False, config=wide)  # bias format kept for the fold
    bn = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
    bn.eval()
    folded = qfx.nn.fold_batchnorm(conv, bn)
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    assert torch.allclose(folded.weight.double(), conv.weight.double() * scale[:, None, None, None], rtol=1e-6)
    assert torch.allclose(folded.bias.double(), bn.bias.double() - bn.running_mean.double() * scale, rtol=1e-6, atol=1e-7)
    (x,) = _data(12, (2, 3, 6, 6))
    float_y = bn(torch.nn.functional.conv2d(x, conv.weight, None, padding=1))
    assert (folded(x) - float_y).abs().max() < 0.02
    no_bias = QConv2d(3, 4, 3, bias=False, input=X_FMT, weight=W_FMT, output=Y_FMT)
    with pytest.raises(ValueError, match="bias format"):
        qfx.nn.fold_batchnorm(no_bias, bn)
    assert qfx.nn.fold_batchnorm(no_bias, bn, bias=B_FMT).bias is not None
