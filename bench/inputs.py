"""The benchmark input and the reference outputs.

The input is ``torch.randn(n) * 3`` from a seeded generator, with a few
thousand positions overwritten by *edge values* so that bit-exactness means
something: values exactly on each format's rounding ties, their float32
neighbours one ulp either side, values past each format's overflow threshold,
and signed zeros / tiny values.  Every edge value is finite.  Each position
carries a group label so that mismatches can be attributed
(``bulk`` = untouched randn values).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import torch

from .formats import FixedFormat, MinifloatFormat


@dataclass
class BenchInput:
    x: torch.Tensor  # float32, contiguous, 1-D
    labels: np.ndarray  # int16 group index per element, 0 = bulk
    groups: list[str]  # groups[label] = group name
    sha256: str  # of the float32 bytes: the input is identical across runs

    @property
    def np(self) -> np.ndarray:
        return self.x.numpy()

    def group_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.groups))
        return {g: int(c) for g, c in zip(self.groups, counts)}


def _f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).astype(np.float32)


def _neighbours(v: np.ndarray) -> np.ndarray:
    """float32 values one ulp below and above each of ``v``."""
    v = _f32(v)
    return np.concatenate([np.nextafter(v, np.float32(-np.inf)), np.nextafter(v, np.float32(np.inf))])


def _signed(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return np.concatenate([v, -v])


def fixed_edges(fmt: FixedFormat) -> dict[str, np.ndarray]:
    """Ties ``(k + 1/2) * lsb`` from well below the saturation range to well above it."""
    lsb = 1.0 / fmt.scale
    k = np.arange(fmt.code_min - 16, fmt.code_max + 17, dtype=np.float64)
    ties = (k + 0.5) * lsb
    return {
        f"{fmt.key}:ties": _f32(ties),
        f"{fmt.key}:near-ties": _neighbours(ties),
    }


def minifloat_edges(fmt: MinifloatFormat) -> dict[str, np.ndarray]:
    """Midpoints of adjacent finite values (both signs, including 0 <-> min
    subnormal), their float32 neighbours, and values around / past overflow."""
    vals = fmt.finite_values()
    pos = vals[vals >= 0]
    mids = (pos[:-1] + pos[1:]) / 2  # exact in float64 and in float32 (<= man_bits+2 bits)
    ties = _signed(mids)
    top = fmt.max_finite
    # Spacing of the top binade: the midpoint between max and the next
    # (non-finite) code is the overflow threshold under round-to-nearest-even.
    ulp_top = 2.0 ** (np.floor(np.log2(top)) - fmt.man_bits)
    threshold = top + ulp_top / 2
    over = [threshold, np.nextafter(np.float32(threshold), np.float32(np.inf)), top + ulp_top,
            2 * top, 1e5, 1e6]
    return {
        f"{fmt.key}:ties": _f32(ties),
        f"{fmt.key}:near-ties": _neighbours(ties),
        f"{fmt.key}:overflow": _f32(_signed(over)),
    }


def misc_edges() -> dict[str, np.ndarray]:
    tiny = [1e-30, 1e-12, 1e-6, float(np.finfo(np.float32).smallest_subnormal)]
    return {"zeros/tiny": np.concatenate([_f32([0.0, -0.0]), _f32(_signed(tiny))])}


def make_input(n: int, seed: int, formats) -> BenchInput:
    """``torch.randn(n) * 3`` (seeded) with every format's edge values spread over it."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen, dtype=torch.float32) * 3

    groups: dict[str, np.ndarray] = {}
    for fmt in formats:
        groups.update(fixed_edges(fmt) if fmt.kind == "fixed" else minifloat_edges(fmt))
    groups.update(misc_edges())

    names = ["bulk", *groups]
    values = np.concatenate(list(groups.values()))
    labels_edge = np.concatenate(
        [np.full(len(v), i + 1, dtype=np.int16) for i, v in enumerate(groups.values())]
    )
    m = len(values)
    if m > n // 2:
        raise ValueError(f"n={n} is too small for {m} edge values")
    # Deterministic, evenly spread positions; a seeded shuffle mixes the groups.
    order = np.random.default_rng(seed).permutation(m)
    pos = np.arange(m, dtype=np.int64) * (n // m) + (n // m) // 2

    xn = x.numpy()  # shares memory with x
    xn[pos] = values[order]
    labels = np.zeros(n, dtype=np.int16)
    labels[pos] = labels_edge[order]

    sha = hashlib.sha256(xn.tobytes()).hexdigest()
    return BenchInput(x=x.contiguous(), labels=labels, groups=names, sha256=sha)


# --------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------


def reference_fixed(xn: np.ndarray, fmt: FixedFormat) -> np.ndarray:
    """Exact ap_fixed<W,I,AP_RND_CONV,AP_SAT>: scale by 2**F in float64 (exact
    for float32 input), round half to even (np.round), saturate the integer
    code, divide back.  float64 result; every value is a float32 too."""
    code = np.round(xn.astype(np.float64) * fmt.scale)
    np.clip(code, fmt.code_min, fmt.code_max, out=code)
    return code / fmt.scale


def reference_minifloat(xn: np.ndarray, fmt: MinifloatFormat) -> np.ndarray:
    """ml_dtypes' conversion (round to nearest even, its own overflow rule)."""
    return xn.astype(fmt.np_dtype).astype(np.float32)


# --------------------------------------------------------------------------
# Per-format classes of input values, to say where a contender differs
# --------------------------------------------------------------------------

FIXED_CLASSES = ["in-range", "zero", "tie", "near-tie", "saturating"]
MINIFLOAT_CLASSES = ["normal", "zero", "subnormal", "tie", "near-tie", "overflow"]


def _is_member(v: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    i = np.clip(np.searchsorted(sorted_set, v), 0, len(sorted_set) - 1)
    return sorted_set[i] == v


def classify(xn: np.ndarray, fmt) -> tuple[np.ndarray, list[str]]:
    """Class index per element relative to ``fmt`` (first match wins, in the
    order overflow/saturating, tie, near-tie (+-1 float32 ulp from a tie),
    zero, subnormal, normal/in-range)."""
    up = np.nextafter(xn, np.float32(np.inf))
    dn = np.nextafter(xn, np.float32(-np.inf))
    if fmt.kind == "fixed":
        names = FIXED_CLASSES

        def is_tie(v):
            s = v.astype(np.float64) * fmt.scale
            return (s - np.floor(s)) == 0.5

        s = xn.astype(np.float64) * fmt.scale
        code = np.round(s)
        out = (code < fmt.code_min) | (code > fmt.code_max)
        cls = np.zeros(xn.shape, dtype=np.int8)
        cls[xn == 0] = names.index("zero")
        cls[is_tie(up) | is_tie(dn)] = names.index("near-tie")
        cls[is_tie(xn)] = names.index("tie")
        cls[out] = names.index("saturating")
        return cls, names

    names = MINIFLOAT_CLASSES
    vals = fmt.finite_values()
    pos = vals[vals >= 0]
    mids = (pos[:-1] + pos[1:]) / 2
    mids = np.unique(np.concatenate([-mids, mids]).astype(np.float32))
    min_normal = float(ml_dtypes.finfo(fmt.np_dtype).smallest_normal)
    a = np.abs(xn)
    cls = np.zeros(xn.shape, dtype=np.int8)
    cls[(a > 0) & (a < min_normal)] = names.index("subnormal")
    cls[a == 0] = names.index("zero")
    cls[_is_member(up, mids) | _is_member(dn, mids)] = names.index("near-tie")
    cls[_is_member(xn, mids)] = names.index("tie")
    cls[a > fmt.max_finite] = names.index("overflow")
    return cls, names
