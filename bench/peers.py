"""Peer emulators as contenders: brevitas, pychop, apytypes, quantizers.

Every adapter uses the peer's public API as found in its installed source
(versions are recorded in the JSON).  Each one is configured to the closest
thing the peer can express to the target format; where it cannot express the
format exactly the ``note`` says what differs, and the measured mismatches show
where.  Conversions a peer needs (torch <-> NumPy, its own array type, a float64
result cast back to float32) are inside the timed call and named in the note;
``x.numpy()`` and ``torch.from_numpy`` are zero-copy views.
"""

from __future__ import annotations

import importlib
import math
import warnings

import numpy as np
import torch

from .harness import PEER, Contender


def _np_out(a) -> torch.Tensor:
    """A NumPy result as a float32 torch tensor (zero-copy when already float32)."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return "?"


def _import(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(name)


# --------------------------------------------------------------------------
# brevitas
# --------------------------------------------------------------------------


def brevitas_contenders(fmt, ctx) -> list[Contender]:
    _import("brevitas")
    if fmt.kind == "fixed":
        from brevitas.core.function_wrapper import Identity
        from brevitas.core.quant import IntQuant

        # The core op behind brevitas' fixed-point quantizers, called with a
        # constant power-of-two scale: x / scale -> round_ste (torch.round,
        # half to even) -> clamp to [min_int, max_int] -> * scale.
        q = IntQuant(narrow_range=False, signed=True, input_view_impl=Identity())
        scale = torch.tensor(2.0**-fmt.frac_bits)
        zero_point = torch.tensor(0.0)
        bit_width = torch.tensor(float(fmt.width))

        def fn(x):
            return q(scale, zero_point, bit_width, x)

        api = (
            "brevitas.core.quant.IntQuant(narrow_range=False, signed=True, "
            "input_view_impl=brevitas.core.function_wrapper.Identity())"
            f"(torch.tensor(2**-{fmt.frac_bits}), torch.tensor(0.), torch.tensor({fmt.width}.), x)"
        )
        return [Contender("brevitas IntQuant (core op)", PEER, api, fn, note="torch in/out")]

    ocp = _import("brevitas.quant.float_quant_ocp")
    injector_name = {"B": "Fp8e4m3OCPAct", "B2": "Fp8e5m2OCPAct"}[fmt.key]
    injector = getattr(ocp, injector_name)
    # The FloatQuant core op that brevitas' own OCP quantizer definition builds
    # (unit scale, its OCP inf/NaN codes).  brevitas defaults to saturating=True;
    # the reference (ml_dtypes) does not saturate, so ask for saturating=False.
    tq = injector.let(saturating=False).tensor_quant

    def fn(x):
        return tq(x)[0]

    api = f"brevitas.quant.float_quant_ocp.{injector_name}.let(saturating=False).tensor_quant(x)[0]"
    note = "torch in/out; saturating=False (brevitas default True clamps overflow to max)"
    return [Contender("brevitas FloatQuant (core op)", PEER, api, fn, note=note)]


# --------------------------------------------------------------------------
# pychop
# --------------------------------------------------------------------------


def pychop_contenders(fmt, ctx) -> list[Contender]:
    pychop = _import("pychop")
    rows = []
    if fmt.kind == "fixed":
        # Chopf: signed fixed point with ibits integer bits (sign included) and
        # fbits fraction bits; rmode=1 is round to nearest, ties to even; the
        # result is clamped to [-2**(ibits-1), 2**(ibits-1) - 2**-fbits].
        args = f"ibits={fmt.int_bits}, fbits={fmt.frac_bits}, rmode=1"
        q_t = pychop.Chopf(ibits=fmt.int_bits, fbits=fmt.frac_bits, rmode=1)
        q_n = pychop.Chopf(ibits=fmt.int_bits, fbits=fmt.frac_bits, rmode=1)  # own instance: Chopf pins its backend on first call

        def fn_t(x):
            return q_t(x)

        def fn_n(x):
            return _np_out(q_n(x.numpy()))

        rows.append(Contender("pychop Chopf (torch backend)", PEER, f"pychop.Chopf({args})(x)", fn_t, note="torch in/out"))
        rows.append(
            Contender(
                "pychop Chopf (NumPy backend)", PEER, f"pychop.Chopf({args})(x.numpy())", fn_n, note="x.numpy() in, float32 out"
            )
        )
        return rows

    # Chop (LightChop): IEEE-754-style binary format with exp_bits / sig_bits;
    # rmode=1 is round to nearest, ties to even.  It has no "fn" variant: the
    # top exponent is reserved for inf/NaN, so the finite range is smaller than
    # e4m3fn's and overflow gives inf, not NaN.
    e, m = fmt.exp_bits, fmt.man_bits
    ieee_note = {
        "B": "IEEE-style E4M3, no e4m3fn mode: exponent 1111 = inf/NaN, largest finite 240, overflow -> inf",
        "B2": "IEEE-style E5M2 like the reference",
    }[fmt.key]
    q_t = pychop.Chop(exp_bits=e, sig_bits=m, rmode=1, subnormal=True)
    # NumPy backend: chunk_size >= x.size keeps it plain NumPy; with the default
    # chunk_size=800 every call goes through dask in 800-element blocks (~100x slower here).
    chunk = int(ctx["n"])
    q_n = pychop.Chop(exp_bits=e, sig_bits=m, rmode=1, subnormal=True, chunk_size=chunk)

    def fn_t(x):
        return q_t(x)

    def fn_n(x):
        return _np_out(q_n(x.numpy()))

    args = f"exp_bits={e}, sig_bits={m}, rmode=1, subnormal=True"
    rows.append(Contender("pychop Chop (torch backend)", PEER, f"pychop.Chop({args})(x)", fn_t, note=f"torch in/out; {ieee_note}"))
    rows.append(
        Contender(
            "pychop Chop (NumPy backend)",
            PEER,
            f"pychop.Chop({args}, chunk_size=x.numel())(x.numpy())",
            fn_n,
            note=f"x.numpy() in, float32 out; chunk_size=n skips dask; {ieee_note}",
        )
    )
    return rows


# --------------------------------------------------------------------------
# apytypes
# --------------------------------------------------------------------------


def apytypes_contenders(fmt, ctx) -> list[Contender]:
    apy = _import("apytypes")
    QM, OM = apy.QuantizationMode, apy.OverflowMode
    if fmt.kind == "fixed":
        # from_array always rounds RND_INF and wraps, so the input is first
        # staged *exactly* in a wide format (every float32 >= 2**-7 in magnitude
        # is exact with 30 fraction bits; smaller ones quantize to 0 either way,
        # and the integer bits cover max|x|), then cast() does TIES_EVEN + SAT.
        stage_f = 30
        stage_i = max(fmt.int_bits, math.ceil(math.log2(ctx["max_abs"] + 1)) + 2)
        if stage_i + stage_f > 64:
            raise ValueError(f"staging format {stage_i}+{stage_f} bits would be multi-limb; inputs too large")
        I, F = fmt.int_bits, fmt.frac_bits

        def fn(x):
            a = apy.APyFixedArray.from_array(x.numpy(), int_bits=stage_i, frac_bits=stage_f)
            q = a.cast(int_bits=I, frac_bits=F, quantization=QM.TIES_EVEN, overflow=OM.SAT)
            return _np_out(q.to_numpy())

        api = (
            f"apytypes.APyFixedArray.from_array(x.numpy(), int_bits={stage_i}, frac_bits={stage_f})"
            f".cast(int_bits={I}, frac_bits={F}, quantization=QuantizationMode.TIES_EVEN, "
            "overflow=OverflowMode.SAT).to_numpy()"
        )
        note = f"x.numpy() in; exact {stage_i + stage_f}-bit staging, then cast; float64 out -> float32 (included)"
        return [Contender("apytypes APyFixedArray", PEER, api, fn, note=note)]

    # APyFloat formats are IEEE-like: the top exponent encodes inf/NaN.  The
    # array constructor rounds with the global float quantization mode, which is
    # TIES_EVEN by default; set it explicitly.
    apy.set_float_quantization_mode(QM.TIES_EVEN)
    e, m, b = fmt.exp_bits, fmt.man_bits, fmt.bias

    def fn(x):
        return _np_out(apy.APyFloatArray.from_array(x.numpy(), exp_bits=e, man_bits=m, bias=b).to_numpy())

    api = f"apytypes.APyFloatArray.from_array(x.numpy(), exp_bits={e}, man_bits={m}, bias={b}).to_numpy()"
    ieee = {
        "B": "IEEE-style E4M3, no e4m3fn mode: exponent 1111 = inf/NaN, largest finite 240, overflow -> inf",
        "B2": "IEEE-style E5M2 like the reference",
    }[fmt.key]
    note = f"x.numpy() in, float64 out -> float32 (included); {ieee}"
    return [Contender("apytypes APyFloatArray", PEER, api, fn, note=note)]


# --------------------------------------------------------------------------
# quantizers (hls4ml authors)
# --------------------------------------------------------------------------


def quantizers_contenders(fmt, ctx) -> list[Contender]:
    qz = _import("quantizers")
    rows = []
    if fmt.kind == "fixed":
        # FixedQ(width, integer incl. sign, signed, rounding, overflow); a NumPy
        # input takes the NumPy implementation (get_fixed_quantizer_np).
        q = qz.FixedQ(width=fmt.width, integer=fmt.int_bits, signed=True, rounding="RND_CONV", overflow="SAT")

        def fn(x):
            return _np_out(q(x.numpy()))

        api = (
            f"quantizers.FixedQ(width={fmt.width}, integer={fmt.int_bits}, signed=True, "
            "rounding='RND_CONV', overflow='SAT')(x.numpy())"
        )
        rows.append(
            Contender("quantizers FixedQ (NumPy path)", PEER, api, fn, note="x.numpy() in, float64 out -> float32 (included)")
        )
        keras_api = api.replace("(x.numpy())", "(x)")
    else:
        # float_quantize_np(x, m, e, e0): m mantissa bits, e exponent bits; e0
        # offsets the exponent range, smallest normal exponent = e0 - 2**(e-1) + 1.
        # e0=1 gives the OCP subnormal grid (e4m3: 2**-9, e5m2: 2**-16).  It has
        # no inf/NaN and uses all codes of the top binade, so it saturates at
        # 480 (e4m3) / 114688 (e5m2) where the reference has 448 + NaN / 57344 + inf.
        e, m = fmt.exp_bits, fmt.man_bits
        e0 = 1
        q = qz.MinifloatQ(significant=m, exponent=e, exponent_bias=e0)
        top = (2 ** (m + 1) - 1) * 2.0 ** (2 ** (e - 1) + e0 - 1 - m)

        def fn(x):
            return _np_out(q(x.numpy()))

        api = f"quantizers.MinifloatQ(significant={m}, exponent={e}, exponent_bias={e0})(x.numpy())"
        note = f"x.numpy() in, float64 out -> float32 (included); no inf/NaN, saturates at {top:g}"
        rows.append(Contender("quantizers MinifloatQ (NumPy path)", PEER, api, fn, note=note))
        keras_api = api.replace("(x.numpy())", "(x)")

    # Its other path is keras.ops (any keras backend, torch included).
    try:
        _import("keras")
    except Exception as e:
        rows.append(
            Contender(
                "quantizers (keras path)",
                PEER,
                keras_api,
                skip_reason=f"keras is not installed ({type(e).__name__}); quantizers' non-NumPy path is keras.ops",
            )
        )
    else:
        q_k = q

        def fn_k(x):
            return q_k(x)

        rows.append(Contender("quantizers (keras path)", PEER, keras_api, fn_k, note="torch tensor in via keras.ops"))
    return rows


PEERS = {
    "brevitas": brevitas_contenders,
    "pychop": pychop_contenders,
    "apytypes": apytypes_contenders,
    "quantizers": quantizers_contenders,
}


def peer_contenders(fmt, ctx, only=None) -> list[Contender]:
    rows = []
    for name, build in PEERS.items():
        if only and name not in only:
            continue
        try:
            rows.extend(build(fmt, ctx))
        except Exception as e:  # not installed, or its API moved
            rows.append(Contender(name, PEER, "-", skip_reason=f"{type(e).__name__}: {e}"))
    return rows


def peer_versions() -> dict[str, str]:
    return {p: _version(p) for p in PEERS}
