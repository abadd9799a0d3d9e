"""qfx -> hls4ml: the hls4ml C simulation of a frozen qfx MLP equals the qfx emulation bit for bit.

* ``to_hls4ml`` writes the qfx formats as hls4ml precisions (input, weight,
  bias, accum, result) and the quantized weights.
* A 16-8-4 MLP (QLinear, QReLU, QLinear), with ``accum='auto'`` (Vitis) and
  with a narrow saturating accumulator that still holds every product
  (Vivado; it saturates step by step): ``hls_model.predict(x)`` equals
  ``model(x)``, exact float equality, on inputs already on the input grid.
* What hls4ml cannot reproduce is refused: an accumulator narrower than the
  product type (hls4ml casts each product to ``accum_t`` before adding it),
  and an activation input cast that is not the identity.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import qfx
from qfx.export import to_hls4ml  # the public entry point (DESIGN: qfx.export.to_hls4ml)
from qfx.hls4ml_interop import Hls4mlInteropError, hls4ml_precision
from qfx.nn import QLinear, QReLU, freeze
from qfx.types import parse_type

pytest.importorskip("hls4ml")

X = "ap_fixed<8,3,AP_RND,AP_SAT>"
W = "ap_fixed<8,1,AP_RND_CONV,AP_SAT>"
B = "ap_fixed<12,4,AP_RND>"
Y = "ap_fixed<10,4,AP_RND_CONV,AP_SAT>"
U = "ap_ufixed<8,3,AP_RND,AP_SAT>"
# holds every product of X * W (ap_fixed<16,4>) but not their sum: saturates step by step
NARROW_SAT = "ap_fixed<16,4,AP_TRN,AP_SAT>"


def _mlp(accum: str, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        QLinear(16, 8, input=X, weight=W, bias=B, accum=accum, output=Y),
        QReLU(output=U),
        QLinear(8, 4, input=U, weight=W, bias=B, accum=accum, output=Y),
    )
    with torch.no_grad():  # larger weights than the default init, so sums reach the saturation limits
        for m in model:
            if isinstance(m, QLinear):
                m.weight.mul_(4.0)
                m.bias.mul_(4.0)
    return freeze(model).eval()


def _inputs(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return qfx.quantize(torch.randn(n, 16, generator=g, dtype=torch.float64) * 3.0, X).double()


def test_precision_strings():
    assert hls4ml_precision(parse_type(X)) == X
    assert hls4ml_precision(parse_type("ap_fixed<8,3>")) == "ap_fixed<8,3,AP_TRN,AP_WRAP>"
    assert hls4ml_precision(parse_type("ap_int<2>")) == "ap_fixed<2,2,AP_TRN_ZERO,AP_WRAP>"  # never hls4ml's ternary int<2>
    with pytest.raises(Hls4mlInteropError):
        hls4ml_precision("fp8_e4m3fn")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("accum", "backend"),
    [("auto", "Vitis"), (NARROW_SAT, "Vivado")],
)
def test_hls4ml_csim_matches_qfx_bit_exact(tmp_path, accum, backend):
    model = _mlp(accum, seed=1)
    x = _inputs(400, seed=2)
    hls_model = to_hls4ml(model, x, tmp_path / "prj", backend=backend)

    # the qfx formats are the hls4ml types
    types = {layer.name: {k: str(v.precision) for k, v in layer.types.items()} for layer in hls_model.get_layers()}
    assert types["input_1"]["result_t"] == "fixed<8,3,RND,SAT,0>"
    assert types["dense0"]["weight_t"] == "fixed<8,1,RND_CONV,SAT,0>"
    assert types["dense0"]["bias_t"] == "fixed<12,4,RND,WRAP,0>"
    assert types["dense0"]["result_t"] == "fixed<10,4,RND_CONV,SAT,0>"
    assert types["relu1"]["result_t"] == "ufixed<8,3,RND,SAT,0>"
    want_accum = str(model[0].effective_format("accum"))
    assert types["dense0"]["accum_t"].startswith("fixed<" + want_accum.split("<")[1].split(",")[0] + ",")
    if accum != "auto":
        assert types["dense0"]["accum_t"] == "fixed<16,4,TRN,SAT,0>"

    hls_model.compile()
    got = hls_model.predict(x.numpy())
    want = model(x).detach().double().numpy()
    assert got.dtype == np.float64 and got.shape == want.shape == (400, 4)
    mismatches = int((got != want).sum())
    assert mismatches == 0, f"{mismatches} of {got.size} outputs differ"
    # meaningful: outputs cover both saturation limits and many distinct values
    y_max = 8.0 - 2.0**-6
    assert (want == y_max).any() and (want == -8.0).any()
    assert len(np.unique(want)) > 100
    if accum != "auto":  # the narrow accumulator really saturated (else the auto model would agree)
        wide = _mlp("auto", seed=1)
        assert (wide(x).detach().double().numpy() != want).any()


def test_refuses_accum_narrower_than_products(tmp_path):
    # ap_fixed<12,4> has 8 fractional bits, the products 12: hls4ml would round each product first
    model = _mlp("ap_fixed<12,4,AP_RND,AP_SAT>", seed=3)
    with pytest.raises(Hls4mlInteropError, match="casts each product to accum_t"):
        to_hls4ml(model, _inputs(2, 0), tmp_path / "prj")
    assert not (tmp_path / "prj").exists()


def test_refuses_non_identity_input_cast(tmp_path):
    model = nn.Sequential(
        QLinear(16, 4, input=X, weight=W, bias=B, output=Y),
        QReLU(input="ap_fixed<6,3,AP_RND,AP_SAT>", output=U),  # narrower than Y: a real cast
    )
    freeze(model).eval()
    with pytest.raises(Hls4mlInteropError, match="no input cast"):
        to_hls4ml(model, _inputs(2, 0), tmp_path / "prj")


def test_refuses_unsupported_layers_and_backend(tmp_path):
    model = nn.Sequential(QLinear(16, 4, input=X, weight=W, bias=B, output=Y), nn.Tanh())
    with pytest.raises(Hls4mlInteropError, match="Tanh"):
        to_hls4ml(model, _inputs(2, 0), tmp_path / "prj")
    with pytest.raises(ValueError, match="backend"):
        to_hls4ml(model[:1], _inputs(2, 0), tmp_path / "prj", backend="Quartus")
