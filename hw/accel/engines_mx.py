"""MX (OCP Microscaling) weights in the dense / conv2d engines: small element products, the block
scale as a shift.

A node with an MX weight format (:class:`qfx.types.MXType`) stores, per block of ``block_size``
weights, one E8M0 scale ``2**s`` and ``block_size`` elements ``P`` (minifloat bit patterns, or
MXINT8's signed codes). The engine multiplies the activation by the *element* only, in the
element's own product unit (the minifloat unit of :mod:`qfx.hw.pe` for MXFP8/6/4, a small
fixed-point one for MXINT8): ``x * P`` is exact on the product grid ``F_p = F_x + F_e``
(``F_e`` the element grid, :func:`qfx.arith.mx_element_grid`). The block scale never meets a
multiplier: the exact sum of the products of one block (an adder tree over the simd lanes that
share that block in every cycle) is shifted left by ``s - s_min`` onto the grid
``F_p - s_min`` (``s_min`` the smallest scale of the node's blocks that hold a nonzero element),
which is :mod:`qfx.reference`'s definition (dense: block partial sums shifted by the block
scale; conv2d: elements shifted onto one grid -- the same exact sum). The shifted group sums
are added exactly to the accumulator, which ``accum_exact`` (required for MX weights) says can
never round or overflow, so the order of the terms is free; ``y = cast(acc + bias, output)``.

Lane groups: with folding ``simd``, cycle ``c`` issues terms ``c*simd .. c*simd+simd-1``. Lanes
are grouped into maximal runs that lie in one block in *every* cycle (:func:`lane_groups`):
a dense node with ``simd`` dividing the block size has one group per channel (one shifter per
output channel), ``simd`` a multiple of the block size ``simd / block`` groups, a conv2d node
(blocks run along the input channels, one block per kernel position) usually one group per
lane (a shifter per product). The shift amounts sit in a ROM beside the weight ROM (same
address: output-channel block, term chunk), one ``ceil(log2(max_shift + 1))``-bit field per
(channel, group).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from amaranth.hdl import Module, Signal, Value

from qfx.manifest import Node, mx_weight_grid_codes
from qfx.types import MX_SCALE_BIAS, FixedType, MXType

from ..cast import CastUnit, fixed_shape

__all__ = ["MXPlan", "mx_plan", "lane_groups", "mx_shift_words", "mx_accumulate", "mx_shifter_cost"]


@dataclasses.dataclass(frozen=True)
class MXPlan:
    """How a dense / conv2d engine applies the block scales of its MX weights.

    Attributes
    ----------
    fmt : MXType
        The node's weight format.
    s_min : int
        Smallest unbiased scale exponent over the blocks holding a nonzero element (0 if none).
    max_shift : int
        Largest ``s - s_min`` (0: one shared scale, no shifter logic).
    shifts : numpy.ndarray
        ``[out_channels, k_terms]``: per weight, ``s - s_min`` of its block (0 for blocks of zeros).
    block_of_term : numpy.ndarray
        ``[k_terms]``: the block (within the output channel) of each term of the documented
        accumulation order.
    """

    fmt: MXType
    s_min: int
    max_shift: int
    shifts: np.ndarray
    block_of_term: np.ndarray

    @property
    def shift_bits(self) -> int:
        return max(self.max_shift.bit_length(), 1)


def _block_of_term(node: Node, block: int) -> np.ndarray:
    """Per term k of the accumulation order, its block within an output channel."""
    p = node.params
    if node.op == "dense":
        return np.arange(p["in_features"]) // block
    kh, kw = p["kernel"]
    cg = p["in_channels"] // p["groups"]
    k = np.arange(cg * kh * kw)
    # term k = (c, ky, kx); scales [O, C/G/block, KH, KW]: block (c // block, ky, kx)
    return (k // (kh * kw)) // block * (kh * kw) + k % (kh * kw)


def mx_plan(node: Node) -> MXPlan:
    """The :class:`MXPlan` of a dense / conv2d node with MX weights (from its manifest arrays)."""
    t: MXType = node.formats["weight"]
    o = node.params["out_features"] if node.op == "dense" else node.params["out_channels"]
    scales = np.asarray(node.arrays["weight_mx_scales"], dtype=np.int64).reshape(o, -1) - MX_SCALE_BIAS
    codes = mx_weight_grid_codes(np.asarray(node.arrays["weight"]), t).reshape(o, -1)
    bid = _block_of_term(node, t.block_size)
    nonzero = np.zeros(scales.shape, dtype=bool)
    for oi in range(o):
        np.logical_or.at(nonzero[oi], bid, codes[oi] != 0)
    s_min = int(scales[nonzero].min()) if nonzero.any() else 0
    rel = np.where(nonzero, scales - s_min, 0)
    shifts = rel[:, bid]
    return MXPlan(fmt=t, s_min=s_min, max_shift=int(rel.max()) if rel.size else 0, shifts=shifts, block_of_term=bid)


def lane_groups(block_of_term: np.ndarray, simd: int) -> list[tuple[int, int]]:
    """Maximal runs ``(first lane, lanes)`` of the simd lanes that lie in one block in every cycle."""
    chunks = np.asarray(block_of_term).reshape(-1, simd)
    groups, start = [], 0
    for j in range(1, simd + 1):
        if j == simd or not np.array_equal(chunks[:, j], chunks[:, start]):
            groups.append((start, j - start))
            start = j
    return groups


def mx_shift_words(mx: MXPlan, pe: int, simd: int, groups: "list[tuple[int, int]]", oc_blocks: int,
                   k_terms: int) -> list[int]:
    """The shift ROM: per (output-channel block, term chunk), ``pe x groups`` fields of
    :attr:`MXPlan.shift_bits` (channel ``i``, group ``g`` at field ``i * len(groups) + g``)."""
    sb, ng, ks = mx.shift_bits, len(groups), k_terms // simd
    words = []
    for b in range(oc_blocks):
        for c in range(ks):
            w = 0
            for i in range(pe):
                for g, (first, _n) in enumerate(groups):
                    w |= int(mx.shifts[b * pe + i, c * simd + first]) << ((i * ng + g) * sb)
            words.append(w)
    return words


def _tree(values: list) -> Value:
    while len(values) > 1:  # balanced exact adder tree (Amaranth widens every add)
        values = [values[q] + values[q + 1] if q + 1 < len(values) else values[q] for q in range(0, len(values), 2)]
    return values[0]


def mx_accumulate(m: Module, name: str, base: Value, products: list, p_fmt: FixedType, acc_fmt: FixedType,
                  mx: MXPlan, groups: "list[tuple[int, int]]", shift_field: Any) -> Value:
    """``base`` plus one cycle's products of one output channel: per lane group the exact sum of its
    products, shifted left by its block's ``s - s_min`` (``shift_field(g)``: the field of the shift
    ROM), the shifted sums added exactly, then added to ``base`` (an exact accumulator, the cast a
    bit select)."""
    shifted, s_fmts = [], []
    for g, (first, n) in enumerate(groups):
        t_fmt = p_fmt.accumulator(n) if n > 1 else p_fmt
        tree = Signal(fixed_shape(t_fmt), name=f"{name}_g{g}")
        m.d.comb += tree.eq(_tree(list(products[first:first + n])))
        # the block's sum on the grid F_p - s_min: the same code shifted left by s - s_min
        s_fmt = FixedType(t_fmt.width + mx.max_shift, t_fmt.int_bits + mx.max_shift + mx.s_min, t_fmt.signed)
        sh = Signal(fixed_shape(s_fmt), name=f"{name}_sh{g}")
        m.d.comb += sh.eq(tree << shift_field(g) if mx.max_shift else tree)
        shifted.append(sh)
        s_fmts.append(s_fmt)
    g_fmt = s_fmts[0].accumulator(len(shifted)) if len(shifted) > 1 else s_fmts[0]
    gsum = Signal(fixed_shape(g_fmt), name=f"{name}_gsum")
    m.d.comb += gsum.eq(_tree(shifted))
    tot_fmt = acc_fmt + g_fmt
    f = tot_fmt.frac_bits
    total = Signal(fixed_shape(tot_fmt), name=f"{name}_total")
    m.d.comb += total.eq((base << (f - acc_fmt.frac_bits)) + (gsum << (f - g_fmt.frac_bits)))
    m.submodules[f"{name}_cast"] = cast = CastUnit(tot_fmt, acc_fmt)  # exact: no bit it drops is set
    m.d.comb += cast.i.eq(total)
    return cast.o


def mx_shifter_cost(node: Node, pe: int = 1, simd: int = 1) -> dict[str, float]:
    """The scale handling of an MX node's engine at a folding: ``shifters`` (``pe`` x lane groups),
    ``shift_bits`` (levels of each barrel shifter), ``shifter_luts`` (one LUT6 is a 4:1 mux, so a
    ``w``-bit shifter of ``L`` levels is about ``w * ceil(L / 2)`` LUTs: a structural count, not
    fitted) and ``shift_rom_bits`` (the shift ROM)."""
    from qfx.manifest import mac_product_format

    from .folding import mac_dims

    mx = mx_plan(node)
    groups = lane_groups(mx.block_of_term, simd)
    p_fmt = mac_product_format(node.formats["input"], mx.fmt.element, "exact")
    o, _p, k_terms = mac_dims(node)
    if mx.max_shift == 0:
        luts = 0.0
    else:
        luts = float(pe * sum((p_fmt.accumulator(n) if n > 1 else p_fmt).width + mx.max_shift for _f, n in groups)
                     * math.ceil(mx.shift_bits / 2))
    return {"shifters": pe * len(groups) if mx.max_shift else 0, "shift_bits": mx.shift_bits if mx.max_shift else 0,
            "shifter_luts": luts,
            "shift_rom_bits": (o // pe) * (k_terms // simd) * pe * len(groups) * mx.shift_bits if mx.max_shift else 0}
