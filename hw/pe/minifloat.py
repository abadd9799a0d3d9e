"""A multiply-accumulate processing element for minifloat weights (exact products)."""

from __future__ import annotations

from amaranth.lib import wiring

from qfx.types import FixedType, MinifloatType

from ._accumulate import ProductPE
from .multiply import MinifloatMultiplier

__all__ = ["MinifloatMACPE"]


def _check_minifloat(w: object) -> MinifloatType:
    if not isinstance(w, MinifloatType):
        raise TypeError(
            f"w must be a qfx.types.MinifloatType, not {type(w).__name__} {w!r}; e.g. qfx.parse_type('fp8_e4m3fn')"
        )
    return w


class MinifloatMACPE(ProductPE, wiring.Component):
    """Multiply-accumulate of a fixed-point input by a minifloat weight, exactly (``multiply: exact``).

    The weight arrives as its raw bit pattern (as the manifest stores it);
    a :class:`~qfx.hw.pe.MinifloatMultiplier` decodes it onto the minifloat
    hull grid (:func:`qfx.manifest.minifloat_hull_codes`) and forms the
    exact product of type ``P = x * minifloat_hull(w)``
    (:func:`qfx.manifest.mac_product_format`), which is registered and then
    accumulated as a Vitis HLS loop does::

        acc = cast(acc + x * w, acc_fmt)      # every cycle with valid

    the cast being a :class:`~qfx.hw.cast.CastUnit` on ``acc_fmt + P``.
    Handshake (``valid``, ``clear``, ``init``) as :class:`~qfx.hw.pe.MACPE`;
    ``valid``, ``clear`` and ``init`` travel with the product register.

    Latency 2 cycles (product register, accumulator register): a term
    presented in cycle ``t`` is in ``acc`` from cycle ``t + 2``, when
    ``o_valid`` is high. Throughput one term per cycle; always ready.

    Parameters
    ----------
    x : FixedType
        Format of the input codes.
    w : MinifloatType
        Weight format.
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
        If the product or the exact sum type would exceed 64 bits.
    """

    _kind = "MinifloatMACPE"
    _multiply = "exact"
    _registered_product = True

    def __init__(self, x: FixedType, w: MinifloatType, acc: FixedType) -> None:
        _check_minifloat(w)
        super().__init__(self._setup(x, w, acc, MinifloatMultiplier))
