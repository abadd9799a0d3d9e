"""Hard-wired K-hot products for fully unrolled dense / conv2d engines (issue 13, item 2).

When a K-hot layer is folded so that every weight has its own product unit (``pe`` = all
output channels, ``simd`` = all terms per output, one group: the weight ROM would hold a single
word), there is nothing to read: each weight is a constant. Its product is then

    x * w  =  sum_j  sign_j * (x << shift_j)

over the weight's canonical signed digits (:func:`qfx.khot_digits`, :func:`qfx.types.khot_slots`), with *constant* shifts: a
shift is wiring, ``-x`` is formed once per input lane and shared by every weight of that lane,
and what remains is ``nnz(w) - 1`` adders per weight (none for a power of two, no hardware at all
for a zero weight). No ROM, no barrel shifter, no DSP: the case in which multiplier-free
arithmetic really saves area and energy.

The products are the exact products of :class:`~qfx.hw.pe.KHotMultiplier` (the values of type
``x_fmt * w_fmt.base``, each at its natural width: a power of two is ``x`` shifted, a zero weight
the constant 0), so the engine's accumulation (declared-accumulator chain or exact adder
tree) and its bits are unchanged. The input codes are delayed by ``PRODUCT_LATENCY`` registers
(``simd`` lanes, shared by all output channels) so the products arrive when the ROM-fed product
units' would: the engine's schedule does not change either.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from amaranth.hdl import Const, Module, Shape, Signal, signed

from qfx.manifest import Node
from qfx.types import FixedType, KHot, khot_slots

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
    return khot_slots(weight_codes(node), w, dtype=np.int8)  # qfx.khot_digits' digits, without torch


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
            terms = [sg for sg in signs[i, j] if sg]
            if not terms:  # a zero weight: no hardware
                products[i][j] = Const(0, 1)
                continue
            # Adds at the terms' natural widths, the common trailing zeros (the smallest shift) left
            # as wiring: only the bits a digit pair really spans cost carry-chain LUTs.
            low = min(int(s) for s, sg in zip(shifts[i, j], signs[i, j]) if sg)
            total: Any = None
            for s, sg in zip(shifts[i, j], signs[i, j]):
                if sg:
                    t = (x if sg > 0 else neg) << (int(s) - low)
                    total = t if total is None else total + t
            p = Signal(Shape.cast(total.shape()), name=f"{name}_p{i}_{j}")
            m.d.comb += p.eq(total)
            products[i][j] = p << low if low else p
    return products, p_fmt


def _add_bits(a: "tuple[int, int] | None", b: "tuple[int, int] | None") -> "tuple[tuple[int, int] | None, int]":
    """Bit range ``[lo, hi)`` of the sum of two terms with ranges ``a`` and ``b`` (None: the
    constant 0), and the carry-chain LUTs of the add: one per result bit above the higher of the
    two low ends (the bits below it are the other term's, wiring)."""
    if a is None or b is None:
        return (a if b is None else b), 0
    lo, hi = min(a[0], b[0]), max(a[1], b[1]) + 1
    return (lo, hi), hi - max(a[0], b[0])


def hardwired_cost(node: Node) -> dict[str, float]:
    """Structural count of a fully unrolled K-hot node's constant products and exact adder tree.

    Mirrors what :func:`constant_products` and the engine's tree build, on bit ranges: a digit
    term ``+-x << s`` spans ``[s, s + width(x) + 1)``; an add costs one LUT per result bit above
    the higher of its operands' low ends (:func:`_add_bits`). ``adders`` / ``adder_luts``: the
    products' adds (``nnz - 1`` per weight); ``tree_luts`` / ``tree_ffs``: the exact adder tree of each
    output channel's products, paired as the engine pairs them, and its registers (after every
    second level, constant low bits not counted); ``negators`` / ``negator_luts``: the
    per-lane ``-x``; ``delay_ffs`` / ``delay_luts``: the input lanes' ``PRODUCT_LATENCY`` delay
    (as SRL16E shift registers where it is 3 or more deep, as synth_xilinx maps it);
    ``weights``, ``zero_weights``, ``mean_nnz`` (nonzero digits per weight).
    """
    from ..pe.dsp_pipe import PRODUCT_LATENCY

    x_fmt = node.formats["input"]
    shifts, signs = _digits(node)
    xw = x_fmt.width + 1  # +-x, signed
    o, k = shifts.shape[:2]
    nnz = (signs != 0).sum(axis=-1)
    prod_luts, tree_luts, tree_ffs = 0, 0, 0
    for i in range(o):
        ranges: list = []
        for j in range(k):
            r = None
            for sh, sg in zip(shifts[i, j], signs[i, j]):
                if sg:
                    r, c = _add_bits(r, (int(sh), int(sh) + xw))
                    prod_luts += c
            ranges.append(r)
        level = 0
        while len(ranges) > 1:  # the balanced pairing of MACEngine._accumulate
            nxt = []
            for q in range(0, len(ranges), 2):
                if q + 1 < len(ranges):
                    r, c = _add_bits(ranges[q], ranges[q + 1])
                    tree_luts += c
                    nxt.append(r)
                else:
                    nxt.append(ranges[q])
            ranges = nxt
            level += 1
            if level % 2 == 0:  # registered after every second level (MACEngine._tree_stages)
                tree_ffs += sum(r[1] - r[0] for r in ranges if r is not None)
    negs = int((signs < 0).any(axis=(0, 2)).sum())
    return {
        "weights": float(nnz.size),
        "zero_weights": float((nnz == 0).sum()),
        "mean_nnz": float(nnz.mean()) if nnz.size else 0.0,
        "adders": float(np.maximum(nnz - 1, 0).sum()),
        "adder_luts": float(prod_luts),
        "tree_luts": float(tree_luts),
        "tree_ffs": float(tree_ffs),
        "negators": float(negs),
        "negator_luts": float(negs * xw),
        # synth_xilinx maps register chains of 3 or more to SRL16E shift registers (a LUT each)
        "delay_ffs": 0.0 if PRODUCT_LATENCY >= 3 else float(k * PRODUCT_LATENCY * x_fmt.width),
        "delay_luts": float(k * x_fmt.width) if PRODUCT_LATENCY >= 3 else 0.0,
    }
