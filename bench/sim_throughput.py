"""RTL-verified inferences per second: the native and cocotb harness-driven runs vs a naive per-cycle cocotb loop.

``python bench/sim_throughput.py [MANIFEST ...] [--vectors N] [--file-vectors F] [--stream-vectors S]
[--naive-vectors M] [--json PATH]``

For each manifest (default: the demo manifests out/demo/{mlp_khot,cnn_w8}/manifest, made by
``make demo``), generates the RTL with qfx-gen into a temporary folder, then simulates the same
accelerator build (one Verilator model, cached) four ways:

- native: the harness streams the vectors from a file, a C++ driver toggles the clock (no Python,
  no VPI scheduler in the simulator process; the default of ``qfx sim``),
- file: the same harness streaming under cocotb (clock generated in the harness, one await),
- stream: batched cocotb driver/monitor (one await per accepted beat, none per compute cycle),
- naive: one ``await RisingEdge`` + ``await ReadOnly`` per clock cycle, one vector at a time,

checks every run's outputs against the integer reference, prints inferences/s, MAC/s, cycles/s,
the ratios to the naive loop and the reference's own rate for scale, and writes everything to
bench/results/sim_throughput.json. Rates count the simulation time inside the simulator process
(cocotb modes: the test from reset released to the last output; native: the whole driver
process, start-up included), not the build; ``wall_s`` adds the process start (Python and
cocotb start-up in the cocotb modes).
"""

from __future__ import annotations

import argparse
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


MODES = (("native", "native (C++ clock, harness file streaming)"),
         ("file", "file (cocotb, harness file streaming)"),
         ("stream", "stream (batched cocotb driver)"),
         ("naive", "naive (per-cycle cocotb loop)"))


def environment() -> dict:
    import os
    import platform

    import cocotb

    from qfx.sim.verilator import find_verilator

    return {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "numpy": np.__version__, "cocotb": cocotb.__version__, "verilator": find_verilator().version,
            "loadavg_1min": os.getloadavg()[0]}


def bench_design(mp: str, args: argparse.Namespace) -> dict:
    from qfx.gen import generate
    from qfx.manifest import load
    from qfx.reference import run
    from qfx.sim.accel import input_code_range, load_design, simulate
    from qfx.sim.check import corner_and_random_codes

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
        simulate(d, codes[:1])  # build (or cache hit) and native link outside the timed runs
        t_build = time.perf_counter() - t0
        mac = macs(man)
        counts = {"native": n, "file": min(n, args.file_vectors), "stream": min(n, args.stream_vectors),
                  "naive": min(n, args.naive_vectors)}
        modes = {}
        for key, label in MODES:
            m = counts[key]
            r = simulate(d, codes[:m], mode=key)
            exact = bool(np.array_equal(r.outputs, want[:m]))
            assert exact, f"{mp} {label}: RTL differs from the reference"
            modes[key] = {"label": label, "vectors": m, "sim_s": round(r.sim_seconds, 4),
                          "wall_s": round(r.wall_seconds, 4), "cycles": r.cycles,
                          "inferences_per_s": round(m / r.sim_seconds, 3),
                          "macs_per_s": float(f"{m * mac / r.sim_seconds:.4g}"),
                          "cycles_per_s": float(f"{r.cycles / r.sim_seconds:.4g}"), "bit_exact": exact}
    rate = {k: v["inferences_per_s"] for k, v in modes.items()}
    return {"manifest": str(mp), "model": man.model, "n_in": d.n_in, "n_out": d.n_out,
            "latency_cycles": d.latency, "macs_per_inference": mac, "build_or_cache_s": round(t_build, 2),
            "modes": modes,
            "ratios": {"native/naive": round(rate["native"] / rate["naive"], 2),
                       "file/naive": round(rate["file"] / rate["naive"], 2),
                       "stream/naive": round(rate["stream"] / rate["naive"], 2),
                       "native/file": round(rate["native"] / rate["file"], 2)},
            "reference": {"vectors": n, "seconds": round(t_ref, 4), "inferences_per_s": round(n / t_ref, 1)}}


def main(argv=None) -> int:
    import json

    root = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("manifests", nargs="*", default=[str(root / "out/demo/mlp_khot/manifest"),
                                                     str(root / "out/demo/cnn_w8/manifest")])
    p.add_argument("--vectors", type=int, default=1000, help="vectors of the native run and the reference")
    p.add_argument("--file-vectors", type=int, default=200, help="vectors of the cocotb file-streaming run")
    p.add_argument("--stream-vectors", type=int, default=20)
    p.add_argument("--naive-vectors", type=int, default=5)
    p.add_argument("--json", type=Path, default=root / "bench" / "results" / "sim_throughput.json",
                   help="where to write the results")
    args = p.parse_args(argv)
    env = environment()
    designs = []
    for mp in args.manifests:
        if not Path(mp).exists():
            print(f"skip {mp}: not found (run `make demo` first)")
            continue
        res = bench_design(mp, args)
        designs.append(res)
        print(f"\n{res['model']} ({mp}): {res['n_in']} in, {res['n_out']} out, {res['latency_cycles']} "
              f"cycles/inference, {res['macs_per_inference']} MAC/inference; "
              f"build/cache {res['build_or_cache_s']:.1f} s")
        for key, r in res["modes"].items():
            print(f"  {key:7s} {r['vectors']:5d} vectors  {r['sim_s']:8.2f} s  {r['inferences_per_s']:10.1f} "
                  f"inferences/s  {r['macs_per_s']:12.3e} MAC/s  {r['cycles_per_s']:10.3e} cycles/s  (all bit-exact)")
        print("  ratios: " + ", ".join(f"{k} {v:.1f}x" for k, v in res["ratios"].items()))
        ref = res["reference"]
        print(f"  integer reference (NumPy, for scale): {ref['inferences_per_s']:.1f} inferences/s "
              f"({ref['vectors']} vectors in {ref['seconds']:.3f} s)")
    env["loadavg_1min_end"] = __import__("os").getloadavg()[0]
    doc = {"benchmark": "sim_throughput",
           "config": {"vectors": args.vectors, "file_vectors": args.file_vectors,
                      "stream_vectors": args.stream_vectors, "naive_vectors": args.naive_vectors,
                      "inputs": "qfx.sim.check.corner_and_random_codes(seed 0): 6 corner vectors, then random codes",
                      "rate": "vectors / sim_s; every run's outputs equal the integer reference"},
           "environment": env, "designs": designs}
    if designs:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
