"""The accumulate stage shared by the PEs: ``acc = cast(acc + p, acc_fmt)`` per valid cycle."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal

from qfx.types import FixedType

from ..cast import CastUnit, fixed_shape


def sum_format(acc: FixedType, product: FixedType, what: str) -> FixedType:
    """The exact type of ``acc + product`` (ap_fixed RType); ValueError naming ``what`` beyond 64 bits."""
    try:
        return acc + product
    except ValueError as err:
        raise ValueError(
            f"{what}: the exact sum of accumulator {acc} and product {product} needs a type wider "
            f"than qfx emulates ({err}); use a narrower accumulator or operands"
        ) from None


def accumulate(m: Module, *, p, p_fmt: FixedType, acc_fmt: FixedType, valid, clear, init, acc, o_valid) -> None:
    """Build the accumulator register ``acc`` (sync domain) fed by the product ``p`` of format ``p_fmt``.

    On a cycle with ``valid``: ``acc <= cast((clear ? init : acc) + p, acc_fmt)``; with ``clear``
    alone: ``acc <= init``; otherwise ``acc`` holds. ``o_valid <= valid``.
    """
    s_fmt = sum_format(acc_fmt, p_fmt, "accumulator")
    f = s_fmt.frac_bits
    base = Signal(fixed_shape(acc_fmt))
    m.d.comb += base.eq(Mux(clear, init, acc))
    total = Signal(fixed_shape(s_fmt))
    m.d.comb += total.eq((base << (f - acc_fmt.frac_bits)) + (p << (f - p_fmt.frac_bits)))
    m.submodules.cast = cast = CastUnit(s_fmt, acc_fmt)
    m.d.comb += cast.i.eq(total)
    with m.If(valid):
        m.d.sync += acc.eq(cast.o)
    with m.Elif(clear):
        m.d.sync += acc.eq(init)
    m.d.sync += o_valid.eq(valid)
