"""The ap_fixed cast in hardware: rounding and overflow of a fixed-point code.

:class:`CastUnit` converts a code of one :class:`~qfx.types.FixedType` to a
code of another exactly as ``dst y = x;`` does in Vitis HLS (and as
:func:`qfx.reference.cast_codes`, the integer golden model, does), for every
quantization mode (AP_RND, AP_RND_ZERO, AP_RND_MIN_INF, AP_RND_INF,
AP_RND_CONV, AP_TRN, AP_TRN_ZERO) and every overflow mode (AP_SAT,
AP_SAT_ZERO, AP_SAT_SYM, AP_WRAP, AP_WRAP_SM).

The formats are the single source of truth (``qfx.types``); nothing here
re-encodes a format beyond reading ``width``, ``frac_bits``, ``signed``,
``rounding``, ``overflow``, ``min_code`` and ``max_code``.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from qfx.types import FixedType, Overflow, Rounding

__all__ = ["CastUnit", "fixed_shape", "check_fixed"]


def fixed_shape(fmt: FixedType) -> Shape:
    """The Amaranth shape of the codes of ``fmt``: ``signed(W)`` or ``unsigned(W)``."""
    fmt = check_fixed("fmt", fmt)
    return signed(fmt.width) if fmt.signed else unsigned(fmt.width)


def check_fixed(name: str, fmt: object) -> FixedType:
    """``fmt`` if it is a :class:`~qfx.types.FixedType`, else a :exc:`TypeError` naming ``name``."""
    if not isinstance(fmt, FixedType):
        raise TypeError(
            f"{name} must be a qfx.types.FixedType, not {type(fmt).__name__} {fmt!r}; "
            f"e.g. qfx.parse_type('ap_fixed<8,3,AP_RND,AP_SAT>')"
        )
    return fmt


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__} {value!r}")
    return value


def _bit(value, signed_: bool, k: int):
    """Bit ``k`` of ``value`` read as an infinitely sign- (or zero-) extended integer."""
    if k < len(value):
        return value[k]
    return value[-1] if signed_ else Const(0, 1)


class CastUnit(wiring.Component):
    """Cast a fixed-point code from format ``src`` to format ``dst`` (``dst y = x``).

    Bit-exact with ``ap_fixed`` and with :func:`qfx.reference.cast_codes`.
    With ``s = src.frac_bits - dst.frac_bits``:

    * ``s <= 0``: the code is shifted left by ``-s`` (exact);
    * ``s > 0``: the floor ``fl = code >> s`` is rounded up by one where the
      quantization mode says so, judged from the ``s`` dropped bits (their
      top bit is the half), the sign of the source and the parity of ``fl``;
    * the result ``r`` is brought into ``[dst.min_code, dst.max_code]`` by the
      overflow mode: AP_SAT clamps; AP_SAT_SYM clamps to ``min_code | 1`` on
      the negative side (signed ``dst``; unsigned as AP_SAT); AP_SAT_ZERO
      gives 0 outside; AP_WRAP keeps the low ``W`` bits; AP_WRAP_SM wraps and
      inverts all bits where ``r`` is out of range and the new sign bit
      differs from bit ``W`` of ``fl`` (the floor, before the rounding carry),
      as ap_fixed's ``overflow_adjust`` does.

    Only the logic a mode needs is built: AP_TRN needs no adder, AP_WRAP no
    comparator.

    Parameters
    ----------
    src : FixedType
        Format of the input code (its rounding/overflow modes are ignored).
    dst : FixedType
        Format of the output code; its ``rounding`` and ``overflow`` modes
        define the cast.
    registered : bool
        Register the output in the ``sync`` domain (latency 1) instead of
        computing it combinationally (latency 0). Default ``False``.

    Attributes
    ----------
    i : Signal(fixed_shape(src)), in
        The source code.
    o : Signal(fixed_shape(dst)), out
        The destination code.

    Latency 0 cycles (combinational), or 1 cycle with ``registered=True``;
    throughput one cast per cycle.

    Raises
    ------
    TypeError
        If ``src`` or ``dst`` is not a :class:`~qfx.types.FixedType`, or
        ``registered`` is not a bool.
    """

    def __init__(self, src: FixedType, dst: FixedType, *, registered: bool = False) -> None:
        self._src = check_fixed("src", src)
        self._dst = check_fixed("dst", dst)
        self._registered = _check_bool("registered", registered)
        super().__init__({"i": In(fixed_shape(src)), "o": Out(fixed_shape(dst))})

    @property
    def src(self) -> FixedType:
        return self._src

    @property
    def dst(self) -> FixedType:
        return self._dst

    @property
    def registered(self) -> bool:
        return self._registered

    @property
    def latency(self) -> int:
        """Cycles from ``i`` to ``o``."""
        return 1 if self._registered else 0

    def elaborate(self, platform):
        m = Module()
        src, dst = self._src, self._dst
        s = src.frac_bits - dst.frac_bits
        code = self.i
        neg = code[-1] if src.signed else Const(0, 1)

        if s <= 0:
            fl = Signal(Shape(src.width - s, src.signed))
            m.d.comb += fl.eq(code << -s)
            r = fl
            r_lo, r_hi = src.min_code << -s, src.max_code << -s
        else:
            # Extend so that the dropped bits and at least two bits of the floor exist.
            ext_w = max(src.width, s + 2)
            ext = Signal(Shape(ext_w, src.signed))
            m.d.comb += ext.eq(code)
            rem = ext[:s]
            fl = Signal(Shape(ext_w - s, src.signed))
            m.d.comb += fl.eq(ext[s:])
            half_bit = rem[s - 1]
            below_half = rem[: s - 1].any() if s >= 2 else Const(0, 1)
            gt_half = half_bit & below_half
            eq_half = half_bit & ~below_half
            q = dst.rounding
            if q is Rounding.AP_TRN:
                up = None
            elif q is Rounding.AP_TRN_ZERO:
                up = rem.any() & neg
            elif q is Rounding.AP_RND:
                up = half_bit
            elif q is Rounding.AP_RND_ZERO:
                up = gt_half | (eq_half & neg)
            elif q is Rounding.AP_RND_MIN_INF:
                up = gt_half
            elif q is Rounding.AP_RND_INF:
                up = gt_half | (eq_half & ~neg)
            else:  # AP_RND_CONV
                up = gt_half | (eq_half & fl[0])
            r_lo, r_hi = src.min_code >> s, (src.max_code >> s) + (up is not None)
            if up is None:
                r = fl
            else:
                r = Signal(Shape(len(fl) + 1, src.signed))
                m.d.comb += r.eq(fl + up)

        lo, hi = dst.min_code, dst.max_code
        o = dst.overflow
        if o is Overflow.AP_SAT_SYM and dst.signed:
            lo = lo | 1
        if o is Overflow.AP_WRAP:
            value = r
        else:
            # Compare only where the value range of r reaches beyond the limit (no constant compares).
            over = r > hi if r_hi > hi else Const(0, 1)
            under = r < lo if r_lo < lo else Const(0, 1)
            if o in (Overflow.AP_SAT, Overflow.AP_SAT_SYM):
                value = Mux(over, hi, Mux(under, lo, r))
            elif o is Overflow.AP_SAT_ZERO:
                value = Mux(over | under, 0, r)
            else:  # AP_WRAP_SM (signed dst only)
                wrapped = Signal(fixed_shape(dst))
                m.d.comb += wrapped.eq(r)
                flip = (over | under) & (wrapped[-1] ^ _bit(fl, src.signed, dst.width))
                value = Mux(flip, ~wrapped, wrapped)

        domain = m.d.sync if self._registered else m.d.comb
        domain += self.o.eq(value)
        return m

    def __repr__(self) -> str:
        reg = ", registered=True" if getattr(self, "_registered", False) else ""
        return f"CastUnit({getattr(self, '_src', '?')}, {getattr(self, '_dst', '?')}{reg})"
