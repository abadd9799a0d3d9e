"""The manifest: the contract between the ML half and the hardware half of qfx.

An exported model is a folder holding two files:

``manifest.yaml``
    The graph, versioned (``version: 1``), nodes in topological order.
``tensors.npz``
    Every constant as integers (int64): fixed-point and K-hot values as codes
    in units of their lsb (``value = code * 2**-frac_bits``), minifloat
    weights as bit patterns (``sign | exponent field | mantissa field``),
    K-hot digit decompositions as ``shifts`` / ``signs`` (``code = sum(signs
    << shifts)``, most significant digit first, unused slots sign 0).
    MX weights (dense and conv2d) as element codes (minifloat bit patterns; MXINT8
    the signed integer ``round(P * 64)``) plus ``weight_mx_scales``, the E8M0 byte of
    each block along the weight's axis 1 (input features / input channels): the
    weight's shape with that axis divided by the block size.

Schema, version 1 (an excerpt of a real export: a residual block)::

    schema: qfx.manifest
    version: 1
    generator: qfx 0.1.0
    model: Residual               # class name of the exported module (information only)
    tensors: tensors.npz
    input: x                      # name of the single op=input node
    output: output_node           # name of the single op=output node
    nodes:
    - name: x
      op: input
      source: x                   # original name: forward argument, module path, fx node of a function
      inputs: []
      input_shapes: []
      output_shape: [2, 6, 6]     # shapes never include the batch dimension
      params: {}
      formats:
        output: ap_fixed<8,3,AP_RND,AP_SAT>
      arrays: {}
    - name: body_conv1
      op: conv2d
      source: body.conv1
      inputs: [stem]
      input_shapes: [[4, 6, 6]]
      output_shape: [4, 6, 6]
      params:
        in_channels: 4
        out_channels: 4
        kernel: [3, 3]
        stride: [1, 1]
        padding: [1, 1]
        dilation: [1, 1]
        groups: 1
        bias: true
        multiply: exact           # or lmul
        accum_order: [bias, in_channel, kernel_row, kernel_col]   # loop nest, outer to inner
        accum_exact: true         # accum can neither round nor overflow: any order gives the same bits
      formats:
        input: ap_fixed<9,3,AP_RND,AP_SAT>
        weight: ap_fixed<8,1,AP_RND_CONV,AP_SAT>    # or khot<2,ap_fixed<8,1>>, fp8_e4m3fn, [per-channel list]
        bias: ap_fixed<12,4,AP_RND>
        accum: ap_fixed<24,11>    # 'auto' resolved
        output: ap_fixed<9,3,AP_RND,AP_SAT>
      arrays:
        weight: body_conv1.weight
        bias: body_conv1.bias
    - name: add
      op: add
      source: add
      inputs: [stem, body_conv2]
      input_shapes: [[4, 6, 6], [4, 6, 6]]
      output_shape: [4, 6, 6]
      params: {}
      formats:
        in_a: ap_fixed<10,4,AP_RND>
        in_b: ap_fixed<9,3,AP_RND,AP_SAT>
        output: ap_fixed<8,3,AP_RND_ZERO,AP_WRAP_SM>
      arrays: {}

Params per op (:data:`OPS`): dense ``in_features, out_features, bias,
multiply, accum_order, accum_exact``; conv2d ``in_channels, out_channels,
kernel, stride, padding, dilation, groups`` and the dense ones but the feature
counts; batchnorm ``num_features``; leaky_relu ``slope_shift`` (slope
``2**-s``); maxpool2d ``kernel, stride, padding, dilation, ceil_mode``;
avgpool2d ``kernel, stride, padding, divisor`` (zero padding counted; a
``reciprocal`` format and array when the divisor is not a power of two);
flatten ``start_dim, end_dim`` (inclusive, counted without the batch
dimension); concat ``axis`` (counted without the batch dimension; two or more
inputs); clamp ``min_code, max_code`` (codes of the output format, or null for
no bound); pad ``padding`` (``[left, right, top, bottom]`` zeros, ZeroPad2d's order;
``formats.input == formats.output ==`` the producer's); upsample ``scale`` (``[sh, sw]``, ints >= 1:
nearest-neighbour upsampling of ``[C, H, W]`` to ``[C, H * sh, W * sw]``, each code repeated, no cast;
``formats.input == formats.output ==`` the producer's); layernorm ``num_features, eps, eps_code, affine, bias``
(normalization over the last axis, :mod:`qfx.layernorm`; ``eps_code = ceil(eps * 2**F_var)``; formats ``input, mean,
var, inv_std, output`` and ``scale`` / ``shift`` (gamma / beta, arrays of the same names) with ``affine`` / ``bias``,
``reciprocal`` (a scalar array) when ``num_features`` is not a power of two); table ``function, size, shift, lo_code``
(a :mod:`qfx.tables` lookup table of ``size`` entries from input code ``lo_code``, ``2**shift``
input codes each; array ``table``: its contents, codes of the output format, checked on load to
equal :func:`qfx.tables.contents`); softmax ``size, shift, lo_code`` and optional ``axis`` (the axis whose
vectors are normalized, counted without the batch dimension; absent: the last, e.g. the features of ``[F]``,
the rows of ``[T, S]``; ``0`` of ``[C, H, W]``: per pixel across channels):
the exp table of ``d = max - x`` on :func:`qfx.tables.softmax_diff_format`, geometry as table's;
formats ``input, exp, reciprocal, output``; array ``table``: the exp table, codes of ``exp``, checked on
load to equal :func:`qfx.tables.contents` of ``exp_neg``); matmul ``multiply`` (``exact`` or ``lmul``),
``accum_order`` (``[inner]``), ``accum_exact`` (two inputs ``a [.., T, K]`` and ``b [.., K, S]`` with equal
leading dims, output ``[.., T, S]``; formats ``in_a, in_b, accum, output`` as dense's input / accum / output,
and with ``multiply: lmul`` the minifloat ``operand`` both operands are rounded to before their L-Mul product,
whose type is ``lmul_product_type(operand)``);
permute ``dims`` (the output's axes as axes of the input, counted without the batch dimension; no cast);
reshape ``shape`` (the output shape, same element count, C order kept; no cast); relu, relu6, add, sub, mul, input, output none. batchnorm takes
``[C, H, W]``, ``[C, L]`` or ``[C]``.

Node fields (all required):

``name``
    Unique, a valid C++ and Verilog identifier (``[A-Za-z_][A-Za-z0-9_]*``, no
    keyword, no double underscore); ``source`` keeps the original name.
``op``
    One of :data:`OPS`.
``inputs`` / ``input_shapes``
    Producer node names (earlier in the list) and the shapes they deliver.
``output_shape``
    Shape of this node's output, without the batch dimension.
``params``
    The op's parameters (:data:`OPS` lists them per op).
``formats``
    Every tensor's format as spelled by ``str(fmt)`` (``qfx.parse_type`` reads
    it back). ``output`` is the format of the codes the node emits; ``input``
    (``in_a`` / ``in_b`` for add) the format the node casts its operand to on
    entry (``cast(producer codes, input)``; equal to the producer's output
    format where the layer takes its input as it comes). ``accum`` is always a
    concrete FixedType (``auto`` is resolved); ``params.accum_exact`` says
    whether it can round or overflow at all. A per-channel weight format is a
    list of spellings, one per output channel.
``arrays``
    Role -> key in ``tensors.npz``: ``weight``, ``bias``,
    ``weight_khot_shifts``, ``weight_khot_signs`` (dense / conv2d),
    ``weight_mx_scales`` (dense / conv2d with an MX weight format), ``scale``,
    ``shift`` (batchnorm), ``reciprocal`` (avgpool2d with a divisor that is
    not a power of two), ``table`` (table).

Op semantics (what the reference interpreter, the HLS C++ and the RTL compute)
are documented in :mod:`qfx.reference`.

:func:`load` validates everything it reads and raises :class:`ManifestError`
(a ``ValueError``) naming the file, the node and the problem.
"""

from __future__ import annotations

import difflib
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from .arith import (auto_accumulator, envelope, holds_all_values, lmul_product_type, mx_element_grid, mx_value_hull,
                    product_type, weight_hull)
from .types import MX_SCALE_BIAS, FixedType, Format, KHot, MinifloatType, MXType, parse_type

__all__ = [
    "minifloat_hull_codes",
    "SCHEMA",
    "SCHEMA_VERSION",
    "MANIFEST_FILE",
    "TENSORS_FILE",
    "OPS",
    "OpSpec",
    "Node",
    "Manifest",
    "ManifestError",
    "load",
    "infer_output_shape",
    "is_valid_name",
    "sanitize_name",
    "mac_product_format",
    "mac_auto_accum",
    "accum_is_exact",
    "weight_envelope",
    "MATMUL_ORDER",
    "REORDER_OPS",
    "matmul_output_shape",
    "matmul_auto_accum",
    "matmul_product_format",
    "matmul_accum_is_exact",
]

SCHEMA = "qfx.manifest"
SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.yaml"
TENSORS_FILE = "tensors.npz"


class ManifestError(ValueError):
    """A manifest that cannot be read or does not satisfy the schema."""


# ---------------------------------------------------------------------------
# The schema
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OpSpec:
    """What a node of one op kind carries."""

    n_inputs: int
    formats: tuple[str, ...]
    optional_formats: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    #: ``n_inputs`` is a minimum (concat takes two or more)
    variadic: bool = False
    #: params a node may leave out (each has a documented default)
    optional_params: tuple[str, ...] = ()


_MAC_FORMATS = ("input", "weight", "accum", "output")
DENSE_ORDER = ["bias", "in_feature"]
#: matmul: ``acc = 0``; for k = 0 .. K-1 ``acc = cast(acc + a[.., t, k] * b[.., k, s], accum)``
MATMUL_ORDER = ["inner"]
#: Ops that only move codes (no cast; ``formats.input == formats.output ==`` the producer's).
REORDER_OPS = ("flatten", "pad", "upsample", "permute", "reshape")
CONV_ORDER = ["bias", "in_channel", "kernel_row", "kernel_col"]

#: Every op kind of schema version 1.
OPS: dict[str, OpSpec] = {
    "input": OpSpec(0, ("output",)),
    "output": OpSpec(1, ("output",)),
    "dense": OpSpec(
        1,
        _MAC_FORMATS,
        ("bias",),
        ("in_features", "out_features", "bias", "multiply", "accum_order", "accum_exact"),
    ),
    "conv2d": OpSpec(
        1,
        _MAC_FORMATS,
        ("bias",),
        (
            "in_channels",
            "out_channels",
            "kernel",
            "stride",
            "padding",
            "dilation",
            "groups",
            "bias",
            "multiply",
            "accum_order",
            "accum_exact",
        ),
    ),
    "batchnorm": OpSpec(1, ("input", "scale", "shift", "output"), (), ("num_features",)),
    "relu": OpSpec(1, ("input", "output")),
    "relu6": OpSpec(1, ("input", "output")),
    "leaky_relu": OpSpec(1, ("input", "output"), (), ("slope_shift",)),
    "add": OpSpec(2, ("in_a", "in_b", "output")),
    "maxpool2d": OpSpec(1, ("input", "output"), (), ("kernel", "stride", "padding", "dilation", "ceil_mode")),
    "avgpool2d": OpSpec(1, ("input", "output"), ("reciprocal",), ("kernel", "stride", "padding", "divisor")),
    "flatten": OpSpec(1, ("input", "output"), (), ("start_dim", "end_dim")),
    "concat": OpSpec(2, ("output",), (), ("axis",), variadic=True),
    "clamp": OpSpec(1, ("input", "output"), (), ("min_code", "max_code")),
    "sub": OpSpec(2, ("in_a", "in_b", "output")),
    "mul": OpSpec(2, ("in_a", "in_b", "output")),
    "pad": OpSpec(1, ("input", "output"), (), ("padding",)),
    "upsample": OpSpec(1, ("input", "output"), (), ("scale",)),
    "table": OpSpec(1, ("input", "output"), (), ("function", "size", "shift", "lo_code")),
    "softmax": OpSpec(1, ("input", "exp", "reciprocal", "output"), (), ("size", "shift", "lo_code"),
                      optional_params=("axis",)),
    "layernorm": OpSpec(1, ("input", "mean", "var", "inv_std", "output"), ("scale", "shift", "reciprocal"),
                        ("num_features", "eps", "eps_code", "affine", "bias")),
    "matmul": OpSpec(2, ("in_a", "in_b", "accum", "output"), ("operand",), ("multiply", "accum_order", "accum_exact")),
    "permute": OpSpec(1, ("input", "output"), (), ("dims",)),
    "reshape": OpSpec(1, ("input", "output"), (), ("shape",)),
}

TOP_KEYS = ("schema", "version", "generator", "model", "tensors", "input", "output", "nodes")
NODE_KEYS = ("name", "op", "source", "inputs", "input_shapes", "output_shape", "params", "formats", "arrays")
ARRAY_ROLES = ("weight", "bias", "weight_khot_shifts", "weight_khot_signs", "scale", "shift", "reciprocal")
MULTIPLY_MODES = ("exact", "lmul")

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# C++ (incl. alternative tokens) and Verilog / SystemVerilog keywords: no node may be called so.
_KEYWORDS = frozenset(
    """
    alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t char16_t char32_t
    class compl concept const consteval constexpr constinit const_cast continue co_await co_return co_yield
    decltype default delete do double dynamic_cast else enum explicit export extern false float for friend
    goto if inline int long mutable namespace new noexcept not not_eq nullptr operator or or_eq private
    protected public register reinterpret_cast requires return short signed sizeof static static_assert
    static_cast struct switch template this thread_local throw true try typedef typeid typename union
    unsigned using virtual void volatile wchar_t while xor xor_eq main
    accept_on alias always always_comb always_ff always_latch assert assign assume automatic before begin
    bind bins binsof bit buf bufif0 bufif1 byte casex casez cell chandle checker clocking cmos config cover
    covergroup coverpoint cross deassign defparam design disable dist edge else end endcase endchecker
    endclass endclocking endconfig endfunction endgenerate endgroup endinterface endmodule endpackage
    endprimitive endprogram endproperty endspecify endsequence endtable endtask event eventually expect
    extends final first_match force foreach forever fork forkjoin function generate genvar global highz0
    highz1 iff ifnone ignore_bins illegal_bins implements implies import incdir include initial inout input
    inside instance integer interconnect interface intersect join join_any join_none large let liblist
    library local localparam logic longint macromodule matches medium modport module nand negedge
    nettype nexttime nmos nor noshowcancelled notif0 notif1 null output package packed parameter pmos
    posedge primitive priority program property pulldown pullup pulsestyle_ondetect pulsestyle_onevent
    pure rand randc randcase randsequence rcmos real realtime ref reg reject_on release repeat restrict
    rnmos rpmos rtran rtranif0 rtranif1 s_always s_eventually s_nexttime s_until s_until_with scalared
    sequence shortint shortreal showcancelled small soft solve specify specparam strong strong0 strong1
    string sync_accept_on sync_reject_on table tagged task time timeprecision timeunit tran tranif0 tranif1
    tri tri0 tri1 triand trior trireg type unique unique0 until until_with untyped use uwire var vectored
    virtual wait wait_order wand weak weak0 weak1 wildcard wire with within wor xnor
    """.split()
)


def _is_plain_text(text: str) -> bool:
    """No line breaks or other control characters (a string that cannot end a generated comment line)."""
    return not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in text)


def is_valid_name(name: object) -> bool:
    """Whether ``name`` is usable as a C++ and Verilog identifier (see :func:`sanitize_name`)."""
    return (
        isinstance(name, str)
        and bool(_NAME_RE.fullmatch(name))  # not .match: "$" also matches before a final newline
        and "__" not in name
        and not name.startswith("_")
        and name not in _KEYWORDS
    )


def sanitize_name(text: str, taken: "set[str] | None" = None) -> str:
    """A valid, unique identifier from an original name (module path, function, argument).

    Characters outside ``[A-Za-z0-9_]`` become ``_``, runs of ``_`` collapse,
    leading/trailing ``_`` go; a leading digit gets ``n`` in front, a keyword
    ``_node`` behind. If ``taken`` is given, ``_2``, ``_3``, ... make the name
    unique and it is added to ``taken``.
    """
    s = re.sub(r"[^A-Za-z0-9_]", "_", str(text))
    s = re.sub(r"_+", "_", s).strip("_") or "node"
    if s[0].isdigit():
        s = "n" + s
    if s in _KEYWORDS:
        s += "_node"
    if taken is not None:
        base, i = s, 2
        while s in taken:
            s = f"{base}_{i}"
            i += 1
        taken.add(s)
    return s


# ---------------------------------------------------------------------------
# Format helpers shared by export, load and the reference
# ---------------------------------------------------------------------------

def weight_envelope(fmt: "Format | tuple[FixedType, ...]") -> Format:
    """The single format covering a per-channel weight format (finest lsb, widest range)."""
    return envelope(fmt)


def weight_grid(fmt: Format) -> FixedType:
    """The FixedType on whose grid weight values are multiplied (K-hot base, minifloat hull, itself)."""
    return weight_hull(fmt)


def minifloat_hull_codes(bits: np.ndarray, t: MinifloatType) -> np.ndarray:
    """Exact values of minifloat bit patterns (a manifest's weight array) as codes on the grid
    2**(emin - M), the grid of :func:`weight_grid`; read by the reference and the HLS generator."""
    m, e = t.mantissa_bits, t.exponent_bits
    neg = ((bits >> (e + m)) & 1) == 1
    ef = (bits >> m) & ((1 << e) - 1)
    man = bits & ((1 << m) - 1)
    normal = ef > 0
    mag = np.where(normal, ((1 << m) + man) << np.where(normal, ef - 1, 0), man if t.subnormals else 0)
    return np.where(neg, -mag, mag)


def mac_product_format(input_fmt: FixedType, weight_fmt: "Format | tuple[FixedType, ...]", multiply: str) -> FixedType:
    """The type P of every product ``x[k] * w[k]`` (:func:`qfx.nn.product_type`; ValueError beyond 64 bits)."""
    return product_type(input_fmt, envelope(weight_fmt), multiply)


def mac_auto_accum(product: FixedType, n_terms: int, bias: "FixedType | None") -> FixedType:
    """``accum: auto`` (:func:`qfx.nn.auto_accumulator`; ValueError beyond 64 bits)."""
    return auto_accumulator(product, n_terms, bias)


def mx_weight_grid_codes(codes: np.ndarray, fmt: MXType) -> np.ndarray:
    """MX element codes (a manifest's ``weight`` array) as integers on :func:`qfx.arith.mx_element_grid`'s grid."""
    e = fmt.element
    return minifloat_hull_codes(codes, e) if isinstance(e, MinifloatType) else np.asarray(codes, dtype=np.int64)


def mx_weight_hull(fmt: MXType, arrays: Mapping[str, np.ndarray]) -> FixedType:
    """The FixedType holding every MX weight value of a dense / conv2d node (from ``weight`` and
    ``weight_mx_scales``): what sizes its products (:func:`qfx.arith.mx_value_hull`)."""
    return mx_value_hull(arrays["weight_mx_scales"] - MX_SCALE_BIAS, mx_weight_grid_codes(arrays["weight"], fmt), fmt)


def refuse_mx(manifest: "Manifest", tool: str) -> None:
    """ValueError naming the first node with MX weights, for a ``tool`` that has no MX layers.

    The HLS C++, the RTL (qfx-gen) and the estimate build MX dense / conv2d layers
    (:mod:`qfx.hls_mx`, :mod:`qfx.hw.accel.engines_mx`) and no longer call this; kept for tools
    that do not."""
    for node in manifest.nodes:
        if isinstance(node.formats.get("weight"), MXType):
            raise ValueError(
                f"node {node.name!r}: MX weights ({node.formats['weight']}) have no {tool}; "
                "qfx.reference runs the manifest, or export with fixed-point, K-hot or minifloat weights"
            )


def accum_is_exact(
    formats: Mapping[str, Any], multiply: str, n_terms: int, arrays: "Mapping[str, np.ndarray] | None" = None
) -> bool:
    """Whether the accumulator of a dense / conv2d node can never round or overflow.

    MX weights: the products are sized from the weight values (``arrays``, required).
    """
    weight = formats["weight"]
    try:
        if isinstance(weight, MXType):
            if arrays is None:
                raise TypeError("accum_is_exact: MX weights need the node's arrays")
            weight = mx_weight_hull(weight, arrays)
        auto = mac_auto_accum(
            mac_product_format(formats["input"], weight, multiply), n_terms, formats.get("bias")
        )
    except ValueError:
        return False
    return holds_all_values(formats["accum"], auto)


# ---------------------------------------------------------------------------
# The dataclass tree
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """One node of the graph, parsed and validated.

    ``formats`` maps tensor names to format objects (a tuple of FixedTypes for
    a per-channel weight format); ``arrays`` maps roles to the int64 arrays
    from ``tensors.npz``; ``array_keys`` maps roles to their npz keys.
    """

    name: str
    op: str
    source: str
    inputs: tuple[str, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    output_shape: tuple[int, ...]
    params: dict[str, Any]
    formats: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    array_keys: dict[str, str] = field(default_factory=dict)

    def format(self, name: str) -> Any:
        return self.formats[name]

    @property
    def output_format(self) -> FixedType:
        return self.formats["output"]


@dataclass(frozen=True)
class Manifest:
    """A loaded manifest: nodes in topological order plus the top-level fields."""

    version: int
    nodes: tuple[Node, ...]
    input: str
    output: str
    model: str = ""
    generator: str = ""
    path: "Path | None" = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {n.name: n for n in self.nodes})

    def node(self, name: str) -> Node:
        try:
            return self._by_name[name]  # type: ignore[attr-defined]
        except KeyError:
            hint = _suggest(name, list(self._by_name))  # type: ignore[attr-defined]
            raise KeyError(f"no node {name!r} in the manifest{hint}") from None

    def __getitem__(self, name: str) -> Node:
        return self.node(name)

    def __iter__(self):
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    @property
    def input_node(self) -> Node:
        return self.node(self.input)

    @property
    def output_node(self) -> Node:
        return self.node(self.output)


# ---------------------------------------------------------------------------
# Shape inference (shared by validation and export)
# ---------------------------------------------------------------------------


def _pool_out(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    span = size + 2 * p - d * (k - 1) - 1
    if ceil_mode:
        out = -(-span // s) + 1
        if (out - 1) * s >= size + p:  # the last window must start inside the input or left padding
            out -= 1
    else:
        out = span // s + 1
    return out


def matmul_output_shape(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """``[.., T, K] @ [.., K, S] -> [.., T, S]`` with equal leading dims (no broadcasting); ValueError otherwise."""
    a, b = tuple(int(v) for v in a), tuple(int(v) for v in b)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"matmul needs operands of rank >= 2 (without the batch dimension), got {list(a)} and {list(b)}")
    if len(a) != len(b) or a[:-2] != b[:-2]:
        raise ValueError(f"matmul needs equal leading dims on both operands (no broadcasting), got {list(a)} and "
                         f"{list(b)}")
    if a[-1] != b[-2]:
        raise ValueError(f"matmul inner dims differ: a {list(a)} has K = {a[-1]}, b {list(b)} has K = {b[-2]}")
    return a[:-1] + (b[-1],)


def matmul_product_format(formats: Mapping[str, Any]) -> FixedType:
    """The type of a matmul's exact products: ``in_a * in_b``, or with an ``operand`` format (``multiply:
    lmul``) ``lmul_product_type(operand)`` (ValueError beyond 64 bits)."""
    op = formats.get("operand")
    if op is not None:
        return lmul_product_type(op)
    return product_type(formats["in_a"], formats["in_b"], "exact")


def matmul_auto_accum(in_a: FixedType, in_b: FixedType, n_terms: int,
                      operand: "MinifloatType | None" = None) -> FixedType:
    """The exact accumulator of a matmul over ``n_terms`` products ``in_a * in_b`` (L-Mul products of
    ``operand`` when given; ValueError beyond 64 bits)."""
    return auto_accumulator(matmul_product_format({"in_a": in_a, "in_b": in_b, "operand": operand}), n_terms, None)


def matmul_accum_is_exact(formats: Mapping[str, Any], n_terms: int) -> bool:
    """Whether a matmul's accumulator can never round or overflow (any order gives the same bits)."""
    try:
        auto = matmul_auto_accum(formats["in_a"], formats["in_b"], n_terms, formats.get("operand"))
    except ValueError:
        return False
    return holds_all_values(formats["accum"], auto)


def infer_output_shape(op: str, params: Mapping[str, Any], input_shapes: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The output shape (no batch dimension) an op computes; raises ValueError with the reason."""
    shapes = [tuple(int(v) for v in s) for s in input_shapes]
    if op == "input":
        raise ValueError("the input node's shape is given, not inferred")
    x = shapes[0]
    if op in ("output", "relu", "relu6", "leaky_relu", "batchnorm"):
        if op == "batchnorm":
            if len(x) not in (1, 2, 3) or x[0] != params["num_features"]:
                raise ValueError(f"batchnorm needs input [{params['num_features']}, H, W], [{params['num_features']}, L] "
                                 f"or [{params['num_features']}], got {list(x)}")
        return x
    if op in ("clamp", "table"):
        return x
    if op == "softmax":
        axis = params.get("axis", len(x) - 1)
        if not x or not 0 <= axis < len(x):
            raise ValueError(f"softmax axis {axis} does not fit input {list(x)} (axes count from 0 without the batch "
                             "dim; absent: the last)")
        return x
    if op == "layernorm":
        if not x or x[-1] != params["num_features"]:
            raise ValueError(f"layernorm needs input [..., {params['num_features']}] (normalized over the last axis), "
                             f"got {list(x)}")
        return x
    if op == "pad":
        if len(x) != 3:
            raise ValueError(f"pad needs input [C, H, W], got {list(x)}")
        left, right, top, bottom = params["padding"]
        return (x[0], x[1] + top + bottom, x[2] + left + right)
    if op == "upsample":
        if len(x) != 3:
            raise ValueError(f"upsample needs input [C, H, W], got {list(x)}")
        sh, sw = params["scale"]
        return (x[0], x[1] * sh, x[2] * sw)
    if op == "matmul":
        return matmul_output_shape(shapes[0], shapes[1])
    if op == "permute":
        dims = [int(d) for d in params["dims"]]
        if sorted(dims) != list(range(len(x))):
            raise ValueError(f"permute dims {dims} are not a permutation of the {len(x)} axes of input {list(x)} "
                             "(axes counted without the batch dimension)")
        return tuple(x[d] for d in dims)
    if op == "reshape":
        out = tuple(int(v) for v in params["shape"])
        if math.prod(out) != math.prod(x):
            raise ValueError(f"reshape of input {list(x)} ({math.prod(x)} elements) to {list(out)} "
                             f"({math.prod(out)} elements)")
        return out
    if op in ("add", "sub", "mul"):
        if shapes[0] != shapes[1]:
            raise ValueError(f"{op} needs operands of the same shape, got {list(shapes[0])} and {list(shapes[1])}")
        return x
    if op == "concat":
        axis = int(params["axis"])
        if not 0 <= axis < len(x):
            raise ValueError(f"concat axis {axis} does not fit input {list(x)}")
        for s in shapes[1:]:
            if len(s) != len(x) or s[:axis] + s[axis + 1:] != x[:axis] + x[axis + 1:]:
                raise ValueError(f"concat along axis {axis} needs inputs equal in every other axis, got "
                                 f"{[list(v) for v in shapes]}")
        return x[:axis] + (sum(s[axis] for s in shapes),) + x[axis + 1:]
    if op == "dense":
        if len(x) < 1 or x[-1] != params["in_features"]:
            raise ValueError(f"dense needs input [..., {params['in_features']}], got {list(x)}")
        return x[:-1] + (int(params["out_features"]),)
    if op == "flatten":
        start, end = int(params["start_dim"]), int(params["end_dim"])
        if not 0 <= start <= end < len(x):
            raise ValueError(f"flatten dims {start}..{end} do not fit input {list(x)}")
        return x[:start] + (math.prod(x[start : end + 1]),) + x[end + 1 :]
    if len(x) != 3:
        raise ValueError(f"{op} needs input [C, H, W], got {list(x)}")
    c, h, w = x
    k, s, p = params["kernel"], params["stride"], params["padding"]
    if op == "conv2d":
        d = params["dilation"]
        if c != params["in_channels"]:
            raise ValueError(f"conv2d needs {params['in_channels']} input channels, got {c}")
        ho = (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
        wo = (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
        out = (int(params["out_channels"]), ho, wo)
    elif op == "maxpool2d":
        d = params["dilation"]
        ceil = bool(params["ceil_mode"])
        out = (c, _pool_out(h, k[0], s[0], p[0], d[0], ceil), _pool_out(w, k[1], s[1], p[1], d[1], ceil))
    elif op == "avgpool2d":
        out = (c, _pool_out(h, k[0], s[0], p[0], 1, False), _pool_out(w, k[1], s[1], p[1], 1, False))
    else:
        raise ValueError(f"unknown op {op!r}")
    if out[1] < 1 or out[2] < 1:
        raise ValueError(f"{op} with kernel {list(k)} gives an empty output for input {list(x)}")
    return out


# ---------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------


def _suggest(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    out: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in out:
            mark = key_node.start_mark
            raise ManifestError(f"line {mark.line + 1}: duplicate key {key!r}")
        out[key] = loader.construct_object(value_node, deep=deep)
    return out


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Checker:
    """Collects the context (file, node) for error messages."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> "ManifestError":
        return ManifestError(f"{self.path}: {where}: {problem}")

    def keys(self, where: str, mapping: Any, required: Sequence[str], optional: Sequence[str] = (), what: str = "key") -> None:
        if not isinstance(mapping, dict):
            raise self.fail(where, f"expected a mapping, got {type(mapping).__name__} {mapping!r}")
        allowed = list(required) + list(optional)
        for k in mapping:
            if k not in allowed:
                raise self.fail(where, f"unknown {what} {k!r}{_suggest(str(k), allowed)}; valid {what}s: {', '.join(allowed)}")
        for k in required:
            if k not in mapping:
                raise self.fail(where, f"missing required {what} {k!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _shape(ck: _Checker, where: str, value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(_is_int(v) and v >= 1 for v in value):
        raise ck.fail(where, f"{what} must be a list of positive ints, got {value!r}")
    return tuple(value)


def _pair(ck: _Checker, where: str, params: dict, key: str, minimum: int) -> tuple[int, int]:
    v = params[key]
    if not (isinstance(v, list) and len(v) == 2 and all(_is_int(a) and a >= minimum for a in v)):
        raise ck.fail(where, f"params.{key} must be a list of two ints >= {minimum}, got {v!r}")
    return (v[0], v[1])


def _int_param(ck: _Checker, where: str, params: dict, key: str, minimum: int) -> int:
    v = params[key]
    if not _is_int(v) or v < minimum:
        raise ck.fail(where, f"params.{key} must be an int >= {minimum}, got {v!r}")
    return v


def _bool_param(ck: _Checker, where: str, params: dict, key: str) -> bool:
    v = params[key]
    if not isinstance(v, bool):
        raise ck.fail(where, f"params.{key} must be true or false, got {v!r}")
    return v


def _check_params(ck: _Checker, where: str, op: str, params: dict) -> dict:
    p = dict(params)
    if op in ("dense", "conv2d"):
        for key in ("in_features", "out_features") if op == "dense" else ("in_channels", "out_channels", "groups"):
            _int_param(ck, where, p, key, 1)
        _bool_param(ck, where, p, "bias")
        _bool_param(ck, where, p, "accum_exact")
        if p["multiply"] not in MULTIPLY_MODES:
            raise ck.fail(where, f"params.multiply must be one of {MULTIPLY_MODES}, got {p['multiply']!r}")
        order = DENSE_ORDER if op == "dense" else CONV_ORDER
        if p["accum_order"] != order:
            raise ck.fail(where, f"params.accum_order must be {order} (the only order schema {SCHEMA_VERSION} defines), got {p['accum_order']!r}")
        if op == "conv2d":
            p["kernel"] = _pair(ck, where, p, "kernel", 1)
            p["stride"] = _pair(ck, where, p, "stride", 1)
            p["padding"] = _pair(ck, where, p, "padding", 0)
            p["dilation"] = _pair(ck, where, p, "dilation", 1)
            if p["in_channels"] % p["groups"] or p["out_channels"] % p["groups"]:
                raise ck.fail(where, f"groups={p['groups']} must divide in_channels={p['in_channels']} and out_channels={p['out_channels']}")
    elif op == "matmul":
        _bool_param(ck, where, p, "accum_exact")
        if p["multiply"] not in MULTIPLY_MODES:
            raise ck.fail(where, f"params.multiply must be one of {MULTIPLY_MODES} for matmul, got {p['multiply']!r}")
        if p["accum_order"] != MATMUL_ORDER:
            raise ck.fail(where, f"params.accum_order must be {MATMUL_ORDER} (the only order schema {SCHEMA_VERSION} "
                                 f"defines), got {p['accum_order']!r}")
    elif op in ("permute", "reshape"):
        key = "dims" if op == "permute" else "shape"
        v = p[key]
        if not isinstance(v, list) or not v or not all(_is_int(a) and a >= (0 if op == "permute" else 1) for a in v):
            raise ck.fail(where, f"params.{key} must be a non-empty list of ints >= {0 if op == 'permute' else 1}, "
                                 f"got {v!r}")
        p[key] = tuple(v)
    elif op == "batchnorm":
        _int_param(ck, where, p, "num_features", 1)
    elif op == "leaky_relu":
        _int_param(ck, where, p, "slope_shift", 1)
    elif op == "layernorm":
        _int_param(ck, where, p, "num_features", 1)
        _int_param(ck, where, p, "eps_code", 1)
        _bool_param(ck, where, p, "affine")
        _bool_param(ck, where, p, "bias")
        if p["bias"] and not p["affine"]:
            raise ck.fail(where, "params.bias is true but params.affine is false (a bias comes with elementwise_affine)")
        e = p["eps"]
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 < e < float("inf"):
            raise ck.fail(where, f"params.eps must be a finite number > 0, got {e!r}")
    elif op in ("maxpool2d", "avgpool2d"):
        p["kernel"] = _pair(ck, where, p, "kernel", 1)
        p["stride"] = _pair(ck, where, p, "stride", 1)
        p["padding"] = _pair(ck, where, p, "padding", 0)
        if op == "maxpool2d":
            p["dilation"] = _pair(ck, where, p, "dilation", 1)
            _bool_param(ck, where, p, "ceil_mode")
            if any(2 * pad > k for pad, k in zip(p["padding"], p["kernel"])):
                raise ck.fail(where, f"padding {list(p['padding'])} must be at most half the kernel {list(p['kernel'])}")
        else:
            _int_param(ck, where, p, "divisor", 1)
    elif op == "flatten":
        _int_param(ck, where, p, "start_dim", 0)
        _int_param(ck, where, p, "end_dim", 0)
    elif op == "concat":
        _int_param(ck, where, p, "axis", 0)
    elif op == "pad":
        v = p["padding"]
        if not isinstance(v, list) or len(v) != 4 or not all(_is_int(a) and a >= 0 for a in v):
            raise ck.fail(where, f"params.padding must be [left, right, top, bottom] of ints >= 0, got {v!r}")
        p["padding"] = tuple(v)
    elif op == "upsample":
        v = p["scale"]
        if not isinstance(v, list) or len(v) != 2 or not all(_is_int(a) and a >= 1 for a in v):
            raise ck.fail(where, f"params.scale must be [sh, sw] of ints >= 1, got {v!r}")
        p["scale"] = tuple(v)
    elif op == "softmax":
        size = _int_param(ck, where, p, "size", 2)
        if size & (size - 1):
            raise ck.fail(where, f"params.size must be a power of two, got {size}")
        _int_param(ck, where, p, "shift", 0)
        if "axis" in p:
            _int_param(ck, where, p, "axis", 0)
        if not _is_int(p["lo_code"]):
            raise ck.fail(where, f"params.lo_code must be an integer code, got {p['lo_code']!r}")
    elif op == "table":
        from .tables import FUNCTIONS

        if p["function"] not in FUNCTIONS:
            raise ck.fail(where, f"params.function must be one of {', '.join(FUNCTIONS)}, got {p['function']!r}")
        size = _int_param(ck, where, p, "size", 2)
        if size & (size - 1):
            raise ck.fail(where, f"params.size must be a power of two, got {size}")
        _int_param(ck, where, p, "shift", 0)
        if not _is_int(p["lo_code"]):
            raise ck.fail(where, f"params.lo_code must be an integer code, got {p['lo_code']!r}")
    elif op == "clamp":
        for key in ("min_code", "max_code"):
            v = p[key]
            if v is not None and not _is_int(v):
                raise ck.fail(where, f"params.{key} must be an integer code or null, got {v!r}")
        if p["min_code"] is not None and p["max_code"] is not None and p["min_code"] > p["max_code"]:
            raise ck.fail(where, f"params.min_code {p['min_code']} exceeds max_code {p['max_code']}")
    return p


_FIXED_ONLY = ("input", "bias", "accum", "output", "scale", "shift", "reciprocal", "in_a", "in_b", "exp", "mean", "var",
               "inv_std")


def _parse_formats(ck: _Checker, where: str, op: str, spec: OpSpec, formats: Any, params: dict) -> dict:
    ck.keys(where + " formats", formats, spec.formats, spec.optional_formats, what="format")
    out: dict[str, Any] = {}
    for key, spelling in formats.items():
        if key == "weight" and isinstance(spelling, list):
            if not spelling:
                raise ck.fail(where, "formats.weight: an empty per-channel list")
            fmts = []
            for i, s in enumerate(spelling):
                fmts.append(_parse_one(ck, where, f"weight[{i}]", s))
            if not all(isinstance(t, FixedType) for t in fmts):
                raise ck.fail(where, "formats.weight: a per-channel weight format must list fixed-point formats")
            if len({(t.width, t.signed, t.rounding, t.overflow) for t in fmts}) != 1:
                raise ck.fail(where, "formats.weight: per-channel formats must share word length, signedness and modes")
            out[key] = tuple(fmts)
            continue
        t = _parse_one(ck, where, key, spelling)
        if key in _FIXED_ONLY and not isinstance(t, FixedType):
            raise ck.fail(where, f"formats.{key} must be a fixed-point format (ap_fixed/ap_ufixed/ap_int), not {spelling}")
        out[key] = t
    if op == "matmul":
        lm = params["multiply"] == "lmul"
        if lm and "operand" not in out:
            raise ck.fail(where, "multiply: lmul needs formats.operand, the minifloat format both operands are "
                                 "rounded to (e.g. operand: fp8_e4m3fn)")
        if not lm and "operand" in out:
            raise ck.fail(where, f"formats.operand is given but params.multiply is {params['multiply']!r}; the "
                                 "operand format is used only with multiply: lmul")
        t = out.get("operand")
        if lm and not isinstance(t, MinifloatType):
            raise ck.fail(where, f"multiply: lmul needs a minifloat formats.operand (e.g. fp8_e4m3fn), not "
                                 f"{formats['operand']}")
        if lm and (t.mantissa_bits > 23 or t.emin < -126 or t.emax > 127):
            raise ck.fail(where, f"formats.operand {t}: L-Mul is defined by qfx for minifloats within float32's "
                                 "range and precision (mantissa <= 23 bits, exponents -126..127)")
    if op in ("dense", "conv2d"):
        if params["bias"] != ("bias" in out):
            raise ck.fail(where, "params.bias is " + str(params["bias"]).lower() + " but formats.bias is " + ("present" if "bias" in out else "missing"))
        if params["multiply"] == "lmul" and not isinstance(out["weight"], MinifloatType):
            raise ck.fail(where, f"multiply: lmul needs a minifloat weight format, not {formats['weight']}")
        w = out["weight"]
        if isinstance(w, MXType):
            # blocks along the reduction's input axis: dense in_features (axis 1 / -1), conv in_channels (axis 1)
            ok_axes = (-1, 1) if op == "dense" else (1, -3)
            n_in = params["in_features"] if op == "dense" else params["in_channels"] // params["groups"]
            what = "input features (axis -1)" if op == "dense" else "input channels (axis 1)"
            if w.axis not in ok_axes:
                raise ck.fail(where, f"formats.weight {w}: MX blocks of a {op} weight must run along the {what}, "
                                     f"e.g. {w.name}<block={w.block_size}{'' if op == 'dense' else ',axis=1'}>")
            if n_in % w.block_size:
                raise ck.fail(where, f"formats.weight {w}: the block size {w.block_size} does not divide the "
                                     f"{n_in} {what.split(' (')[0]}")
            if not params["accum_exact"]:
                raise ck.fail(where, f"formats.weight {w}: MX weights need an exact accumulator (accum_exact: true); "
                                     "the order of a rounding MX accumulation is not defined yet")
        n_out = params["out_features" if op == "dense" else "out_channels"]
        if isinstance(out["weight"], tuple) and len(out["weight"]) != n_out:
            raise ck.fail(where, f"formats.weight lists {len(out['weight'])} per-channel formats for {n_out} output channels")
    return out


def _parse_one(ck: _Checker, where: str, key: str, spelling: Any) -> Format:
    if not isinstance(spelling, str):
        raise ck.fail(where, f"formats.{key} must be a format spelling (str), got {spelling!r}")
    try:
        return parse_type(spelling)
    except (ValueError, TypeError) as err:
        raise ck.fail(where, f"formats.{key}: {err}") from None


def _expected_arrays(op: str, params: dict, formats: dict, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Role -> expected shape of every array a node must reference."""
    if op == "dense":
        w = (params["out_features"], params["in_features"])
    elif op == "conv2d":
        w = (params["out_channels"], params["in_channels"] // params["groups"], *params["kernel"])
    elif op == "batchnorm":
        return {"scale": (params["num_features"],), "shift": (params["num_features"],)}
    elif op == "avgpool2d":
        return {"reciprocal": ()} if "reciprocal" in formats else {}
    elif op in ("table", "softmax"):
        return {"table": (params["size"],)}
    elif op == "layernorm":
        out_ln: dict[str, tuple[int, ...]] = {}
        if params["affine"]:
            out_ln["scale"] = (params["num_features"],)
        if params["bias"]:
            out_ln["shift"] = (params["num_features"],)
        if "reciprocal" in formats:
            out_ln["reciprocal"] = ()
        return out_ln
    else:
        return {}
    out = {"weight": w}
    if params["bias"]:
        out["bias"] = (w[0],)
    if isinstance(formats["weight"], MXType):  # the weight's shape with the block axis (1) divided
        out["weight_mx_scales"] = (w[0], w[1] // formats["weight"].block_size, *w[2:])
    if isinstance(formats["weight"], KHot):
        out["weight_khot_shifts"] = w + (formats["weight"].k,)
        out["weight_khot_signs"] = w + (formats["weight"].k,)
    return out


def _code_range(fmt: Any, where: str, ck: _Checker, role: str, a: np.ndarray) -> None:
    """Codes within their formats' ranges; K-hot representable; minifloat finite."""
    if a.size == 0:
        return
    if isinstance(fmt, MXType):
        e = fmt.element
        if isinstance(e, FixedType):  # MXINT8: the symmetric range
            if a.min() < -e.max_code or a.max() > e.max_code:
                raise ck.fail(where, f"array {role!r}: {fmt} element codes must lie in {-e.max_code}..{e.max_code}, "
                                     f"found {int(a.min())}..{int(a.max())}")
            return
        fmt = e
    if isinstance(fmt, MinifloatType):
        if a.min() < 0 or a.max() >= (1 << fmt.bits):
            raise ck.fail(where, f"array {role!r}: bit patterns of {fmt} must lie in 0..{(1 << fmt.bits) - 1}, found {int(a.min())}..{int(a.max())}")
        m, e = fmt.mantissa_bits, fmt.exponent_bits
        exp = (a >> m) & ((1 << e) - 1)
        man = a & ((1 << m) - 1)
        top = (1 << e) - 1
        if fmt.inf_nan == "ieee":
            bad = exp == top
        elif fmt.inf_nan == "fn":
            bad = (exp == top) & (man == (1 << m) - 1)
        else:
            bad = np.zeros(a.shape, dtype=bool)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ck.fail(where, f"array {role!r}: element {list(idx)} is inf/NaN in {fmt}; weights must be finite")
        return
    base = fmt.base if isinstance(fmt, KHot) else fmt
    lo, hi = base.min_code, base.max_code
    amin, amax = int(a.min()), int(a.max())
    if amin < lo or amax > hi:
        raise ck.fail(where, f"array {role!r}: codes {amin}..{amax} lie outside {lo}..{hi}, the range of {fmt}")
    if isinstance(fmt, KHot):
        allowed = fmt.codes()
        ok = np.isin(a, allowed)
        if not ok.all():
            idx = tuple(int(i) for i in np.argwhere(~ok)[0])
            raise ck.fail(where, f"array {role!r}: code {int(a[idx])} at {list(idx)} is not representable in {fmt} (more than {fmt.k} nonzero digits)")


def load(path: "str | Path") -> Manifest:
    """Read and validate a manifest folder (or its ``manifest.yaml``).

    Checks: schema name and version; required and unknown keys (with a
    close-name suggestion); names (valid identifiers, unique); op kinds,
    params and formats (``qfx.parse_type``); inputs refer to earlier nodes;
    shapes agree between connected nodes and with what each op computes;
    npz arrays present, int64, of the right shape, codes within their
    formats' ranges, K-hot codes representable and their digits consistent,
    minifloat weights finite; no unreferenced arrays.

    Raises
    ------
    ManifestError
        A ``ValueError`` naming the file, the node and the problem.
    """
    p = Path(path)
    yaml_path = p / MANIFEST_FILE if p.is_dir() else p
    ck = _Checker(yaml_path)
    if not yaml_path.is_file():
        raise ManifestError(f"{yaml_path}: no such manifest file (expected a folder holding {MANIFEST_FILE}, as qfx.export writes)")
    try:
        text = yaml_path.read_text(encoding="utf-8")
        doc = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except ManifestError as err:
        raise ManifestError(f"{yaml_path}: {err}") from None
    except yaml.YAMLError as err:
        raise ManifestError(f"{yaml_path}: not valid YAML: {err}") from None
    except UnicodeDecodeError as err:
        raise ManifestError(f"{yaml_path}: not UTF-8 text: {err}") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{yaml_path}: expected a YAML mapping at the top level, got {type(doc).__name__}")
    ck.keys("top level", doc, TOP_KEYS)
    if doc["schema"] != SCHEMA:
        raise ck.fail("top level", f"schema is {doc['schema']!r}, expected {SCHEMA!r}")
    if doc["version"] != SCHEMA_VERSION:
        raise ck.fail("top level", f"unsupported schema version {doc['version']!r}; this qfx reads version {SCHEMA_VERSION}")
    nodes_doc = doc["nodes"]
    if not isinstance(nodes_doc, list) or not nodes_doc:
        raise ck.fail("top level", "nodes must be a non-empty list")
    if (not isinstance(doc["tensors"], str) or "/" in doc["tensors"] or "\\" in doc["tensors"]
            or doc["tensors"] in ("", ".", "..") or not _is_plain_text(doc["tensors"])):
        raise ck.fail("top level", f"tensors must be a file name in the manifest folder, got {doc['tensors']!r}")

    npz_path = yaml_path.parent / doc["tensors"]
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            npz = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ManifestError(f"{npz_path}: missing (the manifest names it as its tensors file)") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ManifestError(f"{npz_path}: not a readable .npz file: {err}") from None

    nodes: list[Node] = []
    by_name: dict[str, Node] = {}
    used_keys: set[str] = set()
    for i, nd in enumerate(nodes_doc):
        where = f"node #{i}"
        if isinstance(nd, dict) and isinstance(nd.get("name"), str):
            where = f"node {nd['name']!r}"
        ck.keys(where, nd, NODE_KEYS, what="node key")
        name = nd["name"]
        if not is_valid_name(name):
            raise ck.fail(where, f"name {name!r} is not a valid C++/Verilog identifier ([A-Za-z][A-Za-z0-9_]*, no '__', no keyword)")
        if name in by_name:
            raise ck.fail(where, "duplicate node name")
        op = nd["op"]
        if not isinstance(op, str) or op not in OPS:
            raise ck.fail(where, f"unknown op {op!r}{_suggest(str(op), list(OPS))}; valid ops: {', '.join(OPS)}")
        where = f"node {name!r} ({op})"
        spec = OPS[op]
        if not isinstance(nd["source"], str) or not _is_plain_text(nd["source"]):
            raise ck.fail(where, f"source must be a string without line breaks or control characters (it is "
                                 f"written into generated comments), got {nd['source']!r}")
        inputs = nd["inputs"]
        if not isinstance(inputs, list) or (len(inputs) < spec.n_inputs if spec.variadic else len(inputs) != spec.n_inputs):
            what = f"{spec.n_inputs} or more" if spec.variadic else str(spec.n_inputs)
            raise ck.fail(where, f"inputs must list {what} node name(s), got {inputs!r}")
        for src in inputs:
            if not isinstance(src, str):
                raise ck.fail(where, f"inputs must be node names (strings), got {src!r}")
            if src not in by_name:
                if any(isinstance(d, dict) and d.get("name") == src for d in nodes_doc):
                    raise ck.fail(where, f"input {src!r} is defined later: nodes must be in topological order")
                raise ck.fail(where, f"input {src!r} is not a node{_suggest(str(src), list(by_name))}")
        in_shapes_doc = nd["input_shapes"]
        if not isinstance(in_shapes_doc, list) or len(in_shapes_doc) != len(inputs):
            raise ck.fail(where, f"input_shapes must list one shape per input, got {in_shapes_doc!r}")
        in_shapes = tuple(_shape(ck, where, s, f"input_shapes[{j}]") for j, s in enumerate(in_shapes_doc))
        out_shape = _shape(ck, where, nd["output_shape"], "output_shape")
        for j, (src, s) in enumerate(zip(inputs, in_shapes)):
            if by_name[src].output_shape != s:
                raise ck.fail(where, f"input_shapes[{j}] = {list(s)} but its producer {src!r} outputs {list(by_name[src].output_shape)}")
        ck.keys(where + " params", nd["params"], spec.params, spec.optional_params, what="param")
        params = _check_params(ck, where, op, nd["params"])
        formats = _parse_formats(ck, where, op, spec, nd["formats"], params)
        if op != "input":
            try:
                want = infer_output_shape(op, params, in_shapes)
            except ValueError as err:
                raise ck.fail(where, str(err)) from None
            if want != out_shape:
                raise ck.fail(where, f"output_shape {list(out_shape)} disagrees with what the op computes from its input: {list(want)}")
        if op in REORDER_OPS + ("output",):
            prod = by_name[inputs[0]].output_format
            if op in REORDER_OPS and formats["input"] != prod:
                raise ck.fail(where, f"formats.input {formats['input']} must equal the producer's output format {prod}")
            if formats["output"] != (formats["input"] if op in REORDER_OPS else prod):
                raise ck.fail(where, f"formats.output {formats['output']} must equal the format it passes through ({prod})")
        if op in ("dense", "conv2d"):
            n_terms = params["in_features"] if op == "dense" else params["in_channels"] // params["groups"] * params["kernel"][0] * params["kernel"][1]
            # MX weights: sized from the weight values, checked once the arrays are read (below)
            exact = params["accum_exact"] if isinstance(formats["weight"], MXType) else accum_is_exact(formats, params["multiply"], n_terms)
            if exact != params["accum_exact"]:
                raise ck.fail(where, f"params.accum_exact is {str(params['accum_exact']).lower()} but accum {formats['accum']} {'holds' if exact else 'does not hold'} every partial sum exactly")
        if op == "matmul":
            exact = matmul_accum_is_exact(formats, in_shapes[0][-1])
            if exact != params["accum_exact"]:
                raise ck.fail(where, f"params.accum_exact is {str(params['accum_exact']).lower()} but accum "
                                     f"{formats['accum']} {'holds' if exact else 'does not hold'} every partial sum exactly")
        if op == "clamp":
            out_fmt = formats["output"]
            for key in ("min_code", "max_code"):
                v = params[key]
                if v is not None and not out_fmt.min_code <= v <= out_fmt.max_code:
                    raise ck.fail(where, f"params.{key} {v} lies outside {out_fmt.min_code}..{out_fmt.max_code}, the codes "
                                         f"of the output format {out_fmt}")
        if op == "layernorm":
            from . import layernorm as lnx

            for key, flag in (("scale", "affine"), ("shift", "bias")):
                if params[flag] != (key in formats):
                    raise ck.fail(where, f"params.{flag} is {str(params[flag]).lower()} but formats.{key} is "
                                         + ("present" if key in formats else "missing"))
            if lnx.is_pow2(params["num_features"]) and "reciprocal" in formats:
                raise ck.fail(where, f"formats.reciprocal is not used ({params['num_features']} features, a power of two)")
            try:
                lnx.check_formats(formats, params["num_features"])
                want_eps = lnx.eps_code(params["eps"], formats["var"])
            except ValueError as err:
                raise ck.fail(where, str(err)) from None
            if params["eps_code"] != want_eps:
                raise ck.fail(where, f"params.eps_code {params['eps_code']} must be ceil(eps * 2**F_var) = {want_eps}")
        if op == "avgpool2d":
            n = params["divisor"]
            pow2 = n & (n - 1) == 0
            if pow2 == ("reciprocal" in formats):
                raise ck.fail(where, f"divisor {n}: formats.reciprocal is " + ("needed (not a power of two)" if not pow2 else "not used (a power of two)"))

        # arrays
        arrays_doc = nd["arrays"]
        expected = _expected_arrays(op, params, formats, in_shapes[0] if in_shapes else ())
        ck.keys(where + " arrays", arrays_doc, tuple(expected), what="array role")
        arrays: dict[str, np.ndarray] = {}
        for role, shape in expected.items():
            key = arrays_doc[role]
            if not isinstance(key, str):
                raise ck.fail(where, f"arrays.{role} must be an npz key (str), got {key!r}")
            if key not in npz:
                raise ck.fail(where, f"array {role!r}: key {key!r} is missing from {doc['tensors']}{_suggest(key, list(npz))}")
            if key in used_keys:
                raise ck.fail(where, f"array {role!r}: key {key!r} is already used by another node")
            used_keys.add(key)
            a = npz[key]
            if a.dtype != np.int64:
                raise ck.fail(where, f"array {role!r} ({key}) has dtype {a.dtype}, expected int64")
            if a.shape != shape:
                raise ck.fail(where, f"array {role!r} ({key}) has shape {list(a.shape)}, expected {list(shape)}")
            arrays[role] = a
        _check_array_values(ck, where, formats, arrays)
        if op == "table":
            _check_table(ck, where, params, formats, arrays["table"])
        if op == "softmax":
            _check_softmax(ck, where, params, formats, arrays["table"])
        if isinstance(formats.get("weight"), MXType):
            try:
                exact = accum_is_exact(formats, params["multiply"], n_terms, arrays)
            except ValueError as err:
                raise ck.fail(where, f"MX weights: {err}") from None
            if not exact:
                raise ck.fail(where, f"params.accum_exact is true but accum {formats['accum']} does not hold every "
                                     "partial sum of the MX weights exactly")
        node = Node(
            name=name,
            op=op,
            source=nd["source"],
            inputs=tuple(inputs),
            input_shapes=in_shapes,
            output_shape=out_shape,
            params=params,
            formats=formats,
            arrays=arrays,
            array_keys={r: arrays_doc[r] for r in expected},
        )
        nodes.append(node)
        by_name[name] = node

    unused = sorted(set(npz) - used_keys)
    if unused:
        raise ManifestError(f"{npz_path}: arrays {unused} are not referenced by any node")
    kinds = [n.op for n in nodes]
    if kinds.count("input") != 1 or kinds.count("output") != 1:
        raise ck.fail("top level", f"the graph needs exactly one input and one output node, found {kinds.count('input')} and {kinds.count('output')}")
    for key in ("input", "output"):
        if doc[key] not in by_name or by_name[doc[key]].op != key:
            raise ck.fail("top level", f"{key}: {doc[key]!r} is not the {key} node")
    for key in ("model", "generator"):  # both end up in generated C++ / TCL comments and reports
        if not isinstance(doc[key], str) or not _is_plain_text(doc[key]) or len(doc[key]) > 200:
            raise ck.fail("top level", f"{key} must be a string of at most 200 characters without line breaks or "
                                       f"control characters, got {doc[key]!r}")
    return Manifest(
        version=doc["version"],
        nodes=tuple(nodes),
        input=doc["input"],
        output=doc["output"],
        model=doc["model"],
        generator=doc["generator"],
        path=yaml_path.parent,
    )


def _check_table(ck: _Checker, where: str, params: dict, formats: dict, table: np.ndarray) -> None:
    """A table node's range lies inside its input format and its contents are qfx.tables' (one definition)."""
    from .tables import TableSpec, contents

    xi, out = formats["input"], formats["output"]
    spec = TableSpec(params["function"], params["size"], params["shift"], params["lo_code"])
    if not (xi.min_code <= spec.lo_code and spec.hi_code <= xi.max_code):
        raise ck.fail(where, f"the table covers input codes {spec.lo_code}..{spec.hi_code}, outside "
                             f"{xi.min_code}..{xi.max_code}, the codes of the input format {xi}")
    want = contents(spec, xi, out)
    bad = np.flatnonzero(want != table)
    if bad.size:
        i = int(bad[0])
        raise ck.fail(where, f"array 'table' differs from qfx.tables.contents of {spec.function} at {bad.size} "
                             f"entries, first at {i}: {int(table[i])} != {int(want[i])}")


def _check_softmax(ck: _Checker, where: str, params: dict, formats: dict, table: np.ndarray) -> None:
    """A softmax node's exp table lies inside its difference format and is qfx.tables' (one definition)."""
    from .tables import TableError, TableSpec, contents, softmax_check_formats, softmax_diff_format

    dfmt = softmax_diff_format(formats["input"])
    spec = TableSpec("exp_neg", params["size"], params["shift"], params["lo_code"])
    if not (dfmt.min_code <= spec.lo_code and spec.hi_code <= dfmt.max_code):
        raise ck.fail(where, f"the exp table covers max - x codes {spec.lo_code}..{spec.hi_code}, outside "
                             f"{dfmt.min_code}..{dfmt.max_code}, the codes of the difference format {dfmt}")
    try:
        softmax_check_formats(spec, formats["input"], formats["exp"], formats["reciprocal"], formats["output"])
    except TableError as err:
        raise ck.fail(where, str(err)) from None
    want = contents(spec, dfmt, formats["exp"])
    bad = np.flatnonzero(want != table)
    if bad.size:
        i = int(bad[0])
        raise ck.fail(where, f"array 'table' differs from qfx.tables.contents of exp_neg at {bad.size} "
                             f"entries, first at {i}: {int(table[i])} != {int(want[i])}")


def _check_array_values(ck: _Checker, where: str, formats: dict, arrays: dict[str, np.ndarray]) -> None:
    for role, a in arrays.items():
        if role in ("weight_khot_shifts", "weight_khot_signs", "weight_mx_scales"):
            continue
        fmt = formats["weight" if role == "weight" else ("exp" if "exp" in formats else "output") if role == "table"
                      else role]
        if role == "weight" and isinstance(fmt, tuple):
            for o, t in enumerate(fmt):
                _code_range(t, where, ck, f"weight[{o}]", a[o])
        else:
            _code_range(fmt, where, ck, role, a)
    if "weight_mx_scales" in arrays:
        sc = arrays["weight_mx_scales"]
        if sc.size and (sc.min() < 0 or sc.max() > 2 * MX_SCALE_BIAS):
            raise ck.fail(where, f"array 'weight_mx_scales': E8M0 scale codes must lie in 0..{2 * MX_SCALE_BIAS} "
                                 f"(255 is NaN; weights must be finite), found {int(sc.min())}..{int(sc.max())}")
    if "weight_khot_shifts" in arrays:
        fmt = formats["weight"]
        shifts, signs = arrays["weight_khot_shifts"], arrays["weight_khot_signs"]
        if not np.isin(signs, (-1, 0, 1)).all():
            raise ck.fail(where, "array 'weight_khot_signs' must hold -1, 0 or 1")
        if shifts.min() < 0 or shifts.max() > fmt.base.width:
            raise ck.fail(where, f"array 'weight_khot_shifts' must lie in 0..{fmt.base.width}")
        code = (signs * (np.int64(1) << shifts)).sum(axis=-1)
        bad = code != arrays["weight"]
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ck.fail(where, f"K-hot digits at {list(idx)} sum to {int(code[idx])}, but the weight code is {int(arrays['weight'][idx])}")
