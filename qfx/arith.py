"""Format algebra for layers: product, accumulator and hull types (no torch).

What ``accum: auto`` means, the type that holds every product of a layer, the
fixed-point grid containing a minifloat's or K-hot format's values. Used by the
layers (``qfx.nn``), the manifest checks and the hardware generators alike, so it
lives apart from anything that needs PyTorch.
"""

from __future__ import annotations

import numpy as np

from .types import MAX_WIDTH, FixedType, Format, KHot, MinifloatType, MXType, Overflow

__all__ = [
    "minifloat_hull",
    "weight_hull",
    "lmul_product_type",
    "product_type",
    "auto_accumulator",
    "holds_all_values",
    "envelope",
    "lmul_offset_bits",
]


def envelope(formats: "Format | tuple[FixedType, ...]") -> Format:
    """The narrowest FixedType holding every value of a tuple of FixedTypes (same word length).

    A single format is returned unchanged. Used for per-channel weight formats
    when sizing an accumulator.
    """
    if not isinstance(formats, tuple):
        return formats
    first = formats[0]
    f_min = min(t.frac_bits for t in formats)
    f_max = max(t.frac_bits for t in formats)
    int_bits = first.width - f_min
    return FixedType(int_bits + f_max, int_bits, first.signed, first.rounding, first.overflow)



def minifloat_hull(t: MinifloatType) -> FixedType:
    """The narrowest signed FixedType holding every finite value of ``t``.

    Magnitudes are below ``2**(emax+1)``; the finest step is the subnormal (or
    lowest-binade) quantum ``2**(emin-M)``.
    """
    int_bits = t.emax + 2
    frac_bits = t.mantissa_bits - t.emin
    return FixedType(int_bits + frac_bits, int_bits)


def weight_hull(fmt: Format) -> FixedType:
    """A FixedType whose grid and range contain every value of a weight format."""
    if isinstance(fmt, FixedType):
        return fmt
    if isinstance(fmt, KHot):
        return fmt.base
    return minifloat_hull(fmt)


def lmul_product_type(t: MinifloatType) -> FixedType:
    """A signed FixedType holding every finite exact L-Mul result of two values of ``t``.

    ``L-Mul(a, b) = (1 + xa + xb + 2**-l) 2**(ea+eb)`` with ``1 + xa + xb + 2**-l < 3``
    (so below ``2**(2 emax + 2)``) and, for subnormals normalised to
    ``ea >= emin - M``, an lsb of at least ``2**(2(emin - M) - M)``.
    """
    m = t.mantissa_bits
    int_bits = 2 * t.emax + 3
    frac_bits = 3 * m - 2 * t.emin
    return FixedType(int_bits + frac_bits, int_bits)


def product_type(input_fmt: FixedType, weight_fmt: Format, multiply: str) -> FixedType:
    """The type P that holds every product ``x[k] * w[k]`` exactly (see module docstring)."""
    try:
        if multiply == "lmul":
            assert isinstance(weight_fmt, MinifloatType)
            return lmul_product_type(weight_fmt)
        return input_fmt * weight_hull(weight_fmt)
    except ValueError as err:
        raise ValueError(
            f"the products of input {input_fmt} and weight {weight_fmt} need a type wider than qfx "
            f"emulates ({err}); use narrower formats"
        ) from None


def auto_accumulator(product: FixedType, n_terms: int, bias: FixedType | None) -> FixedType:
    """``accum="auto"``: ``product.accumulator(n_terms)``, plus the bias if any."""
    try:
        acc = product.accumulator(max(int(n_terms), 1))
        return acc + bias if bias is not None else acc
    except ValueError as err:
        raise ValueError(
            f"accum 'auto' for {n_terms} products of type {product}"
            + (f" plus a bias {bias}" if bias is not None else "")
            + f" needs a type wider than qfx emulates ({err}); give an explicit accum"
        ) from None


def holds_all_values(outer: FixedType, inner: FixedType) -> bool:
    """Whether every value of ``inner`` is a value of ``outer`` that ``outer``'s cast keeps unchanged."""
    if outer.frac_bits < inner.frac_bits:
        return False
    shift = outer.frac_bits - inner.frac_bits
    lo = outer.min_code
    if outer.signed and outer.overflow is Overflow.AP_SAT_SYM:
        lo = -outer.max_code  # the most negative code counts as overflow there
    return lo <= inner.min_code << shift and inner.max_code << shift <= outer.max_code


def lmul_offset_bits(mantissa_bits: int) -> int:
    """``l(M)``: the offset term is ``2**-l(M)``."""
    if mantissa_bits < 0:
        raise ValueError(f"mantissa_bits must be >= 0, got {mantissa_bits}")
    if mantissa_bits <= 3:
        return mantissa_bits
    return 3 if mantissa_bits == 4 else 4


def mx_element_grid(fmt: MXType) -> FixedType:
    """The FixedType on whose grid every element value of an MX format is an integer code
    (a minifloat element's hull; MXINT8's ``ap_fixed<8,2>`` itself)."""
    return weight_hull(fmt.element)


def mx_value_hull(scales: np.ndarray, grid_codes: np.ndarray, fmt: MXType) -> FixedType:
    """The narrowest signed FixedType holding every value of one MX tensor.

    ``grid_codes`` are the element values as integers on :func:`mx_element_grid`'s grid
    (``2**-F_e``), ``scales`` the unbiased shared exponents (the tensor's shape with the
    block axis divided by the block size). A value is ``g * 2**(s - F_e)``: its lowest set
    bit gives the fractional bits the hull needs, its bit length the integer bits. An MX
    format spans E8M0's 2**-127..2**127, so layers size products and ``accum="auto"`` from
    the values a weight tensor holds (qfx.nn, export, the manifest and the reference all
    call this). ValueError beyond 64 bits.
    """
    g = np.asarray(grid_codes, dtype=np.int64)
    axis = fmt.axis % g.ndim
    s = np.repeat(np.asarray(scales, dtype=np.int64), fmt.block_size, axis=axis)
    nz = g != 0
    if not nz.any():
        return FixedType(2, 1)
    a, s = np.abs(g[nz]), s[nz]
    low = np.round(np.log2(a & -a)).astype(np.int64)  # exact: a power of two below 2**20
    length = np.floor(np.log2(a)).astype(np.int64) + 1  # bit length (|g| < 2**20: exact)
    f_e = mx_element_grid(fmt).frac_bits
    frac = int((f_e - s - low).max())
    int_bits = int((length + s - f_e).max()) + 1  # |v| < 2**(length + s - F_e), plus the sign
    if int_bits + frac > MAX_WIDTH:
        raise ValueError(
            f"the MX ({fmt}) values span 2**{-frac}..2**{int_bits - 1} ({int_bits + frac} bits: their "
            f"block scales lie far apart), beyond the {MAX_WIDTH} bits qfx emulates exactly; clip or "
            "regularise the weights so that the block scales lie closer together"
        )
    return FixedType(int_bits + frac, int_bits)
