"""The whole-network accelerator: the manifest's nodes as chained engines behind AXI4-Stream ports."""

from __future__ import annotations

import math
from typing import Any

from amaranth.hdl import Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from qfx.manifest import Manifest
from qfx.types import FixedType

from ..cast import fixed_shape
from .engines import AddEngine, ElementwiseEngine, EngineError, MACEngine, PoolEngine, engine_cycles
from .engines_ops import OPS as _OPS_ENGINE_OPS
from .engines_ops import ops_engine, ops_engine_cycles
from .weights import plan_weights

__all__ = ["Accelerator", "SUPPORTED_OPS", "axis_width", "emitted_format", "stream_formats"]

#: Manifest ops the RTL accelerator builds.
SUPPORTED_OPS = ("input", "dense", "conv2d", "batchnorm", "relu", "relu6", "leaky_relu", "add",
                 "maxpool2d", "avgpool2d", "flatten", "output") + _OPS_ENGINE_OPS
_ELEMENTWISE = ("batchnorm", "relu", "relu6", "leaky_relu")


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
    while node.op in ("flatten", "output"):
        node = manifest.node(node.inputs[0])
    return node.formats["output"]


def stream_formats(manifest: Manifest) -> "tuple[FixedType, FixedType]":
    """Formats of the accelerator's input and output stream codes (no RTL built)."""
    return manifest.input_node.formats["output"], emitted_format(manifest, manifest.output_node.inputs[0])


class Accelerator(wiring.Component):
    """A manifest as hardware: one engine per node, AXI4-Stream in and out, start/done control.

    The input tensor arrives on ``s_axis`` one code of the input node's format per beat, C order
    (channel, row, column), in the low bits of ``tdata`` (the rest ignored); the output tensor
    leaves on ``m_axis`` one code of the output format per beat, sign- (or zero-) extended to
    ``tdata``'s width, ``tlast`` on the last. Engines chain like the manifest's nodes
    (:mod:`qfx.hw.accel.engines`); a node with several consumers feeds them all in the same cycle.

    Control: a ``start`` pulse opens the input for one tensor (``s_axis_tready`` stays low
    otherwise) and raises ``busy``; ``done`` pulses for one cycle when the last output beat has
    been accepted, and ``busy`` falls. Input ``tlast`` is not needed (the tensor size is fixed)
    and is ignored. ``rst`` is synchronous, active high.

    Parameters
    ----------
    manifest : Manifest
        A loaded manifest (:func:`qfx.manifest.load`).

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
    """

    def __init__(self, manifest: Manifest) -> None:
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
        self._plans = {n.name: plan_weights(n) for n in manifest if n.op in ("dense", "conv2d")}
        self._MustUse__silence = False
        super().__init__({
            "s_axis_tdata": In(axis_width(self._in_fmt)),
            "s_axis_tvalid": In(1),
            "s_axis_tready": Out(1),
            "s_axis_tlast": In(1),
            "m_axis_tdata": Out(axis_width(self._out_fmt)),
            "m_axis_tvalid": Out(1),
            "m_axis_tready": In(1),
            "m_axis_tlast": Out(1),
            "start": In(1),
            "done": Out(1),
            "busy": Out(1),
        })

    @property
    def manifest(self) -> Manifest:
        return self._manifest

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
            if node.op in ("input", "flatten", "output"):
                continue
            srcs = [emitted_format(self._manifest, s) for s in node.inputs]
            if node.op in ("dense", "conv2d"):
                out[node.name] = MACEngine(node, srcs[0], self._plans[node.name])
            elif node.op in ("maxpool2d", "avgpool2d"):
                out[node.name] = PoolEngine(node, srcs[0])
            elif node.op == "add":
                out[node.name] = AddEngine(node, srcs[0], srcs[1])
            elif node.op in _ELEMENTWISE:
                out[node.name] = ElementwiseEngine(node, srcs[0])
            elif node.op in _OPS_ENGINE_OPS:
                out[node.name] = ops_engine(node, srcs)
        return out

    def cycle_estimate(self) -> dict[str, Any]:
        """Cycles per inference, per engine and in total, assuming the output is never stalled.

        Buffered engines (dense, conv2d, pools, add) run one after another (each needs its whole
        input); element-wise engines stream along with their producer. The total is the input
        transfer plus every buffered engine's compute cycles plus a few cycles of pipeline each.
        """
        per: dict[str, dict[str, int]] = {}
        total = self._n_in
        for node in self._manifest:
            if node.op in ("input", "flatten", "output"):
                continue
            c = per[node.name] = ops_engine_cycles(node) if node.op in _OPS_ENGINE_OPS else engine_cycles(node)
            total += c["compute"] + 2 if c["load"] else 1
        return {"engines": per, "total": total + 2}  # + the start pulse and the done register

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
            return resolve(node.inputs[0]) if node.op in ("flatten", "output") else name

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

        # AXI4-Stream boundary and control.
        armed = Signal()
        in_count = Signal(range(self._n_in))
        out_count = Signal(range(self._n_out))
        m.d.comb += [
            in_payload.eq(self.s_axis_tdata[: self._in_fmt.width]),
            in_valid.eq(self.s_axis_tvalid & armed),
            self.s_axis_tready.eq(in_ready & armed),
            self.m_axis_tdata.eq(out_payload),
            self.m_axis_tvalid.eq(out_valid),
            out_ready.eq(self.m_axis_tready),
            self.m_axis_tlast.eq(out_count == self._n_out - 1),
        ]
        with m.If(self.start & ~self.busy):
            m.d.sync += [armed.eq(1), self.busy.eq(1), in_count.eq(0), out_count.eq(0)]
        with m.If(self.s_axis_tvalid & self.s_axis_tready):
            m.d.sync += in_count.eq(in_count + 1)
            with m.If(in_count == self._n_in - 1):
                m.d.sync += [armed.eq(0), in_count.eq(0)]
        m.d.sync += self.done.eq(0)
        with m.If(out_valid & out_ready):
            m.d.sync += out_count.eq(out_count + 1)
            with m.If(out_count == self._n_out - 1):
                m.d.sync += [out_count.eq(0), self.done.eq(1), self.busy.eq(0)]
        return m
