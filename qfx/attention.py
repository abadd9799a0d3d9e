"""Self-attention written in the ops qfx converts: the documented qfx attention block.

``nn.MultiheadAttention`` is one opaque module to ``torch.fx`` (its forward is
``F.multi_head_attention_forward``, which packs the heads with reshapes and a fused
in-projection). :class:`MultiheadSelfAttention` computes the same function from the pieces
qfx quantizes one by one, so every tensor gets its own format and the hardware is a chain of
ordinary engines:

* per head ``h``: ``q_h = x W_q,h^T + b_q,h`` (the ``1/sqrt(d_head)`` score scale folded into
  ``W_q,h`` and ``b_q,h``), ``k_h``, ``v_h`` likewise (three ``nn.Linear`` over the tokens);
* ``s_h = q_h @ k_h^T`` (a matmul between two activations), ``a_h = softmax(s_h, dim=-1)``,
  ``o_h = a_h @ v_h``;
* ``out = sum_h o_h W_o,h^T + b_o``: ``nn.MultiheadAttention``'s out-projection applied to the
  concatenated heads is the sum of its column blocks applied to each head, so no concatenation
  or reshape is needed (the bias sits on head 0's projection; the heads are added in order).

This is ``nn.MultiheadAttention``'s arithmetic exactly, up to float rounding (the sum order of
the out-projection). :func:`expand_multihead_attention` swaps every ``nn.MultiheadAttention``
of a model for it before ``qfx.convert`` traces; what it cannot express is refused with the
module's name and the reason: ``batch_first=False`` (qfx tensors are ``[N, T, E]``),
cross-attention (``query``, ``key`` and ``value`` must be the same tensor), masks, ``bias_k`` /
``bias_v``, ``add_zero_attn``, different ``kdim`` / ``vdim``, and dropout > 0 in training.
The attention weights (the second output) are not computed: ``out, _ = mha(x, x, x)`` is the
supported call.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["AttentionHead", "MultiheadSelfAttention", "expand_multihead_attention", "AttentionError"]


class AttentionError(ValueError):
    """An ``nn.MultiheadAttention`` (or a call of it) that the qfx attention block cannot express."""


class AttentionHead(nn.Module):
    """One head: ``softmax((x W_q^T + b_q) (x W_k^T + b_k)^T) (x W_v^T + b_v) W_o^T (+ b_o)``.

    Parameters
    ----------
    d_model : int
        Token width ``E``.
    d_head : int
        Head width (``q``, ``k``, ``v`` outputs).
    bias : bool
        Biases on the q / k / v projections.
    out_bias : bool
        A bias on this head's slice of the output projection (head 0 carries the block's).
    scale_q : bool
        Fold ``1/sqrt(d_head)`` into the initial q projection (a fresh block); off when the
        weights come from an existing module that is folded explicitly.
    """

    def __init__(self, d_model: int, d_head: int, *, bias: bool = True, out_bias: bool = False,
                 scale_q: bool = True) -> None:
        super().__init__()
        for name, v in (("d_model", d_model), ("d_head", d_head)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise TypeError(f"{name} must be an int >= 1, not {v!r}")
        self.q = nn.Linear(d_model, d_head, bias=bias)
        self.k = nn.Linear(d_model, d_head, bias=bias)
        self.v = nn.Linear(d_model, d_head, bias=bias)
        self.o = nn.Linear(d_head, d_model, bias=out_bias)
        if scale_q:
            with torch.no_grad():
                self.q.weight.mul_(1.0 / math.sqrt(d_head))
                if self.q.bias is not None:
                    self.q.bias.mul_(1.0 / math.sqrt(d_head))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(-2, -1)
        return self.o(torch.softmax(scores, dim=-1) @ self.v(x))


class MultiheadSelfAttention(nn.Module):
    """Self-attention over ``[N, T, E]`` tokens as ``heads`` :class:`AttentionHead` summed.

    Parameters
    ----------
    embed_dim : int
        Token width ``E`` (divisible by ``num_heads``).
    num_heads : int
    bias : bool
        Biases on the projections (as ``nn.MultiheadAttention``'s ``bias``).
    returns_weights : bool
        Return ``(out, None)`` as ``nn.MultiheadAttention`` does (set when it replaces one, so
        ``out, _ = mha(x, x, x)`` keeps working); ``False`` returns ``out``.

    Attributes
    ----------
    heads : nn.ModuleList
        The heads, in order; head 0 holds the output projection's bias.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, bias: bool = True, returns_weights: bool = False) -> None:
        super().__init__()
        for name, v in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise TypeError(f"{name} must be an int >= 1, not {v!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.returns_weights = embed_dim, num_heads, bool(returns_weights)
        d_head = embed_dim // num_heads
        self.heads = nn.ModuleList(AttentionHead(embed_dim, d_head, bias=bias, out_bias=bias and h == 0)
                                   for h in range(num_heads))

    def forward(self, query: torch.Tensor, key: "torch.Tensor | None" = None, value: "torch.Tensor | None" = None,
                key_padding_mask: None = None, need_weights: bool = True, attn_mask: None = None,
                average_attn_weights: bool = True, is_causal: bool = False):
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise AttentionError("the qfx attention block is self-attention: query, key and value must be the "
                                 "same tensor (call mha(x, x, x)); cross-attention is not supported")
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise AttentionError("attention masks (key_padding_mask, attn_mask, is_causal) are not supported "
                                 "by the qfx attention block")
        out = self.heads[0](query)
        for head in self.heads[1:]:
            out = out + head(query)
        return (out, None) if self.returns_weights else out

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention, name: str = "") -> "MultiheadSelfAttention":
        """The block computing ``mha`` (its weights copied, the score scale folded into q)."""
        where = f"nn.MultiheadAttention {name!r}" if name else "nn.MultiheadAttention"
        problems = []
        if not mha.batch_first:
            problems.append("batch_first=False (qfx tensors are [N, T, E]: build it with batch_first=True)")
        if not mha._qkv_same_embed_dim:
            problems.append(f"kdim/vdim ({mha.kdim}, {mha.vdim}) differ from embed_dim {mha.embed_dim}")
        if mha.bias_k is not None or mha.bias_v is not None:
            problems.append("add_bias_kv=True")
        if mha.add_zero_attn:
            problems.append("add_zero_attn=True")
        if mha.dropout > 0 and mha.training:
            problems.append(f"dropout={mha.dropout} in training mode (use dropout=0 or convert in eval mode)")
        if problems:
            raise AttentionError(f"{where}: " + "; ".join(problems) + " -- the qfx attention block "
                                 "(qfx.attention.MultiheadSelfAttention) cannot express it")
        e, nh = mha.embed_dim, mha.num_heads
        dh = e // nh
        has_bias = mha.in_proj_bias is not None
        w_in = mha.in_proj_weight.detach()
        block = cls(e, nh, bias=has_bias, returns_weights=True).to(device=w_in.device, dtype=w_in.dtype)
        scale = 1.0 / math.sqrt(dh)
        b_in = mha.in_proj_bias.detach() if has_bias else None
        w_out = mha.out_proj.weight.detach()
        with torch.no_grad():
            for h, head in enumerate(block.heads):
                rows = slice(h * dh, (h + 1) * dh)
                for j, lin in enumerate((head.q, head.k, head.v)):
                    part = slice(j * e + rows.start, j * e + rows.stop)
                    f = scale if j == 0 else 1.0
                    lin.weight.copy_(w_in[part] * f)
                    if has_bias:
                        lin.bias.copy_(b_in[part] * f)
                head.o.weight.copy_(w_out[:, rows])
            if mha.out_proj.bias is not None and block.heads[0].o.bias is not None:
                block.heads[0].o.bias.copy_(mha.out_proj.bias.detach())
        block.train(mha.training)
        return block


def expand_multihead_attention(model: nn.Module) -> nn.Module:
    """Replace every ``nn.MultiheadAttention`` of ``model`` (in place) by the equivalent
    :class:`MultiheadSelfAttention`; returns ``model``. Raises :class:`AttentionError` naming the
    module for what the block cannot express."""
    if isinstance(model, nn.MultiheadAttention):
        raise AttentionError("convert needs a model holding the nn.MultiheadAttention, not the module itself: "
                             "wrap it in a module whose forward calls mha(x, x, x)")
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                full = f"{name}.{child_name}" if name else child_name
                setattr(mod, child_name, MultiheadSelfAttention.from_torch(child, full))
    return model
