"""Hard-wired K-hot products for fully unrolled dense / conv2d engines (issue 13, item 2).

When a K-hot layer is folded so that every weight has its own product unit (``pe`` = all
output channels, ``simd`` = all terms per output, one group: the weight ROM would hold a single
word), there is nothing to read: each weight is a constant. Its product is then

    x * w  =  sum_j  sign_j * (x << shift_j)

over the weight's canonical signed digits (:func:`qfx.khot_digits`), with *constant* shifts: a
shift is wiring, ``-x`` is formed once per input lane and shared by every weight of that lane,
and what remains is ``nnz(w) - 1`` adders per weight (none for a power of two, no hardware at all
for a zero weight). No ROM, no barrel shifter, no DSP: the case in which multiplier-free
arithmetic really saves area and energy.

The products are the exact products of :class:`~qfx.hw.pe.KHotMultiplier` (type
``x_fmt * w_fmt.base``), so the engine's accumulation (declared-accumulator chain or exact adder
tree) and its bits are unchanged. The input codes are delayed by ``PRODUCT_LATENCY`` registers
(``simd`` lanes, shared by all output channels) so the products arrive when the ROM-fed product
units' would: the engine's schedule does not change either.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from amaranth.hdl import Module, Signal, Value, signed

from qfx._khot import khot_digits
from qfx.manifest import Node
from qfx.types import FixedType, KHot

from ..cast import fixed_shape
from .folding import Folding, mac_dims

__all__ = ["hardwired", "weight_codes", "constant_products", "hardwired_cost"]


def hardwired(node: Node, folding: Folding) -> bool:
    """Whether ``node`` at ``folding`` gets hard-wired K-hot products: a (single) K-hot weight
    format, ``multiply: exact``, and one weight per product unit (``pe`` = output channels,
    ``simd`` = terms per output, one group)."""
    w = node.formats.get("weight")
    if not isinstance(w, KHot) or node.params.get("multiply", "exact") != "exact":
        return False
    if int(node.params.get("groups", 1)) != 1:
        return False
    o, _p, k_terms = mac_dims(node)
    return folding.pe == o and folding.simd == k_terms


def weight_codes(node: Node) -> np.ndarray:
    """The node's weight codes (on ``weight.base``'s grid) as ``(output channel, term)``, the
    terms in the documented accumulation order (input channel, kernel row, kernel column)."""
    o = mac_dims(node)[0]
    return np.asarray(node.arrays["weight"], dtype=np.int64).reshape(o, -1)


def _digits(node: Node) -> tuple[np.ndarray, np.ndarray]:
    w = node.formats["weight"]
    return khot_digits(weight_codes(node), w)


def constant_products(m: Module, node: Node, xs: list, *, name: str = "kw") -> tuple[list, FixedType]:
    """The ``o x k`` products of the fully unrolled layer as constant shift-adds of ``xs``.

    ``xs[j]``: the input code of term ``j`` in the cycle the operands enter the product units;
    the products are valid ``PRODUCT_LATENCY`` cycles later, as :func:`~qfx.hw.pe.dsp_pipe.
    product_stage`'s. Returns ``(products[i][j], product_fmt)``.
    """
    from ..pe.dsp_pipe import PRODUCT_LATENCY

    x_fmt, w_fmt = node.formats["input"], node.formats["weight"]
    p_fmt = x_fmt * w_fmt.base
    shifts, signs = _digits(node)
    o, k = shifts.shape[:2]
    if len(xs) != k:
        raise ValueError(f"node {node.name!r}: {len(xs)} input lanes for {k} terms")
    pshape = fixed_shape(p_fmt)
    products: list[list[Any]] = [[None] * k for _ in range(o)]
    for j in range(k):
        x = xs[j]
        for n in range(PRODUCT_LATENCY):  # the ROM-fed units' A/B, M and P registers, as a lane delay
            r = Signal(fixed_shape(x_fmt), name=f"{name}_x{j}_d{n}", reset_less=True)
            m.d.sync += r.eq(x)
            x = r
        neg = None
        if (signs[:, j] < 0).any():  # -x once per lane, shared by every weight that needs it
            neg = Signal(signed(x_fmt.width + 1), name=f"{name}_nx{j}")
            m.d.comb += neg.eq(-x)
        for i in range(o):
            terms: list[Value] = []
            for s, sg in zip(shifts[i, j], signs[i, j]):
                if sg:
                    terms.append((x if sg > 0 else neg) << int(s))
            p = Signal(pshape, name=f"{name}_p{i}_{j}")
            total: Any = terms[0] if terms else 0
            for t in terms[1:]:
                total = total + t
            m.d.comb += p.eq(total)
            products[i][j] = p
    return products, p_fmt


def hardwired_cost(node: Node) -> dict[str, float]:
    """Structural count of the constant products of a fully unrolled K-hot node.

    ``adders``: two-input adds (``nnz - 1`` per weight); ``adder_luts``: their LUTs, one per
    result bit of each add (a carry-chain adder); ``negators`` / ``negator_luts``: the per-lane
    ``-x``; ``delay_ffs``: the input lanes' ``PRODUCT_LATENCY`` delay registers; ``zero_weights``,
    ``weights``; and ``mean_nnz``, the mean nonzero digits per weight.
    """
    from ..pe.dsp_pipe import PRODUCT_LATENCY

    x_fmt, w_fmt = node.formats["input"], node.formats["weight"]
    shifts, signs = _digits(node)
    pw = (x_fmt * w_fmt.base).width
    nnz = (signs != 0).sum(axis=-1)
    adds = np.maximum(nnz - 1, 0)
    # an add of (x << a) and (x << b), a > b, has the low b bits as wires: it spans the bits above
    lo = np.where(signs != 0, shifts, 99).min(axis=-1)
    span = np.minimum(pw, x_fmt.width + 1 + np.where(signs != 0, shifts, 0).max(axis=-1)) - np.where(nnz > 0, lo, 0)
    negs = int((signs < 0).any(axis=(0, 2)).sum())
    k = shifts.shape[1]
    return {
        "weights": float(nnz.size),
        "zero_weights": float((nnz == 0).sum()),
        "mean_nnz": float(nnz.mean()) if nnz.size else 0.0,
        "adders": float(adds.sum()),
        "adder_luts": float((adds * np.maximum(span, 1)).sum()),
        "negators": float(negs),
        "negator_luts": float(negs * (x_fmt.width + 1)),
        "delay_ffs": float(k * PRODUCT_LATENCY * x_fmt.width),
    }
