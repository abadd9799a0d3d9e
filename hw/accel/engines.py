"""Layer engines of the whole-network accelerator: one per manifest node.

Every engine takes the codes of its producer(s) as an ``amaranth.lib.stream``
of single elements in C order (channel, row, column) and emits its output
codes the same way, so engines chain like the nodes of the manifest. Each
computes exactly what :mod:`qfx.reference` documents for its op:

* :class:`MACEngine` (dense, conv2d): buffers the whole input tensor, then
  for every output element runs the documented accumulation loop
  ``acc = cast(init, accum)``; ``acc = cast(acc + x[k] * w[k], accum)`` over
  k = (input channel, kernel row, kernel column); ``y = cast(acc, output)``,
  folded: ``pe`` output channels x ``simd`` terms per cycle (the casts still
  in that order), results reordered to C order. Weights sit in a ROM (block
  RAM for large layers); the accumulator starts ``cast(bias, accum)`` in a second ROM.
* :class:`PoolEngine` (maxpool2d, avgpool2d): buffers the input, reduces each
  window (max, or exact sum then the divisor), one window element per cycle.
* :class:`AddEngine` (add): buffers both operands (the two paths of a
  residual block arrive at different times; buffering both means the fork
  that feeds them can never deadlock), then one element per cycle.
* :class:`ElementwiseEngine` (batchnorm, relu, relu6, leaky_relu): no
  buffer, one element per cycle, a one-stage pipeline.

An engine that buffers has a double-buffered input: it takes the next input
tensor while it computes the current one, so successive inferences overlap.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from amaranth.hdl import Array, Cat, Const, Module, Mux, Shape, Signal, Value, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from qfx.intops import cast_codes
from qfx.manifest import Node
from qfx.types import FixedType, MXType

from ..cast import CastUnit, fixed_shape
from ..pe.dsp_pipe import PRODUCT_LATENCY, packable, product_stage
from .folding import MAC_OPS, Folding, check_folding, folded_cycles, mac_dims
from .khot_wired import constant_products, hardwired
from .loops import LoopNest

__all__ = ["MACEngine", "PoolEngine", "AddEngine", "ElementwiseEngine", "EngineError", "stream_shape", "engine_cycles",
           "engine_latency"]


class EngineError(ValueError):
    """A manifest node that the RTL accelerator cannot build (names the node and the reason)."""


def stream_shape(fmt: FixedType) -> Shape:
    return fixed_shape(fmt)


def _signed(v: Value) -> Value:
    """``v`` (unsigned) as a non-negative signed value (one more bit)."""
    return Cat(v, Const(0, 1)).as_signed()


def _is(v: Value, k: int) -> Value:
    """``v == k``, spelled ``~v.any()`` for 0 (whose ``!v`` in the Verilog trips verilator -Wall)."""
    return ~v.any() if k == 0 else v == k


def _delay(m: Module, v: Value, n: int, name: str, *, data: bool = False) -> Value:
    """``v`` delayed by ``n`` registers (a data value: registers without reset)."""
    for k in range(n):
        r = Signal(v.shape(), name=f"{name}_d{k}" if k < n - 1 else name, reset_less=data)
        m.d.sync += r.eq(v)
        v = r
    return v


def _pick(values: list, index: Value) -> Value:
    """``values[index]`` as a chain of multiplexers (a variable bit-select is a shift and an
    Array of a size that is not a power of two an incomplete case in the Verilog)."""
    out = values[0]
    for k in range(1, len(values)):
        out = Mux(_is(index, k), values[k], out)
    return out


class _RingHead:
    """The head of a ring of ``slots`` slots, kept twice: ``index`` (binary, for addresses) and
    ``onehot`` (for the slots' flags: :meth:`pick` of a flag is an AND-OR of registers, not a
    compare of the head and a mux; such flags gate a buffer's ``ready``, which a fork ANDs into
    its other consumers' ``valid``, and an engine's issue and release: the longest paths of the
    dataflow accelerator)."""

    def __init__(self, name: str, slots: int) -> None:
        self.slots = slots
        self.index = Signal(range(slots), name=name)
        self.onehot = Signal(slots, name=f"{name}1", init=1)

    def pick(self, flags: list) -> Value:
        """``flags[index]``."""
        return (Cat(*flags) & self.onehot).any()

    def advance(self, m: Module, when: Value) -> None:
        """Move to the next slot (after the last: the first) where ``when``."""
        with m.If(when):
            m.d.sync += [self.index.eq(Mux(self.index == self.slots - 1, 0, self.index + 1)),
                         self.onehot.eq(self.onehot.rotate_left(1))]


def _rom(m: Module, name: str, shape: Shape, words: list[int]) -> Any:
    """A read-only memory with one synchronous read port (block RAM or LUTs, as synthesis decides).
    At least 2 words (a 1-word memory has a zero-width address in the Verilog)."""
    words = list(words) or [0]
    if len(words) == 1:
        words = words * 2
    mem = Memory(shape=shape, depth=len(words), init=words)
    m.submodules[name] = mem
    return mem.read_port(domain="sync")


class _InputBuffer:
    """A multi-buffered input tensor: the loader fills one slot from a stream while the compute
    reads another, so an engine takes inference n+1 while it computes inference n.

    ``slots`` tensor slots (2: double buffering; more where the other operand of an add arrives
    later, see :meth:`Accelerator.add_slots`) form a ring. Codes arrive on ``port`` (cast from
    ``src`` to ``dst`` on entry) into slot ``wh``; when its last element is written the slot is
    ``full`` and ``wh`` moves on. The compute reads slot ``rh`` while :attr:`ready`;
    :meth:`release` (in the cycle of its last read) frees it and moves ``rh`` on.

    ``lanes`` read ports, each its own memory: ``partition=False`` replicates the tensor in every
    lane (any lane reads any element; what a conv window needs), ``partition=True`` stores element
    ``n`` only in lane ``n % lanes`` at word ``n // lanes`` (``lanes`` must divide ``depth``; the
    ``lanes`` consecutive elements of a word are read together, what a dense row needs).
    """

    def __init__(self, m: Module, name: str, port: Any, src: FixedType, dst: FixedType, depth: int, *,
                 lanes: int = 1, partition: bool = False, slots: int = 2) -> None:
        m.submodules[f"{name}_cast"] = cast = CastUnit(src, dst)
        self.words = depth // lanes if partition else depth
        self.lanes, self.slots = lanes, slots
        self.full = [Signal(name=f"{name}_full{h}") for h in range(slots)]
        wh, rh = _RingHead(f"{name}_wh", slots), _RingHead(f"{name}_rh", slots)
        self.wh, self.rh = wh.index, rh.index
        self.ready = Signal(name=f"{name}_ready")
        m.d.comb += self.ready.eq(rh.pick(self.full))
        space = ~wh.pick(self.full)
        take = port.valid & space
        m.d.comb += [cast.i.eq(port.payload), port.ready.eq(space)]
        loops = LoopNest(f"{name}_ld", [self.words, lanes] if partition else [depth])
        loops.step(m, take)
        self._m, self._rps = m, []
        waddr = Signal(range(slots * self.words), name=f"{name}_waddr")
        m.d.comb += waddr.eq(self.wh * self.words + loops[0])
        for j in range(lanes):
            mem = Memory(shape=fixed_shape(dst), depth=slots * self.words, init=[])
            m.submodules[f"{name}_buf{j}"] = mem
            wp = mem.write_port()
            sel = _is(loops[1], j) if partition and lanes > 1 else Const(1, 1)
            m.d.comb += [wp.addr.eq(waddr), wp.data.eq(cast.o), wp.en.eq(take & sel)]
            self._rps.append(mem.read_port(domain="sync"))
        last = take & loops.all_last()
        wh.advance(m, last)
        self._release = Signal(name=f"{name}_release")
        for h in range(slots):
            with m.If(last & wh.onehot[h]):
                m.d.sync += self.full[h].eq(1)
            with m.Elif(self._release & rh.onehot[h]):
                m.d.sync += self.full[h].eq(0)
        rh.advance(m, self._release)

    def read(self, lane: int, addr: Value, en: Value = Const(1, 1)) -> Value:
        """Synchronous read of word ``addr`` of slot ``rh`` in ``lane``: the data one cycle later."""
        return self.read_at(lane, self.address(addr), en)

    def address(self, addr: Value) -> Value:
        """The memory address of word ``addr`` of slot ``rh`` (register it to read a cycle later:
        the slot stays the one it was computed in, even if :meth:`release` moved ``rh`` on; the
        freed slot's reload cannot overwrite it first, its reads see the old data)."""
        return self.rh * self.words + addr

    def read_at(self, lane: int, addr: Value, en: Value = Const(1, 1)) -> Value:
        """Synchronous read of memory address ``addr`` (:meth:`address`) in ``lane``."""
        rp = self._rps[lane]
        self._m.d.comb += [rp.addr.eq(addr), rp.en.eq(en)]
        return rp.data

    def release(self, when: Value) -> None:
        self._m.d.comb += self._release.eq(when)


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


def engine_cycles(node: Node, folding: Folding = Folding()) -> dict[str, int]:
    """Cycles per inference of a node's engine: ``load`` (input beats into its buffer, 0 when it
    streams), ``compute`` (issue cycles) and ``outputs`` (output beats). Dense / conv2d engines
    fold (:func:`~qfx.hw.accel.folding.folded_cycles`); the others issue one term or element per
    cycle. Every buffered engine is double-buffered, so its steady-state initiation interval is the
    largest of the three."""
    if node.op in MAC_OPS:
        return folded_cycles(node, folding)
    from .engines_ops import OPS, ops_engine_cycles  # that module builds on this one

    if node.op in OPS:
        return ops_engine_cycles(node)
    n_out = math.prod(node.output_shape)
    n_in = math.prod(node.input_shapes[0]) if node.input_shapes else 0
    if node.op in ("maxpool2d", "avgpool2d"):
        kh, kw = node.params["kernel"]
        return {"load": n_in, "compute": n_out * kh * kw, "outputs": n_out}
    if node.op == "add":
        return {"load": n_in, "compute": n_out, "outputs": n_out}
    return {"load": 0, "compute": n_out, "outputs": n_out}


def engine_latency(node: Node, folding: Folding, last_in: int) -> int:
    """Cycle of a node's last output beat when its last input beat is accepted in cycle ``last_in``
    (one tensor alone, the output never stalled): the schedule the engines below implement.

    Buffered engines start computing the cycle after their last input beat. A pool / add engine
    emits its last output 2 cycles after its last issue; an element-wise engine 1 cycle after its
    input. A MAC engine computes blocks (:meth:`MACEngine._blocks`) of ``C`` issue cycles into a
    ring of output slots; a block's results are readable 3 + D cycles after its last issue (D: the
    pipeline registers, :meth:`MACEngine._extra_depth`), the
    emitter reads ``E`` codes per block one per cycle (each leaves 2 cycles after its read), and a
    block may start only in a slot whose previous block has been read out. A batchnorm engine is a
    pipeline of :attr:`ElementwiseEngine.BN_STAGES` stages.
    """
    c = engine_cycles(node, folding)
    if node.op in MAC_OPS:
        pblk, c_blk, slots = MACEngine._block_plan(node, folding)
        e_blk = folding.pe * pblk
        n_blk = c["compute"] // c_blk
        starts, reads = [], []
        for b in range(n_blk):
            s = last_in + 1 if b == 0 else starts[-1] + c_blk
            if b >= slots:
                s = max(s, reads[b - slots] + e_blk)
            starts.append(s)
            r = s + c_blk + 2 + MACEngine._extra_depth(node, folding)
            reads.append(r if b == 0 else max(r, reads[-1] + e_blk))
        return reads[-1] + e_blk + 1
    from .engines_ops import OPS, ops_engine_latency

    if node.op in OPS:
        return ops_engine_latency(node, last_in)
    if node.op in ("maxpool2d", "avgpool2d", "add"):
        return last_in + c["compute"] + 2
    if node.op == "batchnorm":
        return last_in + ElementwiseEngine.BN_STAGES
    return last_in + 1


class _Sequencer:
    """The control of the pool and add engines.

    While every input buffer holds a full tensor (each :attr:`_InputBuffer.ready`), the
    iterations of ``loops`` are issued one per cycle in which the output stage advances, across
    inferences without a bubble; stage 1 registers each iteration's flags while the buffer reads
    complete (``v1``: an iteration is in stage 1, ``pad1``: its element lies outside the input,
    ``first1`` / ``last1``: first / last iteration of the ``inner`` loops). The issue of the final
    iteration releases the buffers (their next halves are then read, the freed ones reload).
    """

    def __init__(self, m: Module, out: "_OutputStage", buffers: list, loops: LoopNest,
                 inner: list[int], inside: Value = Const(1, 1)) -> None:
        adv = out.adv
        full = Const(1, 1)
        for buf in buffers:
            full = full & buf.ready
        self.issuing = Signal()
        m.d.comb += self.issuing.eq(full)
        loops.step(m, self.issuing & adv)
        for buf in buffers:
            buf.release(self.issuing & adv & loops.all_last())
        self.v1, self.pad1, self.first1, self.last1 = (Signal(name=n) for n in ("v1", "pad1", "first1", "last1"))
        with m.If(adv):
            m.d.sync += [
                self.v1.eq(self.issuing),
                self.pad1.eq(~inside),
                self.first1.eq(loops.all_first(inner)),
                self.last1.eq(loops.all_last(inner)),
            ]


class SkidInput:
    """A zero-latency skid buffer in front of a streaming engine's input: the port's ``ready`` is
    a register, so a stall no longer travels combinationally up a chain of streaming engines.

    Without it a streaming engine's ``i.ready`` is its output stage's ``~o.valid | o.ready``, so
    through batchnorm -> relu -> fork the consumers' buffer state reached the producer's output
    registers in one cycle (the digits CNN's critical path, 7 LUT levels). Here the beat passes
    straight through while the engine takes it (``payload`` / ``valid`` are the port's); a beat
    the engine does not take is held in one register, ``port.ready`` is low while it is held, and
    the engine reads it next. Neither latency nor throughput change.

    Attributes
    ----------
    payload, valid : Value
        The beat offered to the engine.
    ready : Signal
        Driven by the engine: it takes the beat this cycle.
    """

    def __init__(self, m: Module, port: Any, name: str = "skid") -> None:
        held = Signal(port.payload.shape(), name=f"{name}_data", reset_less=True)
        full = Signal(name=f"{name}_full")
        self.ready = Signal(name=f"{name}_ready")
        self.payload = Mux(full, held, port.payload)
        self.valid = full | port.valid
        m.d.comb += port.ready.eq(~full)
        with m.If(~full & port.valid & ~self.ready):
            m.d.sync += [held.eq(port.payload), full.eq(1)]
        with m.Elif(full & self.ready):
            m.d.sync += full.eq(0)


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
    """Dense / conv2d node, folded: ``pe`` output channels x ``simd`` terms per cycle.

    The input tensor is double-buffered (:class:`_InputBuffer`: ``simd`` read lanes, partitioned
    for dense rows, replicated for conv windows), so the next inference loads while this one is
    computed. Each cycle issues one (output-channel block, position, term chunk) iteration: ``simd``
    input codes, a ROM word of ``pe x simd`` weights (output channel, then the accumulation order,
    as :func:`~qfx.hw.accel.weights.plan_weights` lays them out) and ``pe`` accumulator starts
    ``cast(bias, accum)``. ``pe x simd`` product units (the node's PE kind: fixed-point, K-hot,
    minifloat or L-Mul, :func:`~qfx.hw.pe.multiplier_for`) form the products, which are registered
    (the DSP's MREG). Per output channel the ``simd`` products of a cycle are then accumulated:

    * declared accumulator (``accum_exact`` false): one after another in the documented order,
      ``acc = cast(acc + p[j], accum)`` for ``j = 0 .. simd-1`` (a chain of adds and casts), so
      every folding gives the bits of the one-term-per-cycle loop;
    * exact accumulator (``accum_exact``): an exact adder tree of the ``simd`` products, then
      one add to ``acc`` (no cast can round or overflow, so order does not matter).

    Results of a block (``pe`` channels at the block's positions: every output position of a
    conv group, one row of a dense node) are cast to ``output`` and written to a ring of output
    blocks; an emitter reads them back in C order, one code per beat, while later blocks compute.

    Parameters
    ----------
    node : Node
        A ``dense`` or ``conv2d`` node of a loaded manifest.
    src : FixedType
        Format of the codes arriving on ``i`` (the producer's output format).
    weights : WeightPlan
        The weight ROM contents and product unit for the node's weight format
        (see :mod:`qfx.hw.accel.weights`).
    folding : Folding
        ``pe`` (divides the output channels per group) and ``simd`` (divides the terms per
        output); :func:`~qfx.hw.accel.folding.check_folding` says the valid values.

    Attributes
    ----------
    i : In(stream.Signature(fixed_shape(src)))
        Input codes, C order.
    o : Out(stream.Signature(fixed_shape(output)))
        Output codes, C order.

    Cycles per inference: :func:`~qfx.hw.accel.folding.folded_cycles` (``load``, ``compute``,
    ``outputs``); in steady state the engine takes a new input tensor every ``max`` of the three.

    Raises
    ------
    FoldingError
        (a ``ValueError``) if the folding does not divide the node.
    """

    def __init__(self, node: Node, src: FixedType, weights: Any, folding: Folding = Folding()) -> None:
        self._src, self._weights = src, weights
        self._folding = check_folding(node, folding)
        self._geo = _geometry(node)
        f = node.formats
        self._in_fmt, self._acc_fmt, self._out_fmt = f["input"], f["accum"], f["output"]
        self._exact = bool(node.params.get("accum_exact", False))
        super().__init__(node, self._unary(src, self._out_fmt))

    @property
    def folding(self) -> Folding:
        return self._folding

    @property
    def packed(self) -> bool:
        """Whether pairs of output channels share one DSP multiply per term (WP486)."""
        return self._packs(self._node, self._folding)

    @property
    def hardwired(self) -> bool:
        """Whether the products are constant shift-adds of K-hot weights, one per weight (every
        weight its own product unit: :func:`~qfx.hw.accel.khot_wired.hardwired`; no weight ROM)."""
        return hardwired(self._node, self._folding)

    @property
    def cycles(self) -> dict[str, int]:
        return folded_cycles(self._node, self._folding)

    def _blocks(self) -> tuple[int, int, int]:
        return self._block_plan(self._node, self._folding)

    @staticmethod
    def _block_plan(node: Node, folding: Folding) -> tuple[int, int, int]:
        """``(positions per block, compute cycles per block, output slots)`` of the result ring."""
        o, p, k_terms = mac_dims(node)
        pblk = 1 if node.op == "dense" else p
        c_blk, e_blk = pblk * (k_terms // folding.simd), folding.pe * pblk
        # A slot is busy from its block's first issue to its last read, C + E + 3 + D cycles (D:
        # the pipeline registers, _extra_depth): enough slots that neither the compute nor the
        # emitter ever waits for the other in steady state.
        d = MACEngine._extra_depth(node, folding)
        slots = max(2, -(-(c_blk + e_blk + 3 + d) // max(c_blk, e_blk)))
        return pblk, c_blk, slots

    @staticmethod
    def _packs(node: Node, folding: Folding) -> bool:
        """Whether output channel pairs share DSP multiplies (WP486): ``pe >= 2`` and int8-class
        fixed-point operands (:func:`~qfx.hw.pe.dsp_pipe.packable`)."""
        from qfx.manifest import weight_envelope

        f = node.formats
        return folding.pe >= 2 and packable(f["input"], weight_envelope(f["weight"]), node.params["multiply"])

    @staticmethod
    def _tree_stages(node: Node, folding: Folding) -> int:
        """Registers in the exact adder tree of the ``simd`` products: one after every second
        level (the unpacking of packed products counted as a level); 0 for a declared
        accumulator, whose per-term casts chain in one cycle."""
        if not node.params.get("accum_exact", False) or folding.simd < 2 or isinstance(node.formats["weight"], MXType):
            return 0  # (MX: engines_mx's block-shifted sums are not registered inside)
        levels = (folding.simd - 1).bit_length()
        return (levels + int(MACEngine._packs(node, folding))) // 2

    @staticmethod
    def _window_stages(node: Node) -> int:
        """Registers between a conv's loop counters and its buffer reads: the window address
        (``oy * stride - pad + tap``, the inside test, ``c*H*W + y*W + x``) is a chain of adds
        and compares; registering it keeps it out of the read's cycle. 0 for dense."""
        return 1 if node.op == "conv2d" else 0

    @staticmethod
    def _extra_depth(node: Node, folding: Folding) -> int:
        """Pipeline registers beyond the one product register of the unpipelined engine: the
        window address's (conv), the A/B and P registers of the product units, the adder tree's,
        the final sum's and the output cast's."""
        return (MACEngine._window_stages(node) + PRODUCT_LATENCY - 1 + MACEngine._tree_stages(node, folding)
                + 2)

    def elaborate(self, platform):
        m = Module()
        g = self._geo
        pe, simd = self._folding.pe, self._folding.simd
        in_fmt, acc_fmt, out_fmt = self._in_fmt, self._acc_fmt, self._out_fmt
        dense = g["dense"]
        n_in = g["c"] * (g["lead"] if dense else g["h"] * g["w"])
        groups = g["groups"]
        cg, og = g["c"] // groups, g["o"] // groups
        (kh, kw) = g["kernel"]
        k_terms = cg * kh * kw
        ks = k_terms // simd
        pblk, _c_blk, slots = self._blocks()

        buf = _InputBuffer(m, "in", self.i, self._src, in_fmt, n_in, lanes=simd, partition=dense)

        # ---- stage 0: the loop nest, buffer / ROM addresses
        if dense:
            loops = LoopNest("mac", [g["lead"], g["o"] // pe, ks])
            row, ocb, kc = loops.counters
            blk = [2]
            gi = Const(0, 1)
            pos = Const(0, 1)
            word = Signal(range(max(n_in // simd, 2)))
            m.d.comb += word.eq(row * (g["c"] // simd) + kc)
            x_data = [buf.read(j, word) for j in range(simd)]
            pads = [Const(0, 1)] * simd
        else:
            loops = LoopNest("mac", [groups, og // pe, g["ho"], g["wo"], ks])
            gi, ocb, oy, ox, kc = loops.counters
            blk = [2, 3, 4]
            pos = Signal(range(max(pblk, 2)))
            m.d.comb += pos.eq(oy * g["wo"] + ox)
            x_data, pads = self._window_reads(m, buf, gi, oy, ox, kc)
        blk_first, blk_last = loops.all_first(blk), loops.all_last(blk)

        # the ring of output blocks: per slot, owned by a block being computed / holding results
        busy = [Signal(name=f"slot_busy{s}") for s in range(slots)]
        ready = [Signal(name=f"slot_full{s}") for s in range(slots)]
        cslot_head, eslot_head = _RingHead("cslot", slots), _RingHead("eslot", slots)
        cslot, eslot = cslot_head.index, eslot_head.index
        cslot_busy = Signal()
        m.d.comb += cslot_busy.eq(cslot_head.pick(busy))
        issue = Signal()
        m.d.comb += issue.eq(buf.ready & (~blk_first | ~cslot_busy))
        loops.step(m, issue)
        buf.release(issue & loops.all_last())
        cslot_head.advance(m, issue & blk_last)

        plan = self._weights
        wbits = plan.word_shape.width
        words = plan.words
        rom_words = []
        oc_blocks = g["o"] // pe
        wired = self.hardwired
        for b in range(0 if wired else oc_blocks):
            for c in range(ks):
                word_v = 0
                for i in range(pe):
                    for j in range(simd):
                        v = words[(b * pe + i) * k_terms + c * simd + j]
                        word_v |= (int(v) & ((1 << wbits) - 1)) << ((i * simd + j) * wbits)
                rom_words.append(word_v)
        ocb_lin = (gi * (og // pe) + ocb) if groups > 1 else ocb
        ws = self._window_stages(self._node)  # the ROM reads wait for the window address's registers
        # The ROM word ocb_lin * ks + kc, from a register stepping with the loops (base = ocb_lin * ks):
        # no multiply-add between the loop counters and the ROM (the K-hot MLP's critical path)
        waddr0 = Signal(range(max(len(rom_words), 2)))
        if not wired:  # (hard-wired products read no ROM)
            wbase = Signal(range(max(len(rom_words), 2) + ks), name="wrom_base")
            m.d.comb += waddr0.eq(wbase + kc)
            # the positions and term chunks inside one channel block (the dense row is the outer loop:
            # its ROM walk restarts every row)
            inner = [2] if dense else [2, 3, 4]
            with m.If(issue & loops.all_last(inner)):
                m.d.sync += wbase.eq(Mux(loops.all_last([1, 2] if dense else None), 0, wbase + ks))
        waddr = _delay(m, waddr0, ws, "wrom_addr")
        ocb_lin = _delay(m, ocb_lin, ws, "ocb_lin")
        if not wired:  # hard-wired K-hot products have their weights in the wiring (khot_wired)
            w_rp = _rom(m, "wrom", unsigned(pe * simd * wbits), rom_words)
            m.d.comb += [w_rp.addr.eq(waddr), w_rp.en.eq(1)]
        mx, sh1 = plan.mx, None
        if mx is not None:  # MX weights: the block scales' shifts, a ROM beside the weight ROM (engines_mx)
            from .engines_mx import lane_groups, mx_shift_words

            mx_groups = lane_groups(mx.block_of_term, simd)
            if mx.max_shift:
                s_rp = _rom(m, "shift_rom", unsigned(pe * len(mx_groups) * mx.shift_bits),
                            mx_shift_words(mx, pe, simd, mx_groups, oc_blocks, k_terms))
                m.d.comb += [s_rp.addr.eq(waddr), s_rp.en.eq(1)]
                sh1 = s_rp.data
        abits = fixed_shape(acc_fmt).width
        init_codes = plan.init_codes
        if any(init_codes):
            init_words = [sum((int(init_codes[b * pe + i]) & ((1 << abits) - 1)) << (i * abits) for i in range(pe))
                          for b in range(oc_blocks)]
            i_rp = _rom(m, "init_rom", unsigned(pe * abits), init_words)
            m.d.comb += [i_rp.addr.eq(ocb_lin), i_rp.en.eq(1)]
            init_word = i_rp.data
        else:
            init_word = Const(0, pe * abits)

        # ---- stage 1: operands from the buffer and ROMs into the product units (A/B, M, P
        # registers: hw/pe/dsp_pipe.py), two output channels per DSP multiply where they pack
        v1, first1, last1, end1 = Signal(name="v1"), Signal(name="first1"), Signal(name="last1"), Signal(name="end1")
        slot1 = Signal(range(slots), name="slot1")
        wa1 = Signal(range(slots * pblk), name="wa1")
        pad1 = Signal(simd, name="pad1")
        first0, last0 = loops.is_first(len(loops.sizes) - 1), loops.is_last(len(loops.sizes) - 1)
        wa0 = Signal(range(slots * pblk), name="wa0")
        m.d.comb += wa0.eq(cslot * pblk + pos)
        issue_w, first_w, last_w, end_w = (_delay(m, v, ws, n) for v, n in
                                           ((issue, "issue_w"), (first0, "first_w"), (last0, "last_w"),
                                            (blk_last, "end_w")))
        slot_w, wa_w = _delay(m, cslot, ws, "slot_w"), _delay(m, wa0, ws, "wa_w")
        m.d.sync += [v1.eq(issue_w), first1.eq(first_w), last1.eq(last_w), end1.eq(end_w), slot1.eq(slot_w),
                     wa1.eq(wa_w), pad1.eq(Cat(*pads))]
        xs = [Mux(pad1[j], 0, x_data[j]) for j in range(simd)]
        if wired:
            products, p_fmt = constant_products(m, self._node, xs)
        else:
            w_lanes = [[w_rp.data[(i * simd + j) * wbits: (i * simd + j + 1) * wbits] for j in range(simd)]
                       for i in range(pe)]
            products, p_fmt = product_stage(m, plan, xs, w_lanes, pack=self.packed)
        init1 = Signal(pe * abits, name="init1")
        m.d.comb += init1.eq(init_word)
        tree_regs = self._tree_stages(self._node, self._folding)

        # ---- stage a: accumulate the simd products of each of the pe channels (the products
        # after PRODUCT_LATENCY registers, the exact adder tree after its tree_regs registers)
        lag = PRODUCT_LATENCY + tree_regs
        va, firsta, lasta, enda = (_delay(m, s, lag, n) for s, n in ((v1, "va"), (first1, "firsta"),
                                                                     (last1, "lasta"), (end1, "enda")))
        slota, waa = _delay(m, slot1, lag, "slota"), _delay(m, wa1, lag, "waa")
        inita = _delay(m, init1, lag, "inita", data=True)
        # ---- stage f: the final sum registered; stage w: its cast to output registered, written
        vf, lastf, endf = (_delay(m, s, 1, n) for s, n in ((va, "vf"), (lasta, "lastf"), (enda, "endf")))
        slotf, waf = _delay(m, slota, 1, "slotf"), _delay(m, waa, 1, "waf")
        vw, lastw, endw = (_delay(m, s, 1, n) for s, n in ((vf, "vw"), (lastf, "lastw"), (endf, "endw")))
        slotw, waw = _delay(m, slotf, 1, "slotw"), _delay(m, waf, 1, "waw")
        if sh1 is not None:  # MX: the block shifts travel with their products
            sha = _delay(m, sh1, lag, "shifta", data=True)
        banks = []
        for i in range(pe):
            acc = Signal(fixed_shape(acc_fmt), name=f"acc_{i}")
            base = Signal(fixed_shape(acc_fmt), name=f"base_{i}")
            m.d.comb += base.eq(Mux(firsta, inita[i * abits: (i + 1) * abits].as_signed() if acc_fmt.signed
                                    else inita[i * abits: (i + 1) * abits], acc))
            if mx is not None:
                from .engines_mx import mx_accumulate

                sb, ng = mx.shift_bits, len(mx_groups)
                nxt = mx_accumulate(m, f"acc{i}", base, products[i], p_fmt, acc_fmt, mx, mx_groups,
                                    lambda g, i=i: sha[(i * ng + g) * sb: (i * ng + g + 1) * sb])
            else:
                nxt = self._accumulate(m, f"acc{i}", base, products[i], p_fmt)
            with m.If(va):
                m.d.sync += acc.eq(nxt)
            fin = Signal(fixed_shape(acc_fmt), name=f"fin_{i}", reset_less=True)
            m.d.sync += fin.eq(nxt)
            m.submodules[f"out_cast_{i}"] = out_cast = CastUnit(acc_fmt, out_fmt)
            m.d.comb += out_cast.i.eq(fin)
            y = Signal(fixed_shape(out_fmt), name=f"y_{i}", reset_less=True)
            m.d.sync += y.eq(out_cast.o)
            mem = Memory(shape=fixed_shape(out_fmt), depth=slots * pblk, init=[])
            m.submodules[f"obuf{i}"] = mem
            wp = mem.write_port()
            m.d.comb += [wp.addr.eq(waw), wp.data.eq(y), wp.en.eq(vw & lastw)]
            banks.append(mem)

        # ---- the emitter: blocks back in C order (channel of the block, then position)
        out = _OutputStage(m, self.o)
        adv = out.adv
        eloops = LoopNest("emit", [pe, pblk])
        lane, epos = eloops.counters
        e_ready = Signal()
        m.d.comb += e_ready.eq(eslot_head.pick(ready))
        e_issue = Signal()
        m.d.comb += e_issue.eq(e_ready & adv)
        eloops.step(m, e_issue)
        e_done = e_issue & eloops.all_last()
        eslot_head.advance(m, e_done)
        for s in range(slots):
            with m.If(issue & blk_first & cslot_head.onehot[s]):
                m.d.sync += busy[s].eq(1)
            with m.Elif(e_done & eslot_head.onehot[s]):
                m.d.sync += busy[s].eq(0)
            with m.If(vw & lastw & endw & _is(slotw, s)):
                m.d.sync += ready[s].eq(1)
            with m.Elif(e_done & eslot_head.onehot[s]):
                m.d.sync += ready[s].eq(0)
        raddr = Signal(range(slots * pblk))
        m.d.comb += raddr.eq(eslot * pblk + epos)
        rdata = []
        for mem in banks:
            rp = mem.read_port(domain="sync")
            m.d.comb += [rp.addr.eq(raddr), rp.en.eq(adv)]
            rdata.append(rp.data)
        ev1 = Signal(name="ev1")
        lane1 = Signal(range(max(pe, 2)), name="lane1")
        with m.If(adv):
            m.d.sync += [ev1.eq(e_issue), lane1.eq(lane)]
        out.emit(m, ev1 & adv, _pick(rdata, lane1))
        return m

    def _window_reads(self, m: Module, buf: "_InputBuffer", gi, oy, ox, kc) -> tuple[list, list]:
        """Per simd lane ``j``: read input element of term ``kc * simd + j`` of the window at
        (oy, ox) of group ``gi``; returns the read data and the lanes' "outside the input" flags."""
        g = self._geo
        simd = self._folding.simd
        h, w, cg = g["h"], g["w"], g["c"] // g["groups"]
        kh, kw = g["kernel"]
        (sh, sw), (ph, pw), (dh, dw) = g["stride"], g["padding"], g["dilation"]
        ks = cg * kh * kw // simd
        bits = max(h, w, g["ho"] * sh, g["wo"] * sw, kh * dh, kw * dw).bit_length() + 3
        ybase, xbase = Signal(signed(bits)), Signal(signed(bits))
        m.d.comb += [ybase.eq(_signed(oy) * sh - ph), xbase.eq(_signed(ox) * sw - pw)]
        n_in = g["c"] * h * w
        cbase = Signal(range(max(n_in, 2)))
        m.d.comb += cbase.eq(gi * (cg * h * w))
        data, pads = [], []
        for j in range(simd):
            taps = []
            for c in range(ks):
                k = c * simd + j
                taps.append(((k // (kh * kw)) * h * w, (k // kw) % kh * dh, k % kw * dw))
            cb, yb, xb = (max(max(t[q] for t in taps), 1).bit_length() for q in range(3))
            if ks == 1:
                tc, ty, tx = (Const(v, max(v, 1).bit_length()) for v in taps[0])
            else:
                rom = Memory(shape=unsigned(cb + yb + xb), depth=ks,
                             init=[t[0] | t[1] << cb | t[2] << (cb + yb) for t in taps])
                m.submodules[f"taps{j}"] = rom
                rp = rom.read_port(domain="comb")
                m.d.comb += rp.addr.eq(kc)
                tc, ty, tx = rp.data[:cb], rp.data[cb: cb + yb], rp.data[cb + yb:]
            iy, ix = Signal(signed(bits), name=f"iy{j}"), Signal(signed(bits), name=f"ix{j}")
            m.d.comb += [iy.eq(ybase + _signed(ty)), ix.eq(xbase + _signed(tx))]
            inside = Signal(name=f"inside{j}")
            m.d.comb += inside.eq((iy >= 0) & (iy < h) & (ix >= 0) & (ix < w))
            addr = Signal(range(max(n_in, 2)), name=f"addr{j}")
            m.d.comb += addr.eq(Mux(inside, cbase + tc + iy.as_unsigned()[: bits - 1] * w
                                    + ix.as_unsigned()[: bits - 1], 0))
            ws = self._window_stages(self._node)
            data.append(buf.read_at(j, _delay(m, buf.address(addr), ws, f"waddr{j}")))
            pads.append(_delay(m, ~inside, ws, f"wpad{j}"))
        return data, pads

    def _accumulate(self, m: Module, name: str, base: Value, products: list, p_fmt: FixedType) -> Value:
        """``base`` plus the products of one cycle, with the node's casts (see the class docstring)."""
        acc_fmt = self._acc_fmt
        if self._exact and len(products) > 1:
            terms = list(products)
            level = int(self.packed)  # the unpacking add of packed products is a level
            while len(terms) > 1:  # balanced exact adder tree (Amaranth widens every add)
                terms = [terms[q] + terms[q + 1] if q + 1 < len(terms) else terms[q]
                         for q in range(0, len(terms), 2)]
                level += 1
                if level % 2 == 0:  # a register after every second level (_tree_stages)
                    terms = [_delay(m, t, 1, f"{name}_t{level}_{q}", data=True) for q, t in enumerate(terms)]
            t_fmt = p_fmt.accumulator(len(products))
            tree = Signal(fixed_shape(t_fmt), name=f"{name}_tree")
            m.d.comb += tree.eq(terms[0])
            chain = [(tree, t_fmt)]
        else:
            chain = [(p, p_fmt) for p in products]
        cur = base
        for j, (p, fmt) in enumerate(chain):
            s_fmt = acc_fmt + fmt
            f = s_fmt.frac_bits
            total = Signal(fixed_shape(s_fmt), name=f"{name}_sum{j}")
            m.d.comb += total.eq((cur << (f - acc_fmt.frac_bits)) + (p << (f - fmt.frac_bits)))
            m.submodules[f"{name}_cast{j}"] = cast = CastUnit(s_fmt, acc_fmt)
            m.d.comb += cast.i.eq(total)
            cur = cast.o
        return cur


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
        buf = _InputBuffer(m, "in", self.i, self._src, xi, n_in)
        out = _OutputStage(m, self.o)
        adv = out.adv
        loops = LoopNest("pool", [g["c"], g["ho"], g["wo"], kh, kw])
        c, oy, ox, ky, kx = loops.counters
        addr, inside = _window_address(m, c=c, oy=oy, ox=ox, ky=ky, kx=kx, geometry=g)
        data = buf.read(0, addr, adv)
        seq = _Sequencer(m, out, [buf], loops, [3, 4], inside)
        v1, pad1, first1, last1 = seq.v1, seq.pad1, seq.first1, seq.last1

        if node.op == "maxpool2d":
            acc = Signal(fixed_shape(xi))
            term = Mux(pad1, xi.min_code, data)
            nxt = Signal(fixed_shape(xi))
            m.d.comb += nxt.eq(Mux(first1 | (term > acc), term, acc))
            final_fmt = xi
        else:
            acc_fmt = xi.accumulator(kh * kw)
            acc = Signal(fixed_shape(acc_fmt))
            term = Mux(pad1, 0, data)
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

    def __init__(self, node: Node, src_a: FixedType, src_b: FixedType, slots: tuple[int, int] = (2, 2)) -> None:
        self._src_a, self._src_b = src_a, src_b
        self._slots = slots
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
        buf_a = _InputBuffer(m, "a", self.a, self._src_a, ta, n, slots=self._slots[0])
        buf_b = _InputBuffer(m, "b", self.b, self._src_b, tb, n, slots=self._slots[1])
        out = _OutputStage(m, self.o)
        adv = out.adv
        loops = LoopNest("add", [n])
        da, db = buf_a.read(0, loops[0], adv), buf_b.read(0, loops[0], adv)
        seq = _Sequencer(m, out, [buf_a, buf_b], loops, [])
        v1 = seq.v1
        s_fmt = ta + tb
        f = s_fmt.frac_bits
        total = Signal(fixed_shape(s_fmt))
        m.d.comb += total.eq((da << (f - ta.frac_bits)) + (db << (f - tb.frac_bits)))
        m.submodules.out_cast = out_cast = CastUnit(s_fmt, self._out_fmt)
        m.d.comb += out_cast.i.eq(total)
        out.emit(m, v1 & adv, out_cast.o)
        return m


class ElementwiseEngine(_Engine):
    """batchnorm / relu / relu6 / leaky_relu node: one element per cycle, no buffer; latency 1
    (batchnorm: :attr:`BN_STAGES`, pipelined around its multiply); a :class:`SkidInput` in front.

    batchnorm: ``cast(x * scale[c] + align(shift[c]), output)`` (one rounding);
    relu: ``max(x, 0)``; relu6: ``min(max(x, 0), 6)`` on the grid ``max(F_x, -1)``;
    leaky_relu: ``x << s`` where ``x >= 0`` else ``x``, on the grid ``F_x + s``;
    each cast to ``output``. ``x`` is the producer's code cast to ``input``.

    Parameters
    ----------
    node : Node
        The element-wise node.
    src : FixedType
        The format of the codes it is fed.
    lane, lanes : int
        One lane of a ``lanes``-wide vector unit (the systolic arch's output pass): the engine sees
        the codes of channels ``lane``, ``lane + lanes``, ``lane + 2 lanes``, ... in that order (each
        channel's codes together), so a per-channel batchnorm keeps only those channels' parameters
        (past the last channel: zeros, codes never read). Default: one lane, every channel in order.
    """

    def __init__(self, node: Node, src: FixedType, *, lane: int = 0, lanes: int = 1) -> None:
        if not (isinstance(lanes, int) and isinstance(lane, int) and 0 <= lane < lanes):
            raise EngineError(f"node {node.name!r}: lane {lane!r} of {lanes!r} lanes: need 0 <= lane < lanes")
        self._lane, self._lanes = lane, lanes
        self._src = src
        f = node.formats
        self._in_fmt, self._out_fmt = f["input"], f["output"]
        super().__init__(node, self._unary(src, self._out_fmt))

    def elaborate(self, platform):
        m = Module()
        node, xi, out_fmt = self._node, self._in_fmt, self._out_fmt
        i = SkidInput(m, self.i)
        m.submodules.in_cast = in_cast = CastUnit(self._src, xi)
        m.d.comb += in_cast.i.eq(i.payload)
        x = in_cast.o
        fx = xi.frac_bits
        if node.op == "batchnorm":
            return self._batchnorm(m, node, xi, out_fmt, i, x)
        if node.op == "relu":
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
        m.d.comb += i.ready.eq(out.adv)
        out.emit(m, i.valid & out.adv, out_cast.o)
        return m

    #: Pipeline stages of the batchnorm engine (input beat to output register).
    BN_STAGES = 3

    def _batchnorm(self, m: Module, node: Node, xi: FixedType, out_fmt: FixedType, i: SkidInput, x: Value):
        """``cast(x * scale[c] + align(shift[c]), output)`` in :attr:`BN_STAGES` registered stages
        (the input cast with the channel's scale and shift reads; the DSP multiply; the add and the
        output cast into the output register), so no cycle holds a cast, a multiply and an add at
        once. The stages move together when the output may advance (a stall pipeline): one element
        per cycle, latency :attr:`BN_STAGES`."""
        sc_fmt, sh_fmt = node.formats["scale"], node.formats["shift"]
        shape = node.output_shape
        lane, lanes = self._lane, self._lanes
        groups, per_channel = -(-shape[0] // lanes), math.prod(shape[1:])
        # this lane's channels: lane + g lanes for g < groups (past the last channel: zeros, never read)
        chans = [g * lanes + lane for g in range(groups)]

        def lane_params(name: str) -> list[int]:
            vals = [int(v) for v in np.asarray(node.arrays[name]).reshape(-1)]
            return [vals[c] if c < shape[0] else 0 for c in chans]
        channels = groups
        out = _OutputStage(m, self.o)
        adv = out.adv
        m.d.comb += i.ready.eq(adv)
        take = i.valid & adv
        loops = LoopNest("bn", [channels, per_channel])
        loops.step(m, take)
        # stage 1: the input cast and the element's channel parameters, registered (the ROM
        # reads happen here, beside the input cast, so that stage 2 is the multiply alone: a
        # LUT-ROM read in front of the DSP made this engine the demo CNN's critical path)
        scale_rom = Memory(shape=fixed_shape(sc_fmt), depth=channels, init=lane_params("scale"))
        shift_rom = Memory(shape=fixed_shape(sh_fmt), depth=channels, init=lane_params("shift"))
        m.submodules.scale_rom, m.submodules.shift_rom = scale_rom, shift_rom
        sc_rp, sh_rp = scale_rom.read_port(domain="comb"), shift_rom.read_port(domain="comb")
        m.d.comb += [sc_rp.addr.eq(loops[0]), sh_rp.addr.eq(loops[0])]
        x1 = Signal(fixed_shape(xi), name="bn_x1")
        scale1 = Signal(fixed_shape(sc_fmt), name="bn_scale1")
        shift1 = Signal(fixed_shape(sh_fmt), name="bn_shift1")
        v1 = Signal(name="bn_v1")
        with m.If(adv):
            m.d.sync += [x1.eq(x), scale1.eq(sc_rp.data), shift1.eq(sh_rp.data), v1.eq(take)]
        # stage 2: the product (a registered DSP multiply) and the channel's shift
        p_fmt = xi * sc_fmt
        v_fmt = p_fmt + sh_fmt
        f = v_fmt.frac_bits
        prod2 = Signal(fixed_shape(p_fmt), name="bn_prod2")
        shift2 = Signal(fixed_shape(sh_fmt), name="bn_shift2")
        v2 = Signal(name="bn_v2")
        with m.If(adv):
            m.d.sync += [prod2.eq(x1 * scale1), shift2.eq(shift1), v2.eq(v1)]
        # stage 3: the aligned sum and its one rounding into the output register
        v = Signal(fixed_shape(v_fmt))
        m.d.comb += v.eq((prod2 << (f - p_fmt.frac_bits)) + (shift2 << (f - sh_fmt.frac_bits)))
        m.submodules.out_cast = out_cast = CastUnit(v_fmt, out_fmt)
        m.d.comb += out_cast.i.eq(v)
        out.emit(m, v2 & adv, out_cast.o)
        return m


def init_codes(node: Node) -> list[int]:
    """Per output channel, the accumulator's start ``cast(bias, accum)`` (zeros without a bias)."""
    acc = node.formats["accum"]
    n_out = node.params["out_features"] if node.op == "dense" else node.params["out_channels"]
    if "bias" not in node.arrays:
        return [0] * n_out
    bias = np.asarray(node.arrays["bias"]).reshape(-1)
    return [int(v) for v in cast_codes(bias, node.formats["bias"].frac_bits, acc).reshape(-1)]

