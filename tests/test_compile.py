"""The opt-in torch.compile kernels give the same bits as the eager kernels."""

from __future__ import annotations

import math

import pytest
import torch

import qfx
from qfx import quant


@pytest.fixture
def compiled():
    quant.set_compile(True)
    yield
    quant.set_compile(False)


@pytest.mark.slow
@pytest.mark.parametrize(
    "spelling", ["ap_fixed<8,3,AP_RND_CONV,AP_SAT>", "ap_ufixed<10,2,AP_RND_ZERO,AP_WRAP>", "fp8_e4m3fn", "e5m2<saturate=true>"]
)
def test_compiled_kernels_match_eager(spelling, compiled):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50_000, generator=g) * 6
    x[:8] = torch.tensor([math.nan, math.inf, -math.inf, -0.0, 1000.0, -1000.0, 1e-30, -1e-30])
    x[8:1008] = torch.arange(-500, 500) / 64 + 1 / 128  # exact ties of the fixed formats
    got = qfx.quantize(x, spelling)
    quant.set_compile(False)
    want = qfx.quantize(x, spelling)
    assert got.dtype == want.dtype
    assert torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0))
    if isinstance(qfx.parse_type(spelling), qfx.MinifloatType):  # -0.0 is a minifloat value
        keep = ~torch.isnan(want)
        assert torch.equal(torch.signbit(got[keep]), torch.signbit(want[keep]))
