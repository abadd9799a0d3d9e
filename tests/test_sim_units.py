# amaranth: UnusedElaboratable=no
"""cocotb 2.x testbenches on Verilator for the unit kinds (qfx.hw): CastUnit in every rounding x
overflow mode, every PE kind, a 3 x 4 SystolicArray with weight reloads and backpressure.

Everything sits in ONE Amaranth top (:class:`qfx.sim.units.UnitsTop`), so one cached Verilator
build and one simulation (driven cycle by cycle from a ``$readmemh`` stimulus by the harness
itself; the cocotb test awaits ``finished`` once) serve every case here; the module-scoped
fixture builds and runs it, the cases check their own part of the log.

Expected values come from qfx's software model only: :func:`qfx.intops.cast_codes`,
:func:`qfx.manifest.minifloat_hull_codes`, :func:`qfx.intops.fixed_to_minifloat_fields` /
``minifloat_fields`` / ``lmul_products``, :func:`qfx.khot_digits`; never from the RTL.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import time
import zlib

import numpy as np
import pytest
from amaranth.hdl import Elaboratable

from qfx import khot_digits
from qfx.intops import cast_codes, fixed_to_minifloat_fields, lmul_products, minifloat_fields
from qfx.manifest import mac_product_format, minifloat_hull_codes
from qfx.types import FixedType, MinifloatType, Overflow, Rounding, parse_type

P = parse_type
N_CYCLES = 800  # per-cycle stimulus words (every unit runs in parallel)

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

#: Cast sources (all codes swept) and the destination grid; every rounding x overflow mode, signed
#: and unsigned destination. (8,4) -> (4,2) and unsigned (6,2) -> (4,2): two dropped bits (exact ties),
#: overflow both ways.
CAST_SRCS = [FixedType(8, 4, True), FixedType(6, 2, False)]
CAST_DST = (4, 2)
CAST_DSTS = [FixedType(*CAST_DST, signed, q, o) for signed in (True, False) for q in Rounding for o in Overflow
             if signed or o is not Overflow.AP_WRAP_SM]

#: (name, kind, x, w, acc): narrow rounding / saturating / wrapping accumulators.
PE_CASES = [
    ("mac_sat", "mac", "ap_fixed<8,3>", "ap_fixed<8,1>", "ap_fixed<10,4,AP_RND_CONV,AP_SAT>"),
    ("mac_symu", "mac", "ap_ufixed<8,4>", "ap_fixed<5,2>", "ap_fixed<9,5,AP_RND,AP_SAT_SYM>"),
    ("khot_sat", "khot", "ap_fixed<8,3>", "khot<2,ap_fixed<8,1>>", "ap_fixed<8,4,AP_RND_CONV,AP_SAT>"),
    ("khot_wrap3", "khot", "ap_fixed<6,2>", "khot<3,ap_fixed<6,0>>", "ap_fixed<7,3,AP_RND,AP_WRAP>"),
    ("mf_e4m3", "minifloat", "ap_fixed<8,3>", "fp8_e4m3fn", "ap_fixed<12,5,AP_RND_CONV,AP_SAT>"),
    ("mf_e3m2", "minifloat", "ap_fixed<7,3>", "fp6_e3m2fn", "ap_fixed<9,5,AP_RND_INF,AP_WRAP_SM>"),
    ("lmul_e4m3", "lmul", "ap_fixed<8,3>", "fp8_e4m3fn", "ap_fixed<10,4,AP_RND,AP_WRAP>"),
    ("lmul_e2m1", "lmul", "ap_ufixed<6,2>", "fp4_e2m1fn", "ap_fixed<7,4,AP_TRN_ZERO,AP_SAT_SYM>"),
    ("packed", "packed", "ap_fixed<8,3>", "ap_fixed<8,1>", "ap_fixed<10,4,AP_RND_ZERO,AP_SAT_ZERO>"),
]

#: (R, C, x, w, acc, out) of the array.
ARRAY_CFG = (3, 4, "ap_fixed<8,3>", "ap_fixed<8,1>", "ap_fixed<9,4,AP_RND_CONV,AP_SAT>", "ap_fixed<6,3,AP_RND,AP_SAT>")
ARRAY_BATCHES = (24, 1, 17)  # input rows per weight load (1: the next load meets the commit token in flight)


# ---------------------------------------------------------------------------
# Software model (independent of the RTL)
# ---------------------------------------------------------------------------


def model_acc(valid, clear, init, prods, p_fmt: FixedType, acc_fmt: FixedType) -> tuple[list[int], int]:
    """Accumulator after each cycle's term, as the HLS loop computes it; and how many steps rounded or
    overflowed (``acc = cast((clear ? init : acc) + p, acc_fmt)`` on valid, ``init`` on clear alone)."""
    f = (acc_fmt + p_fmt).frac_bits
    acc, out, inexact = 0, [], 0
    for v, c, i, p in zip(valid, clear, init, prods):
        base = i if c else acc
        if v:
            total = (int(base) << (f - acc_fmt.frac_bits)) + (int(p) << (f - p_fmt.frac_bits))
            acc = int(cast_codes(np.array([total], dtype=object), f, acc_fmt)[0])
            inexact += (acc << (f - acc_fmt.frac_bits)) != total
        elif c:
            acc = int(i)
        out.append(acc)
    return out, inexact


def model_rows(x: np.ndarray, w: np.ndarray, p_frac: int, acc_fmt: FixedType, out_fmt: FixedType) -> np.ndarray:
    """``Y = cast(X @ W)`` as the HLS loop: ``acc = cast(acc + x[k] w[k, c], acc_fmt)``, k ascending."""
    prods = x[:, :, None].astype(np.int64) * w[None, :, :].astype(np.int64)
    fa = acc_fmt.frac_bits
    step = max(fa, p_frac)
    acc = np.zeros((x.shape[0], w.shape[1]), dtype=np.int64)
    for k in range(w.shape[0]):
        s = (acc << (step - fa)) + (prods[:, k, :] << (step - p_frac))
        acc = cast_codes(s, step, acc_fmt).astype(np.int64)
    return cast_codes(acc, fa, out_fmt).astype(np.int64)


def finite_patterns(t: MinifloatType) -> np.ndarray:
    bits = np.arange(1 << t.bits, dtype=np.int64)
    m, e = t.mantissa_bits, t.exponent_bits
    ef, man = (bits >> m) & ((1 << e) - 1), bits & ((1 << m) - 1)
    top = ef == (1 << e) - 1
    if t.inf_nan == "ieee":
        return bits[~top]
    if t.inf_nan == "fn":
        return bits[~(top & (man == (1 << m) - 1))]
    return bits


def subnormal_patterns(t: MinifloatType) -> np.ndarray:
    bits = np.arange(1 << t.bits, dtype=np.int64)
    m, e = t.mantissa_bits, t.exponent_bits
    return bits[(((bits >> m) & ((1 << e) - 1)) == 0) & ((bits & ((1 << m) - 1)) != 0)]


def random_codes(rng: np.random.Generator, fmt: FixedType, shape, extremes: float = 0.2) -> np.ndarray:
    a = rng.integers(fmt.min_code, fmt.max_code + 1, size=shape, dtype=np.int64)
    pick = rng.random(shape)
    a = np.where(pick < extremes / 2, fmt.min_code, a)
    return np.where((pick >= extremes / 2) & (pick < extremes), fmt.max_code, a)


# ---------------------------------------------------------------------------
# Stimulus, the bench (one build, one run) and its expectations
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class PEStim:
    name: str
    kind: str
    unit: object
    acc_fmt: FixedType
    fields: dict  # din field -> per-cycle values
    expected: dict  # dout field -> per-cycle expected values (index = cycle after the term's cycle + latency)
    inexact: int
    subnormal_terms: int = 0


def _pe_stim(name, kind, x_s, w_s, acc_s, n: int) -> PEStim:
    from qfx.hw.pe import KHotPE, LMulPE, MACPE, MinifloatMACPE, PackedMACPE

    x_fmt, w_fmt, acc_fmt = P(x_s), P(w_s), P(acc_s)
    rng = random.Random(zlib.crc32(f"{name}|{x_s}|{w_s}|{acc_s}".encode()))
    valid = [int(rng.random() < 0.85) for _ in range(n)]
    clear = [int(t == 0 or rng.random() < 0.08) for t in range(n)]
    init = [rng.randint(acc_fmt.min_code, acc_fmt.max_code) if rng.random() < 0.5 else 0 for _ in range(n)]
    xs = [rng.randint(x_fmt.min_code, x_fmt.max_code) for _ in range(n)]
    for t in range(0, n, 6):  # extremes often: the accumulator overflows
        xs[t] = x_fmt.max_code if t % 4 else x_fmt.min_code
    fields = {"valid": valid, "clear": clear, "init": init, "x": xs}
    sub = 0
    if kind in ("mac", "packed"):
        ws = [rng.randint(w_fmt.min_code, w_fmt.max_code) for _ in range(n)]
        for t in range(0, n, 5):
            ws[t] = w_fmt.max_code if t % 3 else w_fmt.min_code
        prods = [a * b for a, b in zip(xs, ws)]
        if kind == "mac":
            unit = MACPE(x_fmt, w_fmt, acc_fmt)
            fields["w"] = ws
        else:
            unit = PackedMACPE(x_fmt, w_fmt, acc_fmt)
            w1 = [rng.randint(w_fmt.min_code, w_fmt.max_code) for _ in range(n)]
            init1 = [rng.randint(acc_fmt.min_code, acc_fmt.max_code) for _ in range(n)]
            ext = [(a, b, c) for a in (x_fmt.min_code, x_fmt.max_code, 0, -1) for b in (w_fmt.min_code, w_fmt.max_code, 0, -1)
                   for c in (w_fmt.min_code, w_fmt.max_code, -1)]
            for t, (a, b, c) in zip(range(1, n, 5), ext * 4):  # every sign combination of the packed fields
                xs[t], ws[t], w1[t] = a, b, c
            prods = [a * b for a, b in zip(xs, ws)]
            fields.update(w0=ws, w1=w1, init0=init, init1=init1)
            del fields["init"]
            e1, _ = model_acc(valid, clear, init1, [a * b for a, b in zip(xs, w1)], unit.product_fmt, acc_fmt)
    elif kind == "khot":
        unit = KHotPE(x_fmt, w_fmt, acc_fmt)
        allowed = [int(c) for c in w_fmt.codes()]
        ws = [rng.choice(allowed) for _ in range(n)]
        ws[: len(allowed)] = allowed[: n]  # every K-hot code (every digit pattern) once
        for t in range(len(allowed), n, 7):
            ws[t] = allowed[-1] if t % 3 else allowed[0]
        shifts, signs = khot_digits(np.array(ws), w_fmt)
        k = w_fmt.k
        sb = len(unit.shift.as_value()) // k
        fields["shift"] = [sum(int(shifts[t, j]) << (j * sb) for j in range(k)) for t in range(n)]
        fields["sign"] = [sum((int(signs[t, j]) & 3) << (2 * j) for j in range(k)) for t in range(n)]
        prods = [a * b for a, b in zip(xs, ws)]
    else:
        finite = finite_patterns(w_fmt)
        subs = subnormal_patterns(w_fmt)
        ws = [int(rng.choice(subs)) if rng.random() < 0.3 else int(rng.choice(finite)) for _ in range(n)]
        ws[: len(finite)] = [int(b) for b in finite[:n]]  # every finite pattern once
        sub = sum(1 for t in range(n) if ws[t] in set(subs.tolist()) and valid[t])
        unit = (MinifloatMACPE if kind == "minifloat" else LMulPE)(x_fmt, w_fmt, acc_fmt)
        assert unit.product_fmt == mac_product_format(x_fmt, w_fmt, "exact" if kind == "minifloat" else "lmul")
        fields["w"] = ws
        if kind == "minifloat":
            hull = minifloat_hull_codes(np.array(ws, dtype=np.int64), w_fmt)
            prods = [a * int(h) for a, h in zip(xs, hull)]
        else:
            ref = w_fmt if w_fmt.saturate else dataclasses.replace(w_fmt, saturate=True)
            xf = fixed_to_minifloat_fields(np.array(xs, dtype=np.int64), x_fmt.frac_bits, ref, name)
            prods = [int(p) for p in lmul_products(xf, minifloat_fields(np.array(ws, dtype=np.int64), w_fmt), w_fmt,
                                                    unit.product_fmt.frac_bits, True)]
    e0, inexact = model_acc(valid, clear, init, prods, unit.product_fmt, acc_fmt)
    if kind == "packed":
        expected = {"acc0": e0, "acc1": e1, "o_valid": valid}
    else:
        expected = {"acc": e0, "o_valid": valid}
    return PEStim(name, kind, unit, acc_fmt, fields, expected, inexact, sub)


def _pe_ports(st: PEStim):
    u = st.unit
    ins = {k: (getattr(u, k).as_value() if k in ("shift", "sign") else getattr(u, k)) for k in st.fields}
    outs = {k: getattr(u, k) for k in st.expected}
    return ins, outs


class Bench:
    """The whole top, its stimulus, the RTL log and the expectations."""

    def __init__(self) -> None:
        from amaranth.hdl import Signal

        from qfx.hw.cast import CastUnit, fixed_shape
        from qfx.hw.systolic import SystolicArray
        from qfx.sim.units import UnitsTop

        top = self.top = UnitsTop()
        n = N_CYCLES
        # Casts: each source's codes in order, repeated.
        self.cast_codes_in = []
        for s, src in enumerate(CAST_SRCS):
            units = [CastUnit(src, d) for d in CAST_DSTS]
            codes = list(range(src.min_code, src.max_code + 1))
            self.cast_codes_in.append([codes[t % len(codes)] for t in range(n)])
            i = Signal(fixed_shape(src), name=f"cast{s}_i")
            top.add(f"cast{s}", _Fanout(i, units), {"i": i}, {f"o{j}": u.o for j, u in enumerate(units)})
        # PEs: terms for cycles 0 .. n-5, then idle cycles for the latency.
        self.pes = [_pe_stim(*c, n - 4) for c in PE_CASES]
        for st in self.pes:
            ins, outs = _pe_ports(st)
            top.add(st.name, st.unit, ins, outs)
        # Systolic array with two weight loads (rows in random order), input rows, gaps and stalls.
        R, C, *names = ARRAY_CFG
        self.x_fmt, self.w_fmt, self.acc_fmt, self.out_fmt = map(P, names)
        arr = self.array = SystolicArray(R, C, self.x_fmt, self.w_fmt, self.acc_fmt, self.out_fmt)
        top.systolic(arr)
        top.ports()
        rng = np.random.default_rng(zlib.crc32(repr(ARRAY_CFG).encode()))
        prng = random.Random(7)
        wl = arr.weight_layout
        row_bits = wl["row"].shape.width if hasattr(wl["row"], "shape") else wl["row"].width
        ww = self.w_fmt.width
        xw = self.x_fmt.width
        bw = max(len(top.sa["w_payload"]), len(top.sa["x_payload"])) + 1
        beats, expected = [], []
        for nrows in ARRAY_BATCHES:
            w = random_codes(rng, self.w_fmt, (R, C))
            x = random_codes(rng, self.x_fmt, (nrows, R))
            order = prng.sample(range(R), R)
            for k in order:
                word = k | (int(k == order[-1]) << (row_bits + C * ww))  # the last row commits (swap)
                for c in range(C):
                    word |= (int(w[k, c]) & ((1 << ww) - 1)) << (row_bits + c * ww)
                beats.append(word)
            for row in x:
                beats.append((1 << (bw - 1)) | sum((int(v) & ((1 << xw) - 1)) << (k * xw) for k, v in enumerate(row)))
            expected.append(model_rows(x, w, self.x_fmt.frac_bits + self.w_fmt.frac_bits, self.acc_fmt, self.out_fmt))
        self.beats = beats
        self.y_expected = np.concatenate(expected)
        # Per-cycle words: {stall, gap, din}. Stalls come in bursts (heavy backpressure) in the first half.
        dw = len(top.din)
        words = []
        stall_run = 0
        for t in range(n):
            d = 0
            for s in range(len(CAST_SRCS)):
                d |= top.din_fields[f"cast{s}.i"].encode(self.cast_codes_in[s][t])
            for st in self.pes:
                for k, vals in st.fields.items():
                    if t < len(vals):
                        d |= top.din_fields[f"{st.name}.{k}"].encode(vals[t])
            gap = prng.random() < 0.3
            if stall_run == 0 and prng.random() < 0.25:
                stall_run = prng.randint(1, 9)
            stall = stall_run > 0 and t < n // 3
            stall_run = max(0, stall_run - 1)
            if t >= n // 3:
                stall = prng.random() < 0.2
            words.append(d | (int(gap) << dw) | (int(stall) << (dw + 1)))
        self.words = words

    def run(self):
        from qfx.sim.units import run_units

        t0 = time.perf_counter()
        self.rtl = run_units(self.top, self.words, self.beats)
        self.wall = time.perf_counter() - t0
        return self


class _Fanout(Elaboratable):
    """Amaranth elaboratable: one input signal driving many CastUnits (the bank of one source)."""

    def __init__(self, i, units) -> None:
        self.i, self.units = i, units

    def elaborate(self, platform):
        from amaranth.hdl import Module

        m = Module()
        for j, u in enumerate(self.units):
            m.submodules[f"c{j}"] = u
            m.d.comb += u.i.eq(self.i)
        return m


@pytest.fixture(scope="module")
def bench():
    pytest.importorskip("cocotb")
    from qfx.sim.verilator import VerilatorNotFound, find_verilator

    try:
        find_verilator()
    except VerilatorNotFound as err:
        pytest.skip(str(err))
    if shutil.which("g++") is None or shutil.which("make") is None:
        pytest.skip("Verilator models need g++ and make")
    return Bench().run()


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("s", range(len(CAST_SRCS)), ids=[str(s) for s in CAST_SRCS])
def test_cast_unit_every_mode_on_verilator(bench, s):
    src = CAST_SRCS[s]
    codes = np.array(bench.cast_codes_in[s], dtype=np.int64)
    assert set(codes.tolist()) == set(range(src.min_code, src.max_code + 1))  # every code, ties/extremes/0 included
    drop = src.frac_bits - (CAST_DST[0] - CAST_DST[1])  # fraction bits the cast drops
    assert drop >= 2 and ((codes & ((1 << drop) - 1)) == 1 << (drop - 1)).any()  # exact ties present
    over = under = 0
    for j, d in enumerate(CAST_DSTS):
        got = np.array(bench.rtl.field(bench.top, f"cast{s}.o{j}"), dtype=np.int64)
        want = cast_codes(codes, src.frac_bits, d)
        bad = np.nonzero(got != want)[0]
        assert bad.size == 0, (f"CastUnit({src}, {d}) on Verilator: code {codes[bad[0]]} -> RTL {got[bad[0]]}, "
                               f"cast_codes {want[bad[0]]} ({bad.size} of {len(codes)} cycles differ)")
        exact = codes.astype(object) * 2 ** d.frac_bits / 2 ** src.frac_bits
        over += int((exact > d.max_code).sum())
        under += int((exact < d.min_code).sum())
    assert over and (under or not src.signed)  # overflow both directions (an unsigned source cannot go below 0)
    assert len(CAST_DSTS) == 7 * 5 + 7 * 4


@pytest.mark.parametrize("case", PE_CASES, ids=[c[0] for c in PE_CASES])
def test_pe_on_verilator(bench, case):
    st = next(p for p in bench.pes if p.name == case[0])
    lat = st.unit.latency
    n = len(st.fields["valid"])
    for port, want in st.expected.items():
        got = bench.rtl.field(bench.top, f"{st.name}.{port}")
        for t in range(n):
            assert got[t + lat] == want[t], (
                f"{st.unit!r} {port} after the term of cycle {t}: RTL {got[t + lat]}, model {want[t]}")
    assert st.inexact > 0  # the narrow accumulator did round or overflow
    assert len(set(st.expected[next(iter(st.expected))])) > 5
    if st.kind in ("minifloat", "lmul"):
        assert st.subnormal_terms > 10  # subnormal weights were accumulated


def test_systolic_array_on_verilator(bench):
    arr, rtl = bench.array, bench.rtl
    C = arr.cols
    ow = bench.out_fmt.width
    rows = [[((wd >> (c * ow)) & ((1 << ow) - 1)) for c in range(C)] for wd in rtl.y_words]
    rows = [[v - (1 << ow) if bench.out_fmt.signed and v >> (ow - 1) else v for v in r] for r in rows]
    exp = bench.y_expected
    assert len(rows) == len(exp), f"{len(rows)} output rows, expected {len(exp)} (run too short or rows lost)"
    got = np.array(rows, dtype=np.int64)
    bad = np.argwhere(got != exp)
    assert bad.size == 0, (f"SystolicArray{ARRAY_CFG}: Y[{bad[0][0]}, {bad[0][1]}] RTL {got[tuple(bad[0])]}, "
                           f"model {exp[tuple(bad[0])]} ({len(bad)} of {exp.size} differ)")
    hs = [h for h in rtl.handshakes if h]
    w_wait = sum(1 for h in hs if h[0] == "1" and h[1] == "0")
    x_ready_low = sum(1 for h in hs if h[2] == "1" and h[3] == "0")
    y_stalled = sum(1 for h in hs if h[4] == "1" and h[5] == "0")
    assert x_ready_low > 0 and y_stalled > 0  # backpressure reached the input
    assert w_wait > 0  # a write after the 1-row batch waited for its commit token to pass the PE row
    assert len(np.unique(exp)) > 3
