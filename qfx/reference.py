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
    MX weights (exact accumulator): the element codes become small
    integers ``P`` on the element's grid ``2**-F_e`` (minifloat hull codes, or
    MXINT8's codes); per block ``j`` of the input features the partial sum
    ``S_j = sum_k x[k] * P[k]`` is exact on ``F_x + F_e``; the block scale is a
    shift: ``acc = sum_j S_j << (s_j - s_min)`` on the grid ``F_x + F_e - s_min``
    (``s_j`` the unbiased E8M0 exponents, ``s_min`` the smallest of the
    layer), the bias aligned and added, then one cast to ``output``. conv2d (blocks
    along the input channels): each element is shifted by its block's
    ``s - s_min`` onto the same grid and the im2col matmul is exact (any order).
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
``concat``
    Every input cast to ``output`` (``cast(x_i, output)``), then joined along
    ``params.axis``; in C order with axis 0 (channels) that is the inputs one
    after another.
``clamp``
    ``min(max(cast(cast(x, input), output), min_code), max_code)``: the bounds
    are codes of ``output`` (export casts Hardtanh's / clamp's constants to the
    output format); a missing bound is not applied.
``sub`` / ``mul``
    ``cast(align(cast(a, in_a)) - align(cast(b, in_b)), output)`` /
    ``cast(cast(a, in_a) * cast(b, in_b), output)`` on the grid ``F_a + F_b``
    (exact products).
``pad``
    The codes with ``padding = [left, right, top, bottom]`` zero codes around
    each channel (zero is a code of every format; no cast).
``upsample``
    Nearest-neighbour upsampling by ``scale = [sh, sw]``: ``y[c, oy, ox] = x[c, oy // sh, ox // sw]``
    (each code repeated ``sh x sw`` times; no cast).
``table`` (Sigmoid, Tanh, SiLU, GELU, Hardsigmoid, Hardswish)
    ``table[(clamp(c, lo_code, lo_code + size * 2**shift - 1) - lo_code) >> shift]``
    with ``c = cast(x, input)`` (:func:`qfx.tables.lookup`); the entries are codes
    of ``output`` (:func:`qfx.tables.contents`, checked on load).
``softmax`` (over each vector of the ``F`` codes along ``params.axis``, default the last axis: the
features of ``[F]``, each row of ``[T, S]``, per pixel across the channels of ``[C, H, W]`` with axis 0)
    ``c = cast(x, input)``; ``d_j = max(c) - c_j`` (codes of :func:`qfx.tables.softmax_diff_format`);
    ``e_j = table[(clamp(d_j, lo, hi) - lo) >> shift]`` (codes of ``exp``, grid ``2**-Fe``, the exp
    table of ``exp_neg``); ``S = sum_j e_j`` exactly; ``r = cast(2**Fe / S, reciprocal)`` by exact
    integer division (``q = 2**K // S``, ``t = 2q + (2**K % S != 0)`` on the grid ``2**-(Fr+2)``,
    ``K = Fe + Fr + 1``, then the reciprocal's cast: :func:`qfx.tables.softmax_reciprocal_codes`);
    ``y_j = cast(e_j * r, output)`` from the exact product on the grid ``2**-(Fe+Fr)``.
``layernorm`` (LayerNorm over the last axis; :mod:`qfx.layernorm` states the rule)
    Per row of ``F`` codes ``q = cast(x, input)``: ``S = sum q`` (exact); ``mean = cast(S * 2**-k,
    mean)`` (``F = 2**k``) or ``cast(S * reciprocal, mean)``; ``d = q - mean`` (exact); ``var =
    cast(sum d**2 * 2**-k | reciprocal, var)``; ``s = min(isqrt((2**E) // (var + eps_code)),
    2**W_s - 1)`` with ``E = 2 F_s + F_var`` (the inv_std code, :func:`qfx.layernorm.inv_sqrt_code`,
    Python integers); ``y = cast(d * s * gamma + beta, output)`` (``d * s * gamma`` without a bias,
    ``d * s`` without affine): every product and sum exact.
``matmul`` (two activations, ``a [.., T, K] @ b [.., K, S]``, equal leading dims)
    ``qa = cast(a, in_a)``, ``qb = cast(b, in_b)``; per output ``(.., t, s)``: ``acc = 0``, then for
    ``k = 0 .. K-1`` in order ``acc = cast(align(acc) + align(qa[.., t, k] * qb[.., k, s]), accum)``
    (products exact on ``F_a + F_b``), then ``cast(acc, output)``. With ``params.accum_exact`` no step
    can round or overflow: one exact integer matmul, then the output cast (the same bits).
    ``multiply: lmul``: ``qa`` and ``qb`` are each rounded to the minifloat ``formats.operand`` with
    integers, as dense's activation (nearest even, saturating; no subnormals: flush to zero), and the
    product is their L-Mul product on the grid of ``lmul_product_type(operand)`` (as dense's).
``permute`` / ``reshape``
    The codes with their axes permuted by ``params.dims`` (``y = x.transpose(dims)``) / laid out in
    ``params.shape`` (C order kept); no cast.
``batchnorm`` on ``[C]`` / ``[C, L]`` (BatchNorm1d) is the same per-channel
formula, the channel the first axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .intops import (  # noqa: F401  (cast_codes, to_real and INT64_SAFE_BITS are re-exported)
    INT64_SAFE_BITS,
    _big,
    _fixed_to_minifloat_fields,
    _lmul_products,
    _minifloat_fields,
    _shl,
    cast_codes,
    to_real,
)
from .arith import lmul_product_type, mx_element_grid
from .manifest import (
    Manifest,
    Node,
    load,
    mac_auto_accum,
    matmul_auto_accum,
    mac_product_format,
    minifloat_hull_codes,
    mx_weight_grid_codes,
    mx_weight_hull,
    weight_envelope,
)
from .types import MX_SCALE_BIAS, FixedType, KHot, MinifloatType, MXType

__all__ = ["run", "run_codes", "cast_codes", "to_real", "INT64_SAFE_BITS"]



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


def _mx_dense(node: Node, x: np.ndarray, x_frac: int, force_big: bool) -> np.ndarray:
    """A dense node with MX weights (exact accumulator): block partial sums of small integer
    products, each shifted by its block's scale onto the finest block grid, summed, cast once."""
    f, p = node.formats, node.params
    t: MXType = f["weight"]
    in_fmt, out_fmt, bias_fmt = f["input"], f["output"], f.get("bias")
    k_in, n_out, block = p["in_features"], p["out_features"], t.block_size
    n_blocks = k_in // block
    f_e = mx_element_grid(t).frac_bits
    scales = node.arrays["weight_mx_scales"] - MX_SCALE_BIAS  # [O, NB] unbiased shared exponents
    s_min = int(scales.min())
    shifts = scales - s_min
    # the finest grid: F_x + F_e - s_min; every partial sum lies in the auto accumulator's range
    acc_frac = in_fmt.frac_bits + f_e - s_min
    auto = mac_auto_accum(mac_product_format(in_fmt, mx_weight_hull(t, node.arrays), "exact"), k_in, bias_fmt)
    frac = max(acc_frac, bias_fmt.frac_bits) if bias_fmt is not None else acc_frac
    need = auto.width + max(frac - auto.frac_bits, 0) + 1
    big = force_big or need > INT64_SAFE_BITS
    xq = cast_codes(x, x_frac, in_fmt)
    w = mx_weight_grid_codes(node.arrays["weight"], t)  # [O, K] small integers on 2**-F_e
    if big:
        xq, w, shifts = _big(xq), _big(w), _big(shifts)
    lead = xq.shape[:-1]
    xb = xq.reshape(-1, n_blocks, block).transpose(1, 0, 2)  # [NB, B, block]
    wb = w.reshape(n_out, n_blocks, block).transpose(1, 2, 0)  # [NB, block, O]
    partial = np.matmul(xb, wb)  # [NB, B, O]: the exact block sums of element products
    acc = (partial << shifts.T[:, None, :]).sum(axis=0)  # the block scale as a shift
    acc = _shl(acc, frac - acc_frac)
    if bias_fmt is not None:
        bias = node.arrays["bias"][None, :]
        acc = acc + _shl(_big(bias) if big else bias, frac - bias_fmt.frac_bits)
    return cast_codes(acc, frac, out_fmt).reshape(*lead, n_out)


def _mx_conv(node: Node, x: np.ndarray, x_frac: int, force_big: bool) -> np.ndarray:
    """A conv2d node with MX weights (exact accumulator): each element shifted by its block's
    scale onto the finest block grid, then the exact im2col matmul (same bits in any order)."""
    f, p = node.formats, node.params
    t: MXType = f["weight"]
    in_fmt, out_fmt, bias_fmt = f["input"], f["output"], f.get("bias")
    f_e = mx_element_grid(t).frac_bits
    scales = node.arrays["weight_mx_scales"] - MX_SCALE_BIAS  # [O, C/G/block, KH, KW]
    s_min = int(scales.min())
    shifts = np.repeat(scales - s_min, t.block_size, axis=1)  # per element, like the weight
    acc_frac = in_fmt.frac_bits + f_e - s_min
    auto = mac_auto_accum(mac_product_format(in_fmt, mx_weight_hull(t, node.arrays), "exact"), _n_terms(node), bias_fmt)
    frac = max(acc_frac, bias_fmt.frac_bits) if bias_fmt is not None else acc_frac
    big = force_big or auto.width + max(frac - auto.frac_bits, 0) + 1 > INT64_SAFE_BITS
    xq = cast_codes(x, x_frac, in_fmt)
    w = mx_weight_grid_codes(node.arrays["weight"], t)
    if big:
        xq, w, shifts = _big(xq), _big(w), _big(shifts)
    w = w << shifts  # on the grid 2**-(F_e - s_min)
    cols, (ho, wo) = _im2col(xq, node)
    groups = p["groups"]
    w_rows = w.reshape(groups, p["out_channels"] // groups, cols.shape[2])
    acc = _shl(np.matmul(w_rows[None], cols), frac - acc_frac)  # [B, G, O/G, L]
    if bias_fmt is not None:
        bias = node.arrays["bias"].reshape(groups, -1)[None, :, :, None]
        acc = acc + _shl(_big(bias) if big else bias, frac - bias_fmt.frac_bits)
    return cast_codes(acc, frac, out_fmt).reshape(cols.shape[0], p["out_channels"], ho, wo)


def _mac(node: Node, x: np.ndarray, x_frac: int, force_big: bool) -> np.ndarray:
    if isinstance(node.formats["weight"], MXType):
        return _mx_dense(node, x, x_frac, force_big) if node.op == "dense" else _mx_conv(node, x, x_frac, force_big)
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
    bc = (None, slice(None)) + (None,) * (xq.ndim - 2)  # [N, C, ...]: BatchNorm2d and BatchNorm1d
    s = _shl(xq * scale[bc], frac - prod_frac) + _shl(shift[bc], frac - sh.frac_bits)
    return cast_codes(s, frac, f["output"])


def _layernorm(node: Node, x: np.ndarray, x_frac: int, force_big: bool) -> np.ndarray:
    from . import layernorm as lnx

    f, p = node.formats, node.params
    nf = int(p["num_features"])
    xi, mf, vf, sf = f["input"], f["mean"], f["var"], f["inv_std"]
    try:
        widest = max(t.width for t in lnx.types(f, nf).values())
    except ValueError:  # a result type beyond 64 bits
        widest = 65
    big = force_big or widest + 2 > INT64_SAFE_BITS
    q = cast_codes(x, x_frac, xi)
    if big:
        q = _big(q)
    q = q.reshape(-1, nf)
    if lnx.is_pow2(nf):
        k = nf.bit_length() - 1
        r, fr = 1, k
    else:
        r, fr = int(node.arrays["reciprocal"]), f["reciprocal"].frac_bits
    s = q.sum(axis=1)
    mean = cast_codes(s * r, xi.frac_bits + fr, mf)
    fd = max(xi.frac_bits, mf.frac_bits)
    d = _shl(q, fd - xi.frac_bits) - _shl(mean, fd - mf.frac_bits)[:, None]
    v = cast_codes((d * d).sum(axis=1) * r, 2 * fd + fr, vf)
    e = 2 * sf.frac_bits + vf.frac_bits
    inv = np.array([lnx.inv_sqrt_code(int(c) + int(p["eps_code"]), e, sf.width) for c in np.asarray(v).reshape(-1)],
                   dtype=object if big else np.int64)
    t = d * inv[:, None]
    frac = fd + sf.frac_bits
    if p["affine"]:
        t = t * (_big(node.arrays["scale"]) if big else node.arrays["scale"])[None, :]
        frac += f["scale"].frac_bits
        if p["bias"]:
            fb = f["shift"].frac_bits
            top = max(frac, fb)
            t = _shl(t, top - frac) + _shl(_big(node.arrays["shift"]) if big else node.arrays["shift"], top - fb)[None, :]
            frac = top
    y = cast_codes(t, frac, f["output"])
    return np.asarray(y).reshape(x.shape)


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


def _sub_mul(node: Node, a: np.ndarray, fa_src: int, b: np.ndarray, fb_src: int, force_big: bool) -> np.ndarray:
    f = node.formats
    ta, tb = f["in_a"], f["in_b"]
    big = force_big or _width(lambda: ta - tb if node.op == "sub" else ta * tb) > INT64_SAFE_BITS
    aq, bq = cast_codes(a, fa_src, ta), cast_codes(b, fb_src, tb)
    if big:
        aq, bq = _big(aq), _big(bq)
    if node.op == "mul":
        return cast_codes(aq * bq, ta.frac_bits + tb.frac_bits, f["output"])
    frac = max(ta.frac_bits, tb.frac_bits)
    return cast_codes(_shl(aq, frac - ta.frac_bits) - _shl(bq, frac - tb.frac_bits), frac, f["output"])


def _matmul(node: Node, a: np.ndarray, fa_src: int, b: np.ndarray, fb_src: int, force_big: bool) -> np.ndarray:
    """``a @ b`` on the codes: exact products, the accum cast after every step over k (in order), the output cast."""
    f = node.formats
    ta, tb, accum = f["in_a"], f["in_b"], f["accum"]
    lm = node.params["multiply"] == "lmul"
    if lm:
        prod_fmt = lmul_product_type(f["operand"])
        fp, p_width = prod_fmt.frac_bits, prod_fmt.width
    else:
        fp = ta.frac_bits + tb.frac_bits
        p_width = ta.width + tb.width
    k_n = a.shape[-1]
    if node.params["accum_exact"]:
        need = _width(lambda: matmul_auto_accum(ta, tb, k_n, f.get("operand")))
    else:
        step = max(accum.frac_bits, fp)
        need = max(accum.width + step - accum.frac_bits, p_width + step - fp) + 1
    big = force_big or need > INT64_SAFE_BITS or p_width > INT64_SAFE_BITS
    qa, qb = cast_codes(a, fa_src, ta), cast_codes(b, fb_src, tb)
    if lm:
        t = f["operand"]
        where = f"node {node.name!r}"
        a_fields = _fixed_to_minifloat_fields(qa, ta.frac_bits, t, where + " (operand a)")
        b_fields = _fixed_to_minifloat_fields(qb, tb.frac_bits, t, where + " (operand b)")

        def product(k: int) -> np.ndarray:  # [.., T, S]: the L-Mul products of a[.., :, k] and b[.., k, :]
            return _lmul_products(tuple(v[..., :, k, None] for v in a_fields),
                                  tuple(v[..., None, k, :] for v in b_fields), t, fp, big)
    else:
        if big:
            qa, qb = _big(qa), _big(qb)

        def product(k: int) -> np.ndarray:
            return qa[..., :, k, None] * qb[..., None, k, :]
    shape = qa.shape[:-1] + (qb.shape[-1],)
    if lm and node.params["accum_exact"]:
        acc = np.zeros(shape, dtype=object if big else np.int64)
        for k in range(k_n):  # exact: the order does not matter
            acc = acc + product(k)
        return cast_codes(acc, fp, f["output"])
    if node.params["accum_exact"]:
        if big:  # np.matmul has no object-dtype loop in every numpy: sum the products
            acc = (qa[..., :, :, None] * qb[..., None, :, :]).sum(axis=-2)
        else:
            acc = np.matmul(qa, qb)
        return cast_codes(acc, fp, f["output"])
    fa = accum.frac_bits
    step = max(fa, fp)
    acc = np.zeros(shape, dtype=object if big else np.int64)
    for k in range(k_n):
        s = _shl(acc, step - fa) + _shl(product(k), step - fp)
        acc = cast_codes(s, step, accum)
        if big:
            acc = _big(acc)
    return cast_codes(acc, fa, f["output"])


def _concat(node: Node, srcs: list, fracs: list) -> np.ndarray:
    out_fmt = node.formats["output"]
    parts = [cast_codes(x, fx, out_fmt) for x, fx in zip(srcs, fracs)]
    if any(np.asarray(p).dtype == object for p in parts):
        parts = [_big(p) for p in parts]
    return np.concatenate(parts, axis=int(node.params["axis"]) + 1)


def _clamp(node: Node, x: np.ndarray, x_frac: int) -> np.ndarray:
    f, p = node.formats, node.params
    y = cast_codes(cast_codes(x, x_frac, f["input"]), f["input"].frac_bits, f["output"])
    if p["min_code"] is not None:
        y = np.maximum(y, p["min_code"])
    if p["max_code"] is not None:
        y = np.minimum(y, p["max_code"])
    return y


def _table(node: Node, x: np.ndarray, x_frac: int) -> np.ndarray:
    from .tables import TableSpec, lookup

    p = node.params
    c = np.asarray(cast_codes(x, x_frac, node.formats["input"]), dtype=np.int64)
    return lookup(c, TableSpec(p["function"], p["size"], p["shift"], p["lo_code"]), node.arrays["table"])


def _softmax(node: Node, x: np.ndarray, x_frac: int) -> np.ndarray:
    from .tables import TableSpec, lookup, softmax_axis, softmax_reciprocal_codes

    p, f = node.params, node.formats
    ax = 1 + softmax_axis(p, node.input_shapes[0])  # of [N, ...]
    c = np.asarray(cast_codes(x, x_frac, f["input"]), dtype=np.int64)
    d = c.max(axis=ax, keepdims=True) - c
    e = lookup(d, TableSpec("exp_neg", p["size"], p["shift"], p["lo_code"]), node.arrays["table"])
    s = e.astype(object).sum(axis=ax, keepdims=True)
    r = softmax_reciprocal_codes(s, f["exp"], f["reciprocal"]).astype(object)
    return cast_codes(e.astype(object) * r, f["exp"].frac_bits + f["reciprocal"].frac_bits, f["output"])


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
    import torch  # only here: run_codes (the hardware half's entry) needs no torch

    from .quant import to_codes

    m = manifest if isinstance(manifest, Manifest) else load(manifest)
    xt = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x
    if not xt.is_floating_point():
        raise TypeError(f"run needs a floating-point input, got {xt.dtype}")
    in_node = m.input_node
    shp = tuple(in_node.output_shape)
    if len(shp) == 3 and shp[1] == 1 and xt.dim() == 3 and tuple(xt.shape[1:]) == (shp[0], shp[2]):
        xt = xt[:, :, None, :]  # a 1-D model's [N, C, L] input: the manifest's height-1 [N, C, 1, L]
    if tuple(xt.shape[1:]) != in_node.output_shape or xt.dim() != len(in_node.output_shape) + 1:
        raise ValueError(f"input shape {list(xt.shape)} does not match [N, {', '.join(map(str, in_node.output_shape))}]")
    codes = to_codes(xt.detach().cpu(), in_node.output_format).numpy().astype(np.int64)
    return run_codes(m, codes, big_ints=big_ints)


def run_codes(manifest: "Manifest | str | Path", codes: Any, *, big_ints: bool = False) -> dict[str, np.ndarray]:
    """:func:`run` from the input node's integer codes ``[N, *input_shape]`` (no torch; the HLS generator's
    testbench data). The codes must lie in the input format's range."""
    m = manifest if isinstance(manifest, Manifest) else load(manifest)
    in_node = m.input_node
    x = np.asarray(codes)
    if x.dtype.kind not in "iu" or tuple(x.shape[1:]) != in_node.output_shape or x.ndim != len(in_node.output_shape) + 1:
        raise ValueError(f"run_codes needs integer codes [N, {', '.join(map(str, in_node.output_shape))}], "
                         f"got {x.dtype} {list(x.shape)}")
    fmt = in_node.output_format
    if x.size and (int(x.min()) < fmt.min_code or int(x.max()) > fmt.max_code):
        raise ValueError(f"run_codes: input codes outside {fmt.min_code}..{fmt.max_code} of {fmt}")
    out: dict[str, np.ndarray] = {}
    frac: dict[str, int] = {}
    for node in m.nodes:
        f = node.formats
        if node.op == "input":
            y = x.astype(np.int64)
        else:
            srcs = [out[s] for s in node.inputs]
            fracs = [frac[s] for s in node.inputs]
            if node.op in ("dense", "conv2d"):
                y = _mac(node, srcs[0], fracs[0], big_ints)
            elif node.op == "batchnorm":
                y = _batchnorm(node, srcs[0], fracs[0], big_ints)
            elif node.op == "layernorm":
                y = _layernorm(node, srcs[0], fracs[0], big_ints)
            elif node.op in ("relu", "relu6", "leaky_relu"):
                y = _activation(node, srcs[0], fracs[0], big_ints)
            elif node.op == "add":
                y = _add(node, srcs[0], fracs[0], srcs[1], fracs[1], big_ints)
            elif node.op in ("sub", "mul"):
                y = _sub_mul(node, srcs[0], fracs[0], srcs[1], fracs[1], big_ints)
            elif node.op == "matmul":
                y = _matmul(node, srcs[0], fracs[0], srcs[1], fracs[1], big_ints)
            elif node.op == "permute":
                y = np.transpose(srcs[0], (0,) + tuple(d + 1 for d in node.params["dims"]))
            elif node.op == "reshape":
                y = srcs[0].reshape((srcs[0].shape[0],) + tuple(node.params["shape"]))
            elif node.op == "concat":
                y = _concat(node, srcs, fracs)
            elif node.op == "clamp":
                y = _clamp(node, srcs[0], fracs[0])
            elif node.op == "table":
                y = _table(node, srcs[0], fracs[0])
            elif node.op == "softmax":
                y = _softmax(node, srcs[0], fracs[0])
            elif node.op == "pad":
                left, right, top, bottom = node.params["padding"]
                y = np.pad(srcs[0], ((0, 0), (0, 0), (top, bottom), (left, right)))
            elif node.op == "upsample":
                sh, sw = node.params["scale"]
                y = np.repeat(np.repeat(srcs[0], sh, axis=2), sw, axis=3)
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
