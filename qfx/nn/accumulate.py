"""Multiply-accumulate semantics shared by QLinear and QConv2d.

The contract (what the integer reference, the HLS C++ and the RTL compute)::

    acc = cast(bias, accum)                       # 0 without a bias
    for k in the layer's documented order:
        acc = cast(acc + x[k] * w[k], accum)      # x[k] * w[k] exact (or L-Mul, exact)
    y = cast(acc, output)

Sizing. Every operand is a dyadic rational on a known grid, so each product
lies on the grid of a *product type* P (a FixedType):

* fixed-point or K-hot weight ``w``: ``P = input * weight`` (ap_fixed product
  type; K-hot uses its base);
* minifloat weight, exact multiply: ``P = input * hull(weight)``, where
  :func:`minifloat_hull` is the narrowest FixedType holding every finite value;
* L-Mul: the activation is cast to the weight's minifloat format first and
  :func:`lmul_product_type` bounds the exact L-Mul result.
* MX weight (``MXType``): ``P = input * mx_value_hull(current weights)``: an MX
  format's scales span 2**-127..2**127, so the hull is taken over the values the
  quantized weight tensor holds now (:func:`qfx.nn.mac.mx_value_hull`), and
  ``accum="auto"`` follows the weights as they train.

``accum="auto"`` is ``P.accumulator(n_terms)`` (plus the bias: ``S + bias``),
the narrowest type in which every partial sum, in any order, is exact.

Fast path. When the accumulator holds every value of that auto type, no cast
inside the loop can change anything and the order is irrelevant: the layer
calls ``F.linear`` / ``F.conv2d`` in float64 on the exact operands. float64
computes every product and every partial sum exactly because each is a
multiple of ``2**-F`` of magnitude below ``2**(W-1-F)`` for the auto type
``<W, W-F>`` and ``W <= 53`` is checked (:func:`check_float64_exact`): a
float64 holds every such number, so no operation of the library rounds, in
whatever order or blocking it sums.

Slow path. An accumulator that can round or overflow is emulated step by step
(a Python loop over the reduction index, vectorised over batch and output
positions). Each step ``acc + p`` is exact in float64 when
``(accum + P).width <= 53``, also checked.
"""

from __future__ import annotations

from typing import Callable

import torch

from .._lmul import lmul
from ..arith import auto_accumulator, holds_all_values, lmul_product_type, minifloat_hull, product_type, weight_hull
from ..types import FixedType, MinifloatType
from .quantizer import TensorQuantizer

__all__ = [
    "F64_EXACT_BITS",
    "minifloat_hull",
    "weight_hull",
    "lmul_product_type",
    "product_type",
    "auto_accumulator",
    "holds_all_values",
    "check_float64_exact",
    "accumulate_steps",
    "lmul_columns",
]

#: float64 represents every integer of at most this many bits.
F64_EXACT_BITS = 53


def check_float64_exact(t: FixedType, what: str) -> None:
    """Raise ``ValueError`` unless every value of ``t`` (and every partial sum within it) is exact in float64."""
    if t.width > F64_EXACT_BITS:
        raise ValueError(
            f"{what} needs {t} ({t.width} bits), beyond the {F64_EXACT_BITS} bits float64 holds "
            f"exactly; qfx cannot emulate it bit-exactly. Use narrower input/weight formats, "
            f"fewer terms per output, or a narrower explicit accum"
        )


MultiplyFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def accumulate_steps(
    x_cols: torch.Tensor,
    w_rows: torch.Tensor,
    bias: torch.Tensor | None,
    accum: TensorQuantizer,
    multiply: MultiplyFn,
) -> torch.Tensor:
    """The step-by-step HLS loop (slow): one cast to ``accum`` after every product.

    Parameters
    ----------
    x_cols : Tensor ``[B, G, K, L]``
        Exact activations: batch, group, reduction index ``k`` (in the layer's
        documented order), output position.
    w_rows : Tensor ``[G, O, K]``
        Exact weights: group, output channel within the group, reduction index.
    bias : Tensor ``[G, O]`` or None
        Exact bias values.
    accum : TensorQuantizer
        The accumulator cast (counts overflows when tracking).
    multiply : callable
        ``multiply(x, w)`` returns the exact products (broadcasting).

    Returns
    -------
    Tensor ``[B, G, O, L]`` (float64): the accumulator after the last step.
    """
    b, g, k, l = x_cols.shape
    o = w_rows.shape[1]
    acc = torch.zeros((b, g, o, l), dtype=torch.float64, device=x_cols.device)
    if bias is not None:
        acc = accum(acc + bias[None, :, :, None])
    for i in range(k):
        p = multiply(x_cols[:, :, None, i, :], w_rows[None, :, :, i, None])
        acc = accum(acc + p)
    return acc


def lmul_columns(x_cols: torch.Tensor, w_rows: torch.Tensor, fmt: MinifloatType) -> torch.Tensor:
    """All exact L-Mul products ``[B, G, O, K, L]`` summed over ``K`` (exact: the sum is in the auto type)."""
    p = lmul(x_cols[:, :, None, :, :], w_rows[None, :, :, :, None], fmt, exact=True)
    return p.sum(dim=3)
