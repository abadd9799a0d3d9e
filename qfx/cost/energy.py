"""Per-operation energy model of the dataflow accelerator (dynamic energy per inference).

Sources and assumptions (repeated in every report):

* **Operation energies, 45 nm, 0.9 V**: M. Horowitz, "Computing's energy problem (and what we can
  do about it)", ISSCC 2014, Fig. 1.1.9: int8 add 0.03 pJ, int32 add 0.1 pJ, int8 mult 0.2 pJ,
  int32 mult 3.1 pJ, fp16 add 0.4 pJ, fp16 mult 1.1 pJ, fp32 add 0.9 pJ, fp32 mult 3.7 pJ;
  8 KB SRAM read of 64 bits 10 pJ (32 KB: 20 pJ, 1 MB: 100 pJ); DRAM 1.3-2.6 nJ per 64 bits.
* **Width scaling** (assumption): an n-bit add costs ``0.03 pJ * n / 8`` (ripple carry, linear in n);
  an a x b multiply ``0.2 pJ * a * b / 64`` (array multiplier, proportional to the partial-product
  bits; int32 mult: 0.2 * 16 = 3.2 pJ against Horowitz' 3.1 pJ); a 2:1 multiplexer bit costs 0.4 of
  a full-adder bit (about 12 against 28 transistors), so an n-bit shifter of s stages costs
  ``0.4 * s * 0.03 pJ * n / 8``; an on-chip memory read of b bits ``10 pJ * b / 64`` (8 KB SRAM;
  a BRAM36 holds 4.5 KB).
* **FPGA factor, soft logic: 14x** -- I. Kuon and J. Rose, "Measuring the gap between FPGAs and ASICs",
  IEEE TCAD 26(2), 2007: the FPGA/ASIC dynamic power ratio for LUT-and-flip-flop logic is about 14
  (90 nm both). Applied to every operation that lands in LUTs and carry chains (adders, casts,
  shifters, K-hot / L-Mul / LUT multipliers, LUT RAM).
* **FPGA factor, hard blocks (DSP48E2, block RAM): 4x -- an ASSUMPTION.** Kuon and Rose report that
  hard blocks make the gap "generally smaller" without a per-block figure; 4x stands for an
  ASIC-like block plus the programmable routing to and from it. The report also gives the MAC
  energy ratio with one uniform factor (14x for everything) so that the effect of this assumption
  is visible.
* **No technology scaling** from 45 nm to the 16 nm FinFET of the ZU3EG: absolute numbers are
  45-nm-equivalent and uncalibrated (no measurement, no Vivado report_power); ratios between
  designs are the meaningful output. Static power (board ``power.pl_static_w``, itself an
  assumption) times the latency is reported separately; DRAM traffic is not included (the
  accelerator streams its input once; weights live on chip).

Per MAC of a dense / conv2d engine: one input-buffer read, one weight-ROM read (and one
accumulator-start ROM read per output), the product (by kind, below), the accumulation add with
its cast (``acc + p``, ``s`` bits). Product kinds:

``dsp``        fixed-point multiply in a DSP48E2: ``0.2 * a*b/64`` pJ, hard-block factor.
``lut_mult``   fixed-point multiply in LUTs (no DSP): same energy, soft factor.
``shift_add``  K-hot: per digit a select of x / -x / 0 and a left shifter over the base width,
               then ``k - 1`` adds of the product width and one negation of x; soft factor.
``minifloat``  exact minifloat weight: ``x.width x (M+1)`` significand multiply (DSP if the
               structure gives one, else LUTs), a negation and an exponent shifter in LUTs.
``lmul``       L-Mul: one integer add of the exponent+mantissa fields, the alignment shifter and
               a negation in LUTs; no multiplier.
``shift_add_const``  K-hot at full unroll (hw/accel/khot_wired.py): constant shifts (wiring), the
               weight's ``nnz - 1`` adds of the product width and a share of the lane's one
               negation of x; no shifter, no weight-ROM read; soft factor.
"""

from __future__ import annotations

import math
from typing import Any

from qfx.manifest import Manifest, matmul_product_format
from qfx.types import FixedType, KHot, MinifloatType

__all__ = ["ENERGY_SOURCES", "E", "energy_per_inference", "hardwired_product_pj", "mac_op_energy"]

#: Horowitz ISSCC 2014 (45 nm) base figures, pJ.
E = {
    "add8": 0.03, "add32": 0.1, "mult8": 0.2, "mult32": 3.1, "fp16_add": 0.4, "fp16_mult": 1.1,
    "fp32_add": 0.9, "fp32_mult": 3.7, "sram8k_64b": 10.0, "sram32k_64b": 20.0, "dram_64b": 1300.0,
}
F_SOFT = 14.0   # Kuon & Rose, IEEE TCAD 2007: FPGA/ASIC dynamic power, logic-only
F_HARD = 4.0    # ASSUMPTION for DSP48E2 / BRAM (see module docstring)
MUX_PER_FA = 0.4  # ASSUMPTION: 2:1 mux bit vs full-adder bit (transistor count)

ENERGY_SOURCES = [
    "M. Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014: 45 nm int8 add "
    "0.03 pJ, int8 mult 0.2 pJ, int32 mult 3.1 pJ, fp32 mult 3.7 pJ, 8 KB SRAM 64-bit read 10 pJ",
    "I. Kuon, J. Rose, 'Measuring the gap between FPGAs and ASICs', IEEE TCAD 26(2) 2007: FPGA/ASIC "
    f"dynamic power ~{F_SOFT:g}x for LUT logic (applied to soft logic)",
    f"ASSUMPTION: {F_HARD:g}x for hard blocks (DSP48E2, BRAM); Kuon & Rose only say the gap is smaller",
    "ASSUMPTION: add energy linear in width, multiply in a*b, mux bit = 0.4 full-adder bit, memory read "
    "linear in bits; no 45 nm -> 16 nm scaling (absolute values uncalibrated, ratios meaningful)",
]


def _add(n: int) -> float:
    return E["add8"] * n / 8


def _mult(a: int, b: int) -> float:
    return E["mult8"] * a * b / 64


def _shift(n: int, stages: int) -> float:
    return MUX_PER_FA * stages * _add(n)


def _read(bits: int) -> float:
    return E["sram8k_64b"] * bits / 64


def mac_op_energy(x_fmt: FixedType, w_fmt: Any, multiply: str, p_fmt: FixedType, s_bits: int,
                  dsp: bool, f_soft: float = F_SOFT, f_hard: float = F_HARD) -> dict[str, float]:
    """Energy (pJ) of one MAC's product and accumulation, and its product kind.

    Returns ``{"kind", "product_pj", "accumulate_pj"}``.
    """
    xw, pw = x_fmt.width, p_fmt.width
    if multiply == "lmul":
        t = w_fmt
        prod = (_add(t.exponent_bits + t.mantissa_bits + 1) + _shift(pw, max(pw.bit_length(), 1)) + _add(pw)) * f_soft
        kind = "lmul"
    elif isinstance(w_fmt, KHot):
        stages = max(w_fmt.base.width.bit_length(), 1)
        prod = (w_fmt.k * (_shift(pw, 1) + _shift(pw, stages)) + (w_fmt.k - 1) * _add(pw) + _add(xw)) * f_soft
        kind = "shift_add"
    elif isinstance(w_fmt, MinifloatType):
        sig = _mult(xw, w_fmt.mantissa_bits + 1) * (f_hard if dsp else f_soft)
        prod = sig + (_add(pw) + _shift(pw, max(w_fmt.exponent_bits, 1))) * f_soft
        kind = "minifloat"
    else:
        prod = _mult(xw, w_fmt.width) * (f_hard if dsp else f_soft)
        kind = "dsp" if dsp else "lut_mult"
    return {"kind": kind, "product_pj": prod, "accumulate_pj": _add(s_bits) * f_soft}


def hardwired_product_pj(node: Any, f_soft: float = F_SOFT) -> float:
    """Mean product energy (pJ) per MAC of a fully unrolled K-hot node's constant shift-adds."""
    from qfx.hw.accel.khot_wired import hardwired_cost

    c = hardwired_cost(node)
    x, w = node.formats["input"], node.formats["weight"]
    pw = (x * w.base).width
    per = (c["adders"] * _add(pw) + c["negators"] * _add(x.width + 1)) / max(c["weights"], 1.0)
    return per * f_soft


def energy_per_inference(manifest: Manifest, dsp_per_layer: dict[str, float], bram_per_layer: dict[str, float],
                         *, f_soft: float = F_SOFT, f_hard: float = F_HARD,
                         foldings: "dict[str, Any] | None" = None) -> dict[str, Any]:
    """Dynamic energy per inference (pJ), per layer and per kind, with the MAC energy.

    ``dsp_per_layer`` / ``bram_per_layer``: DSP48E2 and BRAM36 per node (from synthesis or the
    analytic estimate) -- they decide whether a product is a DSP or a LUT multiply and whether a
    buffer read is a BRAM or a LUT RAM access.
    """
    from qfx.hw.accel.engines import engine_cycles
    from qfx.hw.accel.khot_wired import hardwired
    from qfx.hw.accel.weights import plan_weights

    layers: dict[str, dict[str, Any]] = {}
    kinds: dict[str, float] = {}
    mac_total = {"macs": 0, "pj": 0.0}

    def add_kind(k: str, v: float) -> None:
        kinds[k] = kinds.get(k, 0.0) + v

    for node in manifest:
        if node.op in ("input", "flatten", "reshape", "output"):
            continue
        cyc = engine_cycles(node)
        mem_factor = f_hard if bram_per_layer.get(node.name, 0) else f_soft
        row: dict[str, Any] = {"op": node.op}
        f = node.formats
        if node.op in ("dense", "conv2d"):
            plan = plan_weights(node)
            mult = plan.multiplier()
            mult._MustUse__silence = True
            p_fmt = mult.product_fmt
            s_bits = (f["accum"] + p_fmt).width
            macs = cyc["compute"]
            op = mac_op_energy(f["input"], plan.w_fmt, plan.multiply, p_fmt, s_bits,
                               dsp=dsp_per_layer.get(node.name, 0) > 0, f_soft=f_soft, f_hard=f_hard)
            wired = foldings is not None and node.name in foldings and hardwired(node, foldings[node.name])
            if wired:  # constant products: no multiplier, no weight ROM read
                op = {**op, "kind": "shift_add_const", "product_pj": hardwired_product_pj(node, f_soft)}
            mem = (_read(f["input"].width) + (0.0 if wired else _read(plan.word_shape.width))) * mem_factor * macs
            mem += _read(f["input"].width) * mem_factor * cyc["load"]  # buffer writes
            mem += _read(f["accum"].width) * f_soft * cyc["outputs"]  # accumulator start ROM
            if plan.mx is not None and plan.mx.max_shift:  # MX: the block scale's shift of each issue's sum
                op = {**op, "product_pj": op["product_pj"]
                      + _shift(p_fmt.width + plan.mx.max_shift, plan.mx.shift_bits) * f_soft, "kind": "mx_" + op["kind"]}
                mem += _read(plan.mx.shift_bits) * mem_factor * macs  # the shift ROM
            prod, accu = op["product_pj"] * macs, op["accumulate_pj"] * macs
            out_cast = _add(f["output"].width) * f_soft * cyc["outputs"]
            row.update({"macs": macs, "kind": op["kind"], "mac_pj_each": op["product_pj"] + op["accumulate_pj"],
                        "product_pj": prod, "accumulate_pj": accu, "memory_pj": mem, "other_pj": out_cast})
            add_kind(op["kind"], prod)
            add_kind("accumulate", accu)
            add_kind("memory", mem)
            add_kind("cast/control", out_cast)
            mac_total["macs"] += macs
            mac_total["pj"] += prod + accu
        elif node.op == "matmul":  # hw/accel/engines_matmul.py: one exact product and accumulate per cycle
            macs = cyc["compute"]
            a, b = f["in_a"], f["in_b"]
            dsp = dsp_per_layer.get(node.name, 0) > 0
            if node.params["multiply"] == "lmul":  # the L-Mul unit, priced as dense's (mac_op_energy)
                t, pf = f["operand"], matmul_product_format(f)
                kind = "lmul"
                prod = (_add(t.exponent_bits + t.mantissa_bits + 1) + _shift(pf.width, max(pf.width.bit_length(), 1))
                        + _add(pf.width)) * f_soft * macs
            else:
                pf = a * b
                kind = "dsp" if dsp else "lut_mult"
                prod = _mult(a.width, b.width) * (f_hard if dsp else f_soft) * macs
            accu = _add((f["accum"] + pf).width) * f_soft * macs
            mem = (_read(a.width) + _read(b.width)) * mem_factor * macs  # two operand reads per product
            mem += (_read(a.width) + _read(b.width)) * mem_factor * cyc["load"]  # buffer writes
            other = _add(f["output"].width) * f_soft * cyc["outputs"]
            row.update({"macs": macs, "kind": kind, "product_pj": prod, "accumulate_pj": accu, "memory_pj": mem,
                        "other_pj": other})
            add_kind(kind, prod)
            add_kind("accumulate", accu)
            add_kind("memory", mem)
            add_kind("cast/control", other)
            mac_total["macs"] += macs
            mac_total["pj"] += prod + accu
        else:
            n = cyc["compute"]
            x = f.get("input") or f.get("in_a") or f.get("output")  # concat: inputs cast to the output
            if node.op == "layernorm":  # hw/accel/engines_norm.py: three products per element, the isqrt steps
                from qfx import layernorm as lnx
                from qfx.hw.accel.engines_norm import inv_sqrt_widths

                nf, p = int(node.params["num_features"]), node.params
                rows = cyc["outputs"] // nf  # each row: its statistics, its own inverse square root
                tt = lnx.types(f, nf)
                dsp = dsp_per_layer.get(node.name, 0) > 0
                fac = f_hard if dsp else f_soft
                prod = (_mult(tt["d"].width, tt["d"].width) + _mult(tt["d"].width, f["inv_std"].width)) * fac * nf * rows
                if p["affine"]:
                    prod += _mult(tt["t"].width, f["scale"].width) * fac * nf * rows
                ws = f["inv_std"].width
                wn = max(f["var"].width, int(p["eps_code"]).bit_length()) + 1
                wp = inv_sqrt_widths(wn, 2 * f["inv_std"].frac_bits + f["var"].frac_bits, ws)
                other = (_add(tt["sum"].width) + _add(tt["sqsum"].width) + _add(tt["pre"].width)) * f_soft * nf * rows
                other += 3 * _add(wp) * f_soft * ws * rows
                mem = _read(x.width) * mem_factor * (cyc["load"] + 3 * nf * rows)  # one write, three reads per element
                kind = "dsp" if dsp else "lut_mult"
                add_kind(kind, prod)
                add_kind("memory", mem)
                row.update({"kind": kind, "product_pj": prod, "other_pj": other, "memory_pj": mem})
            elif node.op == "batchnorm":
                dsp = dsp_per_layer.get(node.name, 0) > 0
                prod = _mult(x.width, f["scale"].width) * (f_hard if dsp else f_soft) * n
                other = (_add(f["output"].width + f["shift"].width) + _read(f["scale"].width + f["shift"].width)) * f_soft * n
                kind = "dsp" if dsp else "lut_mult"
                add_kind(kind, prod)
                row.update({"kind": kind, "product_pj": prod, "other_pj": other, "memory_pj": 0.0})
            else:
                other = _add(x.width) * f_soft * n
                if node.op == "add":
                    other += _add(f["output"].width) * f_soft * n
                if node.op == "table":  # the clip and one ROM read per element
                    other += (_add(x.width) + _read(f["output"].width)) * f_soft * n
                if node.op == "softmax":  # per element: max compare, clip, ROM read, sum, product; per vector a division
                    from qfx.tables import softmax_geometry

                    m_out = cyc["outputs"]
                    outer, nv, inner = softmax_geometry(node.params, node.input_shapes[0])
                    other += ((_add(x.width) * 3 + _read(f["exp"].width) + _add(f["exp"].width + 8)) * m_out
                              + _mult(f["exp"].width, f["reciprocal"].width) * m_out
                              + _add(f["exp"].width + 8) * (f["exp"].frac_bits + f["reciprocal"].frac_bits + 2)
                              * outer * inner) * f_soft
                prod = 0.0
                if node.op == "avgpool2d" and "reciprocal" in f:
                    kh, kw = node.params["kernel"]
                    dsp = dsp_per_layer.get(node.name, 0) > 0
                    prod = _mult(x.accumulator(kh * kw).width, f["reciprocal"].width) * (f_hard if dsp else f_soft) \
                        * cyc["outputs"]
                    add_kind("dsp" if dsp else "lut_mult", prod)
                mem = _read(x.width) * mem_factor * (cyc["load"] + cyc["compute"]) if cyc["load"] else 0.0
                row.update({"kind": "elementwise" if not cyc["load"] else "buffered", "product_pj": prod,
                            "other_pj": other, "memory_pj": mem})
                add_kind("memory", mem)
            add_kind("cast/control", row["other_pj"])
        row["total_pj"] = sum(float(row.get(k, 0.0)) for k in ("product_pj", "accumulate_pj", "memory_pj", "other_pj"))
        layers[node.name] = row
    total = sum(r["total_pj"] for r in layers.values())
    return {
        "total_pj": total,
        "per_layer": layers,
        "per_kind": dict(sorted(kinds.items())),
        "mac": {"macs": mac_total["macs"], "pj": mac_total["pj"],
                "pj_per_mac": mac_total["pj"] / mac_total["macs"] if mac_total["macs"] else math.nan},
        "factors": {"soft": f_soft, "hard": f_hard},
    }
