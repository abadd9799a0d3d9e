"""Layer engines of the whole-network accelerator: one per manifest node.

Every engine takes the codes of its producer(s) as an ``amaranth.lib.stream``
of single elements in C order (channel, row, column) and emits its output
codes the same way, so engines chain like the nodes of the manifest. Each
computes exactly what :mod:`qfx.reference` documents for its op:

* :class:`MACEngine` (dense, conv2d): buffers the whole input tensor, then
  for every output element in C order runs the documented accumulation loop
  ``acc = cast(init, accum)``; ``acc = cast(acc + x[k] * w[k], accum)`` over
  k = (input channel, kernel row, kernel column); ``y = cast(acc, output)``,
  one term per cycle. Weights sit in a ROM (block RAM for large layers);
  the per-channel accumulator start ``cast(bias, accum)`` in a second ROM.
* :class:`PoolEngine` (maxpool2d, avgpool2d): buffers the input, reduces each
  window (max, or exact sum then the divisor), one window element per cycle.
* :class:`AddEngine` (add): buffers both operands (the two paths of a
  residual block arrive at different times; buffering both means the fork
  that feeds them can never deadlock), then one element per cycle.
* :class:`ElementwiseEngine` (batchnorm, relu, relu6, leaky_relu): no
  buffer, one element per cycle, a one-stage pipeline.

An engine that buffers takes a new input tensor only after it has issued
every output of the previous one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, Value, signed
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from qfx.intops import cast_codes
from qfx.manifest import Node
from qfx.types import FixedType

from ..cast import CastUnit, fixed_shape
from .loops import LoopNest

__all__ = ["MACEngine", "PoolEngine", "AddEngine", "ElementwiseEngine", "EngineError", "stream_shape"]


class EngineError(ValueError):
    """A manifest node that the RTL accelerator cannot build (names the node and the reason)."""


def stream_shape(fmt: FixedType) -> Shape:
    return fixed_shape(fmt)


def _signed(v: Value) -> Value:
    """``v`` (unsigned) as a non-negative signed value (one more bit)."""
    return Cat(v, Const(0, 1)).as_signed()


def _rom(m: Module, name: str, shape: Shape, words: list[int]) -> Any:
    """A read-only memory with one synchronous read port (block RAM or LUTs, as synthesis decides)."""
    mem = Memory(shape=shape, depth=max(len(words), 1), init=words or [0])
    m.submodules[name] = mem
    return mem.read_port(domain="sync")


def _buffer(m: Module, name: str, shape: Shape, depth: int) -> tuple[Any, Any]:
    mem = Memory(shape=shape, depth=depth, init=[])
    m.submodules[name] = mem
    return mem.write_port(), mem.read_port(domain="sync")


def _load(m: Module, name: str, port: Any, src: FixedType, dst: FixedType, depth: int, wp: Any,
          loading: Signal) -> None:
    """Fill a buffer from stream ``port`` (cast from ``src`` to ``dst`` on entry) while ``loading``;
    ``loading`` falls when the last element has been written."""
    m.submodules[f"{name}_cast"] = cast = CastUnit(src, dst)
    count = Signal(range(depth), name=f"{name}_count")
    take = port.valid & loading
    m.d.comb += [
        cast.i.eq(port.payload),
        port.ready.eq(loading),
        wp.addr.eq(count),
        wp.data.eq(cast.o),
        wp.en.eq(take),
    ]
    with m.If(take):
        m.d.sync += count.eq(Mux(count == depth - 1, 0, count + 1))
        with m.If(count == depth - 1):
            m.d.sync += loading.eq(0)


def _window_address(m: Module, *, c, oy, ox, ky, kx, geometry: dict) -> tuple[Value, Value]:
    """Buffer address of input element (c, oy*s - p + ky*d, ...) and whether it lies inside the input."""
    h, w = geometry["h"], geometry["w"]
    (sh, sw), (ph, pw), (dh, dw) = geometry["stride"], geometry["padding"], geometry["dilation"]
    bits = max(h, w, geometry["ho"] * sh, geometry["wo"] * sw).bit_length() + max(dh, dw).bit_length() + 4
    iy, ix = Signal(signed(bits)), Signal(signed(bits))
    m.d.comb += [
        iy.eq(_signed(oy) * sh + _signed(ky) * dh - ph),
        ix.eq(_signed(ox) * sw + _signed(kx) * dw - pw),
    ]
    inside = Signal()
    m.d.comb += inside.eq((iy >= 0) & (iy < h) & (ix >= 0) & (ix < w))
    n_in = geometry["c"] * h * w
    addr = Signal(range(max(n_in, 2)))
    m.d.comb += addr.eq(Mux(inside, c * (h * w) + iy.as_unsigned()[: bits - 1] * w + ix.as_unsigned()[: bits - 1], 0))
    return addr, inside


def _geometry(node: Node) -> dict:
    """Input/output sizes and window parameters of a conv / pool / dense node.

    A dense node on ``[..., F]`` applies to every row of the last axis: ``lead`` rows of ``c = F``
    features, output ``[..., O]`` in C order (row outer, output feature inner).
    """
    p = node.params
    shape = tuple(node.input_shapes[0])
    if node.op == "dense":
        lead = math.prod(shape[:-1])
        return {"dense": True, "lead": lead, "c": shape[-1], "h": lead, "w": 1, "o": p["out_features"],
                "ho": 1, "wo": 1, "kernel": (1, 1), "groups": 1}
    c, h, w = shape
    o, ho, wo = node.output_shape
    return {"dense": False, "lead": 1, "c": c, "h": h, "w": w, "o": o, "ho": ho, "wo": wo,
            "kernel": tuple(p["kernel"]), "stride": tuple(p["stride"]), "padding": tuple(p["padding"]),
            "dilation": tuple(p.get("dilation", (1, 1))), "groups": int(p.get("groups", 1))}


def engine_cycles(node: Node) -> dict[str, int]:
    """Cycles of a node's engine: ``load`` (input transfer into its buffer, 0 when it streams),
    ``compute`` (issue cycles, one term or element each) and ``outputs``."""
    n_out = math.prod(node.output_shape)
    n_in = math.prod(node.input_shapes[0]) if node.input_shapes else 0
    if node.op in ("dense", "conv2d"):
        g = _geometry(node)
        terms = g["c"] // g["groups"] * g["kernel"][0] * g["kernel"][1]
        return {"load": n_in, "compute": n_out * terms, "outputs": n_out}
    if node.op in ("maxpool2d", "avgpool2d"):
        kh, kw = node.params["kernel"]
        return {"load": n_in, "compute": n_out * kh * kw, "outputs": n_out}
    if node.op == "add":
        return {"load": n_in, "compute": n_out, "outputs": n_out}
    return {"load": 0, "compute": n_out, "outputs": n_out}


class _Sequencer:
    """The control shared by the buffered engines.

    Once every buffer is full (each ``loading`` low), the iterations of ``loops`` are issued one
    per cycle in which the output stage advances; stage 1 registers each iteration's flags while
    the buffer and ROM reads complete (``v1``: an iteration is in stage 1, ``pad1``: its element
    lies outside the input, ``first1`` / ``last1``: first / last iteration of the ``inner`` loops,
    ``done1``: the final iteration). When the final iteration leaves stage 1 the buffers reload.
    """

    def __init__(self, m: Module, out: "_OutputStage", loading: list[Signal], loops: LoopNest,
                 inner: list[int], inside: Value = Const(1, 1)) -> None:
        adv = out.adv
        issued = Signal()
        full = Const(1, 1)
        for flag in loading:
            full = full & ~flag
        self.issuing = Signal()
        m.d.comb += self.issuing.eq(full & ~issued)
        loops.step(m, self.issuing & adv)
        with m.If(self.issuing & adv & loops.all_last()):
            m.d.sync += issued.eq(1)
        self.v1, self.pad1, self.first1, self.last1, self.done1 = (
            Signal(name=n) for n in ("v1", "pad1", "first1", "last1", "done1"))
        with m.If(adv):
            m.d.sync += [
                self.v1.eq(self.issuing),
                self.pad1.eq(~inside),
                self.first1.eq(loops.all_first(inner)),
                self.last1.eq(loops.all_last(inner)),
                self.done1.eq(loops.all_last()),
            ]
        with m.If(self.v1 & adv & self.done1):
            m.d.sync += [*(flag.eq(1) for flag in loading), issued.eq(0)]


class _OutputStage:
    """The registered output of an engine: ``adv`` says whether the pipeline may move this cycle."""

    def __init__(self, m: Module, o: Any) -> None:
        self.o = o
        self.adv = Signal()
        m.d.comb += self.adv.eq(~o.valid | o.ready)
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)

    def emit(self, m: Module, when: Value, payload: Value) -> None:
        with m.If(when):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(payload)]


class _Engine(wiring.Component):
    """What every engine shares: its manifest node, its cycle counts and (for one operand) its ports."""

    def __init__(self, node: Node, members: dict) -> None:
        self._node = node
        super().__init__(members)

    @staticmethod
    def _unary(src: FixedType, out_fmt: FixedType) -> dict:
        """``i``: the producer's codes; ``o``: this node's output codes (single-element streams)."""
        return {"i": In(stream.Signature(fixed_shape(src))), "o": Out(stream.Signature(fixed_shape(out_fmt)))}

    @property
    def cycles(self) -> dict[str, int]:
        return engine_cycles(self._node)


class MACEngine(_Engine):
    """Dense / conv2d node: a buffered input, a weight ROM, one product unit, the accumulation loop.

    Parameters
    ----------
    node : Node
        A ``dense`` or ``conv2d`` node of a loaded manifest.
    src : FixedType
        Format of the codes arriving on ``i`` (the producer's output format).
    weights : WeightPlan
        The weight ROM contents and product unit for the node's weight format
        (see :mod:`qfx.hw.accel.weights`).

    Attributes
    ----------
    i : In(stream.Signature(fixed_shape(src)))
        Input codes, C order.
    o : Out(stream.Signature(fixed_shape(output)))
        Output codes, C order.

    Latency: ``N_in`` cycles to load, then ``K`` cycles per output element
    (``K`` = terms per dot product) plus 2 cycles of pipeline; one term per cycle.
    """

    def __init__(self, node: Node, src: FixedType, weights: Any) -> None:
        self._src, self._weights = src, weights
        self._geo = _geometry(node)
        f = node.formats
        self._in_fmt, self._acc_fmt, self._out_fmt = f["input"], f["accum"], f["output"]
        super().__init__(node, self._unary(src, self._out_fmt))

    def elaborate(self, platform):
        m = Module()
        g = self._geo
        in_fmt, acc_fmt, out_fmt = self._in_fmt, self._acc_fmt, self._out_fmt
        n_in = g["c"] * (g["lead"] if g["dense"] else g["h"] * g["w"])
        groups = g["groups"]
        cg, og = g["c"] // groups, g["o"] // groups
        (kh, kw) = g["kernel"]
        k_terms = cg * kh * kw

        wp, rp = _buffer(m, "ibuf", fixed_shape(in_fmt), n_in)
        loading = Signal(init=1)
        _load(m, "in", self.i, self._src, in_fmt, n_in, wp, loading)
        out = _OutputStage(m, self.o)
        adv = out.adv

        if g["dense"]:
            # rows of the last axis, then output features, then the input features (the accumulation order)
            loops = LoopNest("mac", [g["lead"], g["o"], g["c"]])
            row, oc, k_lin = loops.counters
            inner = [2]
            addr = Signal(range(max(n_in, 2)))
            m.d.comb += addr.eq(row * g["c"] + k_lin)
            inside = Const(1, 1)
        else:
            loops = LoopNest("mac", [groups, og, g["ho"], g["wo"], cg, kh, kw])
            gi, ocg, oy, ox, icg, ky, kx = loops.counters
            inner = [4, 5, 6]
            ic = gi * cg + icg if groups > 1 else icg
            oc = gi * og + ocg if groups > 1 else ocg
            addr, inside = _window_address(m, c=ic, oy=oy, ox=ox, ky=ky, kx=kx, geometry=g)
            k_lin = (icg * kh + ky) * kw + kx
        seq = _Sequencer(m, out, [loading], loops, inner, inside)
        waddr = Signal(range(max(g["o"] * k_terms, 2)))
        m.d.comb += waddr.eq(oc * k_terms + k_lin)

        plan = self._weights
        w_rp = _rom(m, "wrom", plan.word_shape, plan.words)
        m.d.comb += [rp.addr.eq(addr), rp.en.eq(adv), w_rp.addr.eq(waddr), w_rp.en.eq(adv)]

        init_codes = plan.init_codes
        if any(init_codes):
            i_rp = _rom(m, "init_rom", fixed_shape(acc_fmt), init_codes)
            m.d.comb += [i_rp.addr.eq(oc), i_rp.en.eq(adv)]
            init = i_rp.data
        else:
            init = Const(0, fixed_shape(acc_fmt))

        # Stage 1: operands arrive from the buffer and ROMs.
        v1, pad1, first1, last1 = seq.v1, seq.pad1, seq.first1, seq.last1
        m.submodules.mult = mult = plan.multiplier()
        m.d.comb += [mult.x.eq(Mux(pad1, 0, rp.data)), mult.w.eq(w_rp.data)]
        p_fmt = mult.product_fmt
        s_fmt = acc_fmt + p_fmt
        f = s_fmt.frac_bits
        acc = Signal(fixed_shape(acc_fmt))
        base = Signal(fixed_shape(acc_fmt))
        total = Signal(fixed_shape(s_fmt))
        m.d.comb += [
            base.eq(Mux(first1, init, acc)),
            total.eq((base << (f - acc_fmt.frac_bits)) + (mult.p << (f - p_fmt.frac_bits))),
        ]
        m.submodules.acc_cast = acc_cast = CastUnit(s_fmt, acc_fmt)
        m.submodules.out_cast = out_cast = CastUnit(acc_fmt, out_fmt)
        m.d.comb += [acc_cast.i.eq(total), out_cast.i.eq(acc_cast.o)]
        with m.If(v1 & adv):
            m.d.sync += acc.eq(acc_cast.o)
        out.emit(m, v1 & adv & last1, out_cast.o)
        return m


class PoolEngine(_Engine):
    """maxpool2d / avgpool2d node: a buffered input and one window element per cycle.

    Max: the largest code of the window (padding never wins), cast to ``output``.
    Average: the exact window sum (zero padding counted), read on the grid
    ``F_x + log2(divisor)`` for a power-of-two divisor, else multiplied by
    the ``reciprocal`` code; cast to ``output``.

    Latency: ``N_in`` cycles to load, then ``KH*KW`` cycles per output plus 2.
    """

    def __init__(self, node: Node, src: FixedType) -> None:
        self._src = src
        self._geo = _geometry(node)
        self._geo["o"] = self._geo["c"]
        self._geo["groups"] = self._geo["c"]
        f = node.formats
        self._in_fmt, self._out_fmt = f["input"], f["output"]
        super().__init__(node, self._unary(src, self._out_fmt))

    def elaborate(self, platform):
        m = Module()
        g, node = self._geo, self._node
        xi, out_fmt = self._in_fmt, self._out_fmt
        n_in = g["c"] * g["h"] * g["w"]
        kh, kw = g["kernel"]
        wp, rp = _buffer(m, "ibuf", fixed_shape(xi), n_in)
        loading = Signal(init=1)
        _load(m, "in", self.i, self._src, xi, n_in, wp, loading)
        out = _OutputStage(m, self.o)
        adv = out.adv
        loops = LoopNest("pool", [g["c"], g["ho"], g["wo"], kh, kw])
        c, oy, ox, ky, kx = loops.counters
        addr, inside = _window_address(m, c=c, oy=oy, ox=ox, ky=ky, kx=kx, geometry=g)
        m.d.comb += [rp.addr.eq(addr), rp.en.eq(adv)]
        seq = _Sequencer(m, out, [loading], loops, [3, 4], inside)
        v1, pad1, first1, last1 = seq.v1, seq.pad1, seq.first1, seq.last1

        if node.op == "maxpool2d":
            acc = Signal(fixed_shape(xi))
            term = Mux(pad1, xi.min_code, rp.data)
            nxt = Signal(fixed_shape(xi))
            m.d.comb += nxt.eq(Mux(first1 | (term > acc), term, acc))
            final_fmt = xi
        else:
            acc_fmt = xi.accumulator(kh * kw)
            acc = Signal(fixed_shape(acc_fmt))
            term = Mux(pad1, 0, rp.data)
            nxt = Signal(fixed_shape(acc_fmt))
            m.d.comb += nxt.eq(Mux(first1, 0, acc) + term)
            n_div = int(node.params["divisor"])
            if "reciprocal" in node.formats:
                r_fmt = node.formats["reciprocal"]
                r_code = int(np.asarray(node.arrays["reciprocal"]).reshape(-1)[0])
                final_fmt = acc_fmt * r_fmt
                scaled = Signal(fixed_shape(final_fmt))
                m.d.comb += scaled.eq(nxt * Const(r_code, fixed_shape(r_fmt)))
                nxt_final = scaled
            else:
                k = n_div.bit_length() - 1
                # The same code read k bits further right: the division by 2**k is free.
                final_fmt = FixedType(acc_fmt.width, acc_fmt.int_bits - k, acc_fmt.signed)
                nxt_final = nxt
        m.submodules.out_cast = out_cast = CastUnit(final_fmt, out_fmt)
        m.d.comb += out_cast.i.eq(nxt if node.op == "maxpool2d" else nxt_final)
        with m.If(v1 & adv):
            m.d.sync += acc.eq(nxt)
        out.emit(m, v1 & adv & last1, out_cast.o)
        return m


class AddEngine(_Engine):
    """add node: ``cast(align(cast(a, in_a)) + align(cast(b, in_b)), output)``, both operands buffered.

    Latency: the later operand's load, then one output per cycle plus 2.
    """

    def __init__(self, node: Node, src_a: FixedType, src_b: FixedType) -> None:
        self._src_a, self._src_b = src_a, src_b
        f = node.formats
        self._ta, self._tb, self._out_fmt = f["in_a"], f["in_b"], f["output"]
        self._n = math.prod(node.output_shape)
        super().__init__(node, {
            "a": In(stream.Signature(fixed_shape(src_a))),
            "b": In(stream.Signature(fixed_shape(src_b))),
            "o": Out(stream.Signature(fixed_shape(self._out_fmt))),
        })

    def elaborate(self, platform):
        m = Module()
        n, ta, tb = self._n, self._ta, self._tb
        wa, ra = _buffer(m, "abuf", fixed_shape(ta), n)
        wb, rb = _buffer(m, "bbuf", fixed_shape(tb), n)
        load_a, load_b = Signal(init=1), Signal(init=1)
        _load(m, "a", self.a, self._src_a, ta, n, wa, load_a)
        _load(m, "b", self.b, self._src_b, tb, n, wb, load_b)
        out = _OutputStage(m, self.o)
        adv = out.adv
        loops = LoopNest("add", [n])
        m.d.comb += [ra.addr.eq(loops[0]), rb.addr.eq(loops[0]), ra.en.eq(adv), rb.en.eq(adv)]
        seq = _Sequencer(m, out, [load_a, load_b], loops, [])
        v1 = seq.v1
        s_fmt = ta + tb
        f = s_fmt.frac_bits
        total = Signal(fixed_shape(s_fmt))
        m.d.comb += total.eq((ra.data << (f - ta.frac_bits)) + (rb.data << (f - tb.frac_bits)))
        m.submodules.out_cast = out_cast = CastUnit(s_fmt, self._out_fmt)
        m.d.comb += out_cast.i.eq(total)
        out.emit(m, v1 & adv, out_cast.o)
        return m


class ElementwiseEngine(_Engine):
    """batchnorm / relu / relu6 / leaky_relu node: one element per cycle, latency 1, no buffer.

    batchnorm: ``cast(x * scale[c] + align(shift[c]), output)`` (one rounding);
    relu: ``max(x, 0)``; relu6: ``min(max(x, 0), 6)`` on the grid ``max(F_x, -1)``;
    leaky_relu: ``x << s`` where ``x >= 0`` else ``x``, on the grid ``F_x + s``;
    each cast to ``output``. ``x`` is the producer's code cast to ``input``.
    """

    def __init__(self, node: Node, src: FixedType) -> None:
        self._src = src
        f = node.formats
        self._in_fmt, self._out_fmt = f["input"], f["output"]
        super().__init__(node, self._unary(src, self._out_fmt))

    def elaborate(self, platform):
        m = Module()
        node, xi, out_fmt = self._node, self._in_fmt, self._out_fmt
        m.submodules.in_cast = in_cast = CastUnit(self._src, xi)
        m.d.comb += in_cast.i.eq(self.i.payload)
        x = in_cast.o
        fx = xi.frac_bits
        if node.op == "batchnorm":
            sc_fmt, sh_fmt = node.formats["scale"], node.formats["shift"]
            shape = node.output_shape
            channels, per_channel = shape[0], math.prod(shape[1:])
            loops = LoopNest("bn", [channels, per_channel])
            loops.step(m, self.i.valid & self.i.ready)
            scale_rom = Memory(shape=fixed_shape(sc_fmt), depth=channels,
                               init=[int(v) for v in np.asarray(node.arrays["scale"]).reshape(-1)])
            shift_rom = Memory(shape=fixed_shape(sh_fmt), depth=channels,
                               init=[int(v) for v in np.asarray(node.arrays["shift"]).reshape(-1)])
            m.submodules.scale_rom, m.submodules.shift_rom = scale_rom, shift_rom
            sc_rp, sh_rp = scale_rom.read_port(domain="comb"), shift_rom.read_port(domain="comb")
            m.d.comb += [sc_rp.addr.eq(loops[0]), sh_rp.addr.eq(loops[0])]
            p_fmt = xi * sc_fmt
            v_fmt = p_fmt + sh_fmt
            f = v_fmt.frac_bits
            prod = Signal(fixed_shape(p_fmt))
            v = Signal(fixed_shape(v_fmt))
            m.d.comb += [
                prod.eq(x * sc_rp.data),
                v.eq((prod << (f - p_fmt.frac_bits)) + (sh_rp.data << (f - sh_fmt.frac_bits))),
            ]
        elif node.op == "relu":
            v_fmt = xi
            v = Signal(fixed_shape(xi))
            m.d.comb += v.eq(Mux(x[-1], 0, x) if xi.signed else x)
        elif node.op == "relu6":
            frac = max(fx, -1)
            six = 3 << (frac + 1)
            width = max(xi.width + frac - fx, six.bit_length())
            v_fmt = FixedType(width, width - frac, signed=False)
            v = Signal(fixed_shape(v_fmt))
            shifted = x << (frac - fx)
            neg = x[-1] if xi.signed else Const(0, 1)
            m.d.comb += v.eq(Mux(neg, 0, Mux(shifted > six, six, shifted)))
        elif node.op == "leaky_relu":
            s = int(node.params["slope_shift"])
            v_fmt = FixedType(xi.width + s, xi.int_bits, signed=xi.signed)
            v = Signal(fixed_shape(v_fmt))
            neg = x[-1] if xi.signed else Const(0, 1)
            m.d.comb += v.eq(Mux(neg, x, x << s))
        else:  # pragma: no cover - the builder routes only the ops above here
            raise EngineError(f"node {node.name!r}: op {node.op!r} is not an element-wise op")
        m.submodules.out_cast = out_cast = CastUnit(v_fmt, out_fmt)
        m.d.comb += out_cast.i.eq(v)
        out = _OutputStage(m, self.o)
        m.d.comb += self.i.ready.eq(out.adv)
        out.emit(m, self.i.valid & out.adv, out_cast.o)
        return m


def init_codes(node: Node) -> list[int]:
    """Per output channel, the accumulator's start ``cast(bias, accum)`` (zeros without a bias)."""
    acc = node.formats["accum"]
    n_out = node.params["out_features"] if node.op == "dense" else node.params["out_channels"]
    if "bias" not in node.arrays:
        return [0] * n_out
    bias = np.asarray(node.arrays["bias"]).reshape(-1)
    return [int(v) for v in cast_codes(bias, node.formats["bias"].frac_bits, acc).reshape(-1)]

