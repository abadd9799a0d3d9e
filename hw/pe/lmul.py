"""A multiply-accumulate processing element with L-Mul products (``multiply: lmul``)."""

from __future__ import annotations

from amaranth.lib import wiring

from qfx.types import FixedType, MinifloatType

from ._accumulate import ProductPE
from .minifloat import _check_minifloat
from .multiply import LMulMultiplier

__all__ = ["LMulPE"]


class LMulPE(ProductPE, wiring.Component):
    """Accumulate L-Mul products of fixed-point inputs and minifloat weights (``multiply: lmul``).

    An :class:`~qfx.hw.pe.LMulMultiplier` rounds the input code to the
    weight's minifloat format (nearest even; saturating) and forms the L-Mul
    product (one add of the mantissa fields, one of the exponents, no
    mantissa multiplier) on the grid of ``P = lmul_product_type(w)``
    (:func:`qfx.manifest.mac_product_format` with ``multiply='lmul'``),
    bit-exact with the integer reference. The product is registered and
    accumulated as a Vitis HLS loop does::

        acc = cast(acc + lmul(x, w), acc_fmt)      # every cycle with valid

    the cast being a :class:`~qfx.hw.cast.CastUnit` on ``acc_fmt + P``.
    Handshake (``valid``, ``clear``, ``init``) as :class:`~qfx.hw.pe.MACPE`.

    Latency 2 cycles (product register, accumulator register): a term
    presented in cycle ``t`` is in ``acc`` from cycle ``t + 2``, when
    ``o_valid`` is high. Throughput one term per cycle; always ready.

    Parameters
    ----------
    x : FixedType
        Format of the input codes.
    w : MinifloatType
        Weight format (inputs are rounded to it too).
    acc : FixedType
        Accumulator format; its modes define the per-step cast.

    Attributes
    ----------
    x : Signal(fixed_shape(x)), in
        Input code.
    w : Signal(unsigned(w.bits)), in
        Weight bit pattern.
    valid, clear : Signal(1), in
        Accumulate this term / start from ``init``.
    init : Signal(fixed_shape(acc)), in
        Code of ``acc_fmt`` loaded by ``clear``.
    acc : Signal(fixed_shape(acc)), out
        The accumulator register (reset value 0).
    o_valid : Signal(1), out
        ``valid`` delayed by the latency.
    latency : int
        2.

    Raises
    ------
    TypeError
        If ``x`` or ``acc`` is not a FixedType or ``w`` not a MinifloatType.
    ValueError
        If the L-Mul product type or the exact sum type would exceed 64 bits.
    """

    _kind = "LMulPE"
    _multiply = "lmul"
    _registered_product = True

    def __init__(self, x: FixedType, w: MinifloatType, acc: FixedType) -> None:
        _check_minifloat(w)
        super().__init__(self._setup(x, w, acc, LMulMultiplier))
