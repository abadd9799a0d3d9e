"""Vitis HLS C++ from a manifest (Jinja2 templates), and its C simulation with g++.

``generate(manifest_path, out_dir)`` renders ``out_dir/hls/``:

``<top>.h``
    Includes, one ``typedef`` per tensor format of every node (the manifest's
    formats, spelled ``ap_fixed<W,I,Q,O>`` / ``ap_ufixed<W,I,Q,O>``; an
    ``ap_int<W>`` format is spelled as its equivalent ``ap_fixed<W,W,AP_TRN_ZERO,AP_WRAP>``),
    the exact helper types some layers need, and the top function's prototype.
``<top>.cpp``
    One function per node (templates ``hls_templates/<op>.j2``), a fan-out
    copy for every buffer read by two consumers (DATAFLOW wants one), and the
    top function: ``hls::stream`` in / out with ``#pragma HLS INTERFACE
    axis``, ``s_axilite`` control, ``DATAFLOW``. Dense / conv pipeline one
    output per ``reuse_factor`` cycles (PIPELINE II=reuse_factor, MAC loop
    UNROLL, weights ARRAY_PARTITION cyclic by ceil(n_terms / reuse_factor)).
    Every cast to a declared format goes through ``qfx_cast<D>(x)`` (in the
    header), which is ``D(x)`` except where D's lsb lies above x's msb: there
    the source is sign-extended first, because ap_types aborts in
    ``ap_private::get_bit`` on such casts. Weights, biases, BatchNorm scale / shift
    are ``static const`` arrays of the declared types, initialised from
    decimal literals that are the exact values ``code * 2**-F`` (checked
    here: every code must fit 53 bits, so the double is exact, and ap_fixed's
    double constructor is exact for representable values).
``<top>_tb.cpp``
    A testbench working on *codes* (raw bit patterns, assigned with
    ``.range()``). Without arguments (what ``csim_design`` runs) it checks
    itself: it feeds ``tb_input.txt`` to the top function, compares every
    output code with ``tb_expected.txt``, prints the first mismatch (vector,
    element, expected, got) and returns 1 on any, 0 when all are equal. With
    one argument (a file, ``-`` for stdin) it prints the output codes
    (:func:`csim`).
``tb_input.txt``, ``tb_expected.txt``
    The self-check's data (:func:`testbench_codes`): 16 input vectors
    (corners, then random codes from a fixed seed) and the output codes the
    integer reference :func:`qfx.reference.run` gives for them.
``run_hls.tcl``
    open_project, set_top, add_files (+ -tb: the testbench and its two data
    files), open_solution, set_part (``xczu3eg-sbva484-1-i``, Ultra96 v2),
    create_clock -period 10, csim_design (self-checking: a mismatch fails
    it), csynth_design, export_design. Run from the ``hls`` folder:
    ``vitis_hls -f run_hls.tcl``.

Semantics are :mod:`qfx.reference`'s: ``acc = (accum_t)bias`` (0 without
bias), ``acc = (accum_t)(acc + x[k] * w[k])`` in the manifest's
``accum_order``, ``y = (out_t)acc``; every element-wise layer casts once to
its output format. ap_fixed's own products and sums are exact, so each C++
cast is the reference's ``cast_codes``.

Supported: dense (also on [C, H, W]: rows of the last axis), conv2d (stride, padding, dilation, groups), batchnorm,
relu, relu6, leaky_relu, add, maxpool2d, avgpool2d (power-of-two divisor or
reciprocal), flatten, matmul (two activations, ``matmul.j2``: k ascending, the accum cast per step),
permute (``permute.j2``: a loop nest over the output reading the input at its permuted index),
reshape (a copy: C order is kept); fixed-point weights (per-channel formats too, on their
envelope grid), K-hot weights as shifts and adds from the manifest's digit
arrays, minifloat weights with ``multiply: exact`` (template ``_minifloat.j2``: the
manifest's bit patterns as ``ap_uint<1+E+M>`` arrays, decoded by a per-node
``<node>_wdec`` to their exact value on the hull grid, the ``<node>_w_t``
multiplier operand), and L-Mul (``multiply: lmul``, template
``_lmul.j2``): the weights as precomputed minifloat fields (sign, zero,
exponent, mantissa field) in ``static const`` arrays; a per-node helper
``<node>_lmul(x, fields)`` rounds the activation code to the weight format
with ap_uint arithmetic (a fixed-bound leading-one loop, the round and sticky
bits below the ``M + 1`` kept bits, nearest even, subnormals normalised or
flushed, overflow saturating to the largest finite value) and returns the
exact product ``+-(2**M + fx + fw + 2**(M - l(M))) << (ex + ew - M + F_P)``
on the grid of ``lmul_product_type`` (0 if an operand is 0), accumulated
like every product (the rounding is ``<node>_mf(x, ...)``, the product of fields
``<node>_lmul_fields``; matmul with ``multiply: lmul`` has ``<node>_mf_a`` /
``<node>_mf_b`` for its two run-time operands and ``<node>_lmul(a, b)``). MX weights (dense, conv2d; :mod:`qfx.hls_mx`, templates
``mx_dense.j2`` / ``mx_conv2d.j2``): small element products, the block scale a
shift of the block's exact partial sum (dense) or of each product (conv2d). Where the reference refuses a manifest (a
non-saturating weight format that an activation overflows) the C++
saturates.

``csim(out_dir, input_codes)`` compiles ``<top>.cpp`` and the testbench
with ``g++ -std=c++14 -O1 -Wall -Wno-unknown-pragmas`` (g++ does not know
the HLS pragmas; that is their point; see :data:`CXX_FLAGS` for the rest)
against the Xilinx ``ap_types`` headers of the hls4ml wheel, included with
``-isystem`` (and their own -Wall warnings silenced around the includes in
``<top>.h``), caches the executable by content hash under
``$QFX_CACHE_DIR/hls`` (default ``~/.cache/qfx/hls``) and returns the output
codes.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._toolchain import ap_types_dir, compiler, headers_fingerprint, locked
from .arith import lmul_offset_bits, lmul_product_type
from .intops import corner_and_random_codes, minifloat_fields
from .manifest import CONV_ORDER, DENSE_ORDER, Manifest, Node, is_valid_name, load, minifloat_hull_codes, weight_envelope
from .types import FixedType, KHot, MinifloatType, MXType

__all__ = [
    "PART",
    "CLOCK_NS",
    "CXX_FLAGS",
    "HlsCompileError",
    "CsimResult",
    "generate",
    "csim",
    "csim_run",
    "include_dir",
    "cache_dir",
    "template_dir",
    "generated_files",
    "testbench_codes",
    "TB_INPUT",
    "TB_EXPECTED",
    "compiler_warnings",
    "render",
    "build",
]

PART = "xczu3eg-sbva484-1-i"
CLOCK_NS = 10
# The -Wno-... flags switch off the warnings GCC 12 checks in its "access analysis" pass (string, heap and
# dangling-pointer checks): ~20% of the compile time of ap_types code, and the generated code (no pointers,
# heap or strings) cannot trigger them; a plain -Wall compile of it is warning-free too (tests/test_hls.py).
# -O1: -O2 compiled no faster and ran no faster here; -O0 runs ~25x slower.
CXX_FLAGS = ("-std=c++14", "-O1", "-Wall", "-Wno-unknown-pragmas", "-Wno-stringop-overflow", "-Wno-stringop-overread",
             "-Wno-dangling-pointer", "-Wno-use-after-free", "-Wno-mismatched-new-delete", "-Wno-mismatched-dealloc",
             "-Wno-free-nonheap-object")
SUPPORTED_OPS = ("input", "output", "dense", "conv2d", "batchnorm", "relu", "relu6", "leaky_relu", "add",
                 "maxpool2d", "avgpool2d", "flatten", "concat", "clamp", "sub", "mul", "pad", "upsample", "table",
                 "softmax", "layernorm", "matmul", "permute", "reshape")
# Identifiers the generated C++ or its headers already use at global scope (or the testbench in main).
_RESERVED = frozenset("""std hls qfx_cast qfx_caster in_stream out_stream stdin stdout stderr printf scanf fprintf
    fscanf fopen FILE size_t ssdm_int_sim""".split())
_ERROR_LINES = 40
_FORMAT_VERSION = "qfx-hls-v2"
TB_INPUT = "tb_input.txt"
TB_EXPECTED = "tb_expected.txt"
TB_VECTORS = 16
# The widest ap_fixed / ap_int the ap_types headers declare by default (AP_INT_MAX_W in ap_common.h).
AP_MAX_WIDTH = 1024


class HlsCompileError(RuntimeError):
    """g++ rejected the generated C++ (the message holds the relevant compiler lines)."""


# ---------------------------------------------------------------------------
# Locations
# ---------------------------------------------------------------------------


def template_dir() -> Path:
    """The ``hls_templates`` folder (installed as ``qfx.hls_templates``, or next to the ``qfx`` package)."""
    try:
        spec = importlib.util.find_spec("qfx.hls_templates")
    except (ImportError, ValueError):
        spec = None
    for loc in list(spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(loc) / "top.cpp.j2").is_file():
            return Path(loc)
    p = Path(__file__).resolve().parent.parent / "hls_templates"
    if (p / "top.cpp.j2").is_file():
        return p
    raise RuntimeError("the HLS templates (hls_templates/*.j2) were not found; reinstall qfx")


def include_dir() -> Path:
    """The Xilinx ``ap_types`` headers: ``$QFX_AP_TYPES_INCLUDE`` or the copy inside the hls4ml wheel."""
    return ap_types_dir(("ap_fixed.h", "hls_stream.h"), "the HLS C simulation")


def cache_dir() -> Path:
    env = os.environ.get("QFX_CACHE_DIR")
    d = Path(env).expanduser() / "hls" if env else Path.home() / ".cache" / "qfx" / "hls"
    d.mkdir(parents=True, exist_ok=True)
    return d


# ---------------------------------------------------------------------------
# Types and literals
# ---------------------------------------------------------------------------


def _cpp(t: FixedType) -> str:
    """The C++ spelling of a manifest format, every mode explicit."""
    base = "ap_fixed" if t.signed else "ap_ufixed"
    return f"{base}<{t.width},{t.int_bits},{t.rounding.name},{t.overflow.name}>"


def _exact(width: int, int_bits: int) -> str:
    """A signed helper type used only where its values are exact (AP_TRN / AP_WRAP never act)."""
    if width < 1:
        width, int_bits = 1, int_bits + 1 - width
    return f"ap_fixed<{width},{int_bits}>"


def _ibits(t: FixedType) -> int:
    """Integer bits of ``t`` as a signed type (an unsigned one needs one more)."""
    return t.int_bits + (0 if t.signed else 1)


def _literal(code: int, frac_bits: int, where: str) -> str:
    """A decimal literal whose double is exactly ``code * 2**-frac_bits``."""
    code = int(code)
    if abs(code) >= 1 << 53:
        raise ValueError(f"{where}: code {code} needs more than 53 bits; the HLS generator writes constants as exact doubles")
    v = math.ldexp(float(code), -frac_bits)
    text = repr(v)
    if float(text) != v or math.ldexp(v, frac_bits) != code:  # pragma: no cover - ldexp of a 53-bit int is exact
        raise AssertionError(f"{where}: {code} * 2**-{frac_bits} is not exact as {text}")
    return text


def _literals(codes: np.ndarray, frac_bits: int, where: str) -> list[str]:
    return [_literal(c, frac_bits, where) for c in np.asarray(codes).reshape(-1).tolist()]


# ---------------------------------------------------------------------------
# Per-node contexts
# ---------------------------------------------------------------------------


def _fail(node: Node, msg: str) -> ValueError:
    return ValueError(f"node {node.name!r} ({node.op}): {msg}")


def _pool_geometry(node: Node) -> dict[str, Any]:
    p = node.params
    c, h, w = node.input_shapes[0]
    _, ho, wo = node.output_shape
    (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride"], p["padding"]
    dh, dw = p.get("dilation", (1, 1))
    return dict(c=c, h=h, w=w, ho=ho, wo=wo, kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw, dh=dh, dw=dw)


def _mac_context(node: Node, reuse: int) -> tuple[dict, list[tuple[str, str]]]:
    f, p = node.formats, node.params
    where = f"node {node.name!r}"
    want_order = DENSE_ORDER if node.op == "dense" else CONV_ORDER
    if list(p["accum_order"]) != want_order:
        raise _fail(node, f"accum_order {p['accum_order']} is not the documented {want_order}")
    in_fmt: FixedType = f["input"]
    wfmt = f["weight"]
    codes = node.arrays["weight"]
    ctx: dict[str, Any] = dict(khot=False, lmul=False, minifloat=False, exact=bool(p["accum_exact"]), fold=None,
                               order=", ".join(p["accum_order"]),
                               weight_fmt=str(wfmt) if not isinstance(wfmt, tuple) else "per-channel " + ", ".join(map(str, wfmt)),
                               accum_fmt=str(f["accum"]), bias=bool(p["bias"]), n_w=int(codes.size))
    types: list[tuple[str, str]] = [("in", _cpp(in_fmt))]
    if isinstance(wfmt, MXType):  # element products and block-scale shifts (qfx/hls_mx.py, mx_<op>.j2)
        from .hls_mx import mx_context

        types += mx_context(node, in_fmt, ctx, _exact, _cpp, _literals, _mf_fields)
        ctx["template"] = f"mx_{node.op}"
    elif p["multiply"] == "lmul":
        if not isinstance(wfmt, MinifloatType):  # pragma: no cover - load checks it
            raise _fail(node, f"multiply: lmul needs a minifloat weight format, not {wfmt}")
        types += _lmul_context(ctx, node, in_fmt, wfmt)
    elif isinstance(wfmt, KHot):
        base = wfmt.base
        k = wfmt.k
        xs_int = _ibits(in_fmt) + _ibits(base) + 2
        xs_frac = in_fmt.frac_bits + max(base.frac_bits, 0)
        p_int = xs_int + max(1, (k - 1).bit_length()) + 1
        types += [("xs", _exact(xs_int + xs_frac, xs_int)), ("p", _exact(p_int + xs_frac, p_int))]
        ctx.update(khot=True, khot_k=k, khot_frac=base.frac_bits,
                   khot_shifts=[str(int(v)) for v in node.arrays["weight_khot_shifts"].reshape(-1)],
                   khot_signs=[str(int(v)) for v in node.arrays["weight_khot_signs"].reshape(-1)])
        types.append(("w", _cpp(base)))
    elif isinstance(wfmt, MinifloatType):
        from .manifest import weight_grid

        hull = weight_grid(wfmt)
        types.append(("w", _cpp(hull)))
        e, m = wfmt.exponent_bits, wfmt.mantissa_bits
        bits = np.asarray(codes, dtype=np.int64).reshape(-1)
        hull_codes = minifloat_hull_codes(bits, wfmt)
        # the magnitude needs the hull's bits but its sign; every code of the weights must fit (checked)
        mag = hull.width - 1 if hull.signed else hull.width
        if bits.size and (int(bits.min()) < 0 or int(bits.max()) >= 1 << (1 + e + m)
                          or int(np.abs(hull_codes).max()) >= 1 << mag):  # pragma: no cover - load checks the codes
            raise _fail(node, f"weight bit patterns do not fit {wfmt}")
        ctx.update(minifloat=True, mf=_mf_fields(wfmt, hull),
                   weight_bits=[str(int(v)) for v in bits.tolist()])
    elif isinstance(wfmt, tuple):
        env = weight_envelope(wfmt)
        if not isinstance(env, FixedType):  # pragma: no cover - load checks per-channel formats are fixed-point
            raise _fail(node, f"per-channel weight envelope {env} is not fixed-point")
        shifts = np.array([env.frac_bits - t.frac_bits for t in wfmt], dtype=np.int64)
        grid = codes << shifts.reshape((-1,) + (1,) * (codes.ndim - 1))
        types.append(("w", _cpp(env)))
        ctx["weights"] = _literals(grid, env.frac_bits, where + " weight")
    elif isinstance(wfmt, FixedType):
        types.append(("w", _cpp(wfmt)))
        ctx["weights"] = _literals(codes, wfmt.frac_bits, where + " weight")
    else:  # pragma: no cover - load accepts nothing else
        raise _fail(node, f"weight format {wfmt} is not supported by the HLS generator")
    if p["bias"]:
        types.append(("b", _cpp(f["bias"])))
        ctx["biases"] = _literals(node.arrays["bias"], f["bias"].frac_bits, where + " bias")
        ctx["n_bias"] = int(node.arrays["bias"].size)
    types += [("acc", _cpp(f["accum"])), ("out", _cpp(f["output"]))]
    return ctx, types


def _mf_fields(wfmt: MinifloatType, hull: FixedType) -> dict[str, Any]:
    """What ``_minifloat.j2`` needs to decode ``wfmt`` bit patterns onto ``hull``'s grid."""
    e, m = wfmt.exponent_bits, wfmt.mantissa_bits
    mag = hull.width - 1 if hull.signed else hull.width
    return dict(fmt=str(wfmt), e=e, m=m, bits=1 + e + m, frac=hull.frac_bits, subnormals=wfmt.subnormals, mag=mag,
                width=hull.width)


def _lmul_context(ctx: dict, node: Node, in_fmt: FixedType, wfmt: MinifloatType) -> list[tuple[str, str]]:
    """L-Mul (``multiply: lmul``): the weights as precomputed minifloat fields, the constants of the
    ``<node>_lmul`` helper (``_lmul.j2``) and its types; semantics of :mod:`qfx.reference`."""
    neg, zero, e, f = minifloat_fields(node.arrays["weight"].reshape(-1), wfmt)
    types = _lmul_helpers(ctx, wfmt, [("", "in", "the activation", in_fmt)], pair=False)
    ctx["lm"].update(wneg=[str(int(v)) for v in neg.tolist()], wzero=[str(int(v)) for v in zero.tolist()],
                     we=[str(int(v)) for v in e.tolist()], wf=[str(int(v)) for v in f.tolist()])
    return types


def _lmul_helpers(ctx: dict, t: MinifloatType, sides: list[tuple[str, str, str, FixedType]],
                  pair: bool) -> list[tuple[str, str]]:
    """The constants of ``_lmul.j2``: one ``<node>_mf<suffix>`` rounding helper per fixed-point side
    ``(suffix, type role, what, format)``, the fields product ``<node>_lmul_fields`` and ``<node>_lmul``
    (of an activation and weight fields, or with ``pair`` of two run-time operands, matmul's); the
    types ``e``, ``f``, ``p`` (one exponent type bounds every exponent any helper forms)."""
    m = t.mantissa_bits
    prod = lmul_product_type(t)
    top_e, top_f = t.max_finite_fields
    e_bound = max(abs(t.emin) + m + 1, abs(t.emax) + 1)  # weight / operand fields: exponents in [emin - M, emax]
    side_ctx = []
    for suffix, role, what, fx in sides:
        frac, w = fx.frac_bits, fx.width
        p0 = t.emin + frac  # code bit of the smallest normal's unit
        # the exponents this side's helper forms before saturation
        e_bound = max(e_bound, abs(max(-1, p0) - frac) + m + 1, abs(max(w - 1, p0) - frac) + 2)
        side_ctx.append(dict(suffix=suffix, in_t=role, what=what, frac=frac, w=w, signed=fx.signed, p0=p0))
    ctx.update(lmul=True, lm=dict(
        fmt=str(t), m=m, emin=t.emin, subnormals=t.subnormals, sides=side_ctx, pair=pair,
        top_e=top_e, top_f=top_f, check_f=top_f < (1 << m) - 1, offset=1 << (m - lmul_offset_bits(m)),
        fp=prod.frac_bits, pw=prod.width))
    return [("e", f"ap_int<{e_bound.bit_length() + 1}>"), ("f", f"ap_uint<{max(m, 1)}>"),
            ("p", _exact(prod.width, prod.int_bits))]


def _check_span(node: Node, m: Manifest) -> None:
    """Refuse a node whose grids span more bits than ``ap_fixed`` holds (``AP_INT_MAX_W``).

    The C++ forms sums, products and widening casts (``qfx_cast``) whose
    ap_fixed type covers every grid involved: from the highest msb to the
    lowest lsb of the node's formats, its sources' output formats and, for
    dense / conv, the product grid. ap_types refuses wider types (a compile
    error deep in its templates), so the generator says so first.
    """
    from .manifest import weight_grid

    fmts: list[FixedType] = [m.node(s).output_format for s in node.inputs]
    for v in node.formats.values():
        for t in v if isinstance(v, tuple) else (v,):
            fmts.append(weight_grid(t) if isinstance(t, (KHot, MinifloatType)) else t)
    fixed = [t for t in fmts if isinstance(t, FixedType)]
    if not fixed:  # pragma: no cover - every node has a fixed-point output format
        return
    msb = max(_ibits(t) for t in fixed)
    lsb = -max(t.frac_bits for t in fixed)
    if node.op in ("dense", "conv2d"):
        w = node.formats["weight"]
        if isinstance(w, MXType):  # every MX weight value (the block scales applied)
            from .manifest import mx_weight_hull

            wg = mx_weight_hull(w, node.arrays)
        else:
            wg = weight_envelope(w) if isinstance(w, tuple) else weight_grid(w)
        # a product's grid: input lsb + weight lsb, width of both plus one
        lsb = min(lsb, -(node.formats["input"].frac_bits + wg.frac_bits))
        msb = max(msb, _ibits(node.formats["input"]) + _ibits(wg) + 1)
    if node.op == "matmul":  # the exact product in_a * in_b (or the L-Mul product of the operand format)
        ta, tb = node.formats["in_a"], node.formats["in_b"]
        if node.params["multiply"] == "lmul":
            pt = lmul_product_type(node.formats["operand"])
            lsb, msb = min(lsb, -pt.frac_bits), max(msb, _ibits(pt) + 1)
        else:
            lsb = min(lsb, -(ta.frac_bits + tb.frac_bits))
            msb = max(msb, _ibits(ta) + _ibits(tb) + 1)
    span = msb - lsb + 2  # a sign bit and the carry of a sum
    if span > AP_MAX_WIDTH:
        raise _fail(node, f"its formats span {span} bits (from 2**{msb} down to 2**{lsb}), beyond the "
                          f"{AP_MAX_WIDTH}-bit maximum of ap_fixed (AP_INT_MAX_W); the HLS C++ cannot declare "
                          "its intermediate types. Bring the formats' binary points closer together")


def _node_context(node: Node, reuse: int) -> tuple[dict, list[tuple[str, str]]]:
    f, p = node.formats, node.params
    n_in = int(np.prod(node.input_shapes[0])) if node.input_shapes else 0
    n_out = int(np.prod(node.output_shape))
    ctx: dict[str, Any] = dict(name=node.name, op=node.op, source=node.source.replace("\n", " "),
                               src=node.inputs[0] if node.inputs else "", n_in=n_in, n_out=n_out,
                               in_shape=list(node.input_shapes[0]) if node.input_shapes else [],
                               out_shape=list(node.output_shape))
    types: list[tuple[str, str]] = []
    op = node.op
    if op == "dense":
        mac, types = _mac_context(node, reuse)
        ctx.update(mac)
        k = p["in_features"]
        # on a feature map a dense applies to the last axis: rows of in_features (as qfx.reference)
        ctx.update(n_in=k, n_out=p["out_features"], rows=n_in // k, xval="x[k]", part_k=max(1, math.ceil(k / reuse)),
                   part_w=max(1, math.ceil(k / reuse)))
    elif op == "conv2d":
        mac, types = _mac_context(node, reuse)
        ctx.update(mac)
        c, h, w = node.input_shapes[0]
        oc, ho, wo = node.output_shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw), g = p["kernel"], p["stride"], p["padding"], p["dilation"], p["groups"]
        n_k = (c // g) * kh * kw
        ctx.update(h=h, w=w, oc=oc, ho=ho, wo=wo, kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw, dh=dh, dw=dw, groups=g,
                   ic_per_group=c // g, oc_per_group=oc // g, xval="v", part_w=max(1, math.ceil(n_k / reuse)))
    elif op == "batchnorm":
        c = p["num_features"]
        types = [("in", _cpp(f["input"])), ("scale", _cpp(f["scale"])), ("shift", _cpp(f["shift"])), ("out", _cpp(f["output"]))]
        ctx.update(c=c, hw=n_in // c,
                   scales=_literals(node.arrays["scale"], f["scale"].frac_bits, f"node {node.name!r} scale"),
                   shifts=_literals(node.arrays["shift"], f["shift"].frac_bits, f"node {node.name!r} shift"))
    elif op in ("relu", "relu6", "leaky_relu"):
        xi: FixedType = f["input"]
        types = [("in", _cpp(xi))]
        if op == "relu6":
            frac = max(xi.frac_bits, -1)
            ib = max(_ibits(xi), 4) + 1
            types.append(("r", _exact(ib + frac, ib)))
        elif op == "leaky_relu":
            s = int(p["slope_shift"])
            ctx["slope_shift"] = s
            types.append(("r", _exact(xi.width + s + 1, _ibits(xi))))
        types.append(("out", _cpp(f["output"])))
    elif op in ("add", "sub", "mul"):
        types = [("a", _cpp(f["in_a"])), ("b", _cpp(f["in_b"])), ("out", _cpp(f["output"]))]
        ctx["src_b"] = node.inputs[1]
    elif op == "matmul":  # template matmul.j2: acc = cast(acc + a * b, accum) over k ascending
        types = [("a", _cpp(f["in_a"])), ("b", _cpp(f["in_b"])), ("acc", _cpp(f["accum"])), ("out", _cpp(f["output"]))]
        sa, sb = node.input_shapes
        ctx.update(src_b=node.inputs[1], n_a=int(np.prod(sa)), n_b=int(np.prod(sb)), lead=int(np.prod(sa[:-2])),
                   t=sa[-2], k=sa[-1], s=sb[-1], exact=bool(p["accum_exact"]), accum_fmt=str(f["accum"]), lmul=False)
        if p["multiply"] == "lmul":  # both operands rounded to the operand minifloat, then L-Mul (_lmul.j2)
            types += _lmul_helpers(ctx, f["operand"], [("_a", "a", "operand a", f["in_a"]),
                                                       ("_b", "b", "operand b", f["in_b"])], pair=True)
    elif op == "permute":  # template permute.j2: a loop nest over the output, the input read at its index
        types = [("in", _cpp(f["input"])), ("out", _cpp(f["output"]))]
        shape_in, shape_out, dims = list(node.input_shapes[0]), list(node.output_shape), list(p["dims"])

        def strides(sh: list) -> list:
            return [int(np.prod(sh[j + 1:])) for j in range(len(sh))]

        st_in, st_out = strides(shape_in), strides(shape_out)
        ctx.update(dims=dims, rank=len(dims),
                   out_index=" + ".join(f"o{j} * {st_out[j]}" for j in range(len(dims))),
                   in_index=" + ".join(f"o{j} * {st_in[d]}" for j, d in enumerate(dims)))
    elif op == "reshape":
        types = [("in", _cpp(f["input"])), ("out", _cpp(f["output"]))]
    elif op == "concat":
        types = [("out", _cpp(f["output"]))]
        parts, offset = [], 0
        for src, shape in zip(node.inputs, node.input_shapes):
            size = int(np.prod(shape))
            parts.append(dict(src=src, n=size, offset=offset))
            offset += size
        ctx["parts"] = parts
    elif op == "pad":
        types = [("in", _cpp(f["input"])), ("out", _cpp(f["output"]))]
        c, h, w = node.input_shapes[0]
        left, right, top, bottom = p["padding"]
        ctx.update(c=c, h=h, w=w, ho=node.output_shape[1], wo=node.output_shape[2], left=left, top=top)
    elif op == "upsample":
        types = [("in", _cpp(f["input"])), ("out", _cpp(f["output"]))]
        c, h, w = node.input_shapes[0]
        sh, sw = p["scale"]
        ctx.update(c=c, h=h, w=w, sh=sh, sw=sw, ho=node.output_shape[1], wo=node.output_shape[2])
    elif op == "layernorm":  # template layernorm.j2 (qfx.layernorm's rule)
        from . import layernorm as lnx

        nf = int(p["num_features"])
        tt = lnx.types(f, nf)

        def ex(t: FixedType, extra: int = 0) -> str:  # a signed exact type holding t (extra more fraction bits)
            return _exact(t.width + (0 if t.signed else 1) + extra, _ibits(t))

        vf, sf = f["var"], f["inv_std"]
        e = 2 * sf.frac_bits + vf.frac_bits
        wn = max(vf.width, int(p["eps_code"]).bit_length()) + 1
        wp = max(e + 1, wn + 2 * sf.width) + 3
        if wp > 64:
            raise _fail(node, f"the inverse square root needs {wp}-bit integers (var {vf}, inv_std {sf}); at most 64")
        types = [("in", _cpp(f["input"])), ("mean", _cpp(f["mean"])), ("var", _cpp(vf)), ("inv", _cpp(sf)),
                 ("sum", ex(tt["sum"])), ("sq", ex(tt["sqsum"])), ("d", ex(tt["d"])), ("t", ex(tt["t"]))]
        k = nf.bit_length() - 1
        if "reciprocal" in f:
            types.append(("recip", _cpp(f["reciprocal"])))
            ctx["recip"] = _literal(int(node.arrays["reciprocal"]), f["reciprocal"].frac_bits,
                                    f"node {node.name!r} reciprocal")
        else:
            types += [("mdiv", ex(tt["sum"], k)), ("vdiv", ex(tt["sqsum"], k))]
            ctx["recip"] = None
        if p["affine"]:
            types.append(("scale", _cpp(f["scale"])))
            ctx["scales"] = _literals(node.arrays["scale"], f["scale"].frac_bits, f"node {node.name!r} gamma")
        if p["bias"]:
            types.append(("shift", _cpp(f["shift"])))
            ctx["shifts"] = _literals(node.arrays["shift"], f["shift"].frac_bits, f"node {node.name!r} beta")
        types.append(("out", _cpp(f["output"])))
        ctx.update(f=nf, rows=n_in // nf, k=k, affine=bool(p["affine"]), bias=bool(p["bias"]), eps_code=int(p["eps_code"]),
                   e=e, ws=sf.width, wv=vf.width, wn=wn, wp=wp)
    elif op == "table":  # template table_act.j2
        xi: FixedType = f["input"]
        if xi.width > 62:
            raise _fail(node, f"the table's input format {xi} is wider than 62 bits; the C++ indexes with a long long")
        types = [("in", _cpp(xi)), ("code", f"ap_{'' if xi.signed else 'u'}int<{xi.width}>"), ("out", _cpp(f["output"]))]
        lo, size, shift = int(p["lo_code"]), int(p["size"]), int(p["shift"])
        ctx.update(function=p["function"], size=size, shift=shift, lo=lo, hi=lo + (size << shift) - 1, width=xi.width,
                   entries=_literals(node.arrays["table"], f["output"].frac_bits, f"node {node.name!r} table"))
    elif op == "softmax":  # template softmax.j2
        from .tables import softmax_axis, softmax_geometry, softmax_quotient_format, softmax_sum_format

        xi, ef, rf = f["input"], f["exp"], f["reciprocal"]
        if xi.width > 62:
            raise _fail(node, f"the softmax input format {xi} is wider than 62 bits; the C++ holds codes in a long long")
        outer, nv, inner = softmax_geometry(p, node.input_shapes[0])
        ctx.update(outer=outer, nv=nv, inner=inner, axis=softmax_axis(p, node.input_shapes[0]))
        sf = softmax_sum_format(ef, nv)
        k, g = softmax_quotient_format(ef, rf)
        types = [("in", _cpp(xi)), ("code", f"ap_{'' if xi.signed else 'u'}int<{xi.width}>"), ("exp", _cpp(ef)),
                 ("ecode", f"ap_uint<{ef.width}>"), ("sum", f"ap_uint<{sf.width}>"), ("num", f"ap_uint<{k + 1}>"),
                 ("tcode", f"ap_uint<{k + 2}>"), ("quot", f"ap_ufixed<{k + 2},{k + 2 - g}>"), ("recip", _cpp(rf)),
                 ("out", _cpp(f["output"]))]
        lo, size, shift = int(p["lo_code"]), int(p["size"]), int(p["shift"])
        ctx.update(size=size, shift=shift, lo=lo, hi=lo + (size << shift) - 1, width=xi.width, we=ef.width,
                   fe=ef.frac_bits, k=k,
                   entries=_literals(node.arrays["table"], ef.frac_bits, f"node {node.name!r} exp table"))
    elif op == "clamp":
        types = [("in", _cpp(f["input"])), ("out", _cpp(f["output"]))]
        fo = f["output"].frac_bits
        ctx.update({k: None if p[key] is None else _literal(p[key], fo, f"node {node.name!r} {key}")
                    for k, key in (("lo", "min_code"), ("hi", "max_code"))})
    elif op == "maxpool2d":
        ctx.update(_pool_geometry(node))
        types = [("in", _cpp(f["input"])), ("out", _cpp(f["output"]))]
    elif op == "avgpool2d":
        ctx.update(_pool_geometry(node))
        xi = f["input"]
        kh, kw = p["kernel"]
        nb = (kh * kw).bit_length()
        sum_int = _ibits(xi) + nb
        types = [("in", _cpp(xi)), ("sum", _exact(sum_int + xi.frac_bits, sum_int))]
        n_div = int(p["divisor"])
        ctx["divisor"] = n_div
        if "reciprocal" in f:
            r = f["reciprocal"]
            types.append(("recip", _cpp(r)))
            ctx["recip"] = _literal(int(node.arrays["reciprocal"]), r.frac_bits, f"node {node.name!r} reciprocal")
        else:
            k = n_div.bit_length() - 1
            types.append(("div", _exact(sum_int + xi.frac_bits + k, sum_int)))
            ctx.update(recip=None, div_shift=k)
        types.append(("out", _cpp(f["output"])))
    elif op == "flatten":
        types = [("in", _cpp(f["input"])), ("out", _cpp(f["output"]))]
    elif op in ("input", "output"):
        types = [("out", _cpp(f["output"]))]
    else:
        raise _fail(node, f"op {op!r} is not supported by the HLS generator (supported: {', '.join(SUPPORTED_OPS)})")
    return ctx, types


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _env(path: str):
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(path),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def generated_files(top: str) -> tuple[str, ...]:
    """Names of the files :func:`generate` writes into ``out_dir/hls``."""
    return (f"{top}.h", f"{top}.cpp", f"{top}_tb.cpp", "run_hls.tcl", TB_INPUT, TB_EXPECTED)


def testbench_codes(manifest: Manifest, vectors: int = TB_VECTORS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The self-check's input codes ``[N, n_in]`` and expected output codes ``[N, n_out]``.

    Six corner vectors (min, max, zero, alternating extremes both ways, a ramp
    over the codes) then random codes, from a fixed seed; the expected codes
    are the integer reference's (:func:`qfx.reference.run_codes`, which
    needs no torch), never the C++'s. Codes are limited to +-(2**53 - 1)
    (their values are exact doubles). A vector the reference refuses (a
    non-saturating weight format an activation overflows, where the C++
    saturates) is left out.

    Parameters
    ----------
    manifest : Manifest
        The loaded manifest.
    vectors : int
        How many vectors to draw (before refused ones are left out).
    seed : int
        Seed of the random vectors.
    """
    from .reference import run_codes as run  # torch-free: generators never import torch

    fmt = manifest.input_node.output_format
    lim = (1 << 53) - 1
    lo, hi = max(fmt.min_code, -lim), min(fmt.max_code, lim)
    n_in = int(np.prod(manifest.input_node.output_shape))
    codes = corner_and_random_codes(lo, hi, vectors, n_in, seed)
    x = codes.reshape((vectors,) + manifest.input_node.output_shape)
    out = manifest.output
    try:
        ref = run(manifest, x)
        return codes, np.asarray(ref[out]).reshape(vectors, -1)
    except ValueError:
        keep, want = [], []
        for i in range(vectors):
            try:
                want.append(np.asarray(run(manifest, x[i:i + 1])[out]).reshape(-1))
            except ValueError:
                continue
            keep.append(i)
        n_out = int(np.prod(manifest.output_node.output_shape))
        return codes[keep], np.array(want, dtype=object).reshape(len(keep), n_out)


def render(manifest: "Manifest | str | os.PathLike", *, top: str = "qfx_top", reuse_factor: int = 1,
           foldings: "Any" = None) -> dict[str, str]:
    """File name -> text of the HLS project for a manifest (nothing written).

    ``foldings`` (``{layer: Folding}``, :mod:`qfx.hw.accel.folding`, e.g. ``plan(...).foldings``)
    makes each named dense / conv2d layer describe the RTL's parallelism instead of
    ``reuse_factor``: its output-channel loop is ``UNROLL factor=pe``, its term loop (one flat
    loop over k in the documented order) ``PIPELINE II=1`` with ``UNROLL factor=simd``, the input
    buffer ``ARRAY_PARTITION cyclic factor=simd`` and the weights ``cyclic factor=pe*simd``. The
    accumulation stays ``acc = cast(acc + x[k] * w[k])`` in order over k, so the C simulation
    gives the same bits at every folding.
    """
    if not isinstance(top, str) or not is_valid_name(top):
        raise ValueError(f"top {top!r} is not a valid C++ identifier ([A-Za-z][A-Za-z0-9_]*, no '__', no keyword)")
    if isinstance(reuse_factor, bool) or not isinstance(reuse_factor, int) or reuse_factor < 1:
        raise ValueError(f"reuse_factor must be an int >= 1, got {reuse_factor!r}")
    m = manifest if isinstance(manifest, Manifest) else load(manifest)
    names = {n.name for n in m.nodes}
    folds: dict[str, Any] = {}
    if foldings:
        from .hw.accel.folding import MAC_OPS, check_folding

        for name, f in foldings.items():
            if name not in names or m.node(name).op not in MAC_OPS:
                raise ValueError(f"folding names layer {name!r}, which is not a dense/conv2d layer of the manifest")
            folds[name] = check_folding(m.node(name), f)
    if top in names:
        raise ValueError(f"top {top!r} is also the name of a node; choose another top name")
    if top in _RESERVED or top.lower().startswith("ap_"):
        raise ValueError(f"top {top!r} is reserved in the generated C++ (ap_types / testbench names)")
    for n in m.nodes:
        if not is_valid_name(n.name):  # load checks it; a hand-built Manifest might not
            raise ValueError(f"node name {n.name!r} is not a valid C++ identifier")
        if n.name in _RESERVED or n.name.lower().startswith("ap_"):
            raise ValueError(f"node {n.name!r}: the name is reserved in the generated C++ (ap_types / testbench "
                             "names); rename the node")
        if n.op not in SUPPORTED_OPS:
            raise ValueError(f"node {n.name!r}: op {n.op!r} is not supported by the HLS generator "
                             f"(supported: {', '.join(SUPPORTED_OPS)})")
    for n in m.nodes:
        _check_span(n, m)
    env = _env(str(template_dir()))
    from . import __version__ as version

    nodes, bodies, calls, buffers, splits = [], [], [], [], []
    uses: dict[str, int] = {}
    for node in m.nodes:
        for src in node.inputs:
            uses[src] = uses.get(src, 0) + 1
    taken: dict[str, int] = {}  # producer -> next fan-out buffer index

    def buffer_of(src: str) -> str:
        if uses.get(src, 0) < 2:
            return f"{src}_buf"
        i = taken.get(src, 0)
        taken[src] = i + 1
        return f"{src}_buf{i}"

    helpers: set[str] = {f"{top}_{s}" for s in ("in_t", "out_t", "N_IN", "N_OUT", "REUSE_FACTOR")}
    for node in m.nodes:
        ctx, types = _node_context(node, reuse_factor)
        if node.name in folds:
            pe, simd = folds[node.name].pe, folds[node.name].simd
            ctx.update(fold=dict(pe=pe, simd=simd), part_w=pe * simd, part_k=simd)
        nodes.append(dict(name=node.name, op=node.op, types=types))
        helpers.update(f"{node.name}_{role}_t" for role, _ in types)
        helpers.update(f"{node.name}_{a}" for a in ("w", "b", "wsh", "wsg", "wneg", "wzero", "we", "wf", "lmul",
                                                    "lmul_fields", "mf", "mf_a", "mf_b",
                                                    "scale", "shift", "recip", "buf", "fanout", "table"))
        if node.op == "output":
            continue
        size = int(np.prod(node.output_shape))
        buffers.append(dict(name=f"{node.name}_buf", type=node.name, size=size))
        k = uses.get(node.name, 0)
        if node.op != "input":
            template = ctx.get("template", "table_act" if node.op == "table" else node.op)
            bodies.append(env.get_template(f"{template}.j2").render(n=ctx, reuse=reuse_factor))
            calls.append(dict(name=node.name, args=[buffer_of(s) for s in node.inputs] + [f"{node.name}_buf"]))
        if k >= 2:
            outs = [f"{node.name}_buf{i}" for i in range(k)]
            helpers.update(outs)
            buffers += [dict(name=b, type=node.name, size=size) for b in outs]
            splits.append(dict(name=f"{node.name}_fanout", src=node.name, k=k, size=size))
            calls.append(dict(name=f"{node.name}_fanout", args=[f"{node.name}_buf"] + outs))
    clash = sorted((names | {top}) & helpers)
    if clash:
        raise ValueError(f"node name(s) {clash} collide with identifiers the HLS generator derives from other "
                         f"node names or the top {top!r}; rename the node(s) (or the top)")
    in_node, out_node = m.input_node, m.node(m.output)
    result = out_node.inputs[0]
    common = dict(
        top=top, version=version, model=m.model, nodes=nodes, reuse=reuse_factor,
        guard=f"QFX_{top.upper()}_H",
        in_type=_cpp(in_node.output_format), out_type=_cpp(out_node.output_format),
        in_width=in_node.output_format.width, out_width=out_node.output_format.width,
        n_in=int(np.prod(in_node.output_shape)), n_out=int(np.prod(out_node.output_shape)),
        in_shape=list(in_node.output_shape), out_shape=list(out_node.output_shape),
        layer_bodies=bodies, calls=calls, buffers=buffers, splits=splits,
        input_buffer=f"{in_node.name}_buf", result_buffer=buffer_of(result),
        part=PART, clock_ns=CLOCK_NS,
    )
    h, cpp, tb, tcl, tb_in, tb_want = generated_files(top)
    tb_codes, tb_expected = testbench_codes(m)
    in_fmt, out_fmt = in_node.output_format, out_node.output_format
    refused = TB_VECTORS - len(tb_codes)
    left_out = f"; {refused} vector(s) the reference refuses left out" if refused else ""

    def raw(codes: np.ndarray, width: int) -> list[list[str]]:
        mask = (1 << width) - 1
        return [[str(int(v) & mask) for v in row] for row in codes.tolist()]

    return {
        h: env.get_template("top.h.j2").render(**common),
        cpp: env.get_template("top.cpp.j2").render(**common),
        tb: env.get_template("testbench.cpp.j2").render(**common),
        tcl: env.get_template("run_hls.tcl.j2").render(**common),
        tb_in: env.get_template("tb_codes.txt.j2").render(
            **common, file=tb_in, n=common["n_in"], width=in_fmt.width, rows=raw(tb_codes, in_fmt.width), note=left_out,
            what=f"Input codes of {in_fmt}: corner vectors, then random ones (seed 0)."),
        tb_want: env.get_template("tb_codes.txt.j2").render(
            **common, file=tb_want, n=common["n_out"], width=out_fmt.width, rows=raw(tb_expected, out_fmt.width),
            note=left_out, what=f"Expected output codes of {out_fmt}, from the integer reference (qfx.reference.run)."),
    }


def generate(manifest_path: "str | os.PathLike | Manifest", out_dir: "str | os.PathLike", *, top: str = "qfx_top",
             reuse_factor: int = 1, force: bool = False, foldings: "Any" = None) -> Path:
    """Render the Vitis HLS project of a manifest into ``out_dir/hls/`` (atomically) and return that folder.

    An existing ``out_dir/hls`` holding only files this generator writes is
    replaced; one holding anything else is refused (``FileExistsError``,
    nothing written) unless ``force``. The output is deterministic: the same
    manifest and arguments give byte-identical files.

    Raises
    ------
    ValueError
        An unsupported op or option (the node named), a bad ``top`` or ``reuse_factor``.
    FileExistsError
        ``out_dir/hls`` holds foreign files and ``force`` is false.
    """
    files = render(manifest_path, top=top, reuse_factor=reuse_factor, foldings=foldings)
    dest = Path(out_dir) / "hls"
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"{dest} exists and is not a folder")
    if dest.is_dir() and not force:
        ours = set(generated_files(top))
        # ours by name *and* by content: a user's own qfx_top.cpp there is foreign, not replaced
        foreign = sorted(p.name for p in dest.iterdir()
                         if p.name not in ours or not p.is_file() or b"generated by qfx" not in p.read_bytes()[:200])
        if foreign:
            raise FileExistsError(f"{dest} holds files qfx.hls did not write ({', '.join(foreign[:5])}"
                                  f"{', ...' if len(foreign) > 5 else ''}); pass force=True to replace the folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".hls-tmp-", dir=dest.parent))
    try:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        old = None
        if dest.exists():
            old = dest.parent / f".hls-old-{os.getpid()}-{tmp.name}"
            dest.rename(old)
        tmp.rename(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


# ---------------------------------------------------------------------------
# C simulation
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CsimResult:
    """Output codes of a C simulation plus what g++ said when it compiled the executable (kept with the cache)."""

    outputs: np.ndarray
    compiler_output: str
    executable: Path
    cached: bool


def _error_excerpt(log: str) -> str:
    lines = log.splitlines()
    hits = [i for i, ln in enumerate(lines) if re.search(r"\berror\b", ln)]
    if not hits:
        return "\n".join(lines[-_ERROR_LINES:])
    keep: list[str] = []
    for i in hits:
        for ln in lines[max(0, i - 2): i + 3]:
            if ln not in keep[-5:]:
                keep.append(ln)
        if len(keep) >= _ERROR_LINES:
            break
    return "\n".join(keep[:_ERROR_LINES])


_WARNING_RE = re.compile(r"^(?P<path>[^\s:][^:]*):(?P<line>\d+):(?:\d+:)? warning: (?P<msg>.*)$")


def compiler_warnings(log: str) -> list[tuple[str, int, str]]:
    """``(file, line, message)`` of every warning in a g++ log (the file as g++ printed it)."""
    out = []
    for ln in log.splitlines():
        m = _WARNING_RE.match(ln)
        if m:
            out.append((m.group("path"), int(m.group("line")), m.group("msg")))
    return out


def _hls_folder(out_dir: "str | os.PathLike") -> tuple[Path, str]:
    d = Path(out_dir)
    if not (d / "run_hls.tcl").is_file() and (d / "hls" / "run_hls.tcl").is_file():
        d = d / "hls"
    tcl = d / "run_hls.tcl"
    if not tcl.is_file():
        raise FileNotFoundError(f"{out_dir}: no generated HLS project (run qfx.hls.generate first)")
    m = re.search(r"^set_top (\S+)$", tcl.read_text(encoding="utf-8"), re.M)
    if not m:
        raise ValueError(f"{tcl}: no set_top line")
    return d, m.group(1)


def build(out_dir: "str | os.PathLike") -> tuple[Path, str, bool]:
    """Compile the generated project's C simulation; return (executable, compiler output, cached)."""
    d, top = _hls_folder(out_dir)
    inc = include_dir()
    cxx, ident = compiler()
    srcs = [d / f"{top}.cpp", d / f"{top}_tb.cpp"]
    missing = [p.name for p in srcs if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{d}: {', '.join(missing)} missing; regenerate the project (qfx.hls.generate)")
    h = hashlib.sha256()
    for part in (_FORMAT_VERSION, ident, " ".join(CXX_FLAGS), headers_fingerprint(str(inc))):
        h.update(part.encode() + b"\0")
    for p in [d / f"{top}.h", *srcs]:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    key = h.hexdigest()[:32]
    exe = cache_dir() / f"csim-{key}"
    log_file = exe.with_name(exe.name + ".log")

    def cached() -> "tuple[Path, str, bool] | None":
        if exe.is_file() and log_file.is_file():
            return exe, log_file.read_text(encoding="utf-8"), True
        return None

    hit = cached()
    if hit:
        return hit
    with locked(cache_dir(), key):
        hit = cached()
        if hit:
            return hit
        tmp = Path(tempfile.mkdtemp(prefix="tmp-build-", dir=cache_dir()))
        try:
            out = tmp / "csim"
            # one g++ call: on this 2-core machine, shared with other jobs, compiling the design and the
            # testbench as two parallel processes measured slower than one call doing both
            cmd = [cxx, *CXX_FLAGS, "-isystem", str(inc), "-I", str(d), *map(str, srcs), "-o", str(out)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            log = proc.stdout + proc.stderr
            if proc.returncode != 0:
                raise HlsCompileError(f"g++ failed on the generated HLS C++ in {d}:\n{_error_excerpt(log)}")
            (tmp / "log").write_text(log, encoding="utf-8")
            os.replace(tmp / "log", log_file)
            os.replace(out, exe)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return exe, log, False


def csim_run(out_dir: "str | os.PathLike", input_codes: Any) -> CsimResult:
    """:func:`csim` with the compiler output and cache state."""
    d, top = _hls_folder(out_dir)
    header = (d / f"{top}.h").read_text(encoding="utf-8")
    n_in = int(re.search(rf"{top}_N_IN = (\d+);", header).group(1))
    n_out = int(re.search(rf"{top}_N_OUT = (\d+);", header).group(1))
    in_t = re.search(rf"typedef (ap_u?fixed)<(\d+),(-?\d+),\w+,\w+> {top}_in_t;", header)
    out_t = re.search(rf"typedef (ap_u?fixed)<(\d+),(-?\d+),\w+,\w+> {top}_out_t;", header)
    in_w, out_w = int(in_t.group(2)), int(out_t.group(2))
    out_signed = out_t.group(1) == "ap_fixed"
    in_signed = in_t.group(1) == "ap_fixed"
    x = np.asarray(input_codes)
    if x.dtype.kind not in "iu" and x.dtype != object:
        raise TypeError(f"csim needs integer input codes, got dtype {x.dtype}")
    x = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)
    if x.shape[1] != n_in:
        raise ValueError(f"csim: {x.shape[1]} input codes per vector, the design takes {n_in}")
    lo, hi = (-(1 << (in_w - 1)), (1 << (in_w - 1)) - 1) if in_signed else (0, (1 << in_w) - 1)
    flat = [int(v) for v in x.reshape(-1).tolist()]
    if flat and (min(flat) < lo or max(flat) > hi):
        raise ValueError(f"csim: input codes must lie in {lo}..{hi} (the input format's codes)")
    mask = (1 << in_w) - 1
    lines = [str(x.shape[0])]
    for r in range(x.shape[0]):
        lines.append(" ".join(str(v & mask) for v in flat[r * n_in:(r + 1) * n_in]))
    exe, log, cached = build(d)
    proc = subprocess.run([str(exe), "-"], input="\n".join(lines) + "\n", capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"C simulation {exe} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    rows = [ln.split() for ln in proc.stdout.splitlines() if ln.strip()]
    if len(rows) != x.shape[0] or any(len(r) != n_out for r in rows):
        raise RuntimeError(f"C simulation printed {len(rows)} rows, expected {x.shape[0]} of {n_out} codes")
    vals = np.array([[int(v) for v in r] for r in rows], dtype=object)
    if out_signed:
        vals = np.where(vals >= (1 << (out_w - 1)), vals - (1 << out_w), vals)
    if out_signed or out_w < 64:
        vals = vals.astype(np.int64)
    return CsimResult(outputs=vals, compiler_output=log, executable=exe, cached=cached)


def csim(out_dir: "str | os.PathLike", inputs_codes: Any) -> np.ndarray:
    """Compile (cached) and run the generated C simulation; return output codes ``[N, n_out]``.

    ``inputs_codes``: integer codes of the input node's format, ``[N, *input_shape]``
    (or ``[N, n_in]``). The result holds codes of the output node's format,
    row-major per vector (reshape to ``[N, *output_shape]`` as needed).
    """
    return csim_run(out_dir, inputs_codes).outputs
