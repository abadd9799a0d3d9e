"""qfx::fixed_cast (issue 16): the custom op gives _FixedSTE's bits and gradients, eager and compiled."""

from __future__ import annotations

import math

import pytest
import torch

import qfx
from qfx import _compiled, quant
from qfx.types import Overflow, Rounding


def _inputs(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(300, generator=g, dtype=torch.float64) * 6).to(dtype)
    x[:6] = torch.tensor([math.inf, -math.inf, -0.0, 1000.0, -1000.0, 1e-30], dtype=dtype)
    x[6:206] = (torch.arange(-100, 100, dtype=dtype) / 16 + 1 / 32)  # exact ties at 4 frac bits
    return x


def _both(fn, x, f):
    xa, fa = x.clone().requires_grad_(), f.clone().requires_grad_()
    q = fn(xa, fa)
    g = torch.linspace(-1, 1, q.numel(), dtype=q.dtype).reshape(q.shape)
    q.backward(g)
    return q.detach(), xa.grad, fa.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rounding", list(Rounding))
@pytest.mark.parametrize("overflow", list(Overflow))
def test_op_matches_fixed_ste(rounding, overflow, dtype):
    t = qfx.parse_type(f"ap_fixed<8,3,{rounding.value},{overflow.value}>")
    x, f = _inputs(dtype), torch.tensor(4.0, dtype=dtype)
    want = _both(lambda a, b: quant._FixedSTE.apply(a, b, t), x, f)
    got = _both(lambda a, b: _compiled.fixed_cast_ste(a, b, t), x, f)
    for w, g in zip(want, got):
        assert w.dtype == g.dtype and torch.equal(w, g)


def test_op_per_channel_and_fake():
    t = qfx.parse_type("ap_fixed<6,2,AP_RND,AP_WRAP>")
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    f = torch.tensor([[2.0], [3.0], [5.0]])
    want = _both(lambda a, b: quant._FixedSTE.apply(a, b, t), x, f)
    got = _both(lambda a, b: _compiled.fixed_cast_ste(a, b, t), x, f)
    for w, g in zip(want, got):
        assert torch.equal(w, g)
    torch.library.opcheck(torch.ops.qfx.fixed_cast, (x.requires_grad_(), f.requires_grad_(), str(t)))


def test_compiled_fullgraph_matches_eager():
    t = qfx.parse_type("ap_fixed<8,3,AP_RND_CONV,AP_SAT>")

    def fn(a, b):
        return _compiled.fixed_cast_ste(a * 1.5, b, t) * 2

    x, f = _inputs(torch.float32), torch.tensor(4.0)
    explain = torch._dynamo.explain(fn)(x.clone().requires_grad_(), f.clone().requires_grad_())
    assert explain.graph_count == 1 and explain.graph_break_count == 0
    want = _both(fn, x, f)
    got = _both(torch.compile(fn, fullgraph=True, backend="aot_eager"), x, f)
    for w, g in zip(want, got):
        assert w.dtype == g.dtype and torch.equal(w, g)


def test_quantize_routes_learnable_binary_point_through_op_when_compiled():
    t = qfx.parse_type("ap_fixed<8,3,AP_RND_CONV,AP_SAT>")

    def fn(a, b):
        return qfx.quantize(a, t, frac_bits=b)

    x, f = _inputs(torch.float32), torch.tensor(4.0)
    explain = torch._dynamo.explain(fn)(x.clone().requires_grad_(), f.clone().requires_grad_())
    assert explain.graph_count == 1 and explain.graph_break_count == 0
    want = _both(lambda a, b: quant._FixedSTE.apply(a, b, t), x, f)
    got = _both(torch.compile(fn, fullgraph=True, backend="aot_eager"), x, f)
    for w, g in zip(want, got):
        assert torch.equal(w, g)
