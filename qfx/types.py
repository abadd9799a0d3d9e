"""Number formats: the single source of truth for every format qfx knows.

Three kinds of format exist, all immutable and hashable:

* :class:`FixedType` mirrors Vitis HLS ``ap_fixed<W,I,Q,O>`` / ``ap_ufixed`` /
  ``ap_int<W>`` / ``ap_uint<W>``.
* :class:`MinifloatType` is a sign / exponent / mantissa format (eXmY) with a
  configurable bias, subnormals, inf/NaN encoding and overflow behaviour; the
  OCP names (``fp8_e4m3fn`` ...) are presets.
* :class:`KHot` restricts a fixed-point base format to values with at most ``k``
  nonzero signed power-of-two digits, so that a multiply is ``k`` shifts.
* :class:`MXType` is an OCP Microscaling (MX v1.0) block format: blocks of
  ``block_size`` elements along one axis share a power-of-two E8M0 scale; the
  elements are one of the spec's element formats (defined here once, from the
  minifloat and fixed-point formats above).

:func:`parse_type` reads every spelling and ``str(t)`` writes it back:
``parse_type(str(t)) == t`` for every format.

Layers, the integer reference, the RTL and HLS generators and the cost model
take their formats from here; nothing else re-encodes a format.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import re
from dataclasses import dataclass
from typing import Union

import numpy as np

__all__ = [
    "Rounding",
    "Overflow",
    "FixedType",
    "MinifloatType",
    "KHot",
    "MXType",
    "MX_ELEMENTS",
    "Format",
    "parse_type",
    "OCP_MINIFLOATS",
    "MAX_WIDTH",
]

#: Widest fixed-point word qfx emulates exactly (codes are held in int64).
MAX_WIDTH = 64
#: Bound on |frac_bits| so that scaling by 2**frac_bits stays inside float64's
#: exponent range for every float input (see ``qfx.quant``).
MAX_FRAC_BITS = 900


class Rounding(str, enum.Enum):
    """ap_fixed quantization modes (what happens to bits below the lsb)."""

    AP_RND = "AP_RND"  #: round half toward +inf
    AP_RND_ZERO = "AP_RND_ZERO"  #: round half toward zero
    AP_RND_MIN_INF = "AP_RND_MIN_INF"  #: round half toward -inf
    AP_RND_INF = "AP_RND_INF"  #: round half away from zero
    AP_RND_CONV = "AP_RND_CONV"  #: round half to even (convergent)
    AP_TRN = "AP_TRN"  #: truncate toward -inf (floor); the HLS default
    AP_TRN_ZERO = "AP_TRN_ZERO"  #: truncate toward zero

    def __str__(self) -> str:
        return self.value


class Overflow(str, enum.Enum):
    """ap_fixed overflow modes (what happens to values beyond the range)."""

    AP_SAT = "AP_SAT"  #: saturate to min / max
    AP_SAT_ZERO = "AP_SAT_ZERO"  #: overflowing values become zero
    AP_SAT_SYM = "AP_SAT_SYM"  #: saturate to -max / max (signed: never the min code)
    AP_WRAP = "AP_WRAP"  #: drop the high bits (two's complement wrap); the HLS default
    AP_WRAP_SM = "AP_WRAP_SM"  #: sign-magnitude wrap (signed types only)

    def __str__(self) -> str:
        return self.value


_FIXED_EXAMPLE = "ap_fixed<8,3,AP_RND_CONV,AP_SAT>"


def _check_int(name: str, value: object, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, not {type(value).__name__} {value!r}; e.g. {example}")
    return int(value)


def _enum_member(enum_cls: type[enum.Enum], value: object, what: str) -> enum.Enum:
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str) and value.strip().upper() in enum_cls.__members__:
        return enum_cls[value.strip().upper()]
    valid = ", ".join(enum_cls.__members__)
    raise ValueError(f"unknown {what} {value!r}; valid {what}s: {valid}")


@dataclass(frozen=True)
class FixedType:
    """A Vitis HLS fixed-point format: ``ap_fixed<W,I,Q,O>`` and friends.

    A value is ``code * 2**-frac_bits`` with an integer ``code`` of ``width``
    bits (two's complement when ``signed``).

    Parameters
    ----------
    width : int
        Word length ``W`` in bits, 1 to 64.
    int_bits : int
        Integer bits ``I`` (including the sign bit for signed types). May be
        negative (all bits are fractional, the binary point lies left of the
        word) or larger than ``width`` (the lsb weighs more than 1).
    signed : bool
        ``ap_fixed`` (True) or ``ap_ufixed`` (False).
    rounding : Rounding or str
        Quantization mode, default ``AP_TRN`` as in HLS.
    overflow : Overflow or str
        Overflow mode, default ``AP_WRAP`` as in HLS. ``AP_WRAP_SM`` needs a
        signed type.

    Attributes
    ----------
    frac_bits : int
        ``W - I``; the lsb weighs ``2**-frac_bits``.
    min_code, max_code : int
        Smallest and largest integer code.
    lsb, min, max : float
        Weight of the lsb, smallest and largest value (as float64; exact for
        ``width <= 53``, use the codes beyond).
    num_values : int
        Number of representable values, ``2**width``.
    """

    width: int
    int_bits: int
    signed: bool = True
    rounding: Rounding = Rounding.AP_TRN
    overflow: Overflow = Overflow.AP_WRAP

    def __post_init__(self) -> None:
        width = _check_int("width", self.width, _FIXED_EXAMPLE)
        int_bits = _check_int("int_bits", self.int_bits, _FIXED_EXAMPLE)
        if not isinstance(self.signed, (bool, np.bool_)):
            raise TypeError(f"signed must be a bool, not {self.signed!r}")
        if not 1 <= width <= MAX_WIDTH:
            raise ValueError(
                f"width W={width} is out of range: W must be 1..{MAX_WIDTH}; e.g. {_FIXED_EXAMPLE}"
            )
        if abs(width - int_bits) > MAX_FRAC_BITS:
            raise ValueError(
                f"W-I = {width - int_bits} fractional bits is beyond +-{MAX_FRAC_BITS}, "
                f"which qfx cannot emulate exactly in float64; e.g. {_FIXED_EXAMPLE}"
            )
        rounding = _enum_member(Rounding, self.rounding, "rounding mode")
        overflow = _enum_member(Overflow, self.overflow, "overflow mode")
        if overflow is Overflow.AP_WRAP_SM and not self.signed:
            raise ValueError(
                "ap_ufixed has no AP_WRAP_SM (sign-magnitude wrap needs a sign bit); "
                "use AP_WRAP, or a signed type such as ap_fixed<8,3,AP_TRN,AP_WRAP_SM>"
            )
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "int_bits", int_bits)
        object.__setattr__(self, "signed", bool(self.signed))
        object.__setattr__(self, "rounding", rounding)
        object.__setattr__(self, "overflow", overflow)

    # -- derived quantities -------------------------------------------------
    @property
    def frac_bits(self) -> int:
        return self.width - self.int_bits

    @property
    def min_code(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def max_code(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    @property
    def lsb(self) -> float:
        return 2.0 ** (-self.frac_bits)

    @property
    def min(self) -> float:
        return float(self.min_code) * 2.0 ** (-self.frac_bits)

    @property
    def max(self) -> float:
        return float(self.max_code) * 2.0 ** (-self.frac_bits)

    @property
    def range(self) -> tuple[float, float]:
        return (self.min, self.max)

    @property
    def num_values(self) -> int:
        return 1 << self.width

    @property
    def bits(self) -> int:
        """Storage bits (the word length)."""
        return self.width

    @property
    def is_integer(self) -> bool:
        """True when the spelling is ``ap_int<W>`` / ``ap_uint<W>``.

        ``ap_int`` converts like C: a fractional source is truncated toward
        zero (measured against the ap_types headers), so ``ap_int<W>`` is
        ``ap_fixed<W,W,AP_TRN_ZERO,AP_WRAP>``, not ``ap_fixed<W,W>`` (AP_TRN).
        """
        return (
            self.int_bits == self.width
            and self.rounding is Rounding.AP_TRN_ZERO
            and self.overflow is Overflow.AP_WRAP
        )

    def with_int_bits(self, int_bits: int) -> "FixedType":
        """The same word length and modes with the binary point moved."""
        return FixedType(self.width, int_bits, self.signed, self.rounding, self.overflow)

    def with_modes(self, rounding: Rounding | str | None = None, overflow: Overflow | str | None = None) -> "FixedType":
        return FixedType(
            self.width,
            self.int_bits,
            self.signed,
            self.rounding if rounding is None else rounding,
            self.overflow if overflow is None else overflow,
        )

    def value_of(self, code: int) -> float:
        """The real value of an integer code (float64; exact for width <= 53)."""
        return float(code) * 2.0 ** (-self.frac_bits)

    # -- full-precision arithmetic result types (ap_fixed RType) --------------
    def _operand_ints(self, other: "FixedType") -> int:
        # ap_fixed_base::RType: an unsigned operand next to a signed one needs
        # one more integer bit to keep its top value after sign extension.
        s1, s2 = self.signed, other.signed
        return max(self.int_bits + (s2 and not s1), other.int_bits + (s1 and not s2))

    def __add__(self, other: "FixedType") -> "FixedType":
        if not isinstance(other, FixedType):
            return NotImplemented
        i = self._operand_ints(other) + 1
        w = i + max(self.frac_bits, other.frac_bits)
        return _result_type(w, i, self.signed or other.signed)

    def __sub__(self, other: "FixedType") -> "FixedType":
        if not isinstance(other, FixedType):
            return NotImplemented
        i = self._operand_ints(other) + 1
        w = i + max(self.frac_bits, other.frac_bits)
        return _result_type(w, i, True)

    def __mul__(self, other: "FixedType") -> "FixedType":
        if not isinstance(other, FixedType):
            return NotImplemented
        return _result_type(
            self.width + other.width, self.int_bits + other.int_bits, self.signed or other.signed
        )

    def accumulator(self, terms: int) -> "FixedType":
        """The narrowest type that holds the exact sum of ``terms`` values of this type."""
        terms = _check_int("terms", terms, "accumulator(64)")
        if terms < 1:
            raise ValueError(f"terms must be >= 1, got {terms}")
        grow = (terms - 1).bit_length()
        return _result_type(self.width + grow, self.int_bits + grow, self.signed)

    # -- spelling -------------------------------------------------------------
    def __str__(self) -> str:
        if self.is_integer:
            return f"ap_int<{self.width}>" if self.signed else f"ap_uint<{self.width}>"
        name = "ap_fixed" if self.signed else "ap_ufixed"
        args = [str(self.width), str(self.int_bits)]
        if self.rounding is not Rounding.AP_TRN or self.overflow is not Overflow.AP_WRAP:
            args.append(self.rounding.value)
            if self.overflow is not Overflow.AP_WRAP:
                args.append(self.overflow.value)
        return f"{name}<{','.join(args)}>"

    def __repr__(self) -> str:
        return f"FixedType({str(self)!r})"


def _result_type(width: int, int_bits: int, signed: bool) -> FixedType:
    if width > MAX_WIDTH:
        raise ValueError(
            f"the exact result needs {width} bits, beyond the {MAX_WIDTH}-bit limit of qfx "
            "emulation; cast an operand to a narrower type first"
        )
    return FixedType(width, int_bits, signed)


# ---------------------------------------------------------------------------
# Minifloat
# ---------------------------------------------------------------------------

_INF_NAN = ("ieee", "fn", "none")
_MINIFLOAT_EXAMPLE = "e4m3<bias=7,inf_nan=fn>"


@dataclass(frozen=True)
class MinifloatType:
    """A sign / exponent / mantissa floating-point format (eXmY).

    Parameters
    ----------
    exponent_bits : int
        Exponent field width E, 1 to 11.
    mantissa_bits : int
        Stored mantissa (fraction) width M, 0 to 52.
    bias : int, optional
        Exponent bias; default ``2**(E-1) - 1``.
    subnormals : bool
        With subnormals (the default), exponent field 0 encodes
        ``0.m * 2**(1-bias)``. Without, results below the smallest normal
        are flushed to signed zero after rounding.
    inf_nan : {"ieee", "fn", "none"}
        ``"ieee"``: the top exponent encodes inf (mantissa 0) and NaN.
        ``"fn"``: finite, only the all-ones code is NaN (as OCP E4M3).
        ``"none"``: every code is finite (as OCP FP6/FP4); no NaN.
    saturate : bool, optional
        Overflow (and inf input) gives the largest finite value instead of
        inf (``ieee``) or NaN (``fn``). Default: False, except for
        ``inf_nan="none"``, which must saturate.

    Attributes
    ----------
    bits : int
        ``1 + E + M``.
    emin, emax : int
        Unbiased exponents of the smallest normal and of the top binade.
    max, min_normal, min_subnormal : float
        Largest finite value, smallest normal, smallest positive value.
    """

    exponent_bits: int
    mantissa_bits: int
    bias: int | None = None
    subnormals: bool = True
    inf_nan: str = "ieee"
    saturate: bool | None = None

    def __post_init__(self) -> None:
        e = _check_int("exponent_bits", self.exponent_bits, _MINIFLOAT_EXAMPLE)
        m = _check_int("mantissa_bits", self.mantissa_bits, _MINIFLOAT_EXAMPLE)
        if not 1 <= e <= 11:
            raise ValueError(f"exponent_bits={e} is out of range 1..11; e.g. {_MINIFLOAT_EXAMPLE}")
        if not 0 <= m <= 52:
            raise ValueError(f"mantissa_bits={m} is out of range 0..52; e.g. {_MINIFLOAT_EXAMPLE}")
        bias = (1 << (e - 1)) - 1 if self.bias is None else _check_int("bias", self.bias, _MINIFLOAT_EXAMPLE)
        inf_nan = str(self.inf_nan).lower()
        if inf_nan not in _INF_NAN:
            raise ValueError(f"inf_nan={self.inf_nan!r} is not one of {', '.join(_INF_NAN)}; e.g. {_MINIFLOAT_EXAMPLE}")
        if inf_nan == "ieee" and e == 1:
            raise ValueError("inf_nan='ieee' needs exponent_bits >= 2 (the top exponent is reserved); use inf_nan='fn' or 'none'")
        if inf_nan == "fn" and e == 1 and m == 0:
            raise ValueError("inf_nan='fn' with e1m0 leaves no finite nonzero value; use inf_nan='none'")
        if self.saturate is None:
            # No code exists for an overflowed result without inf/NaN: saturation is the only choice.
            saturate = inf_nan == "none"
        elif not isinstance(self.saturate, (bool, np.bool_)):
            raise TypeError(f"saturate must be a bool or None, not {self.saturate!r}")
        else:
            saturate = bool(self.saturate)
        if inf_nan == "none" and not saturate:
            raise ValueError(
                "a minifloat with inf_nan='none' has no code for an overflowed result and must "
                "saturate; use saturate=True (or inf_nan='ieee'/'fn' for inf/NaN on overflow)"
            )
        object.__setattr__(self, "exponent_bits", e)
        object.__setattr__(self, "mantissa_bits", m)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "subnormals", bool(self.subnormals))
        object.__setattr__(self, "inf_nan", inf_nan)
        object.__setattr__(self, "saturate", saturate)
        emin, emax = self.emin, self.emax
        if emin < -1022 or emin - m < -1074 or emax > 1023:
            raise ValueError(
                f"e{e}m{m} with bias {bias} spans exponents {emin - m}..{emax} (smallest normal "
                f"2**{emin}), beyond float64, in which qfx emulates minifloats exactly; choose a "
                "bias closer to 2**(E-1)-1"
            )

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def emin(self) -> int:
        return 1 - self.bias

    @property
    def emax(self) -> int:
        top = (1 << self.exponent_bits) - 1
        return top - self.bias - (1 if self.inf_nan == "ieee" else 0)

    @property
    def max_mantissa_code(self) -> int:
        """Largest mantissa field in the top binade (fn reserves all ones for NaN)."""
        full = (1 << self.mantissa_bits) - 1
        return full - 1 if self.inf_nan == "fn" else full

    @property
    def max_finite_fields(self) -> tuple[int, int]:
        """``(e, f)`` of the largest finite value ``(1 + f / 2**M) * 2**e`` (where saturation lands)."""
        if self.inf_nan == "fn" and self.mantissa_bits == 0:
            # The single code of the top binade is NaN: the top finite binade is one lower.
            return self.emax - 1, 0
        return self.emax, self.max_mantissa_code

    @property
    def max(self) -> float:
        m = self.mantissa_bits
        e, f = self.max_finite_fields
        return float((1 << m) + f) * 2.0 ** (e - m)

    @property
    def min_normal(self) -> float:
        return 2.0 ** (self.emin)

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (self.emin - self.mantissa_bits) if self.subnormals else self.min_normal

    @property
    def has_inf(self) -> bool:
        return self.inf_nan == "ieee"

    @property
    def has_nan(self) -> bool:
        return self.inf_nan != "none"

    # -- spelling -------------------------------------------------------------
    def _options(self, reference: "MinifloatType") -> list[str]:
        opts = []
        for name in ("bias", "subnormals", "inf_nan"):
            mine, ref = getattr(self, name), getattr(reference, name)
            if mine != ref:
                text = str(mine).lower() if isinstance(mine, bool) else str(mine)
                opts.append(f"{name}={text}")
        # parse_type picks saturation automatically (only inf_nan="none" saturates): spell exceptions.
        if self.saturate != (self.inf_nan == "none"):
            opts.append(f"saturate={str(self.saturate).lower()}")
        return opts

    def __str__(self) -> str:
        best = None
        for name, preset in OCP_MINIFLOATS.items():
            if (preset.exponent_bits, preset.mantissa_bits) == (self.exponent_bits, self.mantissa_bits):
                opts = self._options(preset)
                if best is None or len(opts) < len(best[1]):
                    best = (name, opts)
        generic = _generic_minifloat(self.exponent_bits, self.mantissa_bits)
        opts = self._options(generic)
        if best is None or len(opts) < len(best[1]):
            best = (f"e{self.exponent_bits}m{self.mantissa_bits}", opts)
        name, opts = best
        return f"{name}<{','.join(opts)}>" if opts else name

    def __repr__(self) -> str:
        return f"MinifloatType({str(self)!r})"


def _generic_minifloat(e: int, m: int) -> MinifloatType:
    """What a bare ``eXmY`` spelling means: IEEE-style bias and inf/NaN where they fit."""
    inf_nan = "ieee" if e > 1 else ("fn" if m > 0 else "none")
    return MinifloatType(e, m, inf_nan=inf_nan)


#: The OCP (Open Compute Project) minifloats. ``fp8_e4m3fn`` overflows to NaN as
#: in the OCP spec and ml_dtypes; spell ``fp8_e4m3fn<saturate=true>`` for the
#: saturating conversion (torch's float8 cast). FP6/FP4 have no inf/NaN and
#: always saturate.
OCP_MINIFLOATS: dict[str, MinifloatType] = {}
OCP_MINIFLOATS.update(
    fp8_e4m3fn=MinifloatType(4, 3, bias=7, inf_nan="fn"),
    fp8_e5m2=MinifloatType(5, 2, bias=15, inf_nan="ieee"),
    fp6_e2m3fn=MinifloatType(2, 3, bias=1, inf_nan="none", saturate=True),
    fp6_e3m2fn=MinifloatType(3, 2, bias=3, inf_nan="none", saturate=True),
    fp4_e2m1fn=MinifloatType(2, 1, bias=1, inf_nan="none", saturate=True),
)


# ---------------------------------------------------------------------------
# K-hot
# ---------------------------------------------------------------------------

#: Largest K-hot value table built in memory (entries).
_KHOT_TABLE_LIMIT = 1 << 22


@dataclass(frozen=True)
class KHot:
    """Values of a fixed-point ``base`` with at most ``k`` nonzero signed power-of-two digits.

    A code's minimal number of nonzero signed digits is the weight of its
    canonical signed-digit (non-adjacent) form, so the representable set is
    ``{code in base range : naf_weight(code) <= k}``. A multiply by such a
    weight is ``k`` shifts and ``k - 1`` adds.

    Quantization (``qfx.quantize``) returns the nearest representable value;
    an exact tie between two neighbours goes toward zero, so that
    ``q(-x) == -q(x)`` wherever both are representable. Values beyond the
    range go to the extreme representable values (the base's rounding and
    overflow modes do not apply: nearest-value projection saturates by
    construction).

    Parameters
    ----------
    base : FixedType
        The fixed-point grid (word length, binary point).
    k : int
        Maximum number of nonzero digits, >= 1.
    """

    base: FixedType
    k: int

    def __post_init__(self) -> None:
        if not isinstance(self.base, FixedType):
            raise TypeError(f"KHot base must be a FixedType, not {type(self.base).__name__}; e.g. khot<2,ap_fixed<8,1>>")
        k = _check_int("k", self.k, "khot<2,ap_fixed<8,1>>")
        if k < 1:
            raise ValueError(f"k={k}: a K-hot format needs k >= 1 nonzero digits; e.g. khot<2,ap_fixed<8,1>>")
        object.__setattr__(self, "k", k)

    @property
    def bits(self) -> int:
        return self.base.width

    @property
    def frac_bits(self) -> int:
        return self.base.frac_bits

    @property
    def max_digits(self) -> int:
        """Digit positions a code may use: 0..width (NAF can carry one position up)."""
        return self.base.width + 1

    def codes(self) -> np.ndarray:
        """All representable codes of the base grid, sorted ascending (int64)."""
        return _khot_codes(self.base.width, self.base.signed, self.k)

    def __str__(self) -> str:
        return f"khot<{self.k},{self.base}>"

    def __repr__(self) -> str:
        return f"KHot({str(self)!r})"


def naf_digits(codes: np.ndarray, positions: int) -> np.ndarray:
    """Non-adjacent (canonical signed-digit) form of integer codes.

    Returns an int8 array of shape ``codes.shape + (positions,)`` with digits in
    {-1, 0, 1}, least significant first, such that
    ``sum(d[..., i] << i) == code``. ``positions`` must be large enough
    (bit length + 1).
    """
    n = np.asarray(codes, dtype=np.int64).copy()
    out = np.zeros(n.shape + (positions,), dtype=np.int8)
    for i in range(positions):
        odd = (n & 1).astype(bool)
        # d = 2 - (n mod 4) for odd n: +1 when n = 1 (mod 4), -1 when n = 3 (mod 4)
        d = np.where(odd, 2 - (n & 3), 0)
        out[..., i] = d
        n = (n - d) >> 1
    if np.any(n != 0):
        raise ValueError(f"codes need more than {positions} signed-digit positions")
    return out


def khot_slots(codes: np.ndarray, t: "KHot", dtype=np.int64) -> "tuple[np.ndarray, np.ndarray]":
    """The ``(shifts, signs)`` slots of K-hot codes of ``t``, each of shape ``codes.shape + (k,)``.

    The digits are the canonical signed-digit (non-adjacent) form, most significant first;
    unused slots are ``(0, 0)``; ``code = sum(signs << shifts)``. ``signs`` has ``dtype``.
    ValueError (naming the first one) when a code is not representable in ``t``.
    """
    c = np.asarray(codes, dtype=np.int64)
    allowed = t.codes()
    pos = np.searchsorted(allowed, c.ravel()).clip(0, len(allowed) - 1)
    if not np.all(allowed[pos] == c.ravel()):
        bad = c.ravel()[allowed[pos] != c.ravel()][0]
        raise ValueError(f"code {bad} is not representable in {t}")
    digits = naf_digits(c, t.max_digits)  # least significant first
    shifts = np.zeros(c.shape + (t.k,), dtype=np.int64)
    signs = np.zeros(c.shape + (t.k,), dtype=dtype)
    slot = np.zeros(c.shape, dtype=np.int64)
    for position in range(t.max_digits - 1, -1, -1):
        idx = np.nonzero(digits[..., position])
        shifts[idx + (slot[idx],)] = position
        signs[idx + (slot[idx],)] = digits[..., position][idx]
        slot[idx] += 1
    return shifts, signs


def naf_weight(codes: np.ndarray) -> np.ndarray:
    """Number of nonzero digits of the NAF of each code: the minimal signed-digit count."""
    n = np.asarray(codes, dtype=np.int64)
    # weight(NAF(n)) = popcount(n XOR 3n) for n >= 0 (Prodinger); use |n| (NAF(-n) = -NAF(n)).
    a = np.abs(n).astype(np.uint64)
    x = np.bitwise_xor(a, a * np.uint64(3)) >> np.uint64(1)
    return _popcount(x)


def _popcount(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    count = np.zeros(x.shape, dtype=np.int64)
    while np.any(x):
        count += (x & np.uint64(1)).astype(np.int64)
        x = x >> np.uint64(1)
    return count


@functools.lru_cache(maxsize=64)
def _khot_codes(width: int, signed: bool, k: int) -> np.ndarray:
    lo = -(1 << (width - 1)) if signed else 0
    hi = (1 << (width - 1)) - 1 if signed else (1 << width) - 1
    if hi - lo + 1 <= _KHOT_TABLE_LIMIT:
        codes = np.arange(lo, hi + 1, dtype=np.int64)
        codes = codes[naf_weight(codes) <= k]
    else:
        # Enumerate sums of <= k signed powers of two over positions 0..width.
        values = {0}
        frontier = {0}
        powers = [1 << p for p in range(width + 1)]
        for _ in range(k):
            nxt = set()
            for v in frontier:
                for p in powers:
                    nxt.add(v + p)
                    nxt.add(v - p)
            values |= nxt
            frontier = nxt
            if len(values) > _KHOT_TABLE_LIMIT:
                raise ValueError(
                    f"khot<{k},...> over {width} bits has more than {_KHOT_TABLE_LIMIT} values; "
                    "use a smaller k or word length"
                )
        codes = np.array(sorted(v for v in values if lo <= v <= hi), dtype=np.int64)
        codes = codes[naf_weight(codes) <= k]
    codes.setflags(write=False)
    return codes


# ---------------------------------------------------------------------------
# OCP Microscaling (MX) block formats
# ---------------------------------------------------------------------------


def _saturating(name: str) -> MinifloatType:
    # MX v1.0 section 6.3: element conversion clamps normal values beyond the element's
    # max normal to +-max normal (also for E4M3/E5M2, which otherwise overflow to NaN/inf).
    return dataclasses.replace(OCP_MINIFLOATS[name], saturate=True)


#: The element formats of the OCP MX v1.0 concrete formats (spec table 1), by MX name:
#: ``(element format, emax_elem)``. ``emax_elem`` is the exponent of the element's largest
#: binade, subtracted from ``floor(log2(max|block|))`` to give the shared exponent.
#: MXINT8's element is an 8-bit two's complement integer with an implicit scale of 2**-6
#: (``ap_fixed<8,2>``), rounded to nearest even and saturated symmetrically to +-127/64
#: (the -2.0 code is not produced, as in the spec's reference library).
MX_ELEMENTS: dict[str, tuple[Union[MinifloatType, FixedType], int]] = {
    "mxfp8_e4m3": (_saturating("fp8_e4m3fn"), 8),
    "mxfp8_e5m2": (_saturating("fp8_e5m2"), 15),
    "mxfp6_e2m3": (_saturating("fp6_e2m3fn"), 2),
    "mxfp6_e3m2": (_saturating("fp6_e3m2fn"), 4),
    "mxfp4_e2m1": (_saturating("fp4_e2m1fn"), 2),
    "mxint8": (FixedType(8, 2, True, Rounding.AP_RND_CONV, Overflow.AP_SAT_SYM), 0),
}
assert all(isinstance(e, FixedType) or e.emax == emax for e, emax in MX_ELEMENTS.values())

#: E8M0 scale: unbiased exponents -127..127; the code 0xFF is NaN.
MX_SCALE_BIAS = 127
MX_SCALE_NAN = 0xFF
MX_BLOCK_SIZE = 32
_MX_EXAMPLE = "mxfp4_e2m1<block=32,axis=-1>"


@dataclass(frozen=True)
class MXType:
    """An OCP Microscaling (MX v1.0) block format.

    A tensor is cut into blocks of ``block_size`` consecutive elements along
    ``axis``; each block stores one E8M0 scale ``X = 2**shared_exp`` and
    ``block_size`` elements ``P`` of the element format; its values are ``X * P``.
    Conversion (``qfx.quantize``, spec section 6.3)::

        shared_exp = floor(log2(max|V|)) - emax_elem     # clamped below to -127
        P_i = element(V_i / 2**shared_exp)               # round to nearest even, saturate

    A block of zeros gets ``shared_exp = -127``. A block holding inf or NaN, or
    whose shared exponent would exceed 127, has the NaN scale (every value NaN).

    Parameters
    ----------
    name : str
        One of :data:`MX_ELEMENTS`: ``mxfp8_e4m3``, ``mxfp8_e5m2``, ``mxfp6_e2m3``,
        ``mxfp6_e3m2``, ``mxfp4_e2m1``, ``mxint8``.
    block_size : int
        Elements per block, >= 1 (the spec's concrete formats use 32). It must
        divide the tensor's size along ``axis`` (checked where a tensor meets it).
    axis : int
        The tensor axis the blocks run along (negative counts from the end).

    Attributes
    ----------
    element : MinifloatType or FixedType
        The element format.
    emax_elem : int
        Exponent of the element format's largest binade.
    bits : int
        Bits per element (the E8M0 scale adds 8 per block).
    """

    name: str
    block_size: int = MX_BLOCK_SIZE
    axis: int = -1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or self.name.strip().lower() not in MX_ELEMENTS:
            close = difflib.get_close_matches(str(self.name).strip().lower(), list(MX_ELEMENTS), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ValueError(
                f"unknown MX element format {self.name!r}; {hint}the OCP MX v1.0 formats are "
                f"{', '.join(MX_ELEMENTS)}; e.g. {_MX_EXAMPLE}"
            )
        block = _check_int("block_size", self.block_size, _MX_EXAMPLE)
        if block < 1:
            raise ValueError(f"MX block_size={block} must be >= 1 (the OCP default is 32); e.g. {_MX_EXAMPLE}")
        axis = _check_int("axis", self.axis, _MX_EXAMPLE)
        object.__setattr__(self, "name", self.name.strip().lower())
        object.__setattr__(self, "block_size", block)
        object.__setattr__(self, "axis", axis)

    @property
    def element(self) -> "MinifloatType | FixedType":
        return MX_ELEMENTS[self.name][0]

    @property
    def emax_elem(self) -> int:
        return MX_ELEMENTS[self.name][1]

    @property
    def bits(self) -> int:
        return self.element.bits

    def block_axis(self, shape: "tuple[int, ...]", what: str = "the tensor") -> int:
        """The non-negative axis of a tensor of ``shape`` the blocks run along (checked).

        ValueError naming ``what`` and the fix when the axis does not exist or
        ``block_size`` does not divide its length.
        """
        shape = tuple(int(s) for s in shape)
        if not -len(shape) <= self.axis < len(shape):
            raise ValueError(
                f"{what} of shape {list(shape)} has no axis {self.axis} for the MX blocks of {self}; "
                f"give an existing axis, e.g. {self.name}<block={self.block_size},axis=-1>"
            )
        axis = self.axis % len(shape)
        n = shape[axis]
        if n % self.block_size:
            divisors = [d for d in range(1, min(n, 64) + 1) if n % d == 0]
            raise ValueError(
                f"{what} of shape {list(shape)}: the MX block size {self.block_size} of {self} does not "
                f"divide its axis {self.axis} (length {n}); use a block size dividing {n} "
                f"(e.g. {self.name}<block={max(divisors)},axis={self.axis}>), blocks along another axis, "
                f"or pad that axis to a multiple of {self.block_size}"
            )
        return axis

    def __str__(self) -> str:
        opts = []
        if self.block_size != MX_BLOCK_SIZE:
            opts.append(f"block={self.block_size}")
        if self.axis != -1:
            opts.append(f"axis={self.axis}")
        return f"{self.name}<{','.join(opts)}>" if opts else self.name

    def __repr__(self) -> str:
        return f"MXType({str(self)!r})"


def _parse_mx(name: str, opts_text: "str | None", spelling: str) -> MXType:
    kwargs: dict[str, int] = {}
    if opts_text is not None and opts_text.strip():
        for item in opts_text.split(","):
            if "=" not in item:
                raise ValueError(f"option {item.strip()!r} in {spelling!r} is not key=value; e.g. {_MX_EXAMPLE}")
            key, value = (t.strip() for t in item.split("=", 1))
            if key not in ("block", "axis"):
                raise ValueError(f"unknown MX option {key!r} in {spelling!r}; options: block, axis; e.g. {_MX_EXAMPLE}")
            kwargs["block_size" if key == "block" else key] = _parse_int_arg(value, key, spelling)
    return MXType(name, **kwargs)


Format = Union[FixedType, MinifloatType, KHot, MXType]


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------

_FIXED_RE = re.compile(r"^(ap_fixed|ap_ufixed)<(.*)>$", re.S)
_INT_RE = re.compile(r"^(ap_int|ap_uint)<(.*)>$", re.S)
_KHOT_RE = re.compile(r"^khot<\s*([^,]*)\s*,(.*)>$", re.S)
_EXMY_RE = re.compile(r"^e(\d+)m(\d+)$")
_FLOAT_RE = re.compile(r"^([a-z0-9_]+)(?:<(.*)>)?$", re.S)

_SPELLINGS = (
    "ap_fixed<8,3>, ap_fixed<8,3,AP_RND_CONV,AP_SAT>, ap_ufixed<6,2>, ap_int<8>, ap_uint<4>, "
    "khot<2,ap_fixed<8,1>>, fp8_e4m3fn, fp8_e5m2, fp6_e2m3fn, fp6_e3m2fn, fp4_e2m1fn, e4m3, "
    "e5m2<saturate=true>, e4m3<bias=7,inf_nan=fn>, mxfp8_e4m3, mxfp8_e5m2, mxfp6_e2m3, mxfp6_e3m2, "
    "mxfp4_e2m1<block=16,axis=-1>, mxint8"
)


def _parse_int_arg(text: str, what: str, spelling: str) -> int:
    text = text.strip()
    if not re.fullmatch(r"[+-]?\d+", text):
        raise ValueError(f"{what} {text!r} in {spelling!r} is not an integer; e.g. {_FIXED_EXAMPLE}")
    return int(text)


def _parse_fixed(kind: str, body: str, spelling: str) -> FixedType:
    args = [a.strip() for a in body.split(",")]
    if len(args) < 2 or len(args) > 4:
        if len(args) == 5:
            raise ValueError(
                f"{spelling!r}: the saturation-bits parameter N of ap_fixed is not supported; "
                f"drop it, e.g. {_FIXED_EXAMPLE}"
            )
        raise ValueError(f"{spelling!r} needs 2 to 4 parameters <W,I[,Q[,O]]>; e.g. {_FIXED_EXAMPLE}")
    w = _parse_int_arg(args[0], "width W", spelling)
    i = _parse_int_arg(args[1], "integer bits I", spelling)
    q = _enum_member(Rounding, args[2], "rounding mode") if len(args) > 2 else Rounding.AP_TRN
    o = _enum_member(Overflow, args[3], "overflow mode") if len(args) > 3 else Overflow.AP_WRAP
    return FixedType(w, i, kind == "ap_fixed", q, o)


def _parse_bool(text: str, key: str, spelling: str) -> bool:
    t = text.strip().lower()
    if t in ("true", "1", "yes"):
        return True
    if t in ("false", "0", "no"):
        return False
    raise ValueError(f"{key}={text!r} in {spelling!r} is not a boolean (true/false)")


def _parse_minifloat(name: str, opts_text: str | None, spelling: str) -> MinifloatType:
    if name in OCP_MINIFLOATS:
        base = OCP_MINIFLOATS[name]
    else:
        m = _EXMY_RE.match(name)
        if not m:
            close = difflib.get_close_matches(name, [*OCP_MINIFLOATS, "ap_fixed", "ap_ufixed", "ap_int", "ap_uint"], n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ValueError(f"unknown format {spelling!r}; {hint}valid spellings include: {_SPELLINGS}")
        base = _generic_minifloat(int(m.group(1)), int(m.group(2)))
    kwargs = dict(
        exponent_bits=base.exponent_bits,
        mantissa_bits=base.mantissa_bits,
        bias=base.bias,
        subnormals=base.subnormals,
        inf_nan=base.inf_nan,
        saturate=None,  # every preset uses the automatic choice
    )
    if opts_text is not None and opts_text.strip():
        for item in opts_text.split(","):
            if "=" not in item:
                raise ValueError(f"option {item.strip()!r} in {spelling!r} is not key=value; e.g. {_MINIFLOAT_EXAMPLE}")
            key, value = (s.strip() for s in item.split("=", 1))
            if key == "bias":
                kwargs["bias"] = _parse_int_arg(value, "bias", spelling)
            elif key in ("subnormals", "saturate"):
                kwargs[key] = _parse_bool(value, key, spelling)
            elif key == "inf_nan":
                kwargs["inf_nan"] = value.lower()
            else:
                raise ValueError(
                    f"unknown minifloat option {key!r} in {spelling!r}; options: bias, subnormals, inf_nan, saturate"
                )
    return MinifloatType(**kwargs)


def parse_type(text: "str | Format") -> Format:
    """Parse a format spelling (HLS ``ap_*`` types, ``khot<k,base>``, minifloats, MX).

    Examples: ``"ap_fixed<8,3,AP_RND_CONV,AP_SAT>"``, ``"ap_ufixed<6,2>"``,
    ``"ap_int<8>"``, ``"khot<2,ap_fixed<8,1>>"``, ``"fp8_e4m3fn"``, ``"e5m2"``,
    ``"e4m3<bias=8,saturate=true>"``, ``"mxfp4_e2m1"``, ``"mxint8<block=16,axis=0>"``. Omitted ap_fixed modes default to
    ``AP_TRN`` / ``AP_WRAP`` as in HLS. Format objects pass through unchanged.

    Raises ``ValueError`` naming the bad part and showing a valid spelling.
    """
    if isinstance(text, (FixedType, MinifloatType, KHot, MXType)):
        return text
    if not isinstance(text, str):
        raise TypeError(f"a format spelling must be a str, not {type(text).__name__}; e.g. {_FIXED_EXAMPLE}")
    spelling = text.strip()
    compact = re.sub(r"\s+", "", spelling)
    if not compact:
        raise ValueError(f"empty format spelling; valid spellings include: {_SPELLINGS}")
    m = _FIXED_RE.match(compact)
    if m:
        return _parse_fixed(m.group(1), m.group(2), spelling)
    m = _INT_RE.match(compact)
    if m:
        args = m.group(2).split(",")
        if len(args) != 1:
            raise ValueError(f"{spelling!r}: {m.group(1)} takes one parameter <W>; e.g. ap_int<8>")
        w = _parse_int_arg(args[0], "width W", spelling)
        # C semantics: conversion to ap_int truncates toward zero.
        return FixedType(w, w, m.group(1) == "ap_int", Rounding.AP_TRN_ZERO, Overflow.AP_WRAP)
    m = _KHOT_RE.match(compact)
    if m:
        k = _parse_int_arg(m.group(1), "k", spelling)
        base = parse_type(m.group(2))
        if not isinstance(base, FixedType):
            raise ValueError(f"{spelling!r}: the base of a K-hot format must be ap_fixed/ap_ufixed/ap_int; e.g. khot<2,ap_fixed<8,1>>")
        return KHot(base, k)
    head = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)", compact)
    name = head.group(1).lower() if head else ""
    if name.startswith("mx"):
        m = _FLOAT_RE.match(compact.lower())
        if not m or m.group(1) != name:
            raise ValueError(f"malformed MX format {spelling!r}: unbalanced or missing <...>; e.g. {_MX_EXAMPLE}")
        return _parse_mx(name, m.group(2), spelling)
    known = ("ap_fixed", "ap_ufixed", "ap_int", "ap_uint", "khot", *OCP_MINIFLOATS, *MX_ELEMENTS)
    if compact.startswith(("ap_", "khot")) or (
        name and "<" in compact and not _EXMY_RE.match(name) and name not in OCP_MINIFLOATS
    ):
        if name in ("ap_fixed", "ap_ufixed", "ap_int", "ap_uint", "khot"):
            raise ValueError(f"malformed format {spelling!r}: unbalanced or missing <...>; e.g. {_FIXED_EXAMPLE}")
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ValueError(f"unknown type name {name!r} in {spelling!r}; {hint}valid spellings include: {_SPELLINGS}")
    m = _FLOAT_RE.match(compact.lower())
    if m:
        return _parse_minifloat(m.group(1), m.group(2), spelling)
    raise ValueError(f"unknown format {spelling!r}; valid spellings include: {_SPELLINGS}")
