"""Per-engine Yosys synth_xilinx (xcup) of a demo model at its automatic folding: DSP48E2 count and Fmax estimate per engine (issue 13 items 1 and 5). Slow: one Yosys run per engine (cached).

    PYTHONPATH=$PWD .venv/bin/python bench/accel_dsp_fmax.py [digits_cnn_w8.yaml] [--whole]
"""
import sys, json, tempfile, time
from pathlib import Path
sys.path.insert(0, '.')
from bench.accel_throughput import _demo_manifest
from qfx.boards import get_board
from qfx.hw.accel.folding import plan, folded_estimate
from qfx.cost.synthesis import synth_accelerator
from qfx.cost.timing import fmax_mhz
cfg = sys.argv[1] if len(sys.argv) > 1 else "digits_cnn_w8.yaml"
whole = "--whole" in sys.argv
t = Path(tempfile.mkdtemp())
m = _demo_manifest(cfg, t)
b = get_board("ultra96")
p = plan(m, b)
print("foldings", {k: v.as_dict() for k, v in p.foldings.items()}, "ii", p.ii, "est", p.resources, flush=True)
t0 = time.time()
r = synth_accelerator(m, folding=p.foldings, whole=whole)
tot = 0
for name, ms in r["engines"].items():
    s = ms.summary(); tot += s["dsp"]
    print(f"{name:12s} dsp {s['dsp']:4g} lut {s['lut']:6g} ff {s['ff']:6g} fmax {fmax_mhz(ms.paths):6.1f} {ms.paths}", flush=True)
print("engine dsp total", tot, "time", round(time.time() - t0))
if whole:
    s = r["whole"].summary(); print("whole", s, fmax_mhz(r["whole"].paths), r["whole"].paths)
