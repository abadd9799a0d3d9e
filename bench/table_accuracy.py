"""Max error of each qfx.tables function against float64 math over its table range, every input code.

Run: python bench/table_accuracy.py  (prints Markdown tables; the last: softmax, :func:`softmax_accuracy`). Defaults: 1024 entries over [-8, 8)
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


def softmax_accuracy(n_vectors: int = 100_000, seed: int = 0) -> None:
    """qfx.nn.QSoftmax (exp table of max - x, exact sum, exact reciprocal, product cast) against float64
    softmax of the same (quantized) inputs: max abs error over random vectors of input codes drawn
    uniformly from the input format's whole range, plus all-equal and one-hot-extreme vectors."""
    import torch

    from qfx.nn import QSoftmax
    from qfx.tables import SOFTMAX_EXP_DEFAULT, SOFTMAX_RECIPROCAL_DEFAULT

    print("| input | table (entries, d range) | exp | reciprocal | output | F | max abs error | output lsb |")
    print("|---|---|---|---|---|---|---|---|")
    rows = [
        ("ap_fixed<8,3,AP_RND,AP_SAT>", None, None, "ap_ufixed<16,0,AP_RND,AP_SAT>"),
        ("ap_fixed<8,3,AP_RND,AP_SAT>", None, None, "ap_ufixed<8,0,AP_RND,AP_SAT>"),
        ("ap_fixed<16,4,AP_RND,AP_SAT>", 1024, [0, 8], "ap_ufixed<16,0,AP_RND,AP_SAT>"),
    ]
    g = np.random.default_rng(seed)
    for xi_s, size, rng, out_s in rows:
        kw = {k: v for k, v in (("table_size", size), ("table_range", rng)) if v is not None}
        sm = QSoftmax(1, input=xi_s, output=out_s, **kw)
        xi = parse_type(xi_s)
        for n in (5, 10):
            codes = g.integers(xi.min_code, xi.max_code + 1, size=(n_vectors, n))
            extra = [np.full(n, xi.min_code), np.full(n, xi.max_code), np.r_[xi.max_code, np.full(n - 1, xi.min_code)]]
            codes = np.concatenate([codes, np.stack(extra)])
            x = torch.tensor(codes * xi.lsb, dtype=torch.float64)
            with torch.no_grad():
                y = sm(x).double().numpy()
            ref = torch.softmax(x, dim=1).numpy()
            err = np.abs(y - ref).max()
            d = sm.spec
            span = (d.size << d.shift) * xi.lsb
            print(f"| {xi_s} | {d.size}, [0, {span:g}) | {SOFTMAX_EXP_DEFAULT} | {SOFTMAX_RECIPROCAL_DEFAULT} | {out_s} | "
                  f"{n} | {err:.3e} | {parse_type(out_s).lsb:.3e} |")


if __name__ == "__main__":
    main()
    print()
    conversion_defaults()
    print()
    softmax_accuracy()
