"""Fixed-point lookup tables of nonlinear functions: the one definition (torch-free).

A table maps the codes of an input format ``x`` (a :class:`FixedType`, lsb ``2**-F``) to the
codes of an output format. Its geometry (:class:`TableSpec`) comes from :func:`plan`:

* ``table_range`` ``[lo, hi)`` (default: the input format's whole range ``[min, max + lsb)``)
  must lie on the input grid, inside the input format's range, and span a power-of-two number
  of input codes ``span = (hi - lo) / lsb``; otherwise :class:`TableError` (the table cannot
  cover its declared range).
* ``size = min(table_size, span)`` entries (``table_size`` a power of two >= 2, default 1024),
  each covering ``2**shift = span / size`` consecutive input codes.

Index rule (:func:`index`): ``i = (clamp(code, lo_code, lo_code + span - 1) - lo_code) >> shift``:
inputs outside the range saturate to the first / last entry.

Contents (:func:`contents`): entry ``i`` is ``cast(f(m_i), output)`` with ``m_i`` the midpoint of
the values its codes cover, ``lo + (i * 2**shift + (2**shift - 1) / 2) * lsb`` (the code itself when
``shift == 0``). ``f`` is evaluated with mpmath at 60 significant digits (exact rational arithmetic
for the piecewise-linear functions), turned into a code on a grid 64 bits finer than the output
with a sticky bit, and cast with :func:`qfx.intops.cast_codes`: the output format's own rounding
and overflow modes applied to the (correctly rounded) value. An infinite value (``reciprocal(0)``)
becomes the output's largest code.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any, Callable

import mpmath
import numpy as np

from .intops import cast_codes
from .types import FixedType

__all__ = ["FUNCTIONS", "TableError", "TableSpec", "plan", "contents", "index", "lookup", "DEFAULT_TABLE_SIZE"]

DEFAULT_TABLE_SIZE = 1024
_EXTRA = 64  # finer grid bits before the output cast
_DPS = 60


class TableError(ValueError):
    """A table config that cannot cover its declared input range (or names an unknown function)."""


def _hardsigmoid(x: Fraction) -> Fraction:
    return min(max(x / 6 + Fraction(1, 2), Fraction(0)), Fraction(1))


#: name -> (exact-rational function or None, mpmath function)
FUNCTIONS: dict[str, tuple[Any, Callable]] = {
    "sigmoid": (None, lambda x: 1 / (1 + mpmath.exp(-x))),
    "tanh": (None, mpmath.tanh),
    "hardsigmoid": (_hardsigmoid, None),
    "hardswish": (lambda x: x * _hardsigmoid(x), None),
    "silu": (None, lambda x: x / (1 + mpmath.exp(-x))),
    "gelu": (None, lambda x: x * (1 + mpmath.erf(x / mpmath.sqrt(2))) / 2),
    "exp_neg": (None, lambda x: mpmath.exp(-x)),
    "reciprocal": (lambda x: None if x == 0 else 1 / x, None),
}


@dataclass(frozen=True)
class TableSpec:
    """Geometry of a table: ``size`` entries from input code ``lo_code``, ``2**shift`` codes each."""

    function: str
    size: int
    shift: int
    lo_code: int

    @property
    def hi_code(self) -> int:
        """The last input code the range covers."""
        return self.lo_code + (self.size << self.shift) - 1


def _pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def plan(function: str, in_fmt: FixedType, table_size: "int | None" = None,
         table_range: "Any" = None) -> TableSpec:
    """The :class:`TableSpec` of ``function`` on ``in_fmt`` (see the module docstring for the rules)."""
    if function not in FUNCTIONS:
        raise TableError(f"unknown table function {function!r}; known: {', '.join(FUNCTIONS)}")
    if not isinstance(in_fmt, FixedType):
        raise TypeError(f"a table input format must be a FixedType, not {in_fmt!r}")
    size = DEFAULT_TABLE_SIZE if table_size is None else table_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 2 or not _pow2(size):
        raise TableError(f"table_size must be a power of two >= 2 (e.g. 1024), got {table_size!r}")
    F = in_fmt.frac_bits
    if table_range is None:
        lo_c, hi_c = in_fmt.min_code, in_fmt.max_code + 1
    else:
        if isinstance(table_range, (int, float)) and not isinstance(table_range, bool):
            lo, hi = -Fraction(table_range), Fraction(table_range)
        elif isinstance(table_range, (list, tuple)) and len(table_range) == 2:
            lo, hi = (Fraction(v) for v in table_range)
        else:
            raise TableError(f"table_range must be R (for [-R, R)) or [lo, hi], got {table_range!r}")
        lo_s, hi_s = lo * 2**F, hi * 2**F
        if lo_s.denominator != 1 or hi_s.denominator != 1:
            raise TableError(f"table_range [{float(lo)}, {float(hi)}) is not on the grid of the input format "
                             f"{in_fmt} (lsb 2**-{F}); choose bounds that are multiples of the lsb")
        lo_c, hi_c = int(lo_s), int(hi_s)
        if not (in_fmt.min_code <= lo_c < hi_c <= in_fmt.max_code + 1):
            raise TableError(f"table_range [{float(lo)}, {float(hi)}) is not inside the range "
                             f"[{in_fmt.min}, {in_fmt.max + in_fmt.lsb}) of the input format {in_fmt}: the input "
                             "cannot cover the declared range; widen the input format or narrow table_range")
    span = hi_c - lo_c
    if not _pow2(span):
        raise TableError(f"table_range spans {span} input codes of {in_fmt}, not a power of two; the index is a "
                         "shift of the input code (choose e.g. [-8, 8])")
    n = min(size, span)
    return TableSpec(function, n, (span // n).bit_length() - 1, lo_c)


def _value_codes(function: str, num: int, den_log2: int, out_fmt: FixedType) -> int:
    """The output code of ``cast(f(num * 2**-den_log2), out_fmt)`` (correctly rounded)."""
    exact, approx = FUNCTIONS[function]
    G = out_fmt.frac_bits + _EXTRA
    if exact is not None:
        v = exact(Fraction(num, 2**den_log2))
        if v is None:
            return out_fmt.max_code
        scaled = v * 2**G
        fl = scaled.numerator // scaled.denominator
        sticky = int(scaled != fl)
    else:
        with mpmath.workdps(_DPS):
            x = mpmath.mpf(num) / mpmath.mpf(2) ** den_log2
            scaled = approx(x) * mpmath.mpf(2) ** G
            fl = int(mpmath.floor(scaled))
            sticky = int(scaled != fl)
    return int(cast_codes(np.array([2 * fl + sticky], dtype=object), G + 1, out_fmt)[0])


@lru_cache(maxsize=256)
def _contents(spec: TableSpec, in_frac: int, out_fmt: FixedType) -> tuple[int, ...]:
    out = []
    for i in range(spec.size):
        # midpoint of codes lo + i*2**s .. lo + (i+1)*2**s - 1, on the grid 2**-(F+1)
        num = 2 * (spec.lo_code + (i << spec.shift)) + (1 << spec.shift) - 1
        out.append(_value_codes(spec.function, num, in_frac + 1, out_fmt))
    return tuple(out)


def contents(spec: TableSpec, in_fmt: FixedType, out_fmt: FixedType) -> np.ndarray:
    """The table's entries as codes of ``out_fmt`` (int64, length ``spec.size``)."""
    if not isinstance(out_fmt, FixedType):
        raise TypeError(f"a table output format must be a FixedType, not {out_fmt!r}")
    return np.array(_contents(spec, in_fmt.frac_bits, out_fmt), dtype=np.int64)


def index(codes: Any, spec: TableSpec) -> np.ndarray:
    """The table index of each input code (saturating outside the range)."""
    c = np.asarray(codes, dtype=np.int64)
    return (np.clip(c, spec.lo_code, spec.hi_code) - spec.lo_code) >> spec.shift


def lookup(codes: Any, spec: TableSpec, table: np.ndarray) -> np.ndarray:
    """``table[index(codes)]``."""
    return np.asarray(table)[index(codes, spec)]


# ---------------------------------------------------------------------------
# Softmax: an exp table of (max - x), an exact sum, an exact reciprocal, one product cast
# ---------------------------------------------------------------------------

#: Softmax's exp-table and reciprocal formats when the config gives none (``types:`` / ``layers:``).
SOFTMAX_EXP_DEFAULT = "ap_ufixed<16,1,AP_RND,AP_SAT>"
SOFTMAX_RECIPROCAL_DEFAULT = "ap_ufixed<16,1,AP_RND,AP_SAT>"


def softmax_diff_format(in_fmt: FixedType) -> FixedType:
    """The format of ``d = max - x`` (codes ``>= 0``, the input's lsb): ``ap_ufixed<W, I>`` of the
    input's ``ap_fixed<W, I>`` (or ``ap_ufixed<W, I>``), which holds every difference of two input codes."""
    return FixedType(in_fmt.width, in_fmt.int_bits, signed=False)


def softmax_plan(in_fmt: FixedType, table_size: "int | None" = None, table_range: Any = None) -> TableSpec:
    """The exp table of a softmax: :func:`plan` of ``exp_neg`` (``exp(-d)``) on :func:`softmax_diff_format`.

    ``table_range`` is the range of ``d = max - x`` covered: ``R`` means ``[0, R)``, ``[lo, hi]`` as for
    :func:`plan`; default the whole range of ``d`` (``[0, 2**I)``)."""
    if not isinstance(in_fmt, FixedType):
        raise TypeError(f"a softmax input format must be a FixedType, not {in_fmt!r}")
    if isinstance(table_range, (int, float)) and not isinstance(table_range, bool):
        table_range = (0, table_range)
    return plan("exp_neg", softmax_diff_format(in_fmt), table_size, table_range)


def softmax_check_formats(spec: TableSpec, in_fmt: FixedType, exp_fmt: Any, recip_fmt: Any, out_fmt: Any) -> None:
    """Refuse formats the softmax semantics do not cover (:class:`TableError` with the reason)."""
    for role, f in (("exp", exp_fmt), ("reciprocal", recip_fmt)):
        if not isinstance(f, FixedType) or f.signed:
            raise TableError(f"the softmax {role} format must be unsigned fixed point (ap_ufixed<W,I,...>), not {f}")
    if not isinstance(out_fmt, FixedType):
        raise TableError(f"the softmax output format must be fixed point, not {out_fmt}")
    e0 = int(contents(spec, softmax_diff_format(in_fmt), exp_fmt)[0])
    if e0 <= 0:
        raise TableError(f"the softmax exp table's entry for x = max (exp(-0) = 1 cast to {exp_fmt}) is 0, so the sum "
                         "could be 0; use an exp format that holds values near 1 (e.g. ap_ufixed<16,1,AP_RND,AP_SAT>)")
    if exp_fmt.frac_bits + recip_fmt.frac_bits + 3 > 52 or exp_fmt.width + recip_fmt.width > 52:
        raise TableError(f"the softmax exp {exp_fmt} and reciprocal {recip_fmt} formats are too wide together: the "
                         "reciprocal's quotient and the product must fit 52 bits (the emulation's float64)")


def softmax_sum_format(exp_fmt: FixedType, n: int) -> FixedType:
    """The exact sum of ``n`` codes of ``exp_fmt``: ``ap_ufixed<W + b, I + b>``, ``b = ceil(log2 n)``."""
    b = max(int(n) - 1, 0).bit_length()
    return FixedType(exp_fmt.width + b, exp_fmt.int_bits + b, signed=False)


def softmax_quotient_format(exp_fmt: FixedType, recip_fmt: FixedType) -> "tuple[int, int]":
    """``(K, G)``: the reciprocal is computed as ``q = 2**K // S`` (``S``: the sum's code on the exp grid),
    ``t = 2*q + (2**K % S != 0)`` a code on the grid ``2**-G`` (``K = Fe + Fr + 1``, ``G = Fr + 2``)."""
    fr = recip_fmt.frac_bits
    return exp_fmt.frac_bits + fr + 1, fr + 2


def softmax_reciprocal_codes(s: Any, exp_fmt: FixedType, recip_fmt: FixedType) -> np.ndarray:
    """``cast(1 / (S * 2**-Fe), reciprocal)`` for sum codes ``S >= 1``: exact integer division, the
    quotient with one guard bit and a sticky bit (so every rounding mode of the reciprocal format is
    applied to the exact value), then :func:`qfx.intops.cast_codes`."""
    k, g = softmax_quotient_format(exp_fmt, recip_fmt)
    s = np.asarray(s, dtype=object)
    num = 1 << k
    t = (num // s) * 2 + (num % s != 0).astype(object)
    return cast_codes(t, g, recip_fmt).astype(np.int64)


def softmax_axis(params: Any, shape: Any) -> int:
    """The axis (counted without the batch dim) a softmax node normalizes over: ``params["axis"]`` when
    given, else the last of ``shape``."""
    return int(params["axis"]) if "axis" in params else len(tuple(shape)) - 1


def softmax_geometry(params: Any, shape: Any) -> "tuple[int, int, int]":
    """``(outer, n, inner)`` of a softmax over ``axis`` of ``shape`` (C order): element ``(o, j, i)`` at
    flat index ``(o * n + j) * inner + i``; each of the ``outer * inner`` vectors holds ``n`` codes
    ``inner`` apart (``inner == 1``: rows of the last axis)."""
    shape = tuple(int(v) for v in shape)
    a = softmax_axis(params, shape)
    return int(np.prod(shape[:a], dtype=np.int64)), shape[a], int(np.prod(shape[a + 1:], dtype=np.int64))

