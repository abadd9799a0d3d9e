"""A quick resource estimate of the accelerator from the manifest alone (no synthesis).

DSP48E2 and block RAM follow from the structure and are counted here; LUT and flip-flop
counts depend on how synthesis maps the control and cast logic and are left to Yosys
(:func:`qfx.hw.synth.synth_xilinx`; ``qfx-gen --synth``). The rules:

* one multiplier per dense / conv2d engine (fixed-point or exact minifloat weights: the
  significand times the activation) and per BatchNorm engine (``x * scale``), and one
  for an average pool with a reciprocal; K-hot (shifts and adds) and L-Mul (one integer
  add) need none. A multiplier takes ``ceil(a / 27) * ceil(b / 18)`` DSP48E2 for signed
  operand widths ``a >= b`` (one DSP up to 27 x 18);
* an on-chip memory deeper than 64 words goes to block RAM: ``ceil(bits / 18 Kb)`` RAMB18
  (two per BRAM36 tile); shallower ones become LUT RAM.
"""

from __future__ import annotations

import math
from typing import Any

from qfx.manifest import Manifest, Node, weight_envelope
from qfx.types import KHot, MinifloatType

from ..pe.mac import dsp_operand_bits

__all__ = ["estimate_resources", "multiplier_dsps"]

_LUTRAM_MAX_DEPTH = 64
_RAMB18_BITS = 18 * 1024


def multiplier_dsps(a_bits: int, b_bits: int) -> int:
    """DSP48E2 slices for a signed ``a_bits`` x ``b_bits`` multiplier (27 x 18 each)."""
    a, b = sorted((a_bits, b_bits), reverse=True)
    if b <= 1:
        return 0
    return math.ceil(a / 27) * math.ceil(b / 18)


def _ramb18(depth: int, width: int) -> int:
    if depth <= _LUTRAM_MAX_DEPTH:
        return 0
    return math.ceil(depth * width / _RAMB18_BITS)


def _mac_dsps(node: Node) -> int:
    f = node.formats
    if node.params["multiply"] == "lmul":
        return 0
    w = weight_envelope(f["weight"])
    if isinstance(w, KHot):
        return 0
    x_bits = dsp_operand_bits(f["input"])
    if isinstance(w, MinifloatType):
        return multiplier_dsps(x_bits, w.mantissa_bits + 2)
    return multiplier_dsps(x_bits, dsp_operand_bits(w))


def _word_bits(fmt: Any) -> int:
    if isinstance(fmt, tuple):
        fmt = weight_envelope(fmt)
    if isinstance(fmt, KHot):
        return fmt.k * (fmt.base.width.bit_length() + 2)
    if isinstance(fmt, MinifloatType):
        return fmt.bits
    return fmt.width


def estimate_resources(manifest: Manifest) -> dict[str, Any]:
    """``{"dsp", "bram36", "lut", "ff", "memory_bits", "basis", "per_layer"}`` for the dataflow accelerator.

    ``lut`` and ``ff`` are 0 here (see the module docstring): this estimate checks DSP and
    block RAM against a board; run synthesis for the fabric logic.
    """
    per: dict[str, dict[str, float]] = {}
    for node in manifest:
        f = node.formats
        dsp, ramb18, bits = 0, 0, 0
        n_in = math.prod(node.input_shapes[0]) if node.input_shapes else 0
        if node.op in ("dense", "conv2d"):
            dsp = _mac_dsps(node)
            n_w = math.prod(node.arrays["weight"].shape) if "weight" in node.arrays else 0
            if isinstance(f["weight"], KHot):
                n_w = math.prod(node.arrays["weight_khot_shifts"].shape[:-1])
            wb = _word_bits(f["weight"])
            ramb18 = _ramb18(n_in, f["input"].width) + _ramb18(n_w, wb)
            bits = n_in * f["input"].width + n_w * wb
        elif node.op == "batchnorm":
            dsp = multiplier_dsps(dsp_operand_bits(f["input"]), dsp_operand_bits(f["scale"]))
        elif node.op in ("maxpool2d", "avgpool2d"):
            ramb18 = _ramb18(n_in, f["input"].width)
            bits = n_in * f["input"].width
            if "reciprocal" in f:
                kh, kw = node.params["kernel"]
                dsp = multiplier_dsps(dsp_operand_bits(f["input"].accumulator(kh * kw)),
                                      dsp_operand_bits(f["reciprocal"]))
        elif node.op == "add":
            n = math.prod(node.output_shape)
            ramb18 = _ramb18(n, f["in_a"].width) + _ramb18(n, f["in_b"].width)
            bits = n * (f["in_a"].width + f["in_b"].width)
        if dsp or ramb18 or bits:
            per[node.name] = {"dsp": dsp, "bram36": ramb18 / 2, "memory_bits": bits}
    return {
        "dsp": sum(int(v["dsp"]) for v in per.values()),
        "bram36": sum(v["bram36"] for v in per.values()),
        "lut": 0,
        "ff": 0,
        "memory_bits": sum(int(v["memory_bits"]) for v in per.values()),
        "basis": "analytic (DSP, BRAM); LUT/FF need synthesis (qfx-gen --synth)",
        "per_layer": per,
    }

