"""The softmax engines (manifest op ``softmax``: softmax over the ``F`` codes of each vector along an axis).

Same stream contract as :mod:`qfx.hw.accel.engines`: single-element ``amaranth.lib.stream`` ports, C
order in and out. Both compute what :mod:`qfx.reference` documents for ``softmax``.

:class:`SoftmaxEngine` (the last axis: ``[F]``, or the ``R`` rows of ``[T, S]`` / ``[H, T, S]``, which
arrive one after another in C order) works one vector at a time, in phases:

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
beat is visible in cycle ``L + 2F + 3``; back to back, one vector every ``2F + 2`` cycles (``compute``
``R (2F + 2)`` a tensor), when its producer and consumer keep up (the loads overlap the computing);
:func:`softmax_latency` follows the banks for ``R`` rows.

:class:`SoftmaxStridedEngine` (a non-last axis, e.g. the channels of ``[C, H, W]``: a vector's codes
``inner`` apart in the stream) buffers the whole tensor (:func:`softmax_strided_cycles`).
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
from .engines import EngineError, _InputBuffer, _OutputStage

__all__ = ["SoftmaxEngine", "SoftmaxStridedEngine", "softmax_cycles", "softmax_latency", "softmax_strided_cycles"]


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
    """softmax node over the last axis: per row buffer the F inputs, max, exp-table reads and exact sum,
    one exact division, F products; the rows one after another.

    Parameters
    ----------
    node : Node
        A ``softmax`` node over the last axis of its input (no ``axis`` param, or the last).
    src : FixedType
        Format of the codes arriving on ``i``.
    """

    def __init__(self, node: Node, src: FixedType) -> None:
        if node.op != "softmax":
            raise EngineError(f"node {node.name!r}: SoftmaxEngine builds softmax nodes, not {node.op!r}")
        if softmax_geometry(node.params, node.input_shapes[0])[2] > 1:
            raise EngineError(f"node {node.name!r}: SoftmaxEngine runs over the last axis; axis "
                              f"{node.params['axis']} of {list(node.input_shapes[0])} is SoftmaxStridedEngine's")
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


def softmax_strided_cycles(node: Node) -> dict[str, int]:
    """The strided engine (:class:`SoftmaxStridedEngine`, vectors ``inner > 1`` codes apart): ``load``
    the tensor, ``compute`` ``R (3F + 3)`` (per vector ``F`` max reads, a drain, ``F`` exp reads, a drain,
    the division; then ``F`` output issues), ``outputs`` the tensor."""
    outer, n, inner = softmax_geometry(node.params, node.input_shapes[0])
    total = outer * n * inner
    return {"load": total, "compute": outer * inner * (3 * n + 3), "outputs": total}


class SoftmaxStridedEngine(wiring.Component):
    """softmax node over a non-last axis (e.g. the channels of ``[C, H, W]``): vectors ``inner`` apart.

    The whole tensor is double-buffered (:class:`~qfx.hw.accel.engines._InputBuffer`, cast to ``input``
    on entry: the next tensor loads meanwhile). Per outer block ``o`` (``[outer, F, inner]`` in C order),
    for each of its ``inner`` vectors ``i`` a state machine reads the ``F`` codes at ``(o F + j) inner + i``
    twice: MAX (``m = max_j c_j``, registered one cycle after each read), EXP (``S += ROM[idx(m - c_j)]``
    exact), then DIV (``r = cast(2**K // S`` with guard and sticky ``, reciprocal)``, the combinational
    divider of :class:`SoftmaxEngine`) keeps ``m`` and ``r`` in the block's ``inner``-entry register
    files. OUT then issues the block in C order (``j`` outer, ``i`` inner), one element an output beat:
    ``e = ROM[idx(m_i - c)]`` recomputed from the buffer, ``cast(e * r_i, output)``. The same integer
    steps as :class:`SoftmaxEngine` and :mod:`qfx.reference` (one definition of the table:
    the node's ``table`` array). Cycles: :func:`softmax_strided_cycles`; the last output beat leaves
    ``compute + 2`` cycles after the last input beat.
    """

    def __init__(self, node: Node, src: FixedType) -> None:
        if node.op != "softmax":
            raise EngineError(f"node {node.name!r}: SoftmaxStridedEngine builds softmax nodes, not {node.op!r}")
        self._node, self._src = node, src
        f = node.formats
        self._in, self._exp, self._rec, self._out = f["input"], f["exp"], f["reciprocal"], f["output"]
        super().__init__({"i": In(stream.Signature(fixed_shape(src))),
                          "o": Out(stream.Signature(fixed_shape(self._out)))})

    @property
    def cycles(self) -> dict[str, int]:
        return softmax_strided_cycles(self._node)

    @property
    def input_ports(self) -> list:
        return [self.i]

    def elaborate(self, platform):
        m = Module()
        node = self._node
        p = node.params
        outer, n, inner = softmax_geometry(p, node.input_shapes[0])
        total = outer * n * inner
        size, shift, lo = int(p["size"]), int(p["shift"]), int(p["lo_code"])
        hi = lo + (size << shift) - 1
        xi, ef, rf = self._in, self._exp, self._rec

        buf = _InputBuffer(m, "sm_in", self.i, self._src, xi, total, slots=2)
        j = Signal(range(max(n, 2)), name="sm_j")
        i = Signal(range(max(inner, 2)), name="sm_i")
        ja = Signal(range(max(n * inner, 2)), name="sm_ja")  # j * inner
        last_j, last_i = _is(j, n - 1), _is(i, inner - 1)
        if outer > 1:
            o = Signal(range(outer), name="sm_o")
            base = Signal(range(total), name="sm_base")  # o * F * inner
            last_o = _is(o, outer - 1)
        else:
            last_o = Const(1, 1)
        addr = Signal(range(max(total, 2)), name="sm_addr")
        m.d.comb += addr.eq((base if outer > 1 else 0) + ja + i)
        ren = Signal(name="sm_ren")
        data = buf.read(0, addr, ren)

        out = _OutputStage(m, self.o)
        adv = out.adv
        v1 = Signal(name="sm_v1")
        go = Signal(name="sm_go")
        m.d.comb += go.eq(~v1 | adv)
        i1 = Signal(range(max(inner, 2)), name="sm_i1")

        # per-vector results of the block: max and reciprocal (register files, written in DIV)
        m_mem = Memory(shape=fixed_shape(xi), depth=max(inner, 2), init=[])
        r_mem = Memory(shape=fixed_shape(rf), depth=max(inner, 2), init=[])
        m.submodules.sm_max_rf, m.submodules.sm_rec_rf = m_mem, r_mem
        m_wp, r_wp = m_mem.write_port(), r_mem.write_port()
        m_rp, r_rp = m_mem.read_port(domain="comb"), r_mem.read_port(domain="comb")
        m.d.comb += [m_rp.addr.eq(i1), r_rp.addr.eq(i1)]

        # d = max - c, clipped, the ROM index (the max: the running one, or the vector's in OUT)
        mx = Signal(fixed_shape(xi), name="sm_mx")
        msel = Signal(fixed_shape(xi), name="sm_msel")
        m.d.comb += msel.eq(Mux(v1, m_rp.data, mx))
        w = max(xi.width + 1, hi.bit_length()) + 2
        d = Signal(signed(w), name="sm_d")
        m.d.comb += d.eq(msel - data)
        lo_c, hi_c = Const(lo, signed(w)), Const(hi, signed(w))
        dc = Signal(signed(w), name="sm_dc")
        m.d.comb += dc.eq(Mux(d < lo_c, lo_c, Mux(d > hi_c, hi_c, d)))
        off = Signal(signed(w + 1), name="sm_off")
        m.d.comb += off.eq(dc - lo_c)
        abits = max((size - 1).bit_length(), 1)
        rom = Memory(shape=fixed_shape(ef), depth=size, init=[int(v) for v in node.arrays["table"]])
        m.submodules.rom = rom
        rd = rom.read_port(domain="comb")
        m.d.comb += rd.addr.eq(off[shift:shift + abits])

        # sum and division (as SoftmaxEngine)
        sf = softmax_sum_format(ef, n)
        ssum = Signal(unsigned(sf.width), name="sm_sum")
        k, g = softmax_quotient_format(ef, rf)
        num = Const(1 << k, unsigned(k + 1))
        q = Signal(unsigned(k + 1), name="sm_q")
        rem = Signal(unsigned(sf.width), name="sm_rem")
        m.d.comb += [q.eq(num // ssum), rem.eq(num % ssum)]
        tfmt = FixedType(k + 2, k + 2 - g, signed=False)
        t = Signal(unsigned(k + 2), name="sm_t")
        m.d.comb += t.eq(Mux(rem != 0, (q << 1) | 1, q << 1))
        m.submodules.rcast = rcast = CastUnit(tfmt, rf)
        m.d.comb += rcast.i.eq(t)

        # output: cast(e * r_i, output) of the element read in the previous advancing cycle
        pfmt = FixedType(ef.width + rf.width, ef.int_bits + rf.int_bits, signed=False)
        prod = Signal(unsigned(pfmt.width), name="sm_prod")
        m.d.comb += prod.eq(rd.data * r_rp.data)
        m.submodules.ocast = ocast = CastUnit(pfmt, self._out)
        m.d.comb += ocast.i.eq(prod)
        out.emit(m, v1 & adv, ocast.o)

        rd_max, rd_first, rd_exp = Signal(name="sm_rd_max"), Signal(name="sm_rd_first"), Signal(name="sm_rd_exp")
        step_max, in_exp, issuing = Signal(name="sm_step_max"), Signal(name="sm_in_exp"), Signal(name="sm_issuing")
        m.d.sync += [rd_max.eq(step_max), rd_first.eq(step_max & ~j.any()), rd_exp.eq(in_exp)]
        with m.If(rd_max & (rd_first | (data > mx))):
            m.d.sync += mx.eq(data)
        with m.If(rd_exp):
            m.d.sync += ssum.eq(ssum + rd.data)
        with m.If(adv):
            m.d.sync += [v1.eq(issuing), i1.eq(i)]
        buf.release(issuing & adv & last_i & last_j & last_o)

        MAX, MDRAIN, EXP, EDRAIN, DIV, OUT = range(6)
        state = Signal(range(6), name="sm_state")

        def st(kk: int):
            return _is(state, kk)

        def next_j() -> None:
            m.d.sync += [j.eq(Mux(last_j, 0, j + 1)), ja.eq(Mux(last_j, 0, ja + inner))]

        with m.If(st(MAX)):  # also the idle state: waits for a full buffer
            m.d.comb += [step_max.eq(buf.ready & go), ren.eq(go)]
            with m.If(step_max):
                next_j()
                with m.If(last_j):
                    m.d.sync += state.eq(MDRAIN)
        with m.Elif(st(MDRAIN)):
            m.d.comb += ren.eq(adv)
            m.d.sync += state.eq(EXP)
        with m.Elif(st(EXP)):
            m.d.comb += [in_exp.eq(1), ren.eq(1)]
            next_j()
            with m.If(last_j):
                m.d.sync += state.eq(EDRAIN)
        with m.Elif(st(EDRAIN)):
            m.d.comb += ren.eq(adv)
            m.d.sync += state.eq(DIV)
        with m.Elif(st(DIV)):
            m.d.comb += [ren.eq(adv), m_wp.addr.eq(i), m_wp.data.eq(mx), m_wp.en.eq(1),
                         r_wp.addr.eq(i), r_wp.data.eq(rcast.o), r_wp.en.eq(1)]
            m.d.sync += [ssum.eq(0), i.eq(Mux(last_i, 0, i + 1)), state.eq(Mux(last_i, OUT, MAX))]
        with m.Else():  # OUT: the block in C order, j outer, i inner
            m.d.comb += [issuing.eq(1), ren.eq(adv)]
            with m.If(adv):
                m.d.sync += i.eq(Mux(last_i, 0, i + 1))
                with m.If(last_i):
                    next_j()
                    with m.If(last_j):
                        m.d.sync += state.eq(MAX)
                        if outer > 1:
                            m.d.sync += [o.eq(Mux(last_o, 0, o + 1)), base.eq(Mux(last_o, 0, base + n * inner))]
        return m
