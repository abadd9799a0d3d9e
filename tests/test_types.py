"""Format objects: spellings, properties, validation, result types, quantizer API contracts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qfx
from qfx.types import FixedType, KHot, MinifloatType, Overflow, Rounding

ROUNDINGS = list(Rounding)
OVERFLOWS = list(Overflow)


@st.composite
def fixed_types(draw, max_width=64):
    w = draw(st.integers(1, max_width))
    signed = draw(st.booleans())
    overflow = draw(st.sampled_from([o for o in OVERFLOWS if signed or o is not Overflow.AP_WRAP_SM]))
    return FixedType(w, draw(st.integers(-70, 70)), signed, draw(st.sampled_from(ROUNDINGS)), overflow)


@st.composite
def minifloat_types(draw):
    e = draw(st.integers(1, 8))
    m = draw(st.integers(0, 10))
    inf_nan = draw(st.sampled_from(["ieee", "fn", "none"] if e > 1 else (["fn", "none"] if m else ["none"])))
    saturate = True if inf_nan == "none" else draw(st.booleans())
    return MinifloatType(e, m, (1 << (e - 1)) - 1 + draw(st.integers(-2, 2)), draw(st.booleans()), inf_nan, saturate)


any_format = st.one_of(
    fixed_types(),
    minifloat_types(),
    st.builds(KHot, fixed_types(max_width=16), st.integers(1, 4)),
)


@settings(max_examples=500, deadline=None)
@given(any_format)
def test_spelling_round_trips(t):
    text = str(t)
    assert qfx.parse_type(text) == t
    assert qfx.parse_type(" " + text.replace(",", " , ") + " ") == t  # whitespace is free
    assert hash(qfx.parse_type(text)) == hash(t)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ap_fixed<8,3,AP_RND_CONV,AP_SAT>", FixedType(8, 3, True, "AP_RND_CONV", "AP_SAT")),
        ("ap_ufixed<6,2>", FixedType(6, 2, False)),
        ("ap_int<8>", FixedType(8, 8, True, "AP_TRN_ZERO")),  # C-style truncation toward zero
        ("ap_uint<4>", FixedType(4, 4, False, "AP_TRN_ZERO")),
        ("ap_fixed<8,8>", FixedType(8, 8, True, "AP_TRN")),
        ("ap_fixed<16,6>", FixedType(16, 6, True, "AP_TRN", "AP_WRAP")),
        ("ap_fixed<4,-2,AP_RND>", FixedType(4, -2, True, "AP_RND", "AP_WRAP")),
        ("khot<2,ap_fixed<8,1>>", KHot(FixedType(8, 1), 2)),
        ("fp8_e4m3fn", MinifloatType(4, 3, 7, True, "fn", False)),
        ("fp8_e5m2", MinifloatType(5, 2, 15, True, "ieee", False)),
        ("fp6_e2m3fn", MinifloatType(2, 3, 1, True, "none", True)),
        ("fp6_e3m2fn", MinifloatType(3, 2, 3, True, "none", True)),
        ("fp4_e2m1fn", MinifloatType(2, 1, 1, True, "none", True)),
        ("e5m2<saturate=true>", MinifloatType(5, 2, 15, True, "ieee", True)),
    ],
)
def test_known_spellings(text, expected):
    assert qfx.parse_type(text) == expected


def test_fixed_properties():
    t = qfx.parse_type("ap_fixed<8,3,AP_RND_CONV,AP_SAT>")
    assert (t.frac_bits, t.lsb, t.min, t.max, t.num_values) == (5, 2**-5, -4.0, 4 - 2**-5, 256)
    assert t.range == (-4.0, 4 - 2**-5)
    u = qfx.parse_type("ap_ufixed<6,2>")
    assert (u.min_code, u.max_code, u.min, u.max) == (0, 63, 0.0, 63 / 16)
    neg = qfx.parse_type("ap_fixed<4,-2>")  # all bits below the binary point, lsb 2**-6
    assert (neg.lsb, neg.max) == (2**-6, 7 * 2**-6)
    big = qfx.parse_type("ap_fixed<4,10>")  # lsb weighs 2**6
    assert (big.lsb, big.min, big.max) == (64.0, -512.0, 448.0)
    assert qfx.parse_type("ap_fixed<1,1>").range == (-1.0, 0.0)


def test_ocp_minifloat_properties():
    e4m3 = qfx.parse_type("fp8_e4m3fn")
    assert (e4m3.max, e4m3.min_normal, e4m3.min_subnormal, e4m3.bits) == (448.0, 2**-6, 2**-9, 8)
    assert qfx.parse_type("fp8_e5m2").max == 57344.0
    assert qfx.parse_type("fp6_e2m3fn").max == 7.5
    assert qfx.parse_type("fp6_e3m2fn").max == 28.0
    assert qfx.parse_type("fp4_e2m1fn").max == 6.0


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("ap_fixed<0,3>", "W=0"),
        ("ap_fixed<65,3>", "W=65"),
        ("ap_fixed<8,3,AP_FOO>", "AP_FOO"),
        ("ap_fixed<8,3,AP_RND,AP_BAR>", "AP_BAR"),
        ("ap_ufixed<8,3,AP_TRN,AP_WRAP_SM>", "AP_WRAP_SM"),
        ("ap_fixed<8>", "2 to 4 parameters"),
        ("ap_fixed<8,3,AP_RND,AP_SAT,2>", "saturation-bits"),
        ("ap_fixed<8,x>", "'x'"),
        ("ap_fixed<8,3", "unbalanced"),
        ("ap_int<8,2>", "one parameter"),
        ("khot<0,ap_fixed<8,1>>", "k=0"),
        ("khot<2,fp8_e4m3fn>", "base of a K-hot"),
        ("fp9_e4m3", "unknown format"),
        ("e4m3<bias=x>", "'x'"),
        ("e4m3<colour=red>", "colour"),
        ("e4m3<inf_nan=maybe>", "maybe"),
        ("e12m3", "exponent_bits=12"),
        ("e4m60", "mantissa_bits=60"),
        ("fp4_e2m1fn<saturate=false>", "must saturate"),
        ("", "empty"),
    ],
)
def test_bad_spellings_name_the_problem(text, fragment):
    with pytest.raises(ValueError) as info:
        qfx.parse_type(text)
    assert fragment in str(info.value)
    assert "e.g." in str(info.value) or "valid" in str(info.value) or "use" in str(info.value) or "options" in str(info.value)


def test_constructor_type_errors():
    with pytest.raises(TypeError):
        FixedType(8.0, 3)
    with pytest.raises(TypeError):
        KHot("ap_fixed<8,1>", 2)
    with pytest.raises(TypeError):
        qfx.parse_type(8)
    with pytest.raises(ValueError):
        MinifloatType(4, 3, bias=2000)


@settings(max_examples=300, deadline=None)
@given(fixed_types(max_width=30), fixed_types(max_width=30))
def test_result_types_hold_every_exact_result(a, b):
    # Full precision: the exact sum/difference/product of the extremes fits the result type.
    for op, fn in (("+", lambda x, y: x + y), ("-", lambda x, y: x - y), ("*", lambda x, y: x * y)):
        try:
            r = fn(a, b)
        except ValueError as err:  # beyond 64 bits: refused with a clear message
            assert "64-bit limit" in str(err)
            continue
        for x in (a.min_code, a.max_code):
            for y in (b.min_code, b.max_code):
                exact = fn(x * 2.0 ** -a.frac_bits, y * 2.0 ** -b.frac_bits)
                code = exact * 2.0**r.frac_bits
                assert code == int(code) and r.min_code <= code <= r.max_code, (a, op, b, r)


def test_accumulator_type():
    t = qfx.parse_type("ap_fixed<16,6>")
    assert t.accumulator(1) == t
    assert t.accumulator(64) == FixedType(22, 12)
    assert t.accumulator(65) == FixedType(23, 13)


def test_overflow_counting():
    t = qfx.parse_type("ap_fixed<8,3,AP_RND,AP_SAT>")
    x = torch.tensor([0.0, 3.95, 3.99, 4.5, -4.0, -4.02, -10.0, math.nan, math.inf])
    # 3.99 rounds to 4.0 (beyond max 3.96875); -4.02 rounds to -4.03125 (below -4).
    assert qfx.overflow_mask(x, t).tolist() == [False, False, True, True, False, True, True, False, True]
    assert qfx.count_overflow(x, t) == 5
    sym = t.with_modes(overflow="AP_SAT_SYM")
    assert qfx.count_overflow(torch.tensor([-4.0]), sym) == 1  # the min code is not used by SAT_SYM
    assert qfx.count_overflow(torch.tensor([500.0, 448.0, math.inf]), "fp8_e4m3fn") == 2


def test_nan_and_inf_behaviour_is_documented():
    t = qfx.parse_type("ap_fixed<8,3,AP_RND,AP_SAT>")
    x = torch.tensor([math.nan, math.inf, -math.inf])
    q = qfx.quantize(x, t)
    assert math.isnan(q[0]) and q[1].item() == t.max and q[2].item() == t.min
    for o in ("AP_WRAP", "AP_WRAP_SM", "AP_SAT_ZERO"):
        assert qfx.quantize(x[1:], t.with_modes(overflow=o)).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="NaN"):
        qfx.to_codes(x, t)
    with pytest.raises(ValueError, match="no NaN"):
        qfx.to_codes(torch.tensor([math.nan]), "fp4_e2m1fn")


def test_result_dtype_is_exact():
    x = torch.randn(100)
    assert qfx.quantize(x, "ap_fixed<8,3>").dtype == torch.float32
    assert qfx.quantize(x, "ap_fixed<32,16>").dtype == torch.float64  # float32 cannot hold 32-bit codes
    assert qfx.quantize(x.half(), "ap_fixed<8,3>").dtype == torch.float16
    assert qfx.quantize(x.half(), "ap_fixed<16,3>").dtype == torch.float32
    assert qfx.quantize(x.bfloat16(), "ap_fixed<8,3>").dtype == torch.bfloat16
    assert qfx.quantize(x.bfloat16(), "ap_ufixed<9,3>").dtype == torch.float32


def test_wide_words_are_exact_or_refused():
    t = qfx.parse_type("ap_fixed<64,64,AP_TRN,AP_SAT>")
    codes = qfx.to_codes(torch.tensor([1e30, -1e30, 12345.0], dtype=torch.float64), t)
    assert codes.tolist() == [2**63 - 1, -(2**63), 12345]
    with pytest.raises(ValueError, match="not representable in float64"):
        qfx.quantize(torch.tensor([1e30], dtype=torch.float64), t)  # 2**63-1 has 63 significant bits
    assert qfx.quantize(torch.tensor([-1e30], dtype=torch.float64), t).item() == -(2.0**63)
    u = qfx.parse_type("ap_ufixed<64,64,AP_TRN,AP_WRAP>")
    assert qfx.quantize(torch.tensor([2.0**64 + 2.0**20], dtype=torch.float64), u).item() == 2.0**20
    with pytest.raises(ValueError, match="do not fit int64"):
        qfx.to_codes(torch.tensor([1.0]), u)


def test_frac_bits_gradient_matches_the_documented_estimator():
    t = qfx.parse_type("ap_fixed<6,2,AP_RND,AP_SAT>")
    x = torch.tensor([0.3, -0.77, 1.9, 5.0, -7.0], dtype=torch.float64, requires_grad=True)
    f = torch.tensor(3.2, dtype=torch.float64, requires_grad=True)  # round(3.2) = 3 fractional bits
    q = qfx.quantize(x, t, frac_bits=f)
    expected = qfx.quantize(x.detach(), qfx.FixedType(6, 3, True, "AP_RND", "AP_SAT"))
    assert torch.equal(q.detach(), expected)
    g = torch.tensor([1.0, -2.0, 0.5, 1.0, 3.0], dtype=torch.float64)
    q.backward(g)
    inside = torch.tensor([True, True, True, False, False])
    dq_df = torch.where(inside, x.detach() - expected, -expected) * math.log(2)
    assert torch.allclose(f.grad, (g * dq_df).sum())
    assert torch.equal(x.grad, g * inside)


def test_per_channel_frac_bits():
    t = qfx.parse_type("ap_fixed<8,3,AP_RND_CONV,AP_SAT>")
    w = torch.randn(4, 3, 3, 3)
    f = torch.tensor([5.0, 6.0, 3.0, 7.0]).view(4, 1, 1, 1).requires_grad_()
    q = qfx.quantize(w, t, frac_bits=f)
    for c in range(4):
        expected = qfx.quantize(w[c], t.with_int_bits(8 - int(f[c].item())))
        assert torch.equal(q[c], expected)
    q.sum().backward()
    assert f.grad.shape == f.shape


def test_quantize_rejects_bad_arguments():
    with pytest.raises(TypeError, match="floating-point"):
        qfx.quantize(torch.arange(3), "ap_fixed<8,3>")
    with pytest.raises(TypeError, match="torch.Tensor"):
        qfx.quantize([1.0], "ap_fixed<8,3>")
    with pytest.raises(ValueError, match="fixed-point formats only"):
        qfx.quantize(torch.ones(2), "fp8_e4m3fn", frac_bits=torch.tensor(3.0))
    with pytest.raises(ValueError, match="minifloat formats only"):
        qfx.quantize(torch.ones(2), "ap_fixed<8,3>", stochastic=True)
    with pytest.raises(ValueError, match="out of range"):
        qfx.from_codes(torch.tensor([300]), "ap_fixed<8,3>")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize(
    "spelling",
    ["ap_fixed<8,3,AP_RND_CONV,AP_SAT>", "ap_ufixed<12,-2,AP_RND_INF,AP_WRAP>", "ap_fixed<40,9,AP_RND_ZERO,AP_WRAP_SM>",
     "fp8_e4m3fn", "e5m2<saturate=true>", "e3m4<subnormals=false>", "khot<2,ap_fixed<8,1>>"],
)
def test_cuda_matches_cpu(spelling):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, generator=g) * 4
    x[:4] = torch.tensor([math.inf, -math.inf, math.nan, -0.0])
    cpu = qfx.quantize(x, spelling)
    gpu = qfx.quantize(x.cuda(), spelling).cpu()
    assert torch.equal(cpu.nan_to_num(7.0), gpu.nan_to_num(7.0))


def test_diverged_frac_bits_are_reported():
    t = qfx.parse_type("ap_fixed<8,3>")
    with pytest.raises(ValueError, match="NaN or inf"):
        qfx.quantize(torch.ones(3), t, frac_bits=torch.tensor(float("nan")))
    with pytest.raises(ValueError, match="beyond"):
        qfx.quantize(torch.ones(3), t, frac_bits=torch.tensor(5000.0))
