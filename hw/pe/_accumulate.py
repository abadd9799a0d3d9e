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


def pe_members(x_shape, w_members: dict, acc_fmt: FixedType) -> dict:
    """The signature members every PE has: ``x``, the weight port(s), ``valid``, ``clear``, ``init``,
    ``acc``, ``o_valid`` (in that order)."""
    from amaranth.lib.wiring import In, Out

    return {
        "x": In(x_shape),
        **w_members,
        "valid": In(1),
        "clear": In(1),
        "init": In(fixed_shape(acc_fmt)),
        "acc": Out(fixed_shape(acc_fmt)),
        "o_valid": Out(1),
    }


def multiply_accumulate(m: Module, pe, mul, *, registered_product: bool) -> None:
    """Wire the product unit ``mul`` (already fed with ``x``/``w``) into ``pe``'s accumulator.

    With ``registered_product`` the product and ``valid``/``clear``/``init`` pass one register
    stage first (latency 2: the DSP48E2's MREG), else the accumulator takes the product
    directly (latency 1).
    """
    m.submodules.mul = mul
    p_fmt = mul.product_fmt
    if registered_product:
        p = Signal(fixed_shape(p_fmt), name="p_reg")
        valid, clear = Signal(name="valid1"), Signal(name="clear1")
        init = Signal(fixed_shape(pe.acc_fmt), name="init1")
        m.d.sync += [p.eq(mul.p), valid.eq(pe.valid), clear.eq(pe.clear), init.eq(pe.init)]
    else:
        p, valid, clear, init = mul.p, pe.valid, pe.clear, pe.init
    accumulate(m, p=p, p_fmt=p_fmt, acc_fmt=pe.acc_fmt, valid=valid, clear=clear, init=init,
               acc=pe.acc, o_valid=pe.o_valid)
