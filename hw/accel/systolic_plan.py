"""Planning of the ``systolic`` architecture: which manifests it runs, as which GEMM steps.

:func:`plan_systolic` walks a manifest's chain of layers and returns a :class:`SystolicPlan`: one
:class:`DenseStep` per dense layer and one :class:`ConvStep` per conv2d layer (the element-wise nodes
after each as its vector unit), with the integer operand formats of the array; anything the
architecture does not build raises :class:`SystolicError` naming the node and the reason.

conv2d is the GEMM ``Y[N = C_out, P] = W[N, K] @ cols[K, P]`` with ``K = C_in * kh * kw`` (im2col
columns ordered (input channel, kernel row, kernel column), the order of :func:`qfx.reference._im2col`)
and ``P = H_out * W_out`` output pixels. On the weight-stationary array every loaded ``R x C`` weight
tile is used for all ``P`` pixels: the sequencer streams the ``P`` input rows of a K-tile back to back,
one per cycle. Input row ``p = (y, x)`` of K-tile ``i`` holds, in bank ``b``, the code of term
``k = i R + b`` (channel ``ci``, kernel tap ``(ky, kx)``), read from the layer's input activation
buffer (CHW) at ``ci H W + (y s_h + ky d_h - pad_h) W + (x s_w + kx d_w - pad_w)``, or 0 for a padding
tap or ``k >= K``; :func:`bank_tables` gives those constants per (K-tile, bank).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qfx.manifest import Manifest, Node, weight_envelope
from qfx.types import FixedType, KHot

from ..pe.packed import check_packable
from .top import WIRING_OPS, stream_formats

__all__ = ["SystolicError", "DenseStep", "ConvStep", "SystolicPlan", "plan_systolic", "parse_array", "bank_tables",
           "conv_cycles", "gemm_cycles", "tile_period", "PoolStep", "pool_step", "pool_cycles", "VECTOR_OPS", "lane_words", "lane_depth",
           "lane_address", "MAX_ARRAY"]

#: Element-wise nodes the vector unit runs after a dense or conv2d layer.
VECTOR_OPS = ("relu", "relu6", "leaky_relu", "batchnorm")
#: Largest rows / cols accepted.
MAX_ARRAY = 64


class SystolicError(ValueError):
    """A manifest (or array size) the systolic architecture cannot build; the message names the node."""


def parse_array(text: Any) -> "tuple[int, int]":
    """``"RxC"`` (or a pair) -> ``(R, C)``, each 1 .. :data:`MAX_ARRAY`; :class:`SystolicError` otherwise."""
    if isinstance(text, (tuple, list)) and len(text) == 2:
        parts = list(text)
    elif isinstance(text, str):
        parts = text.lower().replace("*", "x").split("x")
    else:
        raise SystolicError(f"array {text!r}: give rows x cols as 'RxC' (e.g. 16x16) or a pair (R, C)")
    if len(parts) != 2:
        raise SystolicError(f"array {text!r}: give rows x cols as 'RxC', e.g. --array 16x16")
    out = []
    for p in parts:
        if isinstance(p, bool):
            raise SystolicError(f"array {text!r}: rows and cols must be integers, e.g. --array 16x16")
        try:
            v = int(str(p).strip())
        except ValueError:
            raise SystolicError(f"array {text!r}: rows and cols must be integers, e.g. --array 16x16") from None
        if not 1 <= v <= MAX_ARRAY:
            raise SystolicError(f"array {text!r}: rows and cols must be 1 .. {MAX_ARRAY}, got {v}")
        out.append(v)
    return out[0], out[1]


@dataclass
class DenseStep:
    """One dense layer as the sequencer runs it."""

    node: Node
    k: int
    n: int
    x_fmt: FixedType
    out_fmt: FixedType
    w_codes: np.ndarray  # [N, K] integer codes on the weight grid
    w_frac: int
    bias: "np.ndarray | None"
    bias_fmt: "FixedType | None"
    w_grid: "FixedType | None" = None  # the format whose codes ``w_codes`` are (envelope / K-hot base)
    vector: list = field(default_factory=list)  # element-wise nodes after it
    emitted: "FixedType | None" = None  # format of the codes leaving its vector unit
    next_fmt: "FixedType | None" = None  # next layer's input format (None: the network output)
    skips: dict = field(default_factory=dict)  # add node name -> SkipAdd (adds in its vector unit)
    last_name: str = ""  # its last node (the layer or its last vector node)

    pixels = 1  #: input rows per K-tile (a dense layer at batch 1: one)
    is_conv = False
    is_pool = False

    @property
    def n_inputs(self) -> int:
        """Codes the layer reads from its input activation buffer."""
        return self.k

    @property
    def n_outputs(self) -> int:
        """Codes the layer writes into the other activation buffer."""
        return self.n

    @property
    def out_layout(self) -> "tuple[int, int]":
        """``(channels, P)`` of the tensor it writes (a dense layer: ``(N, 1)``), see :func:`lane_words`."""
        return (self.n, 1)

    def tiles(self, rows: int, cols: int) -> "tuple[int, int]":
        """``(kt, nt)``: the K-tiles (``rows`` terms each) and output tiles (``cols`` outputs each) of
        the layer's GEMM on a ``rows x cols`` array."""
        return -(-self.k // rows), -(-self.n // cols)


@dataclass
class SkipAdd:
    """A residual ``add`` in a layer's vector unit: the stream (the layer's codes so far) plus the
    skip tensor, the emitted codes of the earlier step ``source`` (kept in a skip buffer of its own,
    read in the same CHW order)."""

    node: Node
    source: int  # index of the step whose emitted codes are the skip operand
    skip_name: str
    skip_is_a: bool  # the skip tensor is the add's first operand (in_a)


@dataclass
class SystolicPlan:
    """The checked layer chain and the array's integer operand formats."""

    steps: list
    x_fmt: FixedType  # integer format of every input code the array sees
    w_fmt: FixedType  # integer format of every weight code
    in_fmt: FixedType
    out_fmt: FixedType
    n_in: int
    n_out: int

    @property
    def buffer_width(self) -> int:
        """Bits of one stored code: signed, wide enough for every layer's input format and the output's."""
        return max(f.width + (0 if f.signed else 1) for f in [s.x_fmt for s in self.steps] + [self.out_fmt])

    @property
    def buffer_depth(self) -> int:
        """Codes one activation buffer holds: the largest tensor written or read."""
        return max([self.n_in, self.n_out] + [s.n_inputs for s in self.steps] + [s.n_outputs for s in self.steps])

    @property
    def in_layout(self) -> "tuple[int, int]":
        """``(channels, P)`` of the input tensor in buffer 0: what the first layer reads (a conv2d /
        maxpool2d: its ``[C, H, W]`` input; a dense layer: ``(K, 1)``)."""
        s = self.steps[0]
        if s.is_conv:
            return (s.cin, s.h * s.w)
        if s.is_pool:
            return (s.c, s.h * s.w)
        return (s.k, 1)

    def layouts(self) -> "list[tuple[int, int]]":
        """The ``(channels, P)`` of the tensor each step reads (the input's, then the previous step's
        output), and last the network output's."""
        return [self.in_layout] + [s.out_layout for s in self.steps]

    def buffer_words(self, lanes: int) -> int:
        """Words (of ``lanes`` codes) one activation buffer holds: the largest tensor in it."""
        return max(lane_words(ly, lanes) for ly in self.layouts())

    def buffer_lane_depths(self, lanes: int) -> "dict[int, list[int]]":
        """Per ping-pong buffer (0, 1), per lane, the words that lane holds (each lane is a memory of
        its own): the most any tensor stored there puts in it (:func:`lane_depth`; 0: never used)."""
        lay = self.layouts()  # tensor t (the input of step t, last the output) lives in buffer t % 2
        return {b: [max([lane_depth(ly, lanes, c) for t, ly in enumerate(lay) if t % 2 == b] + [0])
                    for c in range(lanes)] for b in (0, 1)}

    def bank_lane_depths(self, lanes: int) -> "dict[int, list[int]]":
        """Per replicated buffer, per lane, the words of each of its ``R - 1`` extra copies: the most
        the input tensor of a conv2d / maxpool2d layer reading it puts in that lane."""
        lay = self.layouts()
        out: dict[int, list[int]] = {}
        for li, s in enumerate(self.steps):
            if s.is_conv or s.is_pool:
                cur = out.get(li % 2, [0] * lanes)
                out[li % 2] = [max(d, lane_depth(lay[li], lanes, c)) for c, d in enumerate(cur)]
        return out

    def lanes(self, step: Any, lanes: int) -> int:
        """The vector-unit lanes a step uses: ``min(C, channels)`` (the others never carry a channel)."""
        return min(lanes, step.out_layout[0])

    def bank_words(self, lanes: int) -> "dict[int, int]":
        """Per replicated buffer, the words of each of its ``R - 1`` extra copies: the largest input
        tensor a conv2d / maxpool2d layer reads from it."""
        lay = self.layouts()
        out: dict[int, int] = {}
        for li, s in enumerate(self.steps):
            if s.is_conv or s.is_pool:
                out[li % 2] = max(out.get(li % 2, 0), lane_words(lay[li], lanes))
        return out

    def skip_sources(self) -> "dict[int, list[SkipAdd]]":
        """Step index -> the adds that read its emitted codes as their skip operand."""
        out: dict = {}
        for s in self.steps:
            for sk in s.skips.values():
                out.setdefault(sk.source, []).append(sk)
        return out

    def conv_buffers(self) -> "set[int]":
        """The ping-pong buffers (0, 1) a conv2d layer reads: those are replicated, one copy per bank."""
        return {li % 2 for li, s in enumerate(self.steps) if s.is_conv or s.is_pool}

    def bank_depths(self) -> "dict[int, int]":
        """Per replicated buffer, the depth of each of its ``R - 1`` extra copies: the largest input
        tensor a conv2d layer reads from it (copy 0 is the buffer itself, :attr:`buffer_depth`)."""
        out: dict[int, int] = {}
        for li, s in enumerate(self.steps):
            if s.is_conv or s.is_pool:
                out[li % 2] = max(out.get(li % 2, 0), s.n_inputs)
        return out

    def packable(self) -> bool:
        try:
            check_packable(self.x_fmt, self.w_fmt, "systolic")
        except ValueError:
            return False
        return True


def lane_words(layout: "tuple[int, int]", lanes: int) -> int:
    """Words of a tensor of layout ``(channels, P)`` in a buffer of ``lanes``-code words: element
    (channel ``ch``, pixel ``p``) lives at word ``(ch // lanes) P + p``, lane ``ch % lanes``."""
    ch, p = layout
    return -(-ch // lanes) * p


def lane_depth(layout: "tuple[int, int]", lanes: int, lane: int) -> int:
    """Words of lane ``lane`` that a tensor of layout ``(channels, P)`` uses: ``ceil((channels - lane) /
    lanes) P`` (its channels ``lane``, ``lane + lanes``, ...), 0 where it has no such channel."""
    ch, p = layout
    return max(0, -(-(ch - lane) // lanes)) * p


def lane_address(layout: "tuple[int, int]", lanes: int, f: int) -> "tuple[int, int]":
    """``(word, lane)`` of flat (CHW) element ``f = ch P + p`` of a tensor of layout ``(channels, P)``."""
    ch, p = divmod(f, layout[1])
    return (ch // lanes) * layout[1] + p, ch % lanes


def _int_fmt(fmts: "list[FixedType]") -> FixedType:
    """The integer format holding the codes of every format in ``fmts``."""
    if all(not f.signed for f in fmts):
        w = max(f.width for f in fmts)
        return FixedType(w, w, signed=False)
    w = max(f.width + (0 if f.signed else 1) for f in fmts)
    return FixedType(w, w, signed=True)


def _weight_codes(node: Node) -> "tuple[np.ndarray, int, FixedType]":
    fmt = node.formats["weight"]
    a = node.arrays
    if isinstance(fmt, tuple):
        if not all(isinstance(t, FixedType) for t in fmt):
            raise SystolicError(f"node {node.name!r}: per-channel weight formats must be fixed-point for the systolic "
                                "arch; use --arch dataflow")
        f_max = max(t.frac_bits for t in fmt)
        w = np.asarray(a["weight"], dtype=np.int64)
        # one shift per output channel (row): [N, 1] for dense, [C_out, 1, 1, 1] for conv2d
        shifts = np.array([f_max - t.frac_bits for t in fmt], dtype=np.int64).reshape((-1,) + (1,) * (w.ndim - 1))
        codes = w << shifts
        env = weight_envelope(fmt)
        return codes, f_max, env
    if isinstance(fmt, KHot):
        shifts, signs = np.asarray(a["weight_khot_shifts"]), np.asarray(a["weight_khot_signs"])
        codes = (signs * (np.ones_like(shifts) << shifts)).sum(axis=-1).astype(np.int64)
        return codes, fmt.base.frac_bits, fmt.base
    if isinstance(fmt, FixedType):
        return np.asarray(a["weight"], dtype=np.int64), fmt.frac_bits, fmt
    raise SystolicError(f"node {node.name!r}: weight format {fmt} ({type(fmt).__name__}) is not supported by the "
                        "systolic arch (fixed-point, per-channel fixed-point or K-hot only); use --arch dataflow")


def _gemm_step(node: Node) -> "DenseStep":
    """The :class:`DenseStep` / :class:`ConvStep` of a dense / conv2d node; :class:`SystolicError` names
    the node for what the systolic arch does not build."""
    p, f = node.params, node.formats
    if node.op == "dense" and tuple(node.input_shapes[0]) != (p["in_features"],):
        raise SystolicError(f"node {node.name!r}: dense on a {list(node.input_shapes[0])} input (rows of the "
                            "last axis) is not supported by the systolic arch; flatten first or use --arch "
                            "dataflow")
    if p["multiply"] != "exact":
        raise SystolicError(f"node {node.name!r}: multiply {p['multiply']!r} is not supported by the systolic "
                            "arch (exact products only); use --arch dataflow")
    if not p["accum_exact"]:
        raise SystolicError(
            f"node {node.name!r}: declared accumulator {f['accum']} casts after every add, so the K order "
            "matters; the systolic arch sums K-tiles exactly and supports only exact accumulators "
            "(accum: auto); use accum: auto or --arch dataflow")
    if not isinstance(f["input"], FixedType):
        raise SystolicError(f"node {node.name!r}: input format {f['input']} is not fixed-point")
    codes, w_frac, w_grid = _weight_codes(node)
    bias = np.asarray(node.arrays["bias"], dtype=np.int64).reshape(-1) if f.get("bias") is not None else None
    if node.op == "conv2d":
        return conv_step(node, codes, w_frac, w_grid, bias, f.get("bias"))
    return DenseStep(node, p["in_features"], p["out_features"], f["input"], f["output"],
                     codes.reshape(p["out_features"], p["in_features"]), w_frac, bias, f.get("bias"), w_grid)


def plan_systolic(manifest: Manifest) -> SystolicPlan:
    """Check that the systolic architecture can run ``manifest``; :class:`SystolicError` names the node otherwise."""
    nodes = list(manifest)
    steps: list[DenseStep] = []
    prev = None
    last: dict = {}  # the name of each step's last node (its emitted tensor) -> step index
    for node in nodes:
        if node.op == "add" and steps and len(node.inputs) == 2 and prev in node.inputs:
            other = node.inputs[1] if node.inputs[0] == prev else node.inputs[0]
            src = last.get(other)
            if src is None or src == len(steps) - 1:
                raise SystolicError(f"node {node.name!r}: the systolic arch adds a skip tensor only when it is the "
                                    f"output of an earlier dense / conv2d / maxpool2d layer (after its vector "
                                    f"unit); {other!r} is not; use --arch dataflow")
            src_step = steps[src]
            if tuple(node.output_shape) != tuple(src_step.node.output_shape):  # pragma: no cover - add checks it
                raise SystolicError(f"node {node.name!r}: skip {other!r} has another shape")
            steps[-1].vector.append(node)
            steps[-1].skips[node.name] = SkipAdd(node, src, other, skip_is_a=node.inputs[0] == other)
            last.pop(steps[-1].last_name, None)
            steps[-1].last_name = node.name
            last[node.name] = len(steps) - 1
            prev = node.name
            continue
        if node.op != "input":
            if len(node.inputs) != 1 or node.inputs[0] != prev:
                raise SystolicError(f"node {node.name!r}: the systolic arch runs a chain of layers (each node fed by "
                                    f"the one before); this node reads {list(node.inputs)}; use --arch dataflow")
        prev = node.name
        if node.op in ("input",) + WIRING_OPS:
            continue
        if node.op in ("dense", "conv2d", "maxpool2d"):
            steps.append(_gemm_step(node) if node.op != "maxpool2d" else pool_step(node))
            steps[-1].last_name = node.name
            last[node.name] = len(steps) - 1
            continue
        if node.op in VECTOR_OPS:
            if not steps:
                raise SystolicError(f"node {node.name!r}: the systolic arch runs element-wise ops only after a dense, "
                                    "conv2d or maxpool2d layer (its vector unit); this one comes first; use --arch "
                                    "dataflow")
            steps[-1].vector.append(node)
            last.pop(steps[-1].last_name, None)
            steps[-1].last_name = node.name
            last[node.name] = len(steps) - 1
            continue
        raise SystolicError(f"node {node.name!r}: op {node.op!r} is not supported by the systolic arch (supported: "
                            f"dense, conv2d, maxpool2d, {', '.join(VECTOR_OPS)}, a residual add, flatten, reshape); "
                            "use --arch dataflow")
    if not steps:
        raise SystolicError("the manifest has no dense or conv2d layer: nothing for the systolic array to run; "
                            "use --arch dataflow")
    in_fmt, out_fmt = stream_formats(manifest)
    n_in = math.prod(manifest.input_node.output_shape)
    if n_in != steps[0].n_inputs:  # pragma: no cover - a validated chain's first layer reads the whole input
        raise SystolicError(f"node {steps[0].node.name!r}: reads {steps[0].n_inputs} codes, the input has {n_in}")
    for a, b in zip(steps, steps[1:]):
        a.next_fmt = b.x_fmt
    for s in steps:
        s.emitted = s.vector[-1].formats["output"] if s.vector else s.out_fmt
    gemm = [s for s in steps if not s.is_pool]
    for s in steps:
        for sk in s.skips.values():
            if not all(isinstance(sk.node.formats[k], FixedType) for k in ("in_a", "in_b", "output")):
                raise SystolicError(f"node {sk.node.name!r}: add formats must be fixed-point")  # pragma: no cover
    if not gemm:
        raise SystolicError("the manifest has no dense or conv2d layer: nothing for the systolic array to run; "
                            "use --arch dataflow")
    _check_layouts(steps, in_fmt)
    x_fmt = _int_fmt([s.x_fmt for s in gemm])
    w_fmt = _int_fmt([s.w_grid for s in gemm])
    for s in gemm:  # the grid codes must fit the integer weight format (they do for a valid manifest)
        if s.w_codes.size and (s.w_codes.min() < w_fmt.min_code or s.w_codes.max() > w_fmt.max_code):
            raise SystolicError(f"node {s.node.name!r}: weight codes outside {w_fmt}")  # pragma: no cover
    return SystolicPlan(steps, x_fmt, w_fmt, in_fmt, out_fmt, n_in, math.prod(manifest.output_node.output_shape))


def _check_layouts(steps: list, _in_fmt: Any) -> None:
    """The lane layout (:func:`lane_words`) of each tensor is its writer's ``(channels, P)``: a conv2d /
    maxpool2d layer must read the ``[C, H, W]`` its writer wrote (no reshape in between), a residual
    add's skip tensor must have the layer's layout, and a batchnorm in a vector unit must see the
    layer's channels (its per-channel parameters go to the lanes)."""
    for li, s in enumerate(steps):
        if li and (s.is_conv or s.is_pool):
            got = steps[li - 1].out_layout
            want = (s.cin if s.is_conv else s.c, s.h * s.w)
            if got != want:
                raise SystolicError(f"node {s.node.name!r}: reads a [{want[0]}, {s.h}, {s.w}] tensor that the "
                                    f"layer before wrote as {got[0]} channels x {got[1]} pixels (a reshape in "
                                    "between): the systolic arch's lane layout is the writer's channels; use "
                                    "--arch dataflow")
        for vn in s.vector:
            shape = tuple(vn.output_shape)
            if vn.op == "batchnorm" and (shape[0], math.prod(shape[1:])) != s.out_layout:
                raise SystolicError(f"node {vn.name!r}: batchnorm on a {list(shape)} view of layer "
                                    f"{s.node.name!r}'s {s.out_layout[0]} channels x {s.out_layout[1]} pixels: the "
                                    "systolic arch's vector lanes carry the layer's channels; use --arch dataflow")
        for sk in s.skips.values():
            if steps[sk.source].out_layout != s.out_layout:
                raise SystolicError(f"node {sk.node.name!r}: skip {sk.skip_name!r} has the lane layout "
                                    f"{steps[sk.source].out_layout} (channels, pixels), the layer "
                                    f"{s.out_layout}: the systolic arch adds words lane by lane; use --arch "
                                    "dataflow")


@dataclass
class ConvStep(DenseStep):
    """One conv2d layer as the sequencer runs it (``k`` = ``C_in kh kw``, ``n`` = ``C_out``)."""

    cin: int = 0
    h: int = 0
    w: int = 0
    kernel: "tuple[int, int]" = (1, 1)
    stride: "tuple[int, int]" = (1, 1)
    padding: "tuple[int, int]" = (0, 0)
    dilation: "tuple[int, int]" = (1, 1)
    ho: int = 0
    wo: int = 0

    is_conv = True

    @property
    def pixels(self) -> int:  # type: ignore[override]
        """``P = H_out * W_out``: the input rows streamed per K-tile."""
        return self.ho * self.wo

    @property
    def n_inputs(self) -> int:
        return self.cin * self.h * self.w

    @property
    def n_outputs(self) -> int:
        return self.n * self.pixels

    @property
    def out_layout(self) -> "tuple[int, int]":
        return (self.n, self.pixels)


def conv_step(node: Node, codes, w_frac: int, w_grid, bias, bias_fmt) -> ConvStep:
    """The :class:`ConvStep` of a checked conv2d node (formats and weights read by the caller);
    :class:`SystolicError` names the node for what is not built (groups, a non-CHW input)."""
    p, f = node.params, node.formats
    if int(p["groups"]) != 1:
        raise SystolicError(f"node {node.name!r}: conv2d with groups={p['groups']} is not supported by the systolic "
                            "arch (groups=1 only: one GEMM per layer); use --arch dataflow")
    shape = tuple(node.input_shapes[0])
    if len(shape) != 3 or shape[0] != p["in_channels"]:
        raise SystolicError(f"node {node.name!r}: conv2d on a {list(shape)} input (need [C_in, H, W])")
    cin, h, w = (int(v) for v in shape)
    kh, kw = (int(v) for v in p["kernel"])
    sh, sw = (int(v) for v in p["stride"])
    ph, pw = (int(v) for v in p["padding"])
    dh, dw = (int(v) for v in p["dilation"])
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1 or tuple(node.output_shape) != (p["out_channels"], ho, wo):
        raise SystolicError(f"node {node.name!r}: conv2d output shape {list(node.output_shape)} is not "
                            f"[{p['out_channels']}, {ho}, {wo}]")  # pragma: no cover - a valid manifest agrees
    k = cin * kh * kw
    n = int(p["out_channels"])
    return ConvStep(node, k, n, f["input"], f["output"], codes.reshape(n, k), w_frac, bias, bias_fmt, w_grid,
                    cin=cin, h=h, w=w, kernel=(kh, kw), stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw),
                    ho=ho, wo=wo)


def bank_tables(step: ConvStep, rows: int, lanes: int = 1) -> "list[list[tuple[int, int, int, bool, int]]]":
    """Per K-tile ``i``, per bank ``b`` (term ``k = i R + b``: channel ``ci``, kernel tap ``(ky, kx)``):
    ``(offset, oy, ox, valid, lane)`` with ``oy = ky d_h - pad_h``, ``ox = kx d_w - pad_w``, ``offset =
    (ci // lanes) H W + oy W + ox``, ``lane = ci % lanes`` and ``valid = k < K``; output pixel ``(y, x)``
    reads lane ``lane`` of word ``offset + y s_h W + x s_w`` of the input buffer (``lanes`` codes a word,
    :func:`lane_words`) when ``0 <= y s_h + oy < H`` and ``0 <= x s_w + ox < W`` (else the tap is
    padding: code 0). ``lanes=1``: a flat CHW address."""
    kh, kw = step.kernel
    (dh, dw), (ph, pw) = step.dilation, step.padding
    kt, _nt = step.tiles(rows, lanes)
    out = []
    for i in range(kt):
        row = []
        for b in range(rows):
            k = i * rows + b
            if k >= step.k:
                row.append((0, 0, 0, False, 0))
                continue
            ci, rest = divmod(k, kh * kw)
            ky, kx = divmod(rest, kw)
            oy, ox = ky * dh - ph, kx * dw - pw
            row.append(((ci // lanes) * step.h * step.w + oy * step.w + ox, oy, ox, True, ci % lanes))
        out.append(row)
    return out


def tile_period(rows: int, grid_cols: int, pushes: int) -> int:
    """Cycles from one K-tile's commit to the next on the double-buffered array: the next tile's
    ``R`` weight rows go in as the commit token clears each PE row (row ``k`` once it has passed
    ``k + G`` stages: ``G + R`` cycles for all), and the commit waits for the ``pushes`` input rows
    of the tile before (``pushes + 1``)."""
    return max(grid_cols + rows, pushes + 1)


def gemm_cycles(rows: int, grid_cols: int, tiles: int, pushes: int, vector_latency: int) -> int:
    """Cycles of one dense or conv2d layer (no stalls) on the double-buffered array, from its first
    cycle to the next layer's: the first tile's ``R`` weight rows (commit in cycle ``R``), then a
    commit every :func:`tile_period` (``pushes`` input rows a tile: ``P`` for conv2d, 1 for dense,
    whose R codes are gathered meanwhile), the last tile's rows, ``R + G + 2`` through the array,
    the output pass of the last K-tile's rows straight into the output register and the vector unit
    (latency ``L``), and 2 to hand over to the next layer."""
    return rows + (tiles - 1) * tile_period(rows, grid_cols, pushes) + pushes + rows + grid_cols + 4 \
        + vector_latency


def conv_cycles(step: ConvStep, rows: int, grid_cols: int, cols: int, vector_latency: int) -> int:
    """Cycles of one conv layer (no stalls): :func:`gemm_cycles` of its ``kt nt`` tiles (output tile
    ``j``, K-tile ``i``, in that order) of ``P`` rows each; the output pass is the last K-tile's rows
    leaving the array (one pixel's ``C`` channels a cycle), so it costs no cycles of its own."""
    kt, nt = step.tiles(rows, cols)
    return gemm_cycles(rows, grid_cols, kt * nt, step.pixels, vector_latency)


@dataclass
class PoolStep:
    """A maxpool2d layer as the sequencer runs it: a pass over its input buffer, one output code per
    cycle in CHW order, the window's ``kh kw`` taps read at once from the buffer's bank copies (so
    ``kh kw <= R``), their maximum (padding never wins) cast to the output format."""

    node: Node
    in_fmt: FixedType
    out_fmt: FixedType
    c: int
    h: int
    w: int
    kernel: "tuple[int, int]"
    stride: "tuple[int, int]"
    padding: "tuple[int, int]"
    dilation: "tuple[int, int]"
    ho: int
    wo: int
    vector: list = field(default_factory=list)
    emitted: "FixedType | None" = None
    next_fmt: "FixedType | None" = None
    skips: dict = field(default_factory=dict)
    last_name: str = ""

    is_conv = False
    is_pool = True
    k = 0  # (no weights: no K-tiles, no output tiles)
    n = 0

    @property
    def x_fmt(self) -> FixedType:
        """The format of the codes it reads (the previous layer casts into it)."""
        return self.in_fmt

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]

    @property
    def pixels(self) -> int:
        return self.ho * self.wo

    @property
    def n_inputs(self) -> int:
        return self.c * self.h * self.w

    @property
    def n_outputs(self) -> int:
        return self.c * self.pixels

    @property
    def out_layout(self) -> "tuple[int, int]":
        return (self.c, self.pixels)

    def tap_offsets(self) -> "list[tuple[int, int]]":
        """Per tap ``t = ky kw + kx`` (bank ``t``): ``(oy, ox) = (ky d_h - pad_h, kx d_w - pad_w)``."""
        kh, kw = self.kernel
        (dh, dw), (ph, pw) = self.dilation, self.padding
        return [(ky * dh - ph, kx * dw - pw) for ky in range(kh) for kx in range(kw)]


def _pair(v: Any) -> "tuple[int, int]":
    return (int(v[0]), int(v[1]))


def pool_step(node: Node) -> PoolStep:
    """The :class:`PoolStep` of a maxpool2d node (its formats must be fixed-point)."""
    p, f = node.params, node.formats
    if not isinstance(f["input"], FixedType) or not isinstance(f["output"], FixedType):
        raise SystolicError(f"node {node.name!r}: maxpool2d formats must be fixed-point")  # pragma: no cover
    shape = tuple(node.input_shapes[0])
    if len(shape) != 3:
        raise SystolicError(f"node {node.name!r}: maxpool2d on a {list(shape)} input (need [C, H, W])")
    c, h, w = (int(v) for v in shape)
    _, ho, wo = (int(v) for v in node.output_shape)
    return PoolStep(node, f["input"], f["output"], c, h, w, _pair(p["kernel"]), _pair(p["stride"]),
                    _pair(p["padding"]), _pair(p.get("dilation", (1, 1))), ho, wo)


def pool_cycles(step: PoolStep, vector_latency: int, lanes: int = 1) -> int:
    """Cycles of one maxpool2d pass (no stalls): one output word (``lanes`` channels of one output
    pixel) per cycle, ``ceil(c / lanes) P`` of them, then ``L + 1`` to the last buffer write (``L``:
    the output register and the vector unit's latency)."""
    return lane_words(step.out_layout, lanes) + vector_latency + 1
