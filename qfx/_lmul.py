"""L-Mul: the approximate minifloat multiply of "Addition is All You Need"
(H. Luo and W. Sun, 2024, arXiv:2410.00907).

For normal operands ``a = (-1)**sa (1 + xa) 2**ea`` and
``b = (-1)**sb (1 + xb) 2**eb`` with M-bit mantissas::

    L-Mul(a, b) = (-1)**(sa ^ sb) * (1 + xa + xb + 2**-l(M)) * 2**(ea + eb)

    l(M) = M if M <= 3;  3 if M == 4;  4 if M > 4

The product term ``xa * xb`` of the exact multiply is replaced by the
constant ``2**-l(M)``, so the hardware needs one integer add of the
exponent/mantissa fields instead of a mantissa multiplier.

Semantics fixed by qfx (and followed by the RTL and HLS generators):

* Operands are first converted to ``fmt`` (round to nearest even), so any
  float tensors may be passed.
* Subnormal operands are taken at their exact value, normalised:
  ``|a| = (1 + xa) 2**ea`` with ``ea < emin``.
* A zero operand gives a zero of sign ``sa ^ sb``; NaN operands, and inf times
  zero, give NaN; inf times a nonzero value gives a signed inf.
* The result ``1 + xa + xb + 2**-l`` may reach ``[2, 3)``; it is then rounded
  once, to nearest even, into ``out_fmt`` (``fmt`` by default) with that
  format's overflow rule, exactly as :func:`qfx.quantize` does. ``exact=True``
  returns the unrounded value instead (float64, always exact).
"""

from __future__ import annotations

import torch

from .arith import lmul_offset_bits  # noqa: F401  (re-exported)
from .quant import quantize
from .types import Format, FixedType, KHot, MinifloatType, parse_type

__all__ = ["lmul", "lmul_offset_bits"]


def _operand_format(fmt: "MinifloatType | str") -> MinifloatType:
    t = parse_type(fmt) if isinstance(fmt, str) else fmt
    if not isinstance(t, MinifloatType):
        raise ValueError(f"L-Mul is defined for minifloat formats, not {t}; e.g. lmul(a, b, 'fp8_e4m3fn')")
    if t.mantissa_bits > 23 or t.emin < -126 or t.emax > 127:
        raise ValueError(
            f"{t}: qfx emulates L-Mul for formats within float32's range and precision "
            "(mantissa <= 23 bits, exponents -126..127), where the product is exact in float64"
        )
    return t


class _LMulSTE(torch.autograd.Function):
    """Forward: L-Mul. Backward: the gradient of the exact product (straight through)."""

    @staticmethod
    def forward(ctx, qa, qb, result):  # type: ignore[override]
        ctx.save_for_backward(qa, qb)
        return result

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        qa, qb = ctx.saved_tensors
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = (grad * qb).sum_to_size(qa.shape)
        if ctx.needs_input_grad[1]:
            gb = (grad * qa).sum_to_size(qb.shape)
        return ga, gb, None


def lmul(
    a: torch.Tensor,
    b: torch.Tensor,
    fmt: "MinifloatType | str",
    out_fmt: "Format | str | None" = None,
    *,
    exact: bool = False,
) -> torch.Tensor:
    """Element-wise L-Mul of ``a`` and ``b`` (broadcasting) in minifloat format ``fmt``.

    Returns values of ``out_fmt`` (default ``fmt``), or the exact unrounded
    L-Mul value (float64) with ``exact=True``. See the module docstring.
    """
    t = _operand_format(fmt)
    if exact and out_fmt is not None:
        raise ValueError("give either out_fmt or exact=True, not both")
    target = t if out_fmt is None else (parse_type(out_fmt) if isinstance(out_fmt, str) else out_fmt)
    if not isinstance(target, (FixedType, MinifloatType, KHot)):
        raise TypeError(f"out_fmt must be a qfx format, got {type(target).__name__}")
    qa = quantize(a, t)
    qb = quantize(b, t)
    da, db = torch.broadcast_tensors(qa.detach().double(), qb.detach().double())
    ma, ea = torch.frexp(torch.abs(da))  # |a| = ma * 2**ea, ma in [0.5, 1): 1 + xa = 2 ma
    mb, eb = torch.frexp(torch.abs(db))
    offset = 2.0 ** -lmul_offset_bits(t.mantissa_bits)
    # Every term is a short dyadic rational: the sum and the scaling are exact in float64.
    mantissa = 2.0 * ma + 2.0 * mb - 1.0 + offset
    magnitude = mantissa * torch.exp2((ea + eb - 2).double())
    zero = (da == 0) | (db == 0)
    inf = torch.isinf(da) | torch.isinf(db)
    magnitude = torch.where(zero, torch.zeros_like(magnitude), magnitude)
    magnitude = torch.where(inf, torch.full_like(magnitude, float("inf")), magnitude)
    nan = torch.isnan(da) | torch.isnan(db) | (zero & inf)
    negative = torch.signbit(da) ^ torch.signbit(db)
    value = torch.where(negative, -magnitude, magnitude)
    value = torch.where(nan, torch.full_like(value, float("nan")), value)
    result = value if exact else quantize(value, target)
    if qa.requires_grad or qb.requires_grad:
        result = _LMulSTE.apply(qa, qb, result)
    return result
