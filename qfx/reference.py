"""The integer reference interpreter of a manifest: the golden model of the hardware.

``run(manifest, x)`` converts the float input ``x`` to the input node's codes
with :func:`qfx.to_codes` (once, at the boundary; bit-exact against the Xilinx
headers) and from then on computes with integers only: NumPy ``int64`` where a
bound from the formats shows that no intermediate can exceed 62 bits, Python
``int`` object arrays otherwise. No float is ever involved after the input.

Every tensor is a pair (integer codes, fractional bits F): value = code * 2**-F.
Aligning two binary points is a left shift; all products and sums are exact;
rounding and overflow happen only in :func:`cast_codes`, the integer ap_fixed
cast (below). In each layer ``cast(t, fmt)`` means ``cast_codes(t, F_t, fmt)``.

The cast, ``cast_codes(codes, src_frac_bits, dst)``, with ``s = src_frac_bits
- dst.frac_bits``:

* ``s <= 0``: ``r = code << -s`` (exact).
* ``s > 0``: ``fl = code >> s`` (floor), ``rem = code - (fl << s)``,
  ``half = 2**(s-1)``; ``r = fl + up`` with ``up`` = AP_TRN: 0;
  AP_TRN_ZERO: ``rem != 0 and code < 0``; AP_RND: ``rem >= half``;
  AP_RND_ZERO: ``rem > half or (rem == half and code < 0)``; AP_RND_MIN_INF:
  ``rem > half``; AP_RND_INF: ``rem > half or (rem == half and code > 0)``;
  AP_RND_CONV: ``rem > half or (rem == half and fl odd)``.
* Overflow on ``r`` against ``[min_code, max_code]``: AP_SAT clamps; AP_SAT_SYM
  clamps to ``[min_code | 1, max_code]`` (signed; ``[0, max]`` unsigned);
  AP_SAT_ZERO gives 0 outside; AP_WRAP keeps the low W bits (two's
  complement); AP_WRAP_SM wraps and then, where ``r`` was out of range and the
  new sign bit differs from bit W of the truncated code ``fl`` (before the
  rounding carry), inverts all bits (``~v``), as ap_fixed's overflow_adjust.

Layers (``x`` = the producer's codes, cast to the node's input format first):

``input``
    ``qfx.to_codes(x, formats.output)``.
``dense`` / ``conv2d``
    Weights as integers on one grid: fixed-point codes (a per-channel format:
    row ``o`` shifted left by ``F_env - F_o`` onto the finest grid); K-hot
    codes rebuilt from the stored digits, ``sum(signs << shifts)``; minifloat
    bit patterns decoded into ``(2**M + mantissa) << (exponent field - 1)``
    (normal) or ``mantissa`` (subnormal), the exact value on the grid of
    ``minifloat_hull``. Products ``x * w`` are exact on the product grid
    ``F_P = F_x + F_w``. Conv uses im2col: zero padding, columns ordered
    (input channel, kernel row, kernel column), the documented order.
    With an exact accumulator (``params.accum_exact``): one int64 matmul per
    group, the bias aligned and added, one cast to ``output``. Otherwise the
    HLS loop: ``acc = cast(bias, accum)`` (0 without bias), then for every k in
    order ``acc = cast(align(acc) + align(x[k] * w[k]), accum)``, then
    ``cast(acc, output)``.
    L-Mul (``multiply: lmul``): the activation is rounded to the weight's
    minifloat format with integers (nearest even at the quantum
    ``2**(max(e, emin) - M)`` of its binade; overflow saturates or is an error
    as in qfx.nn; no subnormals: flush to zero); both operands become
    normalised ``(sign, e, f)`` with ``|v| = (1 + f/2**M) 2**e`` (subnormals
    normalised, ``e < emin``) and the product is ``N << (ea + eb - M + F_P)``
    with ``N = 2**M + fa + fb + 2**(M - l(M))``, signed ``sa ^ sb``, zero if an
    operand is zero; accumulated as above.
``batchnorm``
    ``cast(x * scale[c] + align(shift[c]), output)`` on the grid
    ``max(F_x + F_scale, F_shift)``: one rounding.
``relu`` / ``relu6`` / ``leaky_relu``
    ``max(x, 0)``; ``min(max(x, 0), 6)`` on the grid ``max(F_x, -1)`` where
    6 is ``3 << (F + 1)``; ``x << s`` where ``x >= 0`` else ``x``, on the grid
    ``F_x + s``; then ``cast(., output)``.
``add``
    ``cast(align(cast(a, in_a)) + align(cast(b, in_b)), output)``.
``maxpool2d``
    The maximum of the window's codes (padding never wins), cast to
    ``output`` (the identity when output == input).
``avgpool2d``
    ``s`` = exact window sum (zero padding counted); divisor ``2**k``:
    ``cast(s, output)`` reading ``s`` on the grid ``F_x + k``; otherwise
    ``cast(s * reciprocal, output)`` on the grid ``F_x + F_r``.
``flatten`` / ``output``
    The codes, reshaped / unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ._lmul import lmul_offset_bits
from .manifest import Manifest, Node, load, mac_auto_accum, mac_product_format, minifloat_hull_codes, weight_envelope
from .quant import to_codes
from .types import FixedType, KHot, MinifloatType, Overflow, Rounding, parse_type

__all__ = ["run", "cast_codes", "to_real", "INT64_SAFE_BITS"]

#: Intermediates of at most this many bits (sign included) are computed in int64.
INT64_SAFE_BITS = 62


# ---------------------------------------------------------------------------
# Integer helpers (int64 or object arrays alike)
# ---------------------------------------------------------------------------


def _as_int_array(codes: Any) -> np.ndarray:
    a = np.asarray(codes)
    if a.dtype == object:
        if a.size and not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in a.reshape(-1)):
            raise TypeError("cast_codes needs integer codes")
        return np.array([int(v) for v in a.reshape(-1)], dtype=object).reshape(a.shape)
    if a.dtype == np.uint64:
        return a.astype(object)
    if a.dtype.kind in "iub":
        return a.astype(np.int64)
    raise TypeError(f"cast_codes needs integer codes, got dtype {a.dtype}")


def _max_bits(a: np.ndarray) -> int:
    """Bits of the largest magnitude in ``a`` (0 for an empty or all-zero array)."""
    if a.size == 0:
        return 0
    return max(int(a.max()).bit_length(), (-int(a.min())).bit_length())


def _big(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == object else a.astype(object)


def _shl(a: np.ndarray, s: int) -> np.ndarray:
    if s < 0:
        raise AssertionError("negative alignment shift")
    return a << s if s else a


def _bit_length(a: np.ndarray) -> np.ndarray:
    """Element-wise ``int.bit_length`` of non-negative integers (int64 result)."""
    if a.dtype == object:
        return np.array([int(v).bit_length() for v in a.reshape(-1)], dtype=np.int64).reshape(a.shape)
    out = np.zeros(a.shape, dtype=np.int64)
    v = a.copy()
    while True:
        nz = v > 0
        if not nz.any():
            return out
        out += nz
        v >>= 1


def _wrap(r: np.ndarray, t: FixedType) -> np.ndarray:
    w = t.width
    v = r & ((1 << w) - 1)
    if t.signed:
        v = np.where(v >= (1 << (w - 1)), v - (1 << w), v)
    return v


def cast_codes(codes: Any, src_frac_bits: int, dst_fmt: "FixedType | str") -> np.ndarray:
    """The codes of ``dst_fmt`` after ``dst y = x`` for ``x = codes * 2**-src_frac_bits``, in integers.

    Bit-exact with ap_fixed (and :func:`qfx.to_codes`) for every rounding and
    overflow mode; see the module docstring for the algorithm. ``codes`` may
    be any integer array (or Python ints of any size, as an object array);
    the result is int64 when ``dst_fmt``'s codes fit it (all but a 64-bit
    ap_ufixed), else an object array of Python ints.
    """
    t = parse_type(dst_fmt) if isinstance(dst_fmt, str) else dst_fmt
    if not isinstance(t, FixedType):
        raise TypeError(f"cast_codes casts to fixed-point formats, not {t}")
    if isinstance(src_frac_bits, bool) or not isinstance(src_frac_bits, (int, np.integer)):
        raise TypeError(f"src_frac_bits must be an int, not {src_frac_bits!r}")
    a = _as_int_array(codes)
    shape = a.shape
    a = a.reshape(-1)
    s = int(src_frac_bits) - t.frac_bits
    if a.dtype != object and (
        t.width > INT64_SAFE_BITS - 1 or s > INT64_SAFE_BITS - 1 or _max_bits(a) + max(0, -s) > INT64_SAFE_BITS - 1
    ):
        a = a.astype(object)
    if s <= 0:
        fl = _shl(a, -s)
        r = fl
    else:
        fl = a >> s
        rem = a - (fl << s)
        half = 1 << (s - 1)
        q = t.rounding
        if q is Rounding.AP_TRN:
            up = np.zeros(a.shape, dtype=bool)
        elif q is Rounding.AP_TRN_ZERO:
            up = (rem != 0) & (a < 0)
        elif q is Rounding.AP_RND:
            up = rem >= half
        elif q is Rounding.AP_RND_ZERO:
            up = (rem > half) | ((rem == half) & (a < 0))
        elif q is Rounding.AP_RND_MIN_INF:
            up = rem > half
        elif q is Rounding.AP_RND_INF:
            up = (rem > half) | ((rem == half) & (a > 0))
        else:  # AP_RND_CONV
            up = (rem > half) | ((rem == half) & ((fl & 1) == 1))
        r = fl + np.asarray(up, dtype=bool).astype(np.int64)
    lo, hi = t.min_code, t.max_code
    o = t.overflow
    if o is Overflow.AP_SAT or (o is Overflow.AP_SAT_SYM and not t.signed):
        v = np.minimum(np.maximum(r, lo), hi)
    elif o is Overflow.AP_SAT_SYM:
        v = np.minimum(np.maximum(r, lo | 1), hi)
    elif o is Overflow.AP_SAT_ZERO:
        v = np.where((r < lo) | (r > hi), 0, r)
    elif o is Overflow.AP_WRAP:
        v = _wrap(r, t)
    else:  # AP_WRAP_SM
        v = _wrap(r, t)
        outside = np.asarray((r < lo) | (r > hi), dtype=bool)
        dropped = np.asarray(((fl >> t.width) & 1) == 1, dtype=bool)
        flip = outside & (np.asarray(v < 0, dtype=bool) != dropped)
        v = np.where(flip, ~v, v)
    v = np.asarray(v)
    if v.dtype == object and (t.signed or t.width <= 63):
        v = v.astype(np.int64)
    elif v.dtype != object:
        v = v.astype(np.int64)
    return v.reshape(shape)


def to_real(codes: np.ndarray, fmt: "FixedType | str") -> np.ndarray:
    """Values (float64) of codes of a fixed-point format (exact for codes of at most 53 bits)."""
    t = parse_type(fmt) if isinstance(fmt, str) else fmt
    if isinstance(t, KHot):
        t = t.base
    if not isinstance(t, FixedType):
        raise TypeError(f"to_real converts fixed-point codes, not {t}")
    return np.ldexp(np.asarray(codes).astype(np.float64), -t.frac_bits)


# ---------------------------------------------------------------------------
# Minifloat fields
# ---------------------------------------------------------------------------


def _minifloat_fields(bits: np.ndarray, t: MinifloatType) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(negative, zero, e, f)`` of bit patterns: ``|v| = (1 + f/2**M) 2**e``, subnormals normalised."""
    m, e_bits = t.mantissa_bits, t.exponent_bits
    neg = ((bits >> (e_bits + m)) & 1) == 1
    ef = (bits >> m) & ((1 << e_bits) - 1)
    man = bits & ((1 << m) - 1)
    normal = ef > 0
    length = _bit_length(man)
    sub_e = t.emin - m + length - 1
    sub_f = (man << np.clip(m - length + 1, 0, None)) - (1 << m)
    zero = ~normal & ((man == 0) | (not t.subnormals))
    e = np.where(normal, ef - t.bias, np.where(zero, 0, sub_e))
    f = np.where(normal, man, np.where(zero, 0, sub_f))
    return neg, zero, e.astype(np.int64), f.astype(np.int64)


def _fixed_to_minifloat_fields(
    c: np.ndarray, frac: int, t: MinifloatType, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Round fixed-point codes to minifloat ``t`` (nearest even) and return ``(negative, zero, e, f)``."""
    m = t.mantissa_bits
    if c.dtype != object and _max_bits(c) > 60:
        c = c.astype(object)
    neg = c < 0
    a = np.where(neg, -c, c)
    length = _bit_length(a)
    sh = np.maximum(length - 1, t.emin + frac) - m
    shp = np.clip(sh, 0, 61 if a.dtype != object else None)
    if a.dtype == object:
        shp = shp.astype(object)
    fl = a >> shp
    rem = a - (fl << shp)
    two_rem, unit = rem * 2, np.ones_like(a) << shp
    up = (two_rem > unit) | ((two_rem == unit) & ((fl & 1) == 1))
    mant = fl + np.asarray(up, dtype=bool).astype(np.int64)
    qexp = np.asarray(shp, dtype=np.int64) - frac  # value = mant * 2**qexp
    mlen = _bit_length(np.asarray(mant))
    zero = np.asarray(mant == 0, dtype=bool)
    e = np.where(zero, 0, mlen - 1 + qexp).astype(np.int64)
    up_shift = np.clip(m - mlen + 1, 0, None)
    down_shift = np.clip(mlen - 1 - m, 0, None)
    if mant.dtype == object:
        up_shift, down_shift = up_shift.astype(object), down_shift.astype(object)
    f = np.where(zero, 0, ((mant << up_shift) >> down_shift) - (1 << m))
    f = np.asarray(f).astype(np.int64)
    if not t.subnormals:
        zero = zero | (e < t.emin)
    if t.inf_nan == "fn" and m == 0:
        top_e, top_f = t.emax - 1, 0
    else:
        top_e, top_f = t.emax, t.max_mantissa_code
    over = ~zero & ((e > top_e) | ((e == top_e) & (f > top_f)))
    if over.any():
        if not t.saturate:
            raise ValueError(
                f"{where}: L-Mul: some activations overflow the weight format {t} to inf/NaN when cast to it; "
                f"use a saturating minifloat (saturate=true) or a narrower input format"
            )
        e = np.where(over, top_e, e)
        f = np.where(over, top_f, f)
    e = np.where(zero, 0, e)
    f = np.where(zero, 0, f)
    return np.asarray(neg, dtype=bool), zero, e, f


def _lmul_products(
    xa: tuple[np.ndarray, ...], wb: tuple[np.ndarray, ...], t: MinifloatType, product_frac: int, big: bool
) -> np.ndarray:
    """Exact L-Mul products (broadcasting) as codes on the grid ``product_frac``."""
    na, za, ea, fa = xa
    nb, zb, eb, fb = wb
    m = t.mantissa_bits
    n = (1 << m) + fa + fb + (1 << (m - lmul_offset_bits(m)))
    zero = za | zb
    sh = np.where(zero, 0, ea + eb - m + product_frac)
    if (sh < 0).any():  # pragma: no cover - excluded by lmul_product_type
        raise AssertionError("L-Mul product below the product grid")
    if big:
        n, sh = _big(np.asarray(n)), np.asarray(sh).astype(object)
    p = n << sh
    p = np.where(na ^ nb, -p, p)
    return np.where(zero, 0, p)


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------


def _width(make: Any) -> int:
    """Width of a FixedType built by ``make()``; beyond 64 bits counts as 65."""
    try:
        return make().width
    except ValueError:
        return 65


def _weight_grid_codes(node: Node, big: bool) -> np.ndarray:
    """Weight codes on the grid of the envelope / K-hot base / minifloat hull (same shape as stored)."""
    fmt = node.formats["weight"]
    a = node.arrays
    if big:
        a = {k: _big(v) for k, v in a.items()}
    if isinstance(fmt, tuple):
        f_max = max(t.frac_bits for t in fmt)
        shifts = np.array([f_max - t.frac_bits for t in fmt], dtype=np.int64)
        shifts = shifts.reshape((-1,) + (1,) * (a["weight"].ndim - 1))
        if big:
            shifts = shifts.astype(object)
        return a["weight"] << shifts
    if isinstance(fmt, KHot):
        shifts, signs = a["weight_khot_shifts"], a["weight_khot_signs"]
        one = np.ones_like(shifts)
        return (signs * (one << shifts)).sum(axis=-1)
    if isinstance(fmt, MinifloatType):
        return minifloat_hull_codes(a["weight"], fmt)
    return a["weight"]


def _im2col(x: np.ndarray, node: Node) -> tuple[np.ndarray, tuple[int, int]]:
    """``[N, C, H, W]`` -> columns ``[N, G, C/G * KH * KW, HO * WO]`` in (channel, row, column) order."""
    p = node.params
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), g = p["kernel"], p["stride"], p["padding"], p["dilation"], p["groups"]
    n, c, h, w = x.shape
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    cols = np.zeros((n, c, kh, kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]
    return cols.reshape(n, g, (c // g) * kh * kw, ho * wo), (ho, wo)


def _mac(node: Node, x: np.ndarray, x_frac: int, force_big: bool) -> np.ndarray:
    f, p = node.formats, node.params
    in_fmt, accum, out_fmt = f["input"], f["accum"], f["output"]
    bias_fmt = f.get("bias")
    multiply = p["multiply"]
    fp, p_width = _product_grid(in_fmt, f["weight"], multiply)
    exact = bool(p["accum_exact"])
    n_terms = _n_terms(node)
    if exact:
        prod_fmt = mac_product_format(in_fmt, f["weight"], multiply)  # exists: accum_exact needs the auto type
        assert prod_fmt.frac_bits == fp and prod_fmt.width == p_width
        fb = bias_fmt.frac_bits if bias_fmt is not None else fp
        acc_frac = max(fp, fb)
        need = _width(lambda: mac_auto_accum(prod_fmt, n_terms, bias_fmt))  # bounds every partial sum
    else:
        acc_frac = accum.frac_bits
        step_frac = max(acc_frac, fp)
        need = max(accum.width + step_frac - acc_frac, p_width + step_frac - fp) + 1  # bounds every step acc + x*w
    big = force_big or need > INT64_SAFE_BITS or p_width > INT64_SAFE_BITS
    xq = cast_codes(x, x_frac, in_fmt)
    if big:
        xq = _big(xq)

    # columns [B, G, K, L] and weight rows [G, O/G, K]
    if node.op == "dense":
        k_in = p["in_features"]
        lead = xq.shape[:-1]
        cols = xq.reshape(-1, 1, k_in, 1)
        groups, per_group = 1, p["out_features"]
    else:
        cols, (ho, wo) = _im2col(xq, node)
        groups, per_group = p["groups"], p["out_channels"] // p["groups"]
    n_k = cols.shape[2]

    wfmt = weight_envelope(f["weight"])
    if multiply == "lmul":
        assert isinstance(wfmt, MinifloatType)
        w_fields = tuple(v.reshape(groups, per_group, n_k) for v in _minifloat_fields(node.arrays["weight"], wfmt))
        x_fields = _fixed_to_minifloat_fields(cols, in_fmt.frac_bits, wfmt, f"node {node.name!r}")

        def product(k: int) -> np.ndarray:
            xa = tuple(v[:, :, None, k, :] for v in x_fields)  # [B, G, 1, L]
            wb = tuple(v[None, :, :, k, None] for v in w_fields)  # [1, G, O, 1]
            return _lmul_products(xa, wb, wfmt, fp, big)

    else:
        w_rows = _weight_grid_codes(node, big).reshape(groups, per_group, n_k)

        def product(k: int) -> np.ndarray:
            return cols[:, :, None, k, :] * w_rows[None, :, :, k, None]

    bias = None
    if bias_fmt is not None:
        bias = node.arrays["bias"].reshape(groups, per_group)[None, :, :, None]
        if big:
            bias = _big(bias)
    b, l = cols.shape[0], cols.shape[3]
    shape = (b, groups, per_group, l)

    if exact:
        if multiply == "lmul":
            acc = np.zeros(shape, dtype=object if big else np.int64)
            for k in range(n_k):
                acc = acc + product(k)
        else:
            acc = np.matmul(w_rows[None], cols)  # [B, G, O, L]: one exact integer matmul per group
        acc = _shl(acc, acc_frac - fp)
        if bias is not None:
            acc = acc + _shl(bias, acc_frac - bias_fmt.frac_bits)
        y = cast_codes(acc, acc_frac, out_fmt)
    else:
        fa = accum.frac_bits
        acc = np.zeros(shape, dtype=object if big else np.int64)
        if bias is not None:
            acc = cast_codes(np.broadcast_to(bias, shape), bias_fmt.frac_bits, accum)
            if big:
                acc = _big(acc)
        step = max(fa, fp)
        for k in range(n_k):
            s = _shl(acc, step - fa) + _shl(product(k), step - fp)
            acc = cast_codes(s, step, accum)
            if big:
                acc = _big(acc)
        y = cast_codes(acc, fa, out_fmt)

    if node.op == "dense":
        return y.reshape(*lead, p["out_features"])
    return y.reshape(b, p["out_channels"], ho, wo)


def _product_grid(in_fmt: FixedType, weight_fmt: Any, multiply: str) -> tuple[int, int]:
    """Fractional bits and width of the product grid (:func:`qfx.nn.product_type`, without its 64-bit limit)."""
    env = weight_envelope(weight_fmt)
    if multiply == "lmul":
        m = env.mantissa_bits
        int_bits, frac = 2 * env.emax + 3, 3 * m - 2 * env.emin
        return frac, int_bits + frac
    if isinstance(env, MinifloatType):
        w_frac, w_width = env.mantissa_bits - env.emin, env.mantissa_bits + env.emax + 2 - env.emin
    else:
        g = env.base if isinstance(env, KHot) else env
        w_frac, w_width = g.frac_bits, g.width
    return in_fmt.frac_bits + w_frac, in_fmt.width + w_width


def _n_terms(node: Node) -> int:
    p = node.params
    if node.op == "dense":
        return p["in_features"]
    return p["in_channels"] // p["groups"] * p["kernel"][0] * p["kernel"][1]


def _batchnorm(node: Node, x: np.ndarray, x_frac: int, force_big: bool) -> np.ndarray:
    f = node.formats
    xi, sc, sh = f["input"], f["scale"], f["shift"]
    big = force_big or _width(lambda: xi * sc + sh) > INT64_SAFE_BITS
    xq = cast_codes(x, x_frac, xi)
    scale, shift = node.arrays["scale"], node.arrays["shift"]
    if big:
        xq, scale, shift = _big(xq), _big(scale), _big(shift)
    prod_frac = xi.frac_bits + sc.frac_bits
    frac = max(prod_frac, sh.frac_bits)
    bc = (None, slice(None), None, None)
    s = _shl(xq * scale[bc], frac - prod_frac) + _shl(shift[bc], frac - sh.frac_bits)
    return cast_codes(s, frac, f["output"])


def _activation(node: Node, x: np.ndarray, x_frac: int, force_big: bool) -> np.ndarray:
    f = node.formats
    xi = f["input"]
    xq = cast_codes(x, x_frac, xi)
    fx = xi.frac_bits
    if node.op == "relu":
        return cast_codes(np.maximum(xq, 0), fx, f["output"])
    if node.op == "relu6":
        frac = max(fx, -1)
        big = force_big or xi.width + frac - fx + 4 > INT64_SAFE_BITS
        v = _shl(_big(xq) if big else xq, frac - fx)
        six = 3 << (frac + 1)
        return cast_codes(np.minimum(np.maximum(v, 0), six), frac, f["output"])
    s = int(node.params["slope_shift"])  # leaky_relu
    big = force_big or xi.width + s > INT64_SAFE_BITS
    v = _big(xq) if big else xq
    return cast_codes(np.where(v >= 0, v << s, v), fx + s, f["output"])


def _add(node: Node, a: np.ndarray, fa_src: int, b: np.ndarray, fb_src: int, force_big: bool) -> np.ndarray:
    f = node.formats
    ta, tb = f["in_a"], f["in_b"]
    big = force_big or _width(lambda: ta + tb) > INT64_SAFE_BITS
    aq, bq = cast_codes(a, fa_src, ta), cast_codes(b, fb_src, tb)
    if big:
        aq, bq = _big(aq), _big(bq)
    frac = max(ta.frac_bits, tb.frac_bits)
    return cast_codes(_shl(aq, frac - ta.frac_bits) + _shl(bq, frac - tb.frac_bits), frac, f["output"])


def _pool_windows(x: np.ndarray, node: Node, fill: Any, ceil_mode: bool) -> tuple[np.ndarray, tuple[int, int]]:
    """``[N, C, H, W]`` -> windows ``[N, C, KH*KW, HO, WO]`` (padding filled with ``fill``)."""
    p = node.params
    (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride"], p["padding"]
    dh, dw = p.get("dilation", (1, 1))
    n, c, h, w = x.shape
    _, ho, wo = node.output_shape
    need_h = (ho - 1) * sh + dh * (kh - 1) + 1
    need_w = (wo - 1) * sw + dw * (kw - 1) + 1
    hp, wp = max(h + 2 * ph, need_h), max(w + 2 * pw, need_w)
    xp = np.full((n, c, hp, wp), fill, dtype=x.dtype)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    win = np.zeros((n, c, kh * kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            win[:, :, i * kw + j] = xp[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]
    return win, (ho, wo)


def _maxpool(node: Node, x: np.ndarray, x_frac: int, force_big: bool) -> np.ndarray:
    f = node.formats
    xi = f["input"]
    xq = cast_codes(x, x_frac, xi)
    if force_big:
        xq = _big(xq)
    fill = xi.min_code - 1  # below every code: padding never wins (every window holds an input element)
    win, _ = _pool_windows(xq, node, fill, bool(node.params["ceil_mode"]))
    m = win.max(axis=2)
    if (m == fill).any():  # pragma: no cover - torch's output size rules exclude all-padding windows
        raise AssertionError(f"node {node.name!r}: a max-pool window holds only padding")
    return cast_codes(m, xi.frac_bits, f["output"])


def _avgpool(node: Node, x: np.ndarray, x_frac: int, force_big: bool) -> np.ndarray:
    f, p = node.formats, node.params
    xi = f["input"]
    kh, kw = p["kernel"]
    n_div = int(p["divisor"])
    sum_fmt = xi.accumulator(kh * kw)
    if "reciprocal" in f:
        r = f["reciprocal"]
        big = force_big or _width(lambda: sum_fmt * r) > INT64_SAFE_BITS
    else:
        big = force_big or sum_fmt.width > INT64_SAFE_BITS
    xq = cast_codes(x, x_frac, xi)
    if big:
        xq = _big(xq)
    win, _ = _pool_windows(xq, node, 0, False)
    s = win.sum(axis=2)
    if "reciprocal" in f:
        rc = node.arrays["reciprocal"]
        rc = int(rc) if big else rc
        return cast_codes(s * rc, xi.frac_bits + f["reciprocal"].frac_bits, f["output"])
    k = n_div.bit_length() - 1
    return cast_codes(s, xi.frac_bits + k, f["output"])


# ---------------------------------------------------------------------------
# The interpreter
# ---------------------------------------------------------------------------


def run(manifest: "Manifest | str | Path", x: Any, *, big_ints: bool = False) -> dict[str, np.ndarray]:
    """Run the manifest on a float batch ``x`` with integers only.

    Parameters
    ----------
    manifest : Manifest or path
        A loaded manifest, or a folder / ``manifest.yaml`` to :func:`qfx.manifest.load`.
    x : array-like or Tensor, float
        ``[N, *input_shape]``.
    big_ints : bool
        Compute every layer with Python ``int`` object arrays (slow; for
        testing the fallback). By default a layer uses int64 unless a bound
        from its formats exceeds :data:`INT64_SAFE_BITS`.

    Returns
    -------
    dict
        Node name -> integer codes (int64; object arrays only for 64-bit
        unsigned codes) of the node's ``formats.output``, batch dimension
        first, in topological order. :func:`to_real` gives values.
    """
    m = manifest if isinstance(manifest, Manifest) else load(manifest)
    xt = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x
    if not xt.is_floating_point():
        raise TypeError(f"run needs a floating-point input, got {xt.dtype}")
    in_node = m.input_node
    if tuple(xt.shape[1:]) != in_node.output_shape or xt.dim() != len(in_node.output_shape) + 1:
        raise ValueError(f"input shape {list(xt.shape)} does not match [N, {', '.join(map(str, in_node.output_shape))}]")
    out: dict[str, np.ndarray] = {}
    frac: dict[str, int] = {}
    for node in m.nodes:
        f = node.formats
        if node.op == "input":
            y = to_codes(xt.detach().cpu(), f["output"]).numpy().astype(np.int64)
        else:
            srcs = [out[s] for s in node.inputs]
            fracs = [frac[s] for s in node.inputs]
            if node.op in ("dense", "conv2d"):
                y = _mac(node, srcs[0], fracs[0], big_ints)
            elif node.op == "batchnorm":
                y = _batchnorm(node, srcs[0], fracs[0], big_ints)
            elif node.op in ("relu", "relu6", "leaky_relu"):
                y = _activation(node, srcs[0], fracs[0], big_ints)
            elif node.op == "add":
                y = _add(node, srcs[0], fracs[0], srcs[1], fracs[1], big_ints)
            elif node.op == "maxpool2d":
                y = _maxpool(node, srcs[0], fracs[0], big_ints)
            elif node.op == "avgpool2d":
                y = _avgpool(node, srcs[0], fracs[0], big_ints)
            elif node.op == "flatten":
                y = cast_codes(srcs[0], fracs[0], f["input"]).reshape((srcs[0].shape[0],) + node.output_shape)
            elif node.op == "output":
                y = srcs[0]
            else:  # pragma: no cover - load rejects unknown ops
                raise ValueError(f"node {node.name!r}: unknown op {node.op!r}")
        out[node.name] = np.asarray(y)
        frac[node.name] = f["output"].frac_bits
    return out


def values(manifest: Manifest, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`to_real` of every node's codes (float64)."""
    return {name: to_real(codes, manifest.node(name).output_format) for name, codes in outputs.items()}


__all__.append("values")
