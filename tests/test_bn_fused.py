"""QBatchNorm2d's fused CPU path (qfx.nn._bn_fused) against its torch path and exact arithmetic.

The torch path is the same layer under ``QFX_NO_CPP=1``. Forward values must be
bit-identical; the batch statistics must equal the exact mean and variance of the
quantized input (computed here with Fractions); gradients agree up to summation order.
"""

from __future__ import annotations

import copy
import math
from fractions import Fraction as Fr

import pytest
import torch

import qfx
from qfx import _fused
from qfx.nn import QBatchNorm2d, _bn_fused

pytestmark = pytest.mark.skipif(_fused.kernels() is None, reason="fused kernel unavailable (no C++ compiler)")

# (input, scale, shift, output) formats: rounding modes, AP_SAT_SYM, unsigned, integer bits
# beyond the width (negative fractional bits) and more fractional bits than the width.
FORMATS = [
    ("ap_fixed<8,3,AP_RND,AP_SAT>", "ap_fixed<8,2,AP_RND_CONV,AP_SAT>", "ap_fixed<8,3,AP_RND,AP_SAT>",
     "ap_fixed<8,3,AP_RND,AP_SAT>"),
    ("ap_fixed<6,2,AP_TRN,AP_SAT>", "ap_fixed<7,3,AP_RND_ZERO,AP_SAT>", "ap_fixed<9,3,AP_RND_INF,AP_SAT>",
     "ap_fixed<6,2,AP_RND_MIN_INF,AP_SAT_SYM>"),
    ("ap_fixed<8,10,AP_RND,AP_SAT>", "ap_fixed<8,1,AP_RND,AP_SAT>", "ap_fixed<8,9,AP_RND,AP_SAT>",
     "ap_ufixed<8,11,AP_TRN_ZERO,AP_SAT>"),
    ("ap_fixed<8,-1,AP_RND,AP_SAT>", "ap_fixed<8,4,AP_RND,AP_SAT>", "ap_fixed<8,2,AP_RND,AP_SAT>",
     "ap_fixed<8,2,AP_RND_CONV,AP_SAT_SYM>"),
]


def _layer(fmts, learn: bool, seed: int) -> QBatchNorm2d:
    i, s, b, o = fmts
    bn = QBatchNorm2d(4, input=i, scale=s, shift=b, output=o, learn_binary_point=learn)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(4, generator=g) * 2 - 0.5)
        bn.bias.copy_(torch.randn(4, generator=g))
        bn.running_mean.copy_(torch.randn(4, generator=g) * 0.1)
        bn.running_var.copy_(torch.rand(4, generator=g) + 0.5)
    return bn


def _inputs(fmt: str, seed: int, shape=(5, 4, 6, 7)) -> torch.Tensor:
    """Random values, exact ties of the input format, range edges and beyond."""
    t = qfx.parse_type(fmt)
    g = torch.Generator().manual_seed(seed)
    lsb = 2.0**-t.frac_bits
    x = torch.randn(shape, generator=g) * (t.max_code * lsb / 2)
    flat = x.view(-1)
    k = torch.randint(t.min_code, t.max_code, (40,), generator=g).float()
    flat[:40] = (k + 0.5) * lsb  # ties
    flat[40:44] = torch.tensor([t.max_code * lsb, t.min_code * lsb, 3 * t.max_code * lsb, 3 * t.min_code * lsb])
    return x


def _run(bn: QBatchNorm2d, x: torch.Tensor, monkeypatch, torch_path: bool, grad: bool = True):
    bn = copy.deepcopy(bn)
    if torch_path:
        monkeypatch.setenv("QFX_NO_CPP", "1")
    else:
        monkeypatch.delenv("QFX_NO_CPP", raising=False)
    xi = x.clone().requires_grad_(grad)
    y = bn(xi)
    grads = {}
    if grad:
        w = torch.linspace(-1, 1, y.numel()).reshape(y.shape).to(y.dtype)
        (y * w).sum().backward()
        grads = {"x": xi.grad}
        grads.update({n: p.grad for n, p in bn.named_parameters() if p.grad is not None})
    monkeypatch.delenv("QFX_NO_CPP", raising=False)
    return y.detach(), grads, bn


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.double().view(torch.int64), b.double().view(torch.int64))


@pytest.mark.parametrize("fmts", FORMATS, ids=lambda f: f[3])
@pytest.mark.parametrize("learn", [False, True])
def test_training_forward_is_bit_identical_and_gradients_agree(fmts, learn, monkeypatch):
    bn = _layer(fmts, learn, seed=3).train()
    x = _inputs(fmts[0], seed=4)
    if learn:  # calibrate once (the first call goes through the quantizers)
        bn(x)
    xq = bn.quant["input"](x)
    # The fused path really runs (the fast cast needs a non-negative output binary point).
    assert (_bn_fused.affine_plan(bn, xq) is not None) == (bn.quant["output"].effective_format().frac_bits >= 0)
    assert _bn_fused.stats_frac(xq, bn.quant["input"].effective_format()) is not None
    fast_y, fast_g, fast_bn = _run(bn, x, monkeypatch, torch_path=False)
    ref_y, ref_g, ref_bn = _run(bn, x, monkeypatch, torch_path=True)
    assert _same_bits(fast_y, ref_y)
    assert torch.equal(fast_bn.running_mean, ref_bn.running_mean)
    assert torch.allclose(fast_bn.running_var, ref_bn.running_var, rtol=1e-6, atol=0)
    assert fast_g.keys() == ref_g.keys()
    for name, g in ref_g.items():
        scale = float(g.abs().max()) or 1.0
        assert torch.allclose(fast_g[name].double(), g.double(), rtol=0, atol=2e-5 * scale), name


@pytest.mark.parametrize("fmts", FORMATS, ids=lambda f: f[3])
def test_eval_forward_is_bit_identical(fmts, monkeypatch):
    bn = _layer(fmts, False, seed=5).eval()
    x = _inputs(fmts[0], seed=6)
    fast_y, fast_g, _ = _run(bn, x, monkeypatch, torch_path=False)
    ref_y, ref_g, _ = _run(bn, x, monkeypatch, torch_path=True)
    assert _same_bits(fast_y, ref_y)
    for name, g in ref_g.items():
        assert torch.allclose(fast_g[name].double(), g.double(), rtol=1e-5, atol=1e-6 * float(g.abs().max())), name


@pytest.mark.parametrize("fmt", [FORMATS[0][0], FORMATS[2][0], FORMATS[3][0], "ap_fixed<16,6,AP_RND,AP_SAT>"])
def test_batch_statistics_are_exact(fmt):
    """mean and biased variance equal the exact ones of the quantized input, correctly rounded."""
    xq = qfx.quantize(_inputs(fmt, seed=7, shape=(9, 3, 5, 5)), fmt)
    frac = _bn_fused.stats_frac(xq, qfx.parse_type(fmt))
    assert frac == qfx.parse_type(fmt).frac_bits
    mean, var = _bn_fused.batch_stats(xq, frac)
    for c in range(3):
        vals = [Fr(v) for v in xq[:, c].reshape(-1).tolist()]
        m = sum(vals) / len(vals)
        v = sum((a - m) ** 2 for a in vals) / len(vals)
        assert mean[c].item() == float(m)
        assert var[c].item() == float(v)


def test_statistics_fall_back_when_sums_could_round():
    """Sums of squares beyond 53 bits: no fused statistics (the torch path runs)."""
    t = qfx.parse_type("ap_fixed<22,2,AP_RND,AP_SAT>")
    xq = torch.zeros(64, 2, 32, 32)  # 65536 values per channel, codes up to 2**21
    assert _bn_fused.stats_frac(xq, t) is None
    assert _bn_fused.stats_frac(xq.double(), qfx.parse_type("ap_fixed<8,3>")) is None


def test_non_finite_inputs_match_the_torch_path(monkeypatch):
    bn = _layer(FORMATS[0], False, seed=8).train()
    x = _inputs(FORMATS[0][0], seed=9)
    x[0, 1, 0, :3] = torch.tensor([math.inf, -math.inf, math.nan])
    fast_y, _, fast_bn = _run(bn, x, monkeypatch, torch_path=False, grad=False)
    ref_y, _, ref_bn = _run(bn, x, monkeypatch, torch_path=True, grad=False)
    assert _same_bits(fast_y, ref_y)
    assert torch.equal(fast_bn.running_mean.isnan(), ref_bn.running_mean.isnan())


def test_torch_path_is_kept_where_the_fused_one_does_not_apply(monkeypatch):
    x = _inputs(FORMATS[0][0], seed=10)
    tracked = QBatchNorm2d(4, input=FORMATS[0][0], scale=FORMATS[0][1], shift=FORMATS[0][2], output=FORMATS[0][3],
                           track_overflow=True).train()
    assert _bn_fused.affine_plan(tracked, qfx.quantize(x, FORMATS[0][0])) is None
    y = tracked(x)
    assert tracked.quant["output"].overflow_count.item() >= 0 and y.dtype == torch.float32
    plain = _layer(FORMATS[0], False, seed=3).train()
    assert _bn_fused.affine_plan(plain, qfx.quantize(x.double(), FORMATS[0][0])) is None  # float64
    learn = _layer(FORMATS[0], True, seed=3).train()
    assert _bn_fused.affine_plan(learn, qfx.quantize(x, FORMATS[0][0])) is None  # not calibrated yet
    learn(x)
    assert _bn_fused.affine_plan(learn, qfx.quantize(x, FORMATS[0][0])) is not None


def test_create_graph_gives_the_same_first_order_gradients(monkeypatch):
    bn = _layer(FORMATS[0], True, seed=11).train()
    x = _inputs(FORMATS[0][0], seed=12)
    bn(x)
    monkeypatch.delenv("QFX_NO_CPP", raising=False)
    params = [bn.weight, bn.bias, bn.quant["output"].frac_bits]

    def grads(create_graph: bool):
        b = copy.deepcopy(bn)
        xi = x.clone().requires_grad_(True)
        y = b(xi)
        w = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
        ps = [b.weight, b.bias, b.quant["output"].frac_bits]
        return torch.autograd.grad((y * w).sum(), [xi, *ps], create_graph=create_graph)

    assert len(params) == 3
    for a, b in zip(grads(False), grads(True)):
        b = b.detach()
        assert torch.allclose(a.double(), b.double(), rtol=0, atol=2e-5 * (float(b.abs().max()) or 1.0))
