"""Issue 14: L-Mul (``multiply: lmul``) as the multiply of the matmul of two activations, four ways.

Both run-time operands are rounded (nearest even) to the minifloat ``operand`` format and their
exact L-Mul product enters matmul's accumulator. An attention head whose score matmul uses
``fp8_e4m3fn`` operands (exact accumulator) and whose ``bmm`` uses ``fp6_e2m3fn`` operands (a narrow
accumulator that rounds and saturates) goes through a few QAT steps -> export -> integer reference
== emulation -> ``qfx-gen`` rtl + hls -> ``verify`` with 0 mismatches. The reference's matmul is
checked against an independent oracle: ``qfx._lmul.lmul`` applied elementwise (float64, torch) to the
operand values, accumulated with exact rationals in the documented order; the exact matmul of the
same operands must disagree (L-Mul is really used). Expected values never come from the hardware.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

import qfx
from qfx.conversion import ConversionError
from qfx.export import export
from qfx.manifest import ManifestError, load
from qfx.reference import run
from tests.fourway import assert_reference_equals_emulation, assert_rtl_and_hls_bit_exact, assert_verilog_lints_clean, short_qat
from tests.test_i14_matmul import CFG, AttentionHead, _cast

#: score matmul: fp8_e4m3fn operands, exact accumulator; bmm: fp6_e2m3fn operands, a narrow accumulator
LMUL = {**CFG, "layers": {
    "matmul": {"multiply": "lmul", "operand": "fp8_e4m3fn"},
    "bmm": {"multiply": "lmul", "operand": "fp6_e2m3fn", "accum": "ap_fixed<10,4,AP_RND,AP_SAT>"},
}}
OPERANDS = {"matmul": "fp8_e4m3fn", "bmm": "fp6_e2m3fn"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    q, x = short_qat(AttentionHead, (6, 6), LMUL)
    d = tmp_path_factory.mktemp("lmul_head")
    export(q, x, d / "manifest")
    return q, x, d


def test_manifest_records_lmul_and_the_operand(exported):
    _q, _x, d = exported
    man = load(d / "manifest")
    mms = {n.name: n for n in man if n.op == "matmul"}
    assert set(mms) == set(OPERANDS)
    for name, fmt in OPERANDS.items():
        assert mms[name].params["multiply"] == "lmul"
        assert str(mms[name].formats["operand"]) == fmt
    assert mms["matmul"].params["accum_exact"] and not mms["bmm"].params["accum_exact"]


def test_reference_equals_emulation_on_every_layer(exported):
    q, x, d = exported
    assert_reference_equals_emulation("lmul_head", q, x, load(d / "manifest"), {"dense", "permute", "matmul"})


def test_rtl_and_hls_bit_exact(exported):
    q, _x, d = exported
    assert_rtl_and_hls_bit_exact(q, d)


def test_verilog_lints_clean_and_is_deterministic(exported, tmp_path):
    _q, _x, d = exported
    assert_verilog_lints_clean(d / "manifest", tmp_path, "lmul_head")


def _oracle(a_codes, a_fmt, b_codes, b_fmt, node, exact_products: bool = False) -> np.ndarray:
    """Per output: casts to in_a / in_b, then ``qfx._lmul.lmul(a, b, operand, exact=True)`` elementwise
    (torch float64; or the exact product of the operand values), accumulated in Fractions k ascending
    with the accum cast per step (skipped for an exact accumulator), then the output cast."""
    from qfx._lmul import lmul
    from qfx.quant import quantize

    f = node.formats
    t = f["operand"]
    cast_a = np.vectorize(lambda c: _cast(Fraction(int(c), 2 ** a_fmt.frac_bits), f["in_a"]), otypes=[np.int64])
    cast_b = np.vectorize(lambda c: _cast(Fraction(int(c), 2 ** b_fmt.frac_bits), f["in_b"]), otypes=[np.int64])
    va = torch.from_numpy(np.ldexp(cast_a(np.asarray(a_codes)).astype(np.float64), -f["in_a"].frac_bits))
    vb = torch.from_numpy(np.ldexp(cast_b(np.asarray(b_codes)).astype(np.float64), -f["in_b"].frac_bits))
    if exact_products:
        p = quantize(va, t)[..., :, :, None] * quantize(vb, t)[..., None, :, :]
    else:
        p = lmul(va[..., :, :, None], vb[..., None, :, :], t, exact=True)  # [N, T, K, S]
    p = p.numpy()
    n, t_n, k_n, s_n = p.shape
    out = np.zeros((n, t_n, s_n), dtype=np.int64)
    for i in range(n):
        for r in range(t_n):
            for s in range(s_n):
                acc = Fraction(0)
                for k in range(k_n):
                    acc = acc + Fraction(float(p[i, r, k, s]))
                    if not node.params["accum_exact"]:
                        acc = Fraction(_cast(acc, f["accum"]), 2 ** f["accum"].frac_bits)
                out[i, r, s] = _cast(acc, f["output"])
    return out


def test_reference_matmul_equals_the_lmul_oracle_and_differs_from_exact(exported):
    _q, x, d = exported
    man = load(d / "manifest")
    ref = run(man, x)
    for node in (n for n in man if n.op == "matmul"):
        sa, sb = node.inputs
        fa, fb = man.node(sa).output_format, man.node(sb).output_format
        want = _oracle(ref[sa], fa, ref[sb], fb, node)
        assert np.array_equal(ref[node.name], want), node.name
        assert len(np.unique(want)) > 5, node.name
        exact = _oracle(ref[sa], fa, ref[sb], fb, node, exact_products=True)
        assert not np.array_equal(exact, want), f"{node.name}: exact products give the same bits as L-Mul"


def test_gradients_reach_both_operands():
    m = qfx.nn.QMatMul(config={"input": "ap_fixed<8,3>", "output": "ap_fixed<10,5>", "multiply": "lmul",
                               "operand": "fp8_e4m3fn"}, name="mm")
    a = torch.randn(2, 3, 4, requires_grad=True)
    b = torch.randn(2, 4, 5, requires_grad=True)
    m(a, b).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


@pytest.mark.parametrize("layer, words", [
    ({"multiply": "lmul"}, ["layer 'matmul' (matmul)", "operand", "fp8_e4m3fn"]),
    ({"multiply": "lmul", "operand": "ap_fixed<8,3>"}, ["layer 'matmul' (matmul)", "minifloat operand"]),
    ({"multiply": "lmul", "operand": "khot<2,ap_fixed<8,2>>"}, ["layer 'matmul' (matmul)", "minifloat operand"]),
])
def test_bad_config_names_the_layer(layer, words):
    cfg = {**CFG, "layers": {"matmul": layer}}
    with pytest.raises((ConversionError, ValueError)) as info:
        qfx.convert(AttentionHead(), cfg)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_manifest_checks_lmul_matmul(exported, tmp_path):
    import shutil

    import yaml

    _q, _x, d = exported
    shutil.copytree(d / "manifest", tmp_path / "m")
    path = tmp_path / "m" / "manifest.yaml"
    text = path.read_text()

    def broken(change, match):
        doc = yaml.safe_load(text)
        change(next(n for n in doc["nodes"] if n["name"] == "matmul"))
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        with pytest.raises(ManifestError, match=match):
            load(tmp_path / "m")

    broken(lambda n: n["formats"].pop("operand"), r"matmul.*multiply: lmul needs formats.operand")
    broken(lambda n: n["formats"].update(operand="ap_fixed<8,3>"), r"matmul.*minifloat formats.operand")
    broken(lambda n: n["params"].update(multiply="exact"), r"matmul.*formats.operand is given but")
    broken(lambda n: n["params"].update(accum_exact=False), "accum_exact is false but accum")
    path.write_text(text)
    assert load(tmp_path / "m")


def test_cost_model_prices_the_lmul_unit(exported, tmp_path):
    """The L-Mul matmul: no DSP (field adder and shifter, as dense's L-Mul), the L-Mul feature set, and
    product energy of kind lmul; the same model with exact matmuls uses DSPs."""
    from qfx.cost.energy import energy_per_inference
    from qfx.cost.estimate import engine_features
    from qfx.hw.accel import estimate_resources

    _q, _x, d = exported
    man = load(d / "manifest")
    res = estimate_resources(man)["per_layer"]
    energy = energy_per_inference(man, {k: v["dsp"] for k, v in res.items()},
                                  {k: v["bram36"] for k, v in res.items()})["per_layer"]
    feats = engine_features(man)
    for name in OPERANDS:
        assert res[name]["dsp"] == 0
        assert energy[name]["kind"] == "lmul" and energy[name]["product_pj"] > 0
        assert feats[name]["mul_lmul"] > 0
    q, x = short_qat(AttentionHead, (6, 6), CFG)
    export(q, x, tmp_path / "exact")
    ex = load(tmp_path / "exact")
    res_ex = estimate_resources(ex)["per_layer"]
    assert all(res_ex[n.name]["dsp"] >= 1 for n in ex if n.op == "matmul")
    assert all(engine_features(ex)[n.name]["mul_lmul"] == 0 for n in ex if n.op == "matmul")


@pytest.mark.parametrize("a_s, b_s, t_s", [
    ("ap_fixed<7,3>", "ap_fixed<6,2>", "fp8_e4m3fn"),
    ("ap_fixed<7,3>", "ap_ufixed<5,1>", "fp6_e2m3fn"),  # subnormals on both sides, ties at the quantum
    ("ap_fixed<6,5>", "ap_fixed<7,3>", "e3m2<subnormals=false,saturate=true>"),  # flush to zero, saturation
    ("ap_fixed<6,3>", "ap_fixed<6,4>", "e3m0<inf_nan=fn,saturate=true>"),  # no mantissa bits
])
def test_lmul_pair_multiplier_all_code_pairs(a_s, b_s, t_s):
    """The RTL L-Mul unit of matmul (Amaranth simulation) on every (a, b) code pair equals the reference's
    integer rounding + L-Mul (``_fixed_to_minifloat_fields``, ``_lmul_products``)."""
    from amaranth.sim import Simulator

    from qfx.arith import lmul_product_type
    from qfx.hw.pe.multiply import LMulPairMultiplier
    from qfx.reference import _fixed_to_minifloat_fields, _lmul_products
    from qfx.types import parse_type

    ta, tb, t = parse_type(a_s), parse_type(b_s), parse_type(t_s)
    pf = lmul_product_type(t)
    a = np.repeat(np.arange(ta.min_code, ta.max_code + 1), tb.max_code - tb.min_code + 1)
    b = np.tile(np.arange(tb.min_code, tb.max_code + 1), ta.max_code - ta.min_code + 1)
    want = _lmul_products(_fixed_to_minifloat_fields(a, ta.frac_bits, t, "a"),
                          _fixed_to_minifloat_fields(b, tb.frac_bits, t, "b"), t, pf.frac_bits, False)
    dut = LMulPairMultiplier(ta, tb, t)
    assert dut.product_fmt == pf
    got = []

    async def tb_(ctx):
        for x, y in zip(a.tolist(), b.tolist()):
            ctx.set(dut.a, x)
            ctx.set(dut.b, y)
            got.append(ctx.get(dut.p))

    sim = Simulator(dut)
    sim.add_testbench(tb_)
    sim.run()
    assert np.array_equal(np.asarray(got), want)
    assert len(np.unique(want)) > 20
