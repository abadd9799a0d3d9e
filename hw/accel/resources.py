"""A quick resource estimate of the accelerator from the manifest alone (no synthesis).

DSP48E2 and block RAM follow from the structure and are counted here; LUT and flip-flop
counts depend on how synthesis maps the control and cast logic and are left to Yosys
(:func:`qfx.hw.synth.synth_xilinx`; ``qfx-gen --synth``). The rules:

* one multiplier per dense / conv2d engine (fixed-point or exact minifloat weights: the
  significand times the activation) and per BatchNorm engine (``x * scale``), and one
  for an average pool with a reciprocal; K-hot (shifts and adds) and L-Mul (one integer
  add) need none. A multiplier takes ``ceil(a / 27) * ceil(b / 18)`` DSP48E2 for signed
  operand widths ``a >= b`` (one DSP up to 27 x 18);
* every buffered engine's input memory holds its slots (2: double buffering, more for the early
  operand of a join: :func:`buffer_slots`) times the tensor;
* an on-chip memory goes to block RAM, ``ceil(bits / 18 Kb)`` RAMB18 (two per BRAM36 tile),
  when it is deeper than 64 words and holds at least 4 Kb (a RAM, written at run time) or more
  than 8 Kb (a ROM, counting only the bit columns its contents do not hold constant:
  :func:`rom_width`); otherwise it becomes LUT RAM or LUT logic (:func:`memory_map`). The
  thresholds are Yosys 0.70 ``synth_xilinx -family xcup``'s choices, measured on RAMs and ROMs
  of 64..2048 words x 4..64 bits; with them this estimate equals Yosys' block RAM count on every
  design of the cost model's calibration set (``bench/cost_calibration.py``).
"""

from __future__ import annotations

import math
from typing import Any

from qfx.manifest import Manifest, Node, weight_envelope
from qfx.types import KHot, MinifloatType, MXType

from ..pe.mac import dsp_operand_bits
from .weights import plan_weights

__all__ = ["estimate_resources", "memory_map", "multiplier_dsps", "rom_width", "buffer_slots"]

_LUTRAM_MAX_DEPTH = 64
_RAMB18_BITS = 18 * 1024
_RAM_BRAM_MIN_BITS = 4096  # a RAM of at least this many bits (and > 64 words) goes to block RAM
_ROM_BRAM_MIN_BITS = 8193  # a ROM needs more than 8 Kb


def memory_map(kind: str, depth: int, width: int) -> dict[str, float]:
    """Where synthesis puts a ``depth`` x ``width`` memory: ``{"ramb18", "rom_luts", "lutram_luts"}``.

    ``kind`` is ``"ram"`` (written at run time: LUT RAM when small) or ``"rom"`` (constant: LUT
    logic when small). The LUT figures are first-order sizes (one LUT6 per bit per 64 words of
    ROM; RAM64M8 cells of 7 bits x 64 words, 8 LUTs each) that the calibrated estimator scales.
    """
    if kind not in ("ram", "rom"):
        raise ValueError(f"memory kind {kind!r} is not 'ram' or 'rom'")
    bits = depth * width
    threshold = _RAM_BRAM_MIN_BITS if kind == "ram" else _ROM_BRAM_MIN_BITS
    if depth > _LUTRAM_MAX_DEPTH and bits >= threshold:
        return {"ramb18": float(math.ceil(bits / _RAMB18_BITS)), "rom_luts": 0.0, "lutram_luts": 0.0}
    blocks = math.ceil(depth / 64)
    if kind == "rom":
        return {"ramb18": 0.0, "rom_luts": float(width * blocks), "lutram_luts": 0.0}
    return {"ramb18": 0.0, "rom_luts": 0.0, "lutram_luts": float(8 * math.ceil(width / 7) * blocks + width * (blocks - 1))}


def multiplier_dsps(a_bits: int, b_bits: int) -> int:
    """DSP48E2 slices for a signed ``a_bits`` x ``b_bits`` multiplier (27 x 18 each)."""
    a, b = sorted((a_bits, b_bits), reverse=True)
    if b <= 1:
        return 0
    return math.ceil(a / 27) * math.ceil(b / 18)


def rom_width(words: "list[int]", width: int) -> int:
    """Bit columns of a ROM's contents that are not constant: synthesis drops the others, so this
    is the width a ROM occupies (in block RAM or in LUTs)."""
    mask = (1 << width) - 1
    ones = zeros = 0
    for w in words:
        ones |= w & mask
        zeros |= ~w & mask
    return bin(ones & zeros).count("1")


def _ramb18(kind: str, depth: int, width: int) -> int:
    return int(memory_map(kind, depth, width)["ramb18"])


def _mac_dsps(node: Node) -> int:
    f = node.formats
    if node.params["multiply"] == "lmul":
        return 0
    w = f["weight"]
    w = w.element if isinstance(w, MXType) else weight_envelope(w)  # MX: the element product unit
    if isinstance(w, KHot):
        return 0
    x_bits = dsp_operand_bits(f["input"])
    if isinstance(w, MinifloatType):
        return multiplier_dsps(x_bits, w.mantissa_bits + 2)
    return multiplier_dsps(x_bits, dsp_operand_bits(w))


def buffer_slots(manifest: Manifest) -> dict[str, tuple[int, ...]]:
    """Per buffered node (dense, conv2d, pools: one input; add, sub, mul, concat: one per input),
    the tensor slots of each input buffer of its engine at folding 1: 2 (double buffering), more
    for the early operand of a join (:meth:`qfx.hw.accel.top.Accelerator.input_slots`). A manifest
    the RTL cannot build gets 2 everywhere (its estimate is then of the engines that exist)."""
    from .engines import EngineError
    from .top import Accelerator

    buffered = ("dense", "conv2d", "maxpool2d", "avgpool2d", "add", "sub", "mul", "concat", "upsample", "layernorm",
                "matmul", "permute")
    try:
        acc = Accelerator(manifest)
    except EngineError:
        return {n.name: (2,) * len(n.inputs) for n in manifest if n.op in buffered}
    acc._MustUse__silence = True  # built for its schedule only
    out = {}
    for n in manifest:
        if n.op in buffered:
            out[n.name] = acc.input_slots(n.name) if len(n.inputs) > 1 else (2,)
    return out


def estimate_resources(manifest: Manifest) -> dict[str, Any]:
    """``{"dsp", "bram36", "lut", "ff", "memory_bits", "basis", "per_layer"}`` for the dataflow accelerator.

    ``lut`` and ``ff`` are 0 here (see the module docstring): this estimate checks DSP and
    block RAM against a board; run synthesis for the fabric logic.
    """
    per: dict[str, dict[str, float]] = {}
    slots = buffer_slots(manifest)
    for node in manifest:
        f = node.formats
        dsp, ramb18, bits = 0, 0, 0
        sl = slots.get(node.name, (2, 2))
        n_in = math.prod(node.input_shapes[0]) if node.input_shapes else 0
        if node.op in ("dense", "conv2d"):
            dsp = _mac_dsps(node)
            plan = plan_weights(node)
            n_w, wb = len(plan.words), plan.word_shape.width
            ramb18 = _ramb18("ram", sl[0] * n_in, f["input"].width)
            ramb18 += _ramb18("rom", n_w, rom_width(plan.words, wb))
            if any(plan.init_codes):  # the accumulator start values (the bias in accum's format)
                ramb18 += _ramb18("rom", len(plan.init_codes), rom_width(plan.init_codes, f["accum"].width))
            bits = sl[0] * n_in * f["input"].width + n_w * wb
            if plan.mx is not None and plan.mx.max_shift:  # MX: the block scales' shift ROM (engines_mx)
                from .engines_mx import mx_shift_words

                o_ch = len(plan.init_codes)
                words = mx_shift_words(plan.mx, 1, 1, [(0, 1)], o_ch, n_w // o_ch)
                ramb18 += _ramb18("rom", len(words), rom_width(words, plan.mx.shift_bits))
                bits += len(words) * plan.mx.shift_bits
        elif node.op == "batchnorm":
            dsp = multiplier_dsps(dsp_operand_bits(f["input"]), dsp_operand_bits(f["scale"]))
        elif node.op in ("maxpool2d", "avgpool2d"):
            ramb18 = _ramb18("ram", sl[0] * n_in, f["input"].width)
            bits = sl[0] * n_in * f["input"].width
            if "reciprocal" in f:
                kh, kw = node.params["kernel"]
                dsp = multiplier_dsps(dsp_operand_bits(f["input"].accumulator(kh * kw)),
                                      dsp_operand_bits(f["reciprocal"]))
        elif node.op in ("sub", "mul"):  # buffered like add (hw/accel/engines_ops.py)
            n = math.prod(node.output_shape)
            ramb18 = _ramb18("ram", sl[0] * n, f["in_a"].width) + _ramb18("ram", sl[1] * n, f["in_b"].width)
            bits = n * (sl[0] * f["in_a"].width + sl[1] * f["in_b"].width)
            if node.op == "mul":
                dsp = multiplier_dsps(dsp_operand_bits(f["in_a"]), dsp_operand_bits(f["in_b"]))
        elif node.op == "concat":  # every input buffered in the output format
            w = f["output"].width
            ramb18 = sum(_ramb18("ram", k * math.prod(s), w) for s, k in zip(node.input_shapes, sl))
            bits = sum(k * math.prod(s) for s, k in zip(node.input_shapes, sl)) * w
        elif node.op == "matmul":  # engines_matmul.MatMulEngine: both operands buffered, one in_a x in_b multiplier
            na, nb = (math.prod(s) for s in node.input_shapes)
            ramb18 = _ramb18("ram", sl[0] * na, f["in_a"].width) + _ramb18("ram", sl[1] * nb, f["in_b"].width)
            bits = sl[0] * na * f["in_a"].width + sl[1] * nb * f["in_b"].width
            # multiply: lmul: the L-Mul unit (field adder and shifter) needs no DSP, as dense's
            dsp = 0 if node.params["multiply"] == "lmul" else multiplier_dsps(dsp_operand_bits(f["in_a"]),
                                                                              dsp_operand_bits(f["in_b"]))
        elif node.op == "permute":  # engines_matmul.PermuteEngine: the input buffered, read in the permuted order
            ramb18 = _ramb18("ram", sl[0] * n_in, f["output"].width)
            bits = sl[0] * n_in * f["output"].width
        elif node.op == "upsample":  # the input buffered in its own format (engines_ops.UpsampleEngine)
            ramb18 = _ramb18("ram", sl[0] * n_in, f["output"].width)
            bits = sl[0] * n_in * f["output"].width
        elif node.op == "layernorm":  # engines_norm.LayerNormEngine: the buffered vector, three multipliers
            from qfx import layernorm as lnx

            tt = lnx.types(f, int(node.params["num_features"]))
            ramb18 = _ramb18("ram", sl[0] * n_in, f["input"].width)
            bits = sl[0] * n_in * f["input"].width
            d_bits = dsp_operand_bits(tt["d"])
            dsp = multiplier_dsps(d_bits, d_bits) + multiplier_dsps(d_bits, dsp_operand_bits(f["inv_std"]))
            if node.params["affine"]:
                dsp += multiplier_dsps(dsp_operand_bits(tt["t"]), dsp_operand_bits(f["scale"]))
                bits += int(node.params["num_features"]) * (f["scale"].width + (f["shift"].width if node.params["bias"] else 0))
        elif node.op == "table":  # a comb-read ROM (hw/accel/engines_table.py): LUTs, no block RAM
            bits = int(node.params["size"]) * f["output"].width
        elif node.op == "softmax":  # exp ROM (comb read, LUTs), register banks, one e * r multiplier
            from qfx.tables import softmax_geometry

            outer, n, inner = softmax_geometry(node.params, node.input_shapes[0])
            dsp = multiplier_dsps(dsp_operand_bits(f["exp"]), dsp_operand_bits(f["reciprocal"]))
            bits = int(node.params["size"]) * f["exp"].width
            if inner > 1:  # SoftmaxStridedEngine: the tensor double-buffered, max / reciprocal register files
                ramb18 = _ramb18("ram", 2 * n_in, f["input"].width)
                bits += 2 * n_in * f["input"].width + inner * (f["input"].width + f["reciprocal"].width)
            else:  # rows reuse the two banks of F codes and the F exp codes
                bits += n * (2 * f["input"].width + f["exp"].width)
        elif node.op == "add":
            n = math.prod(node.output_shape)
            ramb18 = _ramb18("ram", sl[0] * n, f["in_a"].width) + _ramb18("ram", sl[1] * n, f["in_b"].width)
            bits = n * (sl[0] * f["in_a"].width + sl[1] * f["in_b"].width)
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

