"""Fixed-point LayerNorm (manifest op ``layernorm``): the formats, helper types and integer rules
that :class:`qfx.nn.QLayerNorm`, :mod:`qfx.reference`, the HLS template and the RTL engine share.

No torch here (the hardware half imports it). Per vector of ``F`` features (the last axis), with
``q[i]`` the codes of ``cast(x[i], input)`` (``F_x`` fractional bits)::

    S     = sum_i q[i]                                       exact, grid F_x
    mean  = cast(S * 2**-k, mean)              if F = 2**k  (S read on the grid F_x + k)
    mean  = cast(S * r, mean)                  otherwise, r = cast(1/F, reciprocal) (grid F_x + F_r)
    d[i]  = q[i] - mean                                      exact, grid F_d = max(F_x, F_mean)
    V     = sum_i d[i]**2                                    exact, grid 2 F_d
    var   = cast(V * 2**-k, var)  /  cast(V * r, var)        as the mean (grid 2 F_d + k / 2 F_d + F_r)
    n     = var_code + eps_code,   eps_code = ceil(eps * 2**F_var)  (>= 1: eps > 0 is required)
    s     = min(isqrt(floor(2**E / n)), 2**W_s - 1),   E = 2 F_s + F_var
          = the largest code k < 2**W_s with k*k*n <= 2**E: floor(2**F_s / sqrt(n * 2**-F_var)),
            i.e. 1/sqrt(var + eps) truncated (AP_TRN) and saturated (AP_SAT) in the inv_std format
    t[i]  = d[i] * s                                         exact, grid F_d + F_s
    y[i]  = cast(t[i] * gamma[i] + beta[i], output)          (elementwise_affine with bias)
    y[i]  = cast(t[i] * gamma[i], output)                    (elementwise_affine, bias=False)
    y[i]  = cast(t[i], output)                               (no elementwise_affine)

``gamma`` / ``beta`` are codes of the ``scale`` / ``shift`` formats; every product and sum is exact
(ap_fixed result types, :func:`types`), so the only roundings are the casts to ``mean``, ``var``,
``inv_std`` (always floor, saturating) and ``output``. ``var`` and ``inv_std`` must be unsigned
(``ap_ufixed``), ``inv_std`` spelled with ``AP_TRN`` and ``AP_SAT`` (what the rule does), and
``0 <= E <= 60``.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Mapping

from .types import FixedType, Overflow, Rounding

__all__ = ["FORMAT_KEYS", "OPTIONAL_KEYS", "check_formats", "eps_code", "types", "inv_sqrt_code", "inv_sqrt_digits", "is_pow2",
           "E_MAX"]

#: Formats of a layernorm node: required, then optional (scale: affine; shift: bias; reciprocal: F not 2**k).
FORMAT_KEYS = ("input", "mean", "var", "inv_std", "output")
OPTIONAL_KEYS = ("scale", "shift", "reciprocal")
#: Largest ``E = 2 F_s + F_var`` (the emulation divides 2**E in int64).
E_MAX = 60


def is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def check_formats(formats: Mapping[str, Any], num_features: int) -> None:
    """Raise ``ValueError`` (the reason and what is supported) unless the formats define a layernorm."""
    for key in FORMAT_KEYS:
        if not isinstance(formats.get(key), FixedType):
            raise ValueError(f"needs a fixed-point '{key}' format (config key {key!r}), got {formats.get(key)!r}")
    for key in ("var", "inv_std"):
        if formats[key].signed:
            raise ValueError(f"the '{key}' format must be unsigned (ap_ufixed), got {formats[key]}")
    s = formats["inv_std"]
    if s.rounding is not Rounding.AP_TRN or s.overflow is not Overflow.AP_SAT:
        raise ValueError(f"the 'inv_std' format must use AP_TRN and AP_SAT (1/sqrt(var + eps) is truncated and "
                         f"saturated), e.g. 'ap_ufixed<{s.width},{s.int_bits},AP_TRN,AP_SAT>', got {s}")
    e = 2 * s.frac_bits + formats["var"].frac_bits
    if not 0 <= e <= E_MAX:
        raise ValueError(f"2 * frac_bits(inv_std) + frac_bits(var) = {e} must lie in 0..{E_MAX}; got inv_std "
                         f"{s} and var {formats['var']}")
    if not is_pow2(num_features) and not isinstance(formats.get("reciprocal"), FixedType):
        raise ValueError(f"{num_features} features (not a power of two) need a 'reciprocal' format for 1/{num_features}, "
                         "e.g. reciprocal='ap_ufixed<16,0,AP_RND>'")


def eps_code(eps: float, var_fmt: FixedType) -> int:
    """``ceil(eps * 2**F_var)`` computed exactly from the double ``eps`` (> 0, so at least 1)."""
    if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return max(1, math.ceil(Fraction(float(eps)) * Fraction(2) ** var_fmt.frac_bits))


def _shifted(t: FixedType, k: int) -> FixedType:
    """``t`` read on a grid ``k`` bits finer (the value times ``2**-k``, same codes)."""
    return FixedType(t.width, t.int_bits - k, signed=t.signed)


def types(formats: Mapping[str, Any], num_features: int) -> dict[str, FixedType]:
    """The exact intermediate types (ap_fixed result types): ``sum`` (of the inputs), ``mean_pre``
    (the mean before its cast), ``d`` (deviation), ``sqsum`` (sum of squares), ``var_pre``, ``t``
    (d * inv_std) and ``pre`` (the value cast to the output)."""
    xi, mf = formats["input"], formats["mean"]
    k = num_features.bit_length() - 1
    out: dict[str, FixedType] = {}
    out["sum"] = xi.accumulator(num_features)
    r = formats.get("reciprocal") if not is_pow2(num_features) else None
    out["mean_pre"] = out["sum"] * r if r is not None else _shifted(out["sum"], k)
    out["d"] = xi - mf
    out["sqsum"] = (out["d"] * out["d"]).accumulator(num_features)
    out["var_pre"] = out["sqsum"] * r if r is not None else _shifted(out["sqsum"], k)
    out["t"] = out["d"] * formats["inv_std"]
    pre = out["t"]
    if formats.get("scale") is not None:
        pre = pre * formats["scale"]
        if formats.get("shift") is not None:
            pre = pre + formats["shift"]
    out["pre"] = pre
    return out


def inv_sqrt_code(n: int, e: int, width: int) -> int:
    """The definition: ``min(isqrt(floor(2**e / n)), 2**width - 1)`` for ``n >= 1``, ``e >= 0``."""
    if n < 1 or e < 0:
        raise ValueError(f"inv_sqrt_code needs n >= 1 and e >= 0, got n={n}, e={e}")
    return min(math.isqrt((1 << e) // n), (1 << width) - 1)


def inv_sqrt_digits(n: int, e: int, width: int) -> int:
    """What the RTL engine and the HLS C++ compute: the digit-by-digit (restoring) search for the
    largest ``k < 2**width`` with ``k*k*n <= 2**e``, one bit per step from the top, with shifts and
    adds only: ``P = k*k*n``, ``A = (k*n) << (j+1)``, ``B = n << 2j`` for bit ``j``; a trial
    ``P + A + B`` (= ``(k + 2**j)**2 n``) is accepted when ``<= 2**e``; then ``A = (A + 2B if
    accepted else A) >> 1``, ``B >>= 2``. Equals :func:`inv_sqrt_code` (tests check exhaustively)."""
    lim = 1 << e
    p, a, b, k = 0, 0, n << (2 * (width - 1)), 0
    for _ in range(width):
        trial = p + a + b
        take = trial <= lim
        if take:
            p = trial
            a = a + 2 * b
        k = (k << 1) | int(take)
        a >>= 1
        b >>= 2
    return k
