"""The whole-network accelerator: the manifest's nodes as chained engines behind AXI4-Stream ports."""

from __future__ import annotations

import math
from typing import Any, Mapping

from amaranth.hdl import Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from qfx.manifest import Manifest
from qfx.types import FixedType

from ..cast import fixed_shape
from .engines import AddEngine, ElementwiseEngine, EngineError, MACEngine, PoolEngine, engine_cycles, engine_latency
from .engines_ops import OPS as _OPS_ENGINE_OPS
from .engines_ops import ops_engine
from .folding import MAC_OPS, Folding, FoldingError, check_folding
from .weights import plan_weights

__all__ = ["Accelerator", "SUPPORTED_OPS", "WIRING_OPS", "axis_width", "emitted_format", "stream_formats",
           "top_signature", "start_control"]

#: Manifest ops the RTL accelerator builds.
SUPPORTED_OPS = ("input", "dense", "conv2d", "batchnorm", "relu", "relu6", "leaky_relu", "add",
                 "maxpool2d", "avgpool2d", "flatten", "reshape", "output") + _OPS_ENGINE_OPS
_ELEMENTWISE = ("batchnorm", "relu", "relu6", "leaky_relu")
#: Nodes without an engine: the stream passes unchanged (C order is kept).
WIRING_OPS = ("flatten", "reshape", "output")


def axis_width(fmt: FixedType) -> int:
    """TDATA bits for codes of ``fmt``: the code width rounded up to 8, 16, 32 or 64 bits.

    AXI4-Stream wants whole bytes, and the AXI DMA that feeds the stream on a Zynq takes
    power-of-two widths only.
    """
    width = 8
    while width < fmt.width:
        width *= 2
    return width


def emitted_format(manifest: Manifest, name: str) -> FixedType:
    """Format of the codes node ``name`` emits (flatten / output pass their input through)."""
    node = manifest.node(name)
    while node.op in WIRING_OPS:
        node = manifest.node(node.inputs[0])
    return node.formats["output"]


def stream_formats(manifest: Manifest) -> "tuple[FixedType, FixedType]":
    """Formats of the accelerator's input and output stream codes (no RTL built)."""
    return manifest.input_node.formats["output"], emitted_format(manifest, manifest.output_node.inputs[0])


def start_control(m: Module, top: Any, last_in: Any, last_out: Any, *, flight_width: int) -> Signal:
    """The ``start`` / ``done`` / ``busy`` protocol every accelerator top has (dataflow and systolic).

    The input is open (``armed``, returned: the top gates ``s_axis_tready`` with it) for one tensor
    after a ``start``; a ``start`` while it is open queues the next (``pending``, one deep), which
    opens the input right after ``last_in`` (the tensor's last input beat). ``in_flight`` counts
    accepted starts whose last output beat (``last_out``) has not left; ``busy`` is ``in_flight != 0``
    and ``done`` pulses the cycle after ``last_out``. ``flight_width``: bits of ``in_flight`` (the
    tensors the top can hold at once, plus one)."""
    armed, pending = Signal(name="armed"), Signal(name="pending")
    in_flight = Signal(flight_width, name="in_flight")
    accepted = top.start & (~pending | last_in)
    with m.If(last_in):
        m.d.sync += [armed.eq(pending | top.start), pending.eq(pending & top.start)]
    with m.Elif(top.start):
        with m.If(armed):
            m.d.sync += pending.eq(1)
        with m.Else():
            m.d.sync += armed.eq(1)
    m.d.sync += [in_flight.eq(in_flight + accepted - last_out), top.done.eq(last_out)]
    m.d.comb += top.busy.eq(in_flight != 0)
    return armed


def top_signature(in_fmt: FixedType, out_fmt: FixedType) -> dict:
    """The ports every accelerator top has (dataflow and systolic alike): AXI4-Stream codes of
    ``in_fmt`` in and ``out_fmt`` out (:func:`axis_width` bits), ``start`` / ``done`` / ``busy``."""
    return {
        "s_axis_tdata": In(axis_width(in_fmt)),
        "s_axis_tvalid": In(1),
        "s_axis_tready": Out(1),
        "s_axis_tlast": In(1),
        "m_axis_tdata": Out(axis_width(out_fmt)),
        "m_axis_tvalid": Out(1),
        "m_axis_tready": In(1),
        "m_axis_tlast": Out(1),
        "start": In(1),
        "done": Out(1),
        "busy": Out(1),
    }


class Accelerator(wiring.Component):
    """A manifest as hardware: one engine per node, AXI4-Stream in and out, start/done control.

    The input tensor arrives on ``s_axis`` one code of the input node's format per beat, C order
    (channel, row, column), in the low bits of ``tdata`` (the rest ignored); the output tensor
    leaves on ``m_axis`` one code of the output format per beat, sign- (or zero-) extended to
    ``tdata``'s width, ``tlast`` on the last. Engines chain like the manifest's nodes
    (:mod:`qfx.hw.accel.engines`); a node with several consumers feeds them all in the same cycle.

    Control: a ``start`` pulse opens the input for one tensor (``s_axis_tready`` stays low
    otherwise) and raises ``busy``; ``done`` pulses for one cycle when the last output beat of a
    tensor has been accepted, and ``busy`` falls when no tensor is in flight. Tensors overlap: a
    ``start`` while the input is open queues one more tensor (its beats follow the current one's
    without a gap; a further ``start`` while one is queued is ignored), and the engines work on
    successive tensors at once, so back-to-back tensors leave every :meth:`cycle_estimate` ``ii``
    cycles. A driver that waits for ``busy`` to fall before each ``start`` runs one tensor at a
    time. Input ``tlast`` is not needed (the tensor size is fixed) and is ignored. ``rst`` is
    synchronous, active high.

    Parameters
    ----------
    manifest : Manifest
        A loaded manifest (:func:`qfx.manifest.load`).
    folding : Mapping[str, Folding] or None
        Per dense / conv2d node name, its :class:`~qfx.hw.accel.folding.Folding`
        (``pe`` x ``simd``); nodes not named get ``Folding(1, 1)``.

    Attributes
    ----------
    s_axis_tdata, s_axis_tvalid, s_axis_tlast : In
    s_axis_tready : Out
    m_axis_tdata, m_axis_tvalid, m_axis_tlast : Out
    m_axis_tready : In
    start : In(1)
    done, busy : Out(1)

    Raises
    ------
    EngineError
        (a ``ValueError``) naming the node and the reason when a node cannot be built.
    FoldingError
        (a ``ValueError``) naming the layer when a folding names no dense / conv2d node or does
        not divide it (with the valid values).
    """

    def __init__(self, manifest: Manifest, *, folding: "Mapping[str, Folding] | None" = None) -> None:
        self._MustUse__silence = True  # until the checks below pass: a refused design is not "unused"
        if not isinstance(manifest, Manifest):
            raise TypeError(f"manifest must be a qfx.manifest.Manifest (qfx.manifest.load(path)), not "
                            f"{type(manifest).__name__}")
        self._manifest = manifest
        for node in manifest:
            if node.op not in SUPPORTED_OPS:
                raise EngineError(f"node {node.name!r}: op {node.op!r} has no RTL engine; supported: "
                                  f"{', '.join(SUPPORTED_OPS)}")
        self._in_fmt, self._out_fmt = stream_formats(manifest)
        self._n_in = math.prod(manifest.input_node.output_shape)
        self._n_out = math.prod(manifest.output_node.output_shape)
        self._plans = {n.name: plan_weights(n) for n in manifest if n.op in MAC_OPS}
        self._folding = self._check_folding(manifest, folding)
        self._MustUse__silence = False
        super().__init__(top_signature(self._in_fmt, self._out_fmt))

    @staticmethod
    def _check_folding(manifest: Manifest, folding: "Mapping[str, Folding] | None") -> dict[str, Folding]:
        if folding is None:
            folding = {}
        if not isinstance(folding, Mapping):
            raise TypeError(f"folding must be a mapping of layer name -> Folding, not {type(folding).__name__}")
        macs = [n.name for n in manifest if n.op in MAC_OPS]
        out = {name: Folding() for name in macs}
        for name, f in folding.items():
            if name not in out:
                raise FoldingError(f"folding names layer {name!r}, which is not a dense / conv2d node of the "
                                   f"manifest; its dense/conv2d layers: {', '.join(macs) or '(none)'}")
            if not isinstance(f, Folding):
                raise TypeError(f"folding of layer {name!r} must be a qfx.hw.accel.folding.Folding, not "
                                f"{type(f).__name__} {f!r}")
            out[name] = check_folding(manifest.node(name), f)
        return out

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def folding(self) -> dict[str, Folding]:
        """Every dense / conv2d node's folding (``Folding(1, 1)`` where none was given)."""
        return dict(self._folding)

    @property
    def input_format(self) -> FixedType:
        return self._in_fmt

    @property
    def output_format(self) -> FixedType:
        return self._out_fmt

    def engines(self) -> dict[str, Any]:
        """A fresh engine per computing node (name -> engine), in manifest order."""
        out: dict[str, Any] = {}
        for node in self._manifest:
            if node.op == "input" or node.op in WIRING_OPS:
                continue
            srcs = [emitted_format(self._manifest, s) for s in node.inputs]
            if node.op in ("dense", "conv2d"):
                out[node.name] = MACEngine(node, srcs[0], self._plans[node.name], self._folding[node.name])
            elif node.op in ("maxpool2d", "avgpool2d"):
                out[node.name] = PoolEngine(node, srcs[0])
            elif node.op == "add":
                out[node.name] = AddEngine(node, srcs[0], srcs[1], self.input_slots(node.name))
            elif node.op in _ELEMENTWISE:
                out[node.name] = ElementwiseEngine(node, srcs[0])
            elif node.op in _OPS_ENGINE_OPS:
                out[node.name] = ops_engine(node, srcs, self.input_slots(node.name))
        return out

    def _schedule(self) -> "tuple[dict[str, dict[str, int]], dict[str, int], int]":
        """Per engine its cycles and ``ii``; per node the cycle of its last output beat for one
        tensor alone; the steady-state initiation interval."""
        per: dict[str, dict[str, int]] = {}
        finish: dict[str, int] = {self._manifest.input_node.name: self._n_in}
        for node in self._manifest:
            if node.op == "input":
                continue
            if node.op in WIRING_OPS:
                finish[node.name] = finish[node.inputs[0]]
                continue
            fold = self._folding.get(node.name, Folding())
            c = engine_cycles(node, fold)
            per[node.name] = {**c, "ii": max(c.values())}
            finish[node.name] = engine_latency(node, fold, max(finish[s] for s in node.inputs))
        ii = max([self._n_in, self._n_out, *(c["ii"] for c in per.values())])
        return per, finish, ii

    def input_slots(self, name: str) -> tuple[int, ...]:
        """Tensor slots of each input buffer of a node with several inputs (add, sub, mul,
        concat): 2 (double buffering), plus one per initiation interval by which that operand
        arrives before the latest one, so the early operand of a residual block or a branch never
        stalls the fork that feeds both paths. Single-input nodes: ``(2,)``."""
        _per, finish, ii = self._schedule()
        ends = [finish[s] for s in self._manifest.node(name).inputs]
        last = max(ends)
        return tuple(2 + -(-(last - e) // ii) for e in ends)

    def cycle_estimate(self) -> dict[str, Any]:
        """Cycles per inference, assuming the output is never stalled.

        ``engines``: per computing node, its ``load`` / ``compute`` / ``outputs`` cycles
        (:func:`~qfx.hw.accel.engines.engine_cycles`, the folded ones from
        :func:`~qfx.hw.accel.folding.folded_cycles`) and its ``ii``, the largest of the three.
        ``ii``: the steady-state initiation interval of back-to-back tensors, the slowest engine's
        (or the input / output transfer's, one beat per cycle). ``total``: the latency of one
        tensor alone, start pulse to done pulse (each buffered engine starts when its whole input
        has arrived; :func:`~qfx.hw.accel.engines.engine_latency`).
        """
        per, finish, ii = self._schedule()
        # + the start pulse and the done register
        return {"engines": per, "ii": ii, "total": finish[self._manifest.output_node.name] + 2}

    def elaborate(self, platform):
        m = Module()
        man = self._manifest
        engines = self.engines()
        for name, eng in engines.items():
            m.submodules[name] = eng

        # Where every node's output stream comes from, and who consumes it.
        src_node = man.input_node.name
        in_valid, in_ready = Signal(), Signal()
        in_payload = Signal(fixed_shape(self._in_fmt))
        producers: dict[str, tuple[Any, Any, Any]] = {src_node: (in_payload, in_valid, in_ready)}
        for name, eng in engines.items():
            producers[name] = (eng.o.payload, eng.o.valid, eng.o.ready)

        def resolve(name: str) -> str:
            node = man.node(name)
            return resolve(node.inputs[0]) if node.op in WIRING_OPS else name

        consumers: dict[str, list[Any]] = {}
        for name, eng in engines.items():
            ports = (eng.input_ports if hasattr(eng, "input_ports")
                     else [eng.a, eng.b] if isinstance(eng, AddEngine) else [eng.i])
            for port, producer in zip(ports, man.node(name).inputs):
                consumers.setdefault(resolve(producer), []).append(port)
        out_src = resolve(man.output_node.name)

        # The accelerator's output is one more consumer of its producer.
        out_valid, out_ready = Signal(), Signal()
        out_payload = Signal(fixed_shape(self._out_fmt))

        class _Sink:
            payload, valid, ready = out_payload, out_valid, out_ready

        consumers.setdefault(out_src, []).append(_Sink)
        for prod, ports in consumers.items():
            payload, valid, ready = producers[prod]
            all_ready = Const(1, 1)
            for port in ports:
                all_ready = all_ready & port.ready
            m.d.comb += ready.eq(all_ready)
            for j, port in enumerate(ports):
                others = Const(1, 1)
                for k, other in enumerate(ports):
                    if k != j:
                        others = others & other.ready
                m.d.comb += [port.payload.eq(payload), port.valid.eq(valid & others)]
        for name in engines:
            if name not in consumers:  # pragma: no cover - a validated manifest has no dead nodes
                raise EngineError(f"node {name!r}: its output is never used")

        # AXI4-Stream boundary and control (start_control: armed input, one queued start, in_flight)
        in_count = Signal(range(self._n_in))
        out_count = Signal(range(self._n_out))
        last_in = Signal()
        m.d.comb += last_in.eq(self.s_axis_tvalid & self.s_axis_tready & (in_count == self._n_in - 1))
        last_out = Signal()
        m.d.comb += last_out.eq(out_valid & out_ready & (out_count == self._n_out - 1))
        armed = start_control(m, self, last_in, last_out, flight_width=16)
        m.d.comb += [
            in_payload.eq(self.s_axis_tdata[: self._in_fmt.width]),
            in_valid.eq(self.s_axis_tvalid & armed),
            self.s_axis_tready.eq(in_ready & armed),
            self.m_axis_tdata.eq(out_payload),
            self.m_axis_tvalid.eq(out_valid),
            out_ready.eq(self.m_axis_tready),
            self.m_axis_tlast.eq(out_count == self._n_out - 1),
        ]
        with m.If(self.s_axis_tvalid & self.s_axis_tready):
            m.d.sync += in_count.eq(Mux(last_in, 0, in_count + 1))
        with m.If(out_valid & out_ready):
            m.d.sync += out_count.eq(Mux(last_out, 0, out_count + 1))
        return m
