"""K-hot where it pays (issue 13, item 2): fully unrolled K-hot layers as hard-wired shift-add
trees against the DSP design of the same model, and against a LUT-mapped 8x8 multiplier.

For the digits K-hot MLP (random weights of its structure, ``configs/digits_mlp_khot.yaml``) and
the chosen layers at full unroll (every weight its own product unit), this synthesizes with
Yosys ``synth_xilinx -family xcup`` (per engine, cached):

* the K-hot engine: hard-wired constant products (hw/accel/khot_wired.py);
* its DSP twin: the same layer, weights as the K-hot base's fixed-point format (same codes,
  same folding), products in DSP48E2 multipliers;
* a lone 8 x 8 signed multiplier with ``-nodsp`` (the LUT-mapped multiplier a K-hot MAC must
  beat: the issue's ~80 LUT);

and prints LUT / FF / DSP, LUT per MAC, the analytic estimate beside each Yosys count, the
product energy per MAC (qfx.cost.energy) and the ratios.

    PYTHONPATH=$PWD .venv/bin/python bench/khot_unroll.py [--layers fc2] [--config digits_mlp_khot.yaml]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accel_throughput import _demo_manifest  # noqa: E402


def lut_multiplier_8x8() -> dict:
    from amaranth.back import verilog
    from amaranth.hdl import Module, signed
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    from hw.synth import synth_xilinx

    class Mul(wiring.Component):
        def __init__(self):
            super().__init__({"a": In(signed(8)), "b": In(signed(8)), "p": Out(signed(16))})

        def elaborate(self, platform):
            m = Module()
            m.d.comb += self.p.eq(self.a * self.b)
            return m

    r = synth_xilinx(verilog.convert(Mul(), name="mul8x8"), "mul8x8", extra="-nodsp")
    return r.summary() if hasattr(r, "summary") else dict(r)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="digits_mlp_khot.yaml")
    ap.add_argument("--layers", default="fc2", help="comma-separated layers to unroll fully (default fc2)")
    a = ap.parse_args(argv)

    from qfx.cost.energy import hardwired_product_pj, mac_op_energy
    from qfx.cost.khot import dsp_twin
    from qfx.cost.estimate import estimate
    from qfx.cost.synthesis import synth_accelerator
    from qfx.hw.accel.folding import Folding, folded_resources, mac_dims
    from qfx.hw.accel.khot_wired import hardwired, hardwired_cost

    t0 = time.time()
    man = _demo_manifest(a.config, Path(tempfile.mkdtemp()))
    dsp_man = dsp_twin(man)
    names = [s.strip() for s in a.layers.split(",") if s.strip()]
    fold = {}
    for name in names:
        o, _p, k = mac_dims(man.node(name))
        fold[name] = Folding(o, k)
        assert hardwired(man.node(name), fold[name])
    rows = []
    for label, m in (("K-hot hard-wired", man), ("DSP twin", dsp_man)):
        syn = synth_accelerator(m, folding=fold, whole=False)["engines"]
        base = estimate(m)["per_layer"]
        for name in names:
            node = m.node(name)
            s = syn[name].summary()
            est = folded_resources(m, node, fold[name], base[name])
            macs = fold[name].pe * fold[name].simd
            x, w = node.formats["input"], node.formats["weight"]
            if label.startswith("K-hot"):
                e = hardwired_product_pj(node)
            else:
                p = x * w
                e = mac_op_energy(x, w, "exact", p, (node.formats["accum"] + p).width, dsp=True)["product_pj"]
            rows.append((label, name, macs, s, est, e))
    mul = lut_multiplier_8x8()
    print(f"{a.config}, full unroll of {', '.join(names)} (random weights of the structure); "
          f"Yosys synth_xilinx -family xcup per engine ({time.time() - t0:.0f} s)")
    print(f"{'design':18s} {'layer':5s} {'MACs':>5s} {'LUT':>7s} {'(est)':>7s} {'FF':>6s} {'(est)':>6s} "
          f"{'DSP':>4s} {'LUT/MAC':>8s} {'pJ/MAC product':>15s}")
    for label, name, macs, s, est, e in rows:
        print(f"{label:18s} {name:5s} {macs:5d} {s['lut']:7.0f} {est['lut']:7.0f} {s['ff']:6.0f} {est['ff']:6.0f} "
              f"{s['dsp']:4.0f} {s['lut'] / macs:8.2f} {e:15.3f}")
    print(f"LUT-mapped 8x8 signed multiplier (-nodsp): {mul['lut']:.0f} LUT")
    for name in names:
        k = next(r for r in rows if r[0].startswith("K-hot") and r[1] == name)
        d = next(r for r in rows if r[0] == "DSP twin" and r[1] == name)
        c = hardwired_cost(man.node(name))
        print(f"{name}: DSPs saved {d[3]['dsp'] - k[3]['dsp']:.0f}; LUT per MAC {k[3]['lut'] / k[2]:.2f} "
              f"(K-hot) vs {d[3]['lut'] / d[2]:.2f} (DSP twin, plus {d[3]['dsp'] / d[2]:.2f} DSP) vs "
              f"{mul['lut']:.0f} (LUT multiplier): {mul['lut'] / (k[3]['lut'] / k[2]):.1f}x fewer; "
              f"product energy {k[5]:.3f} vs {d[5]:.3f} pJ ({d[5] / k[5]:.1f}x); weights {c['weights']:.0f}, "
              f"zero {c['zero_weights']:.0f}, mean nonzero digits {c['mean_nnz']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
