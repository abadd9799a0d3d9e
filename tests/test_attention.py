"""The qfx attention block (qfx.attention) against torch's own nn.MultiheadAttention.

The block is the documented decomposition qfx converts (per-head q/k/v linears, q @ k^T,
softmax over the last dim, @ v, per-head slices of the output projection summed). Its float
function is checked against ``nn.MultiheadAttention`` itself (an implementation qfx did not
write) in float64; what it cannot express is refused with the module named.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx as fx
from torch import nn

import qfx
from qfx.attention import AttentionError, MultiheadSelfAttention, expand_multihead_attention


@pytest.mark.parametrize("embed_dim,heads,bias", [(32, 2, True), (16, 4, False), (8, 1, True), (12, 3, True)])
def test_block_equals_torch_multihead_attention(embed_dim, heads, bias):
    torch.manual_seed(embed_dim + heads)
    mha = nn.MultiheadAttention(embed_dim, heads, bias=bias, batch_first=True).double().eval()
    with torch.no_grad():  # non-trivial out-projection bias
        if mha.out_proj.bias is not None:
            mha.out_proj.bias.normal_()
    block = MultiheadSelfAttention.from_torch(mha)
    x = torch.randn(3, 7, embed_dim, dtype=torch.float64) * 2
    want, _ = mha(x, x, x)
    got, weights = block(x, x, x)
    assert weights is None and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # a wrong head slice would not pass: swapping two heads' output projections changes the result
    if heads > 1:
        with torch.no_grad():
            w0 = block.heads[0].o.weight.clone()
            block.heads[0].o.weight.copy_(block.heads[1].o.weight)
            block.heads[1].o.weight.copy_(w0)
        assert not torch.allclose(block(x, x, x)[0], want, atol=1e-6)


class _WithMHA(nn.Module):
    def __init__(self, **kw) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, **{"batch_first": True, **kw})
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y, _ = self.mha(x, x, x)
        return self.fc(x + y)


def test_expand_traces_into_convertible_pieces():
    m = expand_multihead_attention(_WithMHA().eval())
    assert not any(isinstance(v, nn.MultiheadAttention) for v in m.modules())
    g = fx.symbolic_trace(m).graph
    targets = [str(n.target) for n in g.nodes]
    assert targets.count("transpose") == 2 and sum("matmul" in t for t in targets) == 4
    assert "mha.heads.0.q" in targets and "mha.heads.1.o" in targets
    torch.manual_seed(3)
    x = torch.randn(2, 5, 8)
    a = _WithMHA().eval()
    b = expand_multihead_attention(copy.deepcopy(a))
    torch.testing.assert_close(b(x), a(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw,match", [
    ({"batch_first": False}, "batch_first=False"),
    ({"add_bias_kv": True}, "add_bias_kv"),
    ({"add_zero_attn": True}, "add_zero_attn"),
    ({"kdim": 4, "vdim": 4}, "kdim/vdim"),
])
def test_convert_refuses_what_the_block_cannot_express(kw, match):
    with pytest.raises(qfx.conversion.ConversionError, match=match) as e:
        qfx.convert(_WithMHA(**kw).eval())
    assert "'mha'" in str(e.value)


def test_convert_refuses_dropout_in_training_and_masks_and_cross_attention():
    with pytest.raises(qfx.conversion.ConversionError, match="dropout"):
        qfx.convert(_WithMHA(dropout=0.1).train())

    class Masked(_WithMHA):
        def forward(self, x):
            return self.fc(self.mha(x, x, x, attn_mask=torch.zeros(5, 5))[0])

    class Cross(_WithMHA):
        def forward(self, x):
            return self.fc(self.mha(x, x * 2, x)[0])

    with pytest.raises(qfx.conversion.ConversionError, match="mask"):
        qfx.convert(Masked().eval())
    with pytest.raises(qfx.conversion.ConversionError, match="self-attention"):
        qfx.convert(Cross().eval())
