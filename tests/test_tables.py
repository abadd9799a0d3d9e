"""qfx.tables: the one definition of the nonlinear-function lookup tables (exhaustive on small formats)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qfx.intops import cast_codes
from qfx.tables import FUNCTIONS, TableError, contents, index, lookup, plan
from qfx.types import parse_type

FLOAT = {
    "sigmoid": lambda x: 1 / (1 + math.exp(-x)),
    "tanh": math.tanh,
    "hardsigmoid": lambda x: min(max(x / 6 + 0.5, 0.0), 1.0),
    "hardswish": lambda x: x * min(max(x / 6 + 0.5, 0.0), 1.0),
    "silu": lambda x: x / (1 + math.exp(-x)),
    "gelu": lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2))),
    "exp_neg": lambda x: math.exp(-x),
}


@pytest.mark.parametrize("fn", sorted(FLOAT))
def test_direct_table_is_the_cast_of_the_function_on_every_code(fn):
    """shift 0: entry = cast(f(code)) for every input code; outside codes saturate to the ends.
    Oracle: float64 math rounded by cast_codes on a 40-bit-finer grid (no ties occur at these points)."""
    xi = parse_type("ap_ufixed<7,3>" if fn == "exp_neg" else "ap_fixed<7,3>")
    out = parse_type("ap_fixed<10,2,AP_RND_CONV,AP_SAT>")
    spec = plan(fn, xi)
    assert spec.shift == 0 and spec.size == 128
    t = contents(spec, xi, out)
    codes = np.arange(xi.min_code, xi.max_code + 1)
    f = FLOAT[fn]
    want = [int(cast_codes(np.array([round(f(c * xi.lsb) * 2**40)], dtype=object), 40, out)[0])
            for c in codes]
    assert lookup(codes, spec, t).tolist() == want


def test_shifted_table_bins_midpoints_and_saturation():
    xi = parse_type("ap_fixed<10,4>")  # lsb 1/64, codes -512..511
    out = parse_type("ap_fixed<12,2,AP_RND,AP_SAT>")
    spec = plan("tanh", xi, 64, [-4, 4])
    assert (spec.size, spec.shift, spec.lo_code, spec.hi_code) == (64, 3, -256, 255)
    codes = np.arange(xi.min_code, xi.max_code + 1)
    idx = index(codes, spec)
    assert idx.min() == 0 and idx.max() == 63
    assert (idx[codes < -256] == 0).all() and (idx[codes > 255] == 63).all()
    assert idx[codes == -256 + 8][0] == 1 and idx[codes == -256 + 7][0] == 0
    t = contents(spec, xi, out)
    for i in (0, 17, 63):
        mid = (-256 + i * 8 + 3.5) / 64
        assert t[i] == int(cast_codes(np.array([round(math.tanh(mid) * 2**40)], dtype=object), 40, out)[0])


def test_exact_ties_follow_the_output_rounding_mode():
    """hardsigmoid(0) = 0.5 exactly: a tie on a 0-frac-bit output; AP_RND_CONV -> 0, AP_RND -> 1."""
    xi = parse_type("ap_fixed<4,4>")
    spec = plan("hardsigmoid", xi)
    zero = [0 - spec.lo_code]
    assert contents(spec, xi, parse_type("ap_ufixed<2,2,AP_RND_CONV,AP_SAT>"))[zero][0] == 0
    assert contents(spec, xi, parse_type("ap_ufixed<2,2,AP_RND,AP_SAT>"))[zero][0] == 1
    rec = plan("reciprocal", parse_type("ap_ufixed<6,3>"))
    t = contents(rec, parse_type("ap_ufixed<6,3>"), parse_type("ap_ufixed<8,1,AP_RND,AP_SAT>"))
    assert t[0] == 255 and t[8] == 128  # 1/0 saturates; 1/1.0 = 1.0


def test_bad_configs_name_the_problem():
    xi = parse_type("ap_fixed<8,3>")
    with pytest.raises(TableError, match="not inside the range"):
        plan("sigmoid", xi, 256, 8)
    with pytest.raises(TableError, match="power of two"):
        plan("sigmoid", xi, 256, [-3, 3])
    with pytest.raises(TableError, match="grid"):
        plan("sigmoid", xi, 256, [-1 / 128, 1])
    with pytest.raises(TableError, match="table_size"):
        plan("sigmoid", xi, 100)
    with pytest.raises(TableError, match="unknown table function"):
        plan("softplus", xi)
    assert set(FUNCTIONS) >= set(FLOAT)
