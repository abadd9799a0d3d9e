"""The softmax engine (manifest op ``softmax``: softmax over the ``F`` features of a ``[F]`` vector).

Same stream contract as :mod:`qfx.hw.accel.engines`: single-element ``amaranth.lib.stream`` ports, C
order in and out. It computes what :mod:`qfx.reference` documents for ``softmax``, one vector at a
time, in phases:

1. **load** (``F`` cycles at one beat per cycle, beside the others): each input is cast to the input
   format (a CastUnit) and kept in one of two register banks with its running maximum; a full bank
   waits for the computing phases, the other loads the next vector (``ready`` is low only while both
   banks are full).
2. **start** (1 cycle): the computing state machine sees a full bank.
3. **exp / sum** (``F`` cycles): per element ``d = max - c``, clipped to the table's range,
   ``e = ROM[(d - lo) >> shift]`` (the node's ``table`` array: the exp table of
   :func:`qfx.tables.contents`, read combinationally), ``e`` kept, ``S += e`` exactly; then the bank is free.
4. **divide** (1 cycle): ``q = 2**K // S``, ``rem = 2**K % S`` (a combinational divider),
   ``t = 2q + (rem != 0)`` cast to the reciprocal format (a CastUnit), registered.
5. **emit** (``F`` cycles when never stalled): ``cast(e_j * r, output)`` (exact product, a
   CastUnit) through the registered output stage.

Cycle model (:func:`softmax_cycles`): with the last input beat accepted in cycle ``L`` the last output
beat is visible in cycle ``L + 2F + 3``; back to back, one vector every ``2F + 2`` cycles (``compute``),
when its producer and consumer keep up (the loads overlap the computing).
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from qfx.manifest import Node
from qfx.tables import softmax_geometry, softmax_quotient_format, softmax_sum_format
from qfx.types import FixedType

from ..cast import CastUnit, fixed_shape
from .engines import EngineError, _OutputStage

__all__ = ["SoftmaxEngine", "softmax_cycles", "softmax_latency"]


def _is(sig, k: int):
    """``sig == k`` (``~sig.any()`` for 0: Yosys writes ``== 0`` as a logical not, which -Wall flags)."""
    return ~sig.any() if k == 0 else sig == k


def softmax_cycles(node: Node) -> dict[str, int]:
    """``load`` R F (double-buffered per vector: the next vector loads meanwhile), ``compute``
    R (2F + 2) (per vector a start cycle, F exp/sum cycles, the division, F emit cycles), ``outputs``
    R F; ``R`` vectors of ``F`` codes (:func:`qfx.tables.softmax_geometry`)."""
    outer, n, inner = softmax_geometry(node.params, node.input_shapes[0])
    rows = outer * inner
    return {"load": rows * n, "compute": rows * (2 * n + 2), "outputs": rows * n}


def softmax_latency(node: Node, last_in: int) -> int:
    """Cycle of the last output beat when the last input beat is accepted in cycle ``last_in`` at the
    earliest, the producer offering its ``R F`` beats one per cycle up to then (held back while both
    banks are full). One vector: ``last_in + 2F + 3``. For ``R`` rows the schedule of the engine: row
    ``r`` loads into bank ``r % 2`` once row ``r - 2`` has left it (``F + 1`` cycles after that row's
    start), starts when its bank is full and row ``r - 1`` is done (``2F + 2`` cycles a row), and its
    last output leaves ``2F + 2`` cycles after its start."""
    outer, n, inner = softmax_geometry(node.params, node.input_shapes[0])
    rows = outer * inner
    first = last_in - (rows * n - 1)  # the earliest cycle of the first beat
    starts: list[int] = []
    t = first - 1  # the cycle of the previous accepted beat
    for r in range(rows):
        t = max(t + 1, first + r * n)  # the row's first beat
        if r >= 2:
            t = max(t, starts[r - 2] + n + 1)  # its bank is free again
        t += n - 1  # the row's last beat (one a cycle)
        start = t + 1 if r == 0 else max(t + 1, starts[r - 1] + 2 * n + 2)
        starts.append(start)
    return starts[-1] + 2 * n + 2


class SoftmaxEngine(wiring.Component):
    """softmax node: buffer the F inputs, max, exp-table reads and exact sum, one exact division, F products.

    Parameters
    ----------
    node : Node
        A ``softmax`` node.
    src : FixedType
        Format of the codes arriving on ``i``.
    """

    def __init__(self, node: Node, src: FixedType) -> None:
        if node.op != "softmax":
            raise EngineError(f"node {node.name!r}: SoftmaxEngine builds softmax nodes, not {node.op!r}")
        self._node, self._src = node, src
        f = node.formats
        self._in, self._exp, self._rec, self._out = f["input"], f["exp"], f["reciprocal"], f["output"]
        super().__init__({"i": In(stream.Signature(fixed_shape(src))),
                          "o": Out(stream.Signature(fixed_shape(self._out)))})

    @property
    def cycles(self) -> dict[str, int]:
        return softmax_cycles(self._node)

    @property
    def input_ports(self) -> list:
        return [self.i]

    def elaborate(self, platform):
        m = Module()
        node = self._node
        p = node.params
        _outer, n, _inner = softmax_geometry(p, node.input_shapes[0])
        size, shift, lo = int(p["size"]), int(p["shift"]), int(p["lo_code"])
        hi = lo + (size << shift) - 1
        xi, ef, rf = self._in, self._exp, self._rec

        # 1. load: cast, keep, running max -- two banks, so the next vector loads while one is computed.
        # (Register files with explicit write enables and read-mux chains: no case statements on a counter
        # whose range exceeds F, so the Verilog lints clean.)
        m.submodules.in_cast = in_cast = CastUnit(self._src, xi)
        m.d.comb += in_cast.i.eq(self.i.payload)
        cb = [[Signal(fixed_shape(xi), name=f"c{b}_{j}") for j in range(n)] for b in range(2)]
        mxs = [Signal(fixed_shape(xi), name=f"max{b}") for b in range(2)]
        full = [Signal(name=f"full{b}") for b in range(2)]
        lbank, cbank = Signal(name="load_bank"), Signal(name="compute_bank")
        lcnt = Signal(range(max(n, 2)))
        m.d.comb += self.i.ready.eq(~Mux(lbank, full[1], full[0]))
        with m.If(self.i.valid & self.i.ready):
            for b in range(2):
                with m.If(lbank == b):
                    for j in range(n):
                        with m.If(_is(lcnt, j)):
                            m.d.sync += cb[b][j].eq(in_cast.o)
                    with m.If(~lcnt.any() | (in_cast.o > mxs[b])):
                        m.d.sync += mxs[b].eq(in_cast.o)
                    with m.If(_is(lcnt, n - 1)):
                        m.d.sync += full[b].eq(1)
            with m.If(_is(lcnt, n - 1)):
                m.d.sync += [lcnt.eq(0), lbank.eq(~lbank)]
            with m.Else():
                m.d.sync += lcnt.eq(lcnt + 1)
        ebuf = [Signal(fixed_shape(ef), name=f"e{j}") for j in range(n)]
        mx = Signal(fixed_shape(xi))
        m.d.comb += mx.eq(Mux(cbank, mxs[1], mxs[0]))
        cnt = Signal(range(max(n, 2)))
        last = _is(cnt, n - 1)
        c_cur, e_cur = Signal(fixed_shape(xi)), Signal(fixed_shape(ef))
        c_val, e_val = cb[0][0], ebuf[0]
        for b in range(2):
            for j in range(n):
                c_val = Mux((cbank == b) & _is(cnt, j), cb[b][j], c_val)
        for j in range(1, n):
            e_val = Mux(cnt == j, ebuf[j], e_val)
        m.d.comb += [c_cur.eq(c_val), e_cur.eq(e_val)]
        full_c = Signal()
        m.d.comb += full_c.eq(Mux(cbank, full[1], full[0]))

        # 2. exp / sum: d = mx - c (>= 0), clipped, the ROM index
        w = max(xi.width + 1, hi.bit_length()) + 2
        d = Signal(signed(w))
        m.d.comb += d.eq(mx - c_cur)
        lo_c, hi_c = Const(lo, signed(w)), Const(hi, signed(w))
        dc = Signal(signed(w))
        m.d.comb += dc.eq(Mux(d < lo_c, lo_c, Mux(d > hi_c, hi_c, d)))
        off = Signal(signed(w + 1))
        m.d.comb += off.eq(dc - lo_c)
        abits = max((size - 1).bit_length(), 1)
        rom = Memory(shape=fixed_shape(ef), depth=size, init=[int(v) for v in node.arrays["table"]])
        m.submodules.rom = rom
        rd = rom.read_port(domain="comb")
        m.d.comb += rd.addr.eq(off[shift:shift + abits])
        sf = softmax_sum_format(ef, n)
        ssum = Signal(unsigned(sf.width))

        # 3. divide: t = 2 * (2**K // S) + sticky, cast to the reciprocal format
        k, g = softmax_quotient_format(ef, rf)
        num = Const(1 << k, unsigned(k + 1))
        q = Signal(unsigned(k + 1))
        rem = Signal(unsigned(sf.width))
        m.d.comb += [q.eq(num // ssum), rem.eq(num % ssum)]
        tfmt = FixedType(k + 2, k + 2 - g, signed=False)
        t = Signal(unsigned(k + 2))
        m.d.comb += t.eq(Mux(rem != 0, (q << 1) | 1, q << 1))
        m.submodules.rcast = rcast = CastUnit(tfmt, rf)
        m.d.comb += rcast.i.eq(t)
        r = Signal(fixed_shape(rf))

        # 4. emit: cast(e * r, output)
        pfmt = FixedType(ef.width + rf.width, ef.int_bits + rf.int_bits, signed=False)
        prod = Signal(unsigned(pfmt.width))
        m.d.comb += prod.eq(e_cur * r)
        m.submodules.ocast = ocast = CastUnit(pfmt, self._out)
        m.d.comb += ocast.i.eq(prod)
        out = _OutputStage(m, self.o)

        # the state: 0 start, 1 exp / sum, 2 divide, 3 emit (If chains, no case statement)
        state = Signal(2, name="softmax_state")
        with m.If(_is(state, 0)):
            with m.If(full_c):
                m.d.sync += state.eq(1)
        with m.Elif(state == 1):
            for j in range(n):
                with m.If(_is(cnt, j)):
                    m.d.sync += ebuf[j].eq(rd.data)
            m.d.sync += ssum.eq(Mux(cnt.any(), ssum + rd.data, rd.data))
            with m.If(last):  # the bank's codes are used up: free it for the loader
                m.d.sync += [cnt.eq(0), cbank.eq(~cbank)]
                for b in range(2):
                    with m.If(cbank == b):
                        m.d.sync += full[b].eq(0)
                m.d.sync += state.eq(2)
            with m.Else():
                m.d.sync += cnt.eq(cnt + 1)
        with m.Elif(state == 2):
            m.d.sync += r.eq(rcast.o)
            m.d.sync += state.eq(3)
        with m.Else():
            with m.If(out.adv):
                out.emit(m, Const(1), ocast.o)
                with m.If(last):
                    m.d.sync += cnt.eq(0)
                    m.d.sync += state.eq(0)
                with m.Else():
                    m.d.sync += cnt.eq(cnt + 1)
        return m
