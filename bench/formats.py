"""The formats the benchmark quantizes to, described once for every contender.

Each contender (baseline, qfx, peers) reads its parameters from here instead of
re-deriving them, so a row can only differ from the reference because of the
contender itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import torch


@dataclass(frozen=True)
class FixedFormat:
    """Signed ``ap_fixed<width, int_bits, AP_RND_CONV, AP_SAT>``."""

    key: str
    spelling: str  # what qfx.parse_type receives
    width: int
    int_bits: int  # includes the sign bit, as in ap_fixed

    kind = "fixed"

    @property
    def frac_bits(self) -> int:
        return self.width - self.int_bits

    @property
    def scale(self) -> float:
        """2**frac_bits: multiply to get the integer code."""
        return 2.0 ** self.frac_bits

    @property
    def code_min(self) -> int:
        return -(2 ** (self.width - 1))

    @property
    def code_max(self) -> int:
        return 2 ** (self.width - 1) - 1

    @property
    def lo(self) -> float:
        return self.code_min / self.scale

    @property
    def hi(self) -> float:
        return self.code_max / self.scale


@dataclass(frozen=True)
class MinifloatFormat:
    """An 8-bit OCP minifloat with a native torch dtype and an ml_dtypes oracle."""

    key: str
    spelling: str  # what qfx.parse_type receives
    exp_bits: int
    man_bits: int
    bias: int
    torch_dtype: torch.dtype
    np_dtype: type  # ml_dtypes scalar type: the reference conversion
    overflow: str  # what the reference gives past the largest finite value: "nan" | "inf"

    kind = "minifloat"

    @property
    def max_finite(self) -> float:
        return float(ml_dtypes.finfo(self.np_dtype).max)

    @property
    def min_subnormal(self) -> float:
        return float(ml_dtypes.finfo(self.np_dtype).smallest_subnormal)

    def finite_values(self) -> np.ndarray:
        """Every finite value of the format, sorted, -0 dropped (float64)."""
        codes = np.arange(256, dtype=np.uint8).view(self.np_dtype)
        vals = codes.astype(np.float64)
        vals = vals[np.isfinite(vals)]
        return np.unique(vals)  # +0 and -0 compare equal: one zero survives


AP_FIXED_8_3 = FixedFormat(
    key="A",
    spelling="ap_fixed<8,3,AP_RND_CONV,AP_SAT>",
    width=8,
    int_bits=3,
)

FP8_E4M3FN = MinifloatFormat(
    key="B",
    spelling="fp8_e4m3fn",
    exp_bits=4,
    man_bits=3,
    bias=7,
    torch_dtype=torch.float8_e4m3fn,
    np_dtype=ml_dtypes.float8_e4m3fn,
    overflow="nan",
)

FP8_E5M2 = MinifloatFormat(
    key="B2",
    spelling="fp8_e5m2",
    exp_bits=5,
    man_bits=2,
    bias=15,
    torch_dtype=torch.float8_e5m2,
    np_dtype=ml_dtypes.float8_e5m2,
    overflow="inf",
)

ALL_FORMATS = (AP_FIXED_8_3, FP8_E4M3FN, FP8_E5M2)
