"""RTL-verified inferences per second: harness-driven cocotb/Verilator vs a naive per-cycle cocotb loop.

``python bench/sim_throughput.py [MANIFEST ...] [--vectors N] [--naive-vectors M]``

For each manifest (default: the demo manifests out/demo/{mlp_khot,cnn_w8}/manifest, made by
``make demo``), generates the RTL with qfx-gen into a temporary folder, then simulates the same
accelerator build (one Verilator model, cached) three ways:

- fast: the harness streams the vectors from a file (no Python per beat or cycle),
- stream: batched cocotb driver/monitor (one await per accepted beat, none per compute cycle),
- naive: one ``await RisingEdge`` + ``await ReadOnly`` per clock cycle, one vector at a time,

checks every run's outputs against the integer reference, and prints inferences/s, MAC/s,
the fast/naive ratio and the reference's own rate for scale. Rates count the simulator
process's test time (from reset released to the last output), not the build or process start.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def macs(man) -> int:
    total = 0
    for n in man:
        if n.op in ("dense", "conv2d"):
            w = n.arrays["weight"] if "weight" in n.arrays else None
            per_out = int(np.prod(w.shape[1:])) if w is not None else 0
            total += per_out * int(np.prod(n.output_shape))
    return total


def main(argv=None) -> int:
    from qfx.gen import generate
    from qfx.manifest import load
    from qfx.reference import run
    from qfx.sim.accel import input_code_range, load_design, simulate
    from qfx.sim.check import corner_and_random_codes

    root = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("manifests", nargs="*", default=[str(root / "out/demo/mlp_khot/manifest"),
                                                     str(root / "out/demo/cnn_w8/manifest")])
    p.add_argument("--vectors", type=int, default=1000)
    p.add_argument("--stream-vectors", type=int, default=100)
    p.add_argument("--naive-vectors", type=int, default=5)
    args = p.parse_args(argv)
    for mp in args.manifests:
        if not Path(mp).exists():
            print(f"skip {mp}: not found (run `make demo` first)")
            continue
        man = load(mp)
        with tempfile.TemporaryDirectory(prefix="qfx-bench-sim-") as tmp:
            generate(mp, Path(tmp) / "out", targets=("rtl",))
            d = load_design(Path(tmp) / "out")
            lo, hi = input_code_range(d)
            n = args.vectors
            codes = corner_and_random_codes(lo, hi, n, d.n_in, 0)
            fr = man.input_node.formats["output"].frac_bits
            xf = (codes * 2.0 ** -fr).reshape((n,) + tuple(man.input_node.output_shape))
            t0 = time.perf_counter()
            want = run(man, xf)[man.output].reshape(n, -1)
            t_ref = time.perf_counter() - t0
            t0 = time.perf_counter()
            simulate(d, codes[:1])  # build (or cache hit) outside the timed runs
            t_build = time.perf_counter() - t0
            res = {}
            for mode, m in (("fast (harness-driven file streaming)", n), ("stream (batched cocotb driver)",
                            min(n, args.stream_vectors)), ("naive (per-cycle cocotb loop)", min(n, args.naive_vectors))):
                key = mode.split()[0]
                r = simulate(d, codes[:m], mode={"fast": "file"}.get(key, key))
                assert np.array_equal(r.outputs, want[:m]), f"{mp} {mode}: RTL differs from the reference"
                res[key] = (m, r.sim_seconds, r.cycles)
            mac = macs(man)
            print(f"\n{man.model} ({mp}): {d.n_in} in, {d.n_out} out, {d.latency} cycles/inference, "
                  f"{mac} MAC/inference; build/cache {t_build:.1f} s")
            for mode, (m, s, cyc) in res.items():
                print(f"  {mode:7s} {m:5d} vectors  {s:8.2f} s  {m / s:10.1f} inferences/s  {m * mac / s:12.3e} MAC/s  "
                      f"{cyc / s:10.3e} cycles/s  (all bit-exact)")
            fast, naive = res["fast"][0] / res["fast"][1], res["naive"][0] / res["naive"][1]
            stream = res["stream"][0] / res["stream"][1]
            print(f"  ratio fast/naive {fast / naive:.1f}x, stream/naive {stream / naive:.1f}x")
            print(f"  integer reference (NumPy, for scale): {n / t_ref:.1f} inferences/s ({n} vectors in {t_ref:.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
