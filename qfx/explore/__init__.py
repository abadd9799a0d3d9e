"""``qfx explore SWEEP.yaml -o OUT``: design-space exploration of number formats.

For every point of a sweep (a set of formats for one model and data set) this trains the model
exactly as ``qfx train`` would, exports the manifest, measures the test accuracy with the
integer-only reference on the exported manifest (what the hardware computes), estimates the cost
analytically (:func:`qfx.cost.report.cost_report` with ``synth=False``: LUT/FF from the calibrated
linear model, DSP/BRAM from the structure, cycles, energy per inference from the per-operation
model) and checks the fit on a board. It writes a table and a Pareto plot of accuracy against
LUT, DSP and energy, so the trade-off between formats is visible in one place.

Sweep config (YAML)::

    base: digits_mlp_w8.yaml     # the run config every point starts from (model, data, train, quant):
                                 # a path relative to this file, or an inline mapping
    train: {epochs: 4}           # optional: train overrides applied to every point
    board: ultra96               # optional, default ultra96 (--board overrides)
    sweep:                       # optional: the compact generator form (rules below)
      activations: 8             # word length A of the activations of khot/minifloat/lmul points
      fixed: [8, 6, 4]           # -> points fixed8, fixed6, fixed4
      khot: [1, 2]               # -> khot1, khot2
      minifloat: [e4m3]          # -> mf_e4m3
      lmul: [e4m3]               # -> lmul_e4m3
    points:                      # optional: explicit points
      - name: w8_wide_logits     # [A-Za-z0-9_.-]+, unique in the sweep
        quant:                   # deep-merged over the base's quant; a null value removes a key
          layers: {fc2: {output: "ap_fixed<12,6,AP_RND,AP_SAT>"}}
        train: {lr: 0.002}       # optional per-point train overrides

Generator rules (why: one knob per point, everything else held at a sensible fixed-point
setting, so that rows differ in the format named and nothing else). A generated point takes its
``quant`` section from the rule, not from the base (only the base's ``fold_bn`` is kept); the base
still gives model, data and train. Accumulators are always ``auto`` (exact), biases are fixed
point of twice the activation width, every fixed-point binary point is learned.

``fixed: W``       :func:`qfx.demo.accuracy.word_length_config` ``(W)``: weights ``ap_fixed<W,1>``,
                   activations (layer inputs/outputs, BatchNorm scale/shift, residual adds) W bits
                   (``ap_ufixed`` where never negative), biases 2W bits.
``khot: k``        as ``fixed: A``, weights ``khot<k,ap_fixed<A,I>>`` with ``I`` per layer from the
                   float model's weights (:func:`qfx.demo.accuracy.khot_config`; K-hot has no
                   learnable binary point): shift-add products, no multipliers.
``minifloat: F``   as ``fixed: A``, weights in the minifloat ``F`` (any :func:`qfx.types.parse_type`
                   minifloat spelling, e.g. ``e4m3``, ``fp8_e5m2``), exact products.
``lmul: F``        as ``minifloat: F`` with ``multiply: lmul``: products by L-Mul (no multiplier).

Names: ``fixed<W>``, ``khot<k>``, ``mf_<F>``, ``lmul_<F>`` (characters outside ``[A-Za-z0-9_.-]``
of ``F`` become ``_``).

Everything is validated before anything trains: unknown keys (with close-name suggestions),
format spellings, train keys, board, and a conversion of the untrained model with each point's
quant (layer names). A bad sweep raises :class:`qfx.runs.ConfigError` naming the point and field
(``qfx`` exits 2). A point that fails while it runs (training, export, reference, cost) is
recorded as ``{"status": "failed", "stage", "reason"}`` and the sweep goes on; the exit status is
then 1.

Output folder ``OUT/``::

    explore.json   every point: formats, accuracy, lut, ff, dsp, bram36, energy_nj, cycles, fits,
                   status, pareto flags
    explore.md     the table, Pareto-optimal rows marked
    pareto.png     accuracy against LUT, DSP and energy (Pareto front per subplot)
    points/<name>-<key>/   point.json (what was hashed), run/ (config.yaml, final.pt, metrics.json:
                   :func:`qfx.runs.load_run` reads it), manifest/, result.json, error.txt on failure
    float/<key>/   the float pre-trained model, shared by every point with the same float settings

Cache: ``<key>`` is a content hash of the point's resolved run config (epochs and seed included),
its generator rule, the qfx version, the torch and NumPy versions and the source of the modules
that decide the result (training, conversion, export, reference, cost model, boards). A rerun
reuses every point whose ``result.json`` carries the same key; failed points are reused too
(same inputs, same failure) unless ``--retry-failed``. Changing ``--board`` only recomputes the
cost of cached points. Files in ``OUT`` that qfx did not write make the command refuse unless
``--force``; files qfx did not write are never deleted (:mod:`qfx.outdir`).

Modules: :mod:`.sweep` (loading and validating a sweep config), :mod:`.points` (cache keys and
running the points), :mod:`.report` (Pareto fronts, table, plot), :mod:`.cli` (the command).
"""

from __future__ import annotations

from .cli import add_explore_command, cmd_explore
from .points import run_sweep
from .report import pareto_mask, plot, to_markdown
from .sweep import GENERATOR_KEYS, POINT_KEYS, SWEEP_KEYS, Point, Sweep, load_sweep

__all__ = [
    "Point", "Sweep", "load_sweep", "run_sweep", "pareto_mask", "to_markdown", "plot",
    "add_explore_command", "cmd_explore", "SWEEP_KEYS", "POINT_KEYS", "GENERATOR_KEYS",
]
