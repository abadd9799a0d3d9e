"""Max error of each qfx.tables function against float64 math over its table range, every input code.

Run: python bench/table_accuracy.py  (prints a Markdown table). Defaults: 1024 entries over [-8, 8)
on an ap_fixed<16,4> input (exp_neg: [0, 8) on ap_ufixed<16,3>), output ap_fixed<16,4,AP_RND,AP_SAT>.
"""

from __future__ import annotations

import math

import numpy as np

from qfx.tables import contents, lookup, plan
from qfx.types import parse_type

F = {
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "tanh": np.tanh,
    "hardsigmoid": lambda x: np.clip(x / 6 + 0.5, 0, 1),
    "hardswish": lambda x: x * np.clip(x / 6 + 0.5, 0, 1),
    "silu": lambda x: x / (1 + np.exp(-x)),
    "gelu": lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
    "exp_neg": lambda x: np.exp(-x),
}


def conversion_defaults() -> None:
    """The table a qfx.nn table layer builds from qfx.convert's DEFAULT_CONFIG (input and output
    ap_fixed<8,3,AP_RND,AP_SAT>, the input's whole range [-4, 4), table_size 1024 -> 256 entries, one
    per input code): max error against float64 over every input code."""
    xi = out = parse_type("ap_fixed<8,3,AP_RND,AP_SAT>")
    print("| function | input = output | range | entries | max abs error | output lsb |")
    print("|---|---|---|---|---|---|")
    for name, f in F.items():
        if name == "exp_neg":
            continue
        spec = plan(name, xi)
        t = contents(spec, xi, out)
        codes = np.arange(spec.lo_code, spec.hi_code + 1)
        err = np.abs(lookup(codes, spec, t) * out.lsb - f(codes * xi.lsb)).max()
        print(f"| {name} | {xi} | [{xi.min}, {xi.max + xi.lsb}) | {spec.size} | {err:.3e} | {out.lsb:.3e} |")


def main() -> None:
    out = parse_type("ap_fixed<16,4,AP_RND,AP_SAT>")
    print("| function | input | range | entries | max abs error | output lsb |")
    print("|---|---|---|---|---|---|")
    for name, f in F.items():
        xi = parse_type("ap_ufixed<16,3>" if name == "exp_neg" else "ap_fixed<16,4>")
        rng = [0, 8] if name == "exp_neg" else [-8, 8]
        spec = plan(name, xi, 1024, rng)
        t = contents(spec, xi, out)
        codes = np.arange(spec.lo_code, spec.hi_code + 1)
        y = lookup(codes, spec, t) * out.lsb
        err = np.abs(y - f(codes * xi.lsb)).max()
        print(f"| {name} | {xi} | [{rng[0]}, {rng[1]}) | {spec.size} | {err:.3e} | {out.lsb:.3e} |")


if __name__ == "__main__":
    main()
    print()
    conversion_defaults()
