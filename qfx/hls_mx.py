"""HLS C++ of dense / conv2d nodes with MX (OCP Microscaling) weights (templates ``mx_dense.j2``,
``mx_conv2d.j2``); :mod:`qfx.hls` calls :func:`mx_context` for them.

Semantics are :mod:`qfx.reference`'s (and the RTL's, :mod:`qfx.hw.accel.engines_mx`): the
weights are the manifest's element codes (MXFP8/6/4: minifloat bit patterns decoded by
``<node>_wdec`` to their exact value on the element grid ``2**-F_e``, ``_minifloat.j2``; MXINT8:
the ``ap_fixed<8,2>`` codes as constants), so every product ``x * P`` is a small exact one on
``F_p = F_x + F_e``. The E8M0 block scale ``2**s`` is a shift by ``s - s_min`` (``s_min`` the
smallest scale of the node's blocks that hold a nonzero element; ``<node>_wsh``):

* dense: per block the exact partial sum ``ps`` (``<node>_ps_t``) of its ``block`` products,
  then ``acc += <node>_mx_t(ps) << wsh[o][j]``, one shift per block;
* conv2d (blocks along the input channels, one block per kernel position, so the terms of a
  block are not consecutive): every product shifted by its block's amount onto one grid,
  ``acc += <node>_mx_t(x * P) << wsh[weight]``, as the reference defines it.

``<node>_mx_t`` is exact (grid ``2**-F_p``, integer bits for every partial sum shifted by up to
``max_shift``): the accumulation order is free, as ``accum_exact`` (required for MX) says. ``acc``
holds the true sum times ``2**-s_min``; ``<node>_val_t`` reads the same bits ``s_min`` places
further left (a relabelling of the binary point, no logic), the bias is added exactly and
``y = qfx_cast<out_t>(v + bias)``: the one rounding of the reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .arith import mx_element_grid
from .manifest import Node, mx_weight_grid_codes
from .types import MX_SCALE_BIAS, FixedType, MinifloatType, MXType

__all__ = ["mx_context", "mx_shifts"]


def mx_shifts(node: Node) -> tuple[np.ndarray, int, int]:
    """``(shifts, s_min, max_shift)``: per block (the ``weight_mx_scales`` shape, flattened per output
    channel) its ``s - s_min``; blocks of zeros get 0 and do not count for ``s_min``."""
    t: MXType = node.formats["weight"]
    o = node.params["out_features"] if node.op == "dense" else node.params["out_channels"]
    scales = np.asarray(node.arrays["weight_mx_scales"], dtype=np.int64) - MX_SCALE_BIAS
    codes = mx_weight_grid_codes(np.asarray(node.arrays["weight"]), t)
    if node.op == "dense":
        nz = (codes.reshape(o, -1, t.block_size) != 0).any(axis=2)
    else:  # [O, C/G, KH, KW] -> blocks [O, C/G/block, KH, KW]
        _, cg, kh, kw = codes.shape
        nz = (codes.reshape(o, cg // t.block_size, t.block_size, kh, kw) != 0).any(axis=2)
    s_min = int(scales[nz].min()) if nz.any() else 0
    rel = np.where(nz, scales - s_min, 0)
    return rel.reshape(o, -1), s_min, int(rel.max()) if rel.size else 0


def mx_context(node: Node, in_fmt: FixedType, ctx: dict, exact, cpp, literals, fields) -> list[tuple[str, str]]:
    """Fill ``ctx`` for ``mx_<op>.j2`` and return the node's extra ``(role, C++ type)`` typedefs.

    ``exact``, ``cpp``, ``literals``: :mod:`qfx.hls`'s type spellers and constant writer;
    ``fields``: its minifloat context builder (the ``mf`` dict of ``_minifloat.j2``)."""
    t: MXType = node.formats["weight"]
    e = t.element
    grid = mx_element_grid(t)
    codes = np.asarray(node.arrays["weight"], dtype=np.int64)
    shifts, s_min, max_sh = mx_shifts(node)
    types: list[tuple[str, str]] = [("w", cpp(grid))]
    if isinstance(e, MinifloatType):
        ctx.update(minifloat=True, mf=fields(e, grid), weight_bits=[str(int(v)) for v in codes.reshape(-1)])
    else:  # MXINT8: the element codes on ap_fixed<8,2>
        ctx["weights"] = literals(mx_weight_grid_codes(codes, t), grid.frac_bits, f"node {node.name!r} weight")
    p_fmt = in_fmt * grid
    n_terms = node.params["in_features"] if node.op == "dense" else codes[0].size
    block = t.block_size
    ps_fmt = p_fmt.accumulator(block)
    sum_fmt = p_fmt.accumulator(n_terms)
    mx_int = sum_fmt.int_bits + max_sh
    width = mx_int + sum_fmt.frac_bits
    types += [("ps", exact(ps_fmt.width, ps_fmt.int_bits)), ("mx", exact(width, mx_int)),
              ("val", exact(width, mx_int + s_min))]
    if node.op == "conv2d":  # a shift per weight: its block's
        o, cg, kh, kw = codes.shape
        per_w = shifts.reshape(o, cg // block, 1, kh, kw).repeat(block, axis=2).reshape(-1)
        sh = per_w
    else:
        sh = shifts.reshape(-1)
    ctx.update(mx=dict(fmt=str(t), block=block, n_blocks=n_terms // block if node.op == "dense" else None,
                       s_min=s_min, max_shift=max_sh, width=width, shifts=[str(int(v)) for v in sh],
                       n_sh=int(sh.size), element=str(e)))
    return types
