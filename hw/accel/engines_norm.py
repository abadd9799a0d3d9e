"""The layernorm engine: the rule of :mod:`qfx.layernorm` on each of the ``R`` rows of ``F`` codes.

Same stream contract as :mod:`qfx.hw.accel.engines` (single-element streams, C order). The input
tensor (``[..., F]``: ``R`` = the product of the leading dims rows, one for ``[F]``) is
double-buffered (:class:`~qfx.hw.accel.engines._InputBuffer`, cast to ``input`` on entry: the next
tensor loads while this one is computed); a state machine runs, one step per cycle, once per row
(rows one after another, the same per-row arithmetic; the row's base address ``r * F``):

=========  ===============  ================================================================
state      cycles           what
=========  ===============  ================================================================
SUM        F                (waits for a full buffer) read ``q[i]``; the next cycle ``S += q[i]``
SDRAIN     1                the last term is added
MEAN       1                ``mean = cast(S * 2**-k | S * r, mean)`` registered
VAR        F                read ``q[i]``; the next cycle ``V += (q[i] - mean)**2`` (exact)
VDRAIN     1                the last square is accumulated
VCAST      1                ``n = cast(V * 2**-k | V * r, var) + eps_code``; isqrt registers set
ISQ        W_s              one bit of ``s`` per cycle: the digit-by-digit search for the largest
                            ``s < 2**W_s`` with ``s*s*n <= 2**E`` (shifts, adds, one compare;
                            :func:`qfx.layernorm.inv_sqrt_digits`)
OUT        F (one a beat)   read ``q[i]``; the next cycle ``cast((q[i] - mean) * s * gamma[i] +
                            beta[i], output)`` emitted (stalls with the output); the last read
                            of the last row releases the buffer, else the next row's SUM follows
=========  ===============  ================================================================

Cycles per tensor: ``load = R F``, ``compute = R (3 F + W_s + 4)`` (issue cycles, the steady-state
initiation interval), ``outputs = R F``; the last output beat leaves ``compute + 2`` cycles after
the last input beat (:func:`layernorm_latency`), as in the other buffered engines (the whole tensor
is buffered, so a row's statistics never wait for the producer).
"""

from __future__ import annotations

import math

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from qfx import layernorm as lnx
from qfx.manifest import Node
from qfx.types import FixedType

from ..cast import CastUnit, fixed_shape
from .engines import EngineError, _InputBuffer, _is, _OutputStage

__all__ = ["LayerNormEngine", "InvSqrtUnit", "inv_sqrt_widths", "check_layernorm", "layernorm_cycles", "layernorm_latency"]


def check_layernorm(node: Node) -> None:
    """Raise :class:`EngineError` unless the node has an engine (rows of at least 2 features)."""
    if int(node.params["num_features"]) < 2:
        raise EngineError(f"node {node.name!r}: layernorm of a single feature has no RTL engine (its output is "
                          "beta); use at least 2 features")


def layernorm_rows(node: Node) -> int:
    """``R``: the rows normalized one after another (the product of the input's leading dims)."""
    return math.prod(tuple(node.input_shapes[0])[:-1])


def layernorm_cycles(node: Node) -> dict[str, int]:
    """``load`` (input beats), ``compute`` (the cycles of the state machine per tensor: ``3 F + W_s + 4``
    per row), ``outputs``."""
    f, rows = int(node.params["num_features"]), layernorm_rows(node)
    ws = node.formats["inv_std"].width
    return {"load": rows * f, "compute": rows * (3 * f + ws + 4), "outputs": rows * f}


def layernorm_latency(node: Node, last_in: int) -> int:
    """Cycle of the last output beat when the last input beat is accepted in cycle ``last_in``."""
    return last_in + layernorm_cycles(node)["compute"] + 2


def inv_sqrt_widths(n_bits: int, e: int, width: int) -> int:
    """Width of the inverse square root's P / A / B registers (every trial fits)."""
    return max(e + 1, n_bits + 2 * width) + 3


class InvSqrtUnit(wiring.Component):
    """``k = min(isqrt(2**e // n), 2**width - 1)`` for ``n >= 1``, one bit per cycle.

    ``start`` (with ``n``) loads the registers; ``width`` cycles later ``k`` holds the result (kept
    until the next ``start``)
    (:func:`qfx.layernorm.inv_sqrt_digits`: ``P = k*k*n``, ``A = (k*n) << (j+1)``, ``B = n << 2j``;
    the trial ``P + A + B <= 2**e`` decides bit ``j``; only shifts, adds and one compare).
    """

    def __init__(self, n_bits: int, e: int, width: int) -> None:
        self._nb, self._e, self._w = int(n_bits), int(e), int(width)
        super().__init__({"n": In(unsigned(self._nb)), "start": In(1), "k": Out(unsigned(self._w))})

    def elaborate(self, platform):
        m = Module()
        ws, wp = self._w, inv_sqrt_widths(self._nb, self._e, self._w)
        pp, aa, bb = (Signal(unsigned(wp), name=f"isq_{k}") for k in ("p", "a", "b"))
        trial = Signal(unsigned(wp), name="isq_trial")
        take = Signal(name="isq_take")
        m.d.comb += [trial.eq(pp + aa + bb), take.eq(trial <= (1 << self._e))]
        left = Signal(range(ws + 1), name="isq_left")  # steps still to do
        with m.If(self.start):
            m.d.sync += [pp.eq(0), aa.eq(0), bb.eq(self.n << (2 * (ws - 1))), self.k.eq(0), left.eq(ws)]
        with m.Elif(left.any()):
            m.d.sync += left.eq(left - 1)
            with m.If(take):
                m.d.sync += [pp.eq(trial), aa.eq((aa + (bb << 1)) >> 1)]
            with m.Else():
                m.d.sync += aa.eq(aa >> 1)
            m.d.sync += [bb.eq(bb >> 2), self.k.eq(Cat(take, self.k[:-1]) if ws > 1 else take)]
        return m


class LayerNormEngine(wiring.Component):
    """layernorm node on ``[..., F]``: see the module docstring for the schedule.

    Parameters
    ----------
    node : Node
        A ``layernorm`` node (input ``[F]`` or ``[..., F]``: each row normalized on its own).
    src : FixedType
        Format of the codes arriving on ``i`` (the producer's output format).
    """

    def __init__(self, node: Node, src: FixedType) -> None:
        check_layernorm(node)
        self._node, self._src = node, src
        self._out_fmt = node.formats["output"]
        super().__init__({"i": In(stream.Signature(fixed_shape(src))),
                          "o": Out(stream.Signature(fixed_shape(self._out_fmt)))})

    @property
    def input_ports(self) -> list:
        return [self.i]

    @property
    def cycles(self) -> dict[str, int]:
        return layernorm_cycles(self._node)

    def elaborate(self, platform):
        m = Module()
        node = self._node
        f, p = node.formats, node.params
        nf = int(p["num_features"])
        xi, mf, vf, sf = f["input"], f["mean"], f["var"], f["inv_std"]
        tt = lnx.types(f, nf)
        ws = sf.width
        e = 2 * sf.frac_bits + vf.frac_bits
        eps = int(p["eps_code"])
        wn = max(vf.width, eps.bit_length()) + 1

        rows = layernorm_rows(node)
        buf = _InputBuffer(m, "in", self.i, self._src, xi, rows * nf, slots=2)
        idx = Signal(range(nf), name="ln_idx")
        last = idx == nf - 1
        if rows > 1:
            row = Signal(range(rows), name="ln_row")
            last_row = _is(row, rows - 1)
            base = Signal(range(rows * nf), name="ln_base")  # row * F
        else:
            last_row = Const(1, 1)
        s_acc = Signal(fixed_shape(tt["sum"]), name="ln_sum")
        mean = Signal(fixed_shape(mf), name="ln_mean")
        v_acc = Signal(fixed_shape(tt["sqsum"]), name="ln_sqsum")
        rd_s, rd_v = Signal(name="ln_rd_s"), Signal(name="ln_rd_v")
        m.submodules.isqrt = isq = InvSqrtUnit(wn, e, ws)
        kk = isq.k
        j = Signal(range(max(ws, 2)), name="ln_j")
        out = _OutputStage(m, self.o)
        adv = out.adv
        v1 = Signal(name="ln_v1")
        # a read may be issued unless stage 1 holds an element the stalled output has not taken yet
        go = Signal(name="ln_go")
        m.d.comb += go.eq(~v1 | adv)
        ren = Signal(name="ln_ren")
        if rows > 1:
            addr = Signal(range(rows * nf), name="ln_addr")
            m.d.comb += addr.eq(base + idx)
        else:
            addr = idx
        data = buf.read(0, addr, ren)

        # the mean and variance casts (S and V read on the grid 2**-k finer, or times the reciprocal)
        recip = None if lnx.is_pow2(nf) else Const(int(node.arrays["reciprocal"]), fixed_shape(f["reciprocal"]))
        m.submodules.mean_cast = mean_cast = CastUnit(tt["mean_pre"], mf)
        m.submodules.var_cast = var_cast = CastUnit(tt["var_pre"], vf)
        mpre = Signal(fixed_shape(tt["mean_pre"]), name="ln_mean_pre")
        vpre = Signal(fixed_shape(tt["var_pre"]), name="ln_var_pre")
        m.d.comb += [mpre.eq(s_acc if recip is None else s_acc * recip), mean_cast.i.eq(mpre),
                     vpre.eq(v_acc if recip is None else v_acc * recip), var_cast.i.eq(vpre)]

        # the deviation of the element read last cycle
        fd = tt["d"].frac_bits
        dev = Signal(fixed_shape(tt["d"]), name="ln_d")
        m.d.comb += dev.eq((data << (fd - xi.frac_bits)) - (mean << (fd - mf.frac_bits)))
        sq = Signal(fixed_shape(tt["d"] * tt["d"]), name="ln_sq")
        m.d.comb += sq.eq(dev * dev)
        with m.If(rd_v):
            m.d.sync += v_acc.eq(v_acc + sq)
        with m.If(rd_s):
            m.d.sync += s_acc.eq(s_acc + data)

        # output path: stage 1 holds the element read in the previous advancing cycle
        idx1 = Signal(range(nf), name="ln_idx1")
        t_fmt, pre_fmt = tt["t"], tt["pre"]
        t = Signal(fixed_shape(t_fmt), name="ln_t")
        m.d.comb += t.eq(dev * kk)
        pre = Signal(fixed_shape(pre_fmt), name="ln_pre")
        if p["affine"]:
            g_fmt = f["scale"]
            g_rom = Memory(shape=fixed_shape(g_fmt), depth=nf,
                           init=[int(v) for v in np.asarray(node.arrays["scale"]).reshape(-1)])
            m.submodules.gamma_rom = g_rom
            g_rp = g_rom.read_port(domain="comb")
            m.d.comb += g_rp.addr.eq(idx1)
            tg_fmt = t_fmt * g_fmt
            tg = Signal(fixed_shape(tg_fmt), name="ln_tg")
            m.d.comb += tg.eq(t * g_rp.data)
            if p["bias"]:
                b_fmt = f["shift"]
                b_rom = Memory(shape=fixed_shape(b_fmt), depth=nf,
                               init=[int(v) for v in np.asarray(node.arrays["shift"]).reshape(-1)])
                m.submodules.beta_rom = b_rom
                b_rp = b_rom.read_port(domain="comb")
                m.d.comb += b_rp.addr.eq(idx1)
                fp = pre_fmt.frac_bits
                m.d.comb += pre.eq((tg << (fp - tg_fmt.frac_bits)) + (b_rp.data << (fp - b_fmt.frac_bits)))
            else:
                m.d.comb += pre.eq(tg)
        else:
            m.d.comb += pre.eq(t)
        m.submodules.out_cast = out_cast = CastUnit(pre_fmt, self._out_fmt)
        m.d.comb += out_cast.i.eq(pre)
        out.emit(m, v1 & adv, out_cast.o)

        issuing = Signal(name="ln_issuing")
        summing = Signal(name="ln_summing")
        in_var = Signal(name="ln_in_var")
        m.d.sync += [rd_s.eq(summing), rd_v.eq(in_var)]
        with m.If(adv):
            m.d.sync += [v1.eq(issuing), idx1.eq(idx)]
        buf.release(issuing & adv & last & last_row)

        # the state machine as a plain register (Amaranth's FSM leaves verilator -Wall warnings)
        SUM, SDRAIN, MEAN, VAR, VDRAIN, VCAST, ISQ, OUT = range(8)
        state = Signal(range(8), name="ln_state")

        def st(k: int):
            return _is(state, k)

        with m.If(st(SUM)):  # also the idle state: waits for a full buffer
            m.d.comb += [summing.eq(buf.ready & go), ren.eq(go)]
            with m.If(summing):
                m.d.sync += idx.eq(Mux(last, 0, idx + 1))
                with m.If(last):
                    m.d.sync += state.eq(SDRAIN)
        with m.Elif(st(SDRAIN)):
            m.d.comb += ren.eq(adv)
            m.d.sync += state.eq(MEAN)
        with m.Elif(st(MEAN)):
            m.d.comb += ren.eq(adv)
            m.d.sync += [mean.eq(mean_cast.o), s_acc.eq(0), v_acc.eq(0), state.eq(VAR)]
        with m.Elif(st(VAR)):
            m.d.comb += [in_var.eq(1), ren.eq(1)]
            m.d.sync += idx.eq(Mux(last, 0, idx + 1))
            with m.If(last):
                m.d.sync += state.eq(VDRAIN)
        with m.Elif(st(VDRAIN)):
            m.d.comb += ren.eq(adv)
            m.d.sync += state.eq(VCAST)
        with m.Elif(st(VCAST)):
            m.d.comb += [ren.eq(adv), isq.n.eq(var_cast.o + eps), isq.start.eq(1)]
            m.d.sync += [j.eq(0), state.eq(ISQ)]
        with m.Elif(st(ISQ)):  # the unit steps one bit per cycle (start low)
            m.d.comb += ren.eq(adv)
            m.d.sync += j.eq(j + 1)
            with m.If(j == ws - 1):
                m.d.sync += state.eq(OUT)
        with m.Else():  # OUT
            m.d.comb += [issuing.eq(1), ren.eq(adv)]
            with m.If(adv):
                m.d.sync += idx.eq(Mux(last, 0, idx + 1))
                with m.If(last):  # the next row (or, after the last, the next tensor)
                    m.d.sync += state.eq(SUM)
                    if rows > 1:
                        m.d.sync += [row.eq(Mux(last_row, 0, row + 1)), base.eq(Mux(last_row, 0, base + nf))]
        return m
