"""The accumulate stage shared by the PEs: ``acc = cast(acc + p, acc_fmt)`` per valid cycle."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal

from qfx.types import FixedType

from ..cast import CastUnit, check_fixed, fixed_shape


def sum_format(acc: FixedType, product: FixedType, what: str) -> FixedType:
    """The exact type of ``acc + product`` (ap_fixed RType); ValueError naming ``what`` beyond 64 bits."""
    try:
        return acc + product
    except ValueError as err:
        raise ValueError(
            f"{what}: the exact sum of accumulator {acc} and product {product} needs a type wider "
            f"than qfx emulates ({err}); use a narrower accumulator or operands"
        ) from None


def accumulate(m: Module, *, p, p_fmt: FixedType, acc_fmt: FixedType, valid, clear, init, acc, o_valid,
               name: str = "cast") -> None:
    """Build the accumulator register ``acc`` (sync domain) fed by the product ``p`` of format ``p_fmt``.

    On a cycle with ``valid``: ``acc <= cast((clear ? init : acc) + p, acc_fmt)``; with ``clear``
    alone: ``acc <= init``; otherwise ``acc`` holds. ``o_valid <= valid`` (``None``: not built).
    ``name`` names the cast submodule (one per accumulator in a module).
    """
    s_fmt = sum_format(acc_fmt, p_fmt, "accumulator")
    f = s_fmt.frac_bits
    base = Signal(fixed_shape(acc_fmt))
    m.d.comb += base.eq(Mux(clear, init, acc))
    total = Signal(fixed_shape(s_fmt))
    m.d.comb += total.eq((base << (f - acc_fmt.frac_bits)) + (p << (f - p_fmt.frac_bits)))
    cast = CastUnit(s_fmt, acc_fmt)
    m.submodules[name] = cast
    m.d.comb += cast.i.eq(total)
    with m.If(valid):
        m.d.sync += acc.eq(cast.o)
    with m.Elif(clear):
        m.d.sync += acc.eq(init)
    if o_valid is not None:
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


class ProductPE:
    """Mixin body of the PEs made of one product unit (:mod:`.multiply`) and :func:`accumulate`.

    Subclasses (``wiring.Component`` too) set ``_kind`` (their name), ``_multiply`` and
    ``_registered_product`` and call :meth:`_setup` from ``__init__``; it returns the
    signature members (:func:`pe_members` with ``w`` of :func:`~.multiply.weight_shape`).
    """

    _kind = "PE"
    _multiply = "exact"
    _registered_product = True

    def _setup(self, x, w, acc, make_unit) -> dict:
        from amaranth.lib.wiring import In

        from qfx.manifest import mac_product_format

        from .multiply import weight_shape

        self._x_fmt = check_fixed("x", x)
        self._w_fmt = w
        self._acc_fmt = check_fixed("acc", acc)
        try:
            self._p_fmt = mac_product_format(x, w, self._multiply)
        except ValueError as err:
            raise ValueError(f"{self._kind}: {err}") from None
        self._w_shape = weight_shape(w, self._multiply)
        sum_format(acc, self._p_fmt, self._kind)
        self._make_unit = make_unit
        return pe_members(fixed_shape(x), {"w": In(self._w_shape)}, acc)

    x_fmt = property(lambda self: self._x_fmt, doc="Input format.")
    w_fmt = property(lambda self: self._w_fmt, doc="Weight format.")
    acc_fmt = property(lambda self: self._acc_fmt, doc="Accumulator format.")
    product_fmt = property(lambda self: self._p_fmt, doc="Product type (``mac_product_format``).")
    multiply = property(lambda self: self._multiply, doc="``'exact'`` or ``'lmul'``.")

    @property
    def latency(self) -> int:
        """Cycles from a term's inputs to ``acc`` holding it."""
        return 2 if self._registered_product else 1

    def elaborate(self, platform):
        m = Module()
        mul = self._make_unit(self._x_fmt, self._w_fmt)
        m.d.comb += [mul.x.eq(self.x), mul.w.eq(self.w)]
        multiply_accumulate(m, self, mul, registered_product=self._registered_product)
        return m

    def __repr__(self) -> str:
        fmts = (getattr(self, f, "?") for f in ("_x_fmt", "_w_fmt", "_acc_fmt"))
        return f"{self._kind}({{}}, {{}}, {{}})".format(*fmts)
