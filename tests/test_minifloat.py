"""Minifloat conversion against ml_dtypes, torch's float8 casts and an exact rational model."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qfx
from qfx.types import MinifloatType
from tests.oracles.minifloat_exact import all_values, round_minifloat

# qfx spelling -> the ml_dtypes type with the same format and conversion rule.
ML_DTYPES = {
    "fp8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
    "e4m3": ml_dtypes.float8_e4m3,  # IEEE-style E4M3 with inf
    "e3m4": ml_dtypes.float8_e3m4,
    "fp6_e2m3fn": ml_dtypes.float6_e2m3fn,
    "fp6_e3m2fn": ml_dtypes.float6_e3m2fn,
    "fp4_e2m1fn": ml_dtypes.float4_e2m1fn,
}


def probe_values(t: MinifloatType, dtype=np.float32, seed: int = 0) -> np.ndarray:
    """Every value, every midpoint and its float neighbours, range edges, specials, random."""
    rng = np.random.default_rng(seed)
    values = np.array(all_values(t), dtype=np.float64)
    mids = (values[1:] + values[:-1]) / 2  # exact in float64
    if len(values) > 3000:  # wide formats: every edge region plus a sample of the rest
        keep = np.r_[0:300, len(mids) // 2 - 300 : len(mids) // 2 + 300, len(mids) - 300 : len(mids)]
        sample = rng.choice(len(mids), 1500, replace=False)
        idx = np.unique(np.concatenate([keep, sample]))
        values, mids = values[idx], mids[idx]
    probes = [values, mids, t.max * np.array([1, 1.0625, 1.125, 1.5, 2, 1e3])]
    top = t.max + (t.max - np.nextafter(t.max, 0))  # roughly the next grid step
    probes.append(np.array([top, (t.max + top) / 2, t.min_normal, t.min_subnormal / 2, t.min_subnormal / 4]))
    probes.append(rng.standard_normal(4000) * 2.0 ** rng.integers(t.emin - t.mantissa_bits - 3, t.emax + 3, 4000))
    with np.errstate(over="ignore"):
        p = np.concatenate(probes).astype(dtype)
    p = np.concatenate([p, np.nextafter(p, np.inf, dtype=dtype), np.nextafter(p, -np.inf, dtype=dtype)])
    p = np.concatenate([p, -p, np.array([0.0, -0.0, np.inf, -np.inf, np.nan], dtype=dtype)])
    if dtype == np.float32:
        p = np.concatenate([p, np.array([1e-45, -1e-45, 1e-40, 3e38, -3e38], dtype=np.float32)])
    return p


def assert_same(actual: np.ndarray, expected: np.ndarray, inputs: np.ndarray, what: str) -> None:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    same = (actual == expected) & (np.signbit(actual) == np.signbit(expected))
    same |= np.isnan(actual) & np.isnan(expected)
    if not same.all():
        i = np.flatnonzero(~same)[:5]
        raise AssertionError(
            f"{what}: {(~same).sum()} mismatches, e.g. inputs {inputs[i].tolist()} -> "
            f"qfx {actual[i].tolist()}, reference {expected[i].tolist()}"
        )


@pytest.mark.parametrize("spelling", list(ML_DTYPES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_ml_dtypes(spelling, dtype):
    t = qfx.parse_type(spelling)
    x = probe_values(t, dtype)
    if not t.has_nan:
        # ml_dtypes turns NaN into -0 for formats without NaN; qfx keeps NaN visible (documented).
        x = x[~np.isnan(x)]
    expected = x.astype(ML_DTYPES[spelling]).astype(np.float64)
    if dtype == np.float64:
        # ml_dtypes converts float64 through float32 (a double rounding: 431.99999999999994
        # becomes the tie 432.0 and then 448). Where float32 is inexact, use the exact model.
        inexact = x.astype(np.float32).astype(np.float64) != x
        expected[inexact] = [round_minifloat(float(v), t) for v in x[inexact]]
    actual = qfx.quantize(torch.from_numpy(x), t).double().numpy()
    assert_same(actual, expected, x, f"{spelling} from {np.dtype(dtype).name}")


@pytest.mark.parametrize("spelling", list(ML_DTYPES))
def test_bit_patterns_match_ml_dtypes(spelling):
    t = qfx.parse_type(spelling)
    ml = ML_DTYPES[spelling]
    width_bytes = np.dtype(ml).itemsize
    codes = np.arange(1 << t.bits, dtype=np.uint8 if width_bytes == 1 else np.uint16)
    ml_values = codes.view(ml).astype(np.float64)
    finite = np.isfinite(ml_values)
    values = qfx.from_codes(torch.from_numpy(codes.astype(np.int64)), t).numpy()
    assert_same(values[finite], ml_values[finite], codes[finite], f"{spelling} from_codes")
    back = qfx.to_codes(torch.from_numpy(ml_values[finite]), t).numpy()
    assert np.array_equal(back, codes[finite].astype(np.int64))


@pytest.mark.parametrize(
    "spelling, torch_dtype",
    [("fp8_e4m3fn<saturate=true>", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch_float8(spelling, torch_dtype, dtype):
    t = qfx.parse_type(spelling)
    x = torch.from_numpy(probe_values(t, dtype))
    expected = x.to(torch_dtype).double().numpy()
    if dtype == np.float64:  # torch may also round float64 through float32: exact model there
        xs = x.numpy()
        inexact = xs.astype(np.float32).astype(np.float64) != xs
        expected[inexact] = [round_minifloat(float(v), t) for v in xs[inexact]]
    assert_same(qfx.quantize(x, t).double().numpy(), expected, x.numpy(), spelling)


GENERIC_FORMATS = [
    MinifloatType(3, 4, bias=5, subnormals=False),
    MinifloatType(5, 6, inf_nan="fn", saturate=True),
    MinifloatType(2, 0, inf_nan="none"),
    MinifloatType(1, 3, inf_nan="fn"),
    MinifloatType(6, 1, bias=40),
    MinifloatType(4, 2, subnormals=False, saturate=True),
    MinifloatType(8, 7),  # bfloat16's layout
    MinifloatType(5, 10),  # float16's layout
]


@pytest.mark.parametrize("t", GENERIC_FORMATS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_generic_formats_match_exact_model(t, dtype):
    x = probe_values(t, dtype, seed=3)
    expected = np.array([round_minifloat(float(v), t) for v in x])
    actual = qfx.quantize(torch.from_numpy(x), t).double().numpy()
    assert_same(actual, expected, x, str(t))


def test_bfloat16_and_float16_layouts_match_torch_casts():
    rng = np.random.default_rng(7)
    # float32 inputs: torch rounds float64 through float32 (double rounding) for these casts too.
    x = torch.from_numpy((rng.standard_normal(20000) * 2.0 ** rng.integers(-30, 30, 20000)).astype(np.float32))
    for t, dt in [(MinifloatType(8, 7), torch.bfloat16), (MinifloatType(5, 10), torch.float16)]:
        expected = x.to(dt).double().numpy()
        assert_same(qfx.quantize(x, t).double().numpy(), expected, x.numpy(), str(t))


@settings(max_examples=300, deadline=None)
@given(
    e=st.integers(1, 6),
    m=st.integers(0, 6),
    bias_shift=st.integers(-3, 3),
    subnormals=st.booleans(),
    inf_nan=st.sampled_from(["ieee", "fn", "none"]),
    saturate=st.booleans(),
    x=st.floats(allow_nan=True, allow_infinity=True, width=64),
)
def test_property_exact_model(e, m, bias_shift, subnormals, inf_nan, saturate, x):
    if inf_nan == "ieee" and e == 1:
        inf_nan = "fn"
    if inf_nan == "fn" and e == 1 and m == 0:
        inf_nan = "none"
    if inf_nan == "none":
        saturate = True
    t = MinifloatType(e, m, bias=(1 << (e - 1)) - 1 + bias_shift, subnormals=subnormals, inf_nan=inf_nan, saturate=saturate)
    got = float(qfx.quantize(torch.tensor([x], dtype=torch.float64), t)[0])
    want = round_minifloat(x, t)
    assert (math.isnan(got) and math.isnan(want)) or (got == want and math.copysign(1, got) == math.copysign(1, want)), (t, x, got, want)
    # Idempotent: a value of the format converts to itself.
    if not math.isnan(got) and not math.isinf(got):
        assert float(qfx.quantize(torch.tensor([got], dtype=torch.float64), t)[0]) == got


def test_stochastic_rounding_is_unbiased_and_on_grid():
    t = qfx.parse_type("fp8_e4m3fn")
    x = torch.full((200_000,), 1.0 + 1.0 / 32)  # a quarter of the way from 1.0 to 1.125
    g = torch.Generator().manual_seed(0)
    q = qfx.quantize(x, t, stochastic=True, generator=g)
    assert set(q.unique().tolist()) == {1.0, 1.125}
    frac_up = (q == 1.125).float().mean().item()
    assert abs(frac_up - 0.25) < 0.01
    # Values of the format are left alone.
    grid = torch.tensor(all_values(t), dtype=torch.float32)
    assert torch.equal(qfx.quantize(grid, t, stochastic=True, generator=g), grid)


def test_result_dtype_and_gradient():
    x = torch.linspace(-500, 500, 101, requires_grad=True)
    q = qfx.quantize(x, "fp8_e4m3fn<saturate=true>")
    assert q.dtype == torch.float32
    q.sum().backward()
    inside = (x.detach().abs() <= 448).float()
    assert torch.equal(x.grad, inside)
    # bf16 holds every e4m3 value, so a bf16 input stays bf16.
    assert qfx.quantize(torch.ones(3, dtype=torch.bfloat16), "fp8_e4m3fn").dtype == torch.bfloat16
    assert qfx.quantize(torch.ones(3, dtype=torch.float16), "fp8_e5m2").dtype == torch.float16
