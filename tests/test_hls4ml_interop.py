"""qfx -> hls4ml: the hls4ml C simulation of a frozen qfx model equals the qfx emulation bit for bit.

* ``to_hls4ml`` writes the qfx formats as hls4ml precisions (input, weight,
  bias, accum, result) and the quantized weights.
* A 16-8-4 MLP (QLinear, QReLU, QLinear), with ``accum='auto'`` (Vitis) and
  with a narrow saturating accumulator that still holds every product
  (Vivado; it saturates step by step): ``hls_model.predict(x)`` equals
  ``model(x)``, exact float equality, on inputs already on the input grid.
* A digits-sized CNN (1x8x8: conv, ReLU, max pool, strided padded conv over 3
  channels, ReLU, flatten, dense; Vitis) whose first conv saturates a narrow
  accumulator step by step, and a 2-channel conv ending in a feature map
  (Vivado) with a narrow *wrapping* accumulator (hls4ml sums channels last, qfx
  channels first; wrapping makes the order irrelevant): equal to the emulation
  and to the integer reference (``qfx.reference.run`` on the export) on random,
  on-grid corner, off-grid and out-of-range inputs, given in PyTorch's NCHW
  order.
* An issue-14 model: the autoencoder MLP of tests/test_i14_ops.py (12-8-4-8-12, ReLUs), converted
  with ``qfx.convert`` (a torch.fx GraphModule of nested Sequentials, walked node by node), a few
  QAT steps with learned binary points, frozen: hls4ml == emulation == integer reference on 407
  inputs (most saturate in the input cast; hidden layers saturate too). Its final Hardtanh (a
  QClamp) is *not* carried: hls4ml 1.3's PyTorch converter has no nn.Hardtanh and its C++
  ``hard_tanh`` is ``2 * clip(slope * x + shift, 0, 1) - 1`` with fixed bounds -1 and 1, so the
  tested variant ends in its Linear, and the original is refused naming the node ``dec_3``.
  Graphs that are not a straight chain (the concat block's branches) or contain function
  nodes are refused naming the node.
* What hls4ml cannot reproduce is refused: an accumulator narrower than the
  product type (hls4ml casts each product to ``accum_t`` before adding it),
  an activation input cast that is not the identity, grouped or dilated
  convolutions, a saturating narrow accumulator where hls4ml's channels-last
  summation order differs from qfx's, pooling with padding, a dense layer on
  a feature map without a flatten.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

import qfx
from qfx.export import export
from qfx.export import to_hls4ml  # the public entry point (DESIGN: qfx.export.to_hls4ml)
from qfx.hls4ml_interop import Hls4mlInteropError, hls4ml_precision
from qfx.manifest import load as load_manifest
from qfx.nn import QAvgPool2d, QConv2d, QFlatten, QLinear, QMaxPool2d, QReLU, freeze
from qfx.reference import run as reference_run
from qfx.reference import values as reference_values
from qfx.types import parse_type
from tests.fourway import short_qat
from tests.test_i14_ops import CFG as I14_CFG
from tests.test_i14_ops import AutoencoderMLP, BranchConcat

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


# -- convolutions ----------------------------------------------------------------
PX = "ap_ufixed<8,1,AP_RND,AP_SAT>"  # digits-like pixels in [0, 2)
CW = "ap_fixed<6,1,AP_RND_CONV,AP_SAT>"
# holds every product of PX * CW (ap_fixed<14,2>) but not their sums: saturates step by step
# (in the digits CNN, 2770 of the first conv's outputs on the test inputs differ from accum='auto')
CONV_NARROW_SAT = "ap_fixed<15,3,AP_TRN,AP_SAT>"
SX = "ap_fixed<6,2,AP_RND_CONV,AP_SAT_SYM>"
# holds every product of SX * CW (ap_fixed<12,3>) but not their sums: wraps
CONV_NARROW_WRAP = "ap_fixed<14,4,AP_TRN,AP_WRAP>"


def _init_frozen(model: nn.Sequential, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    with torch.no_grad():  # larger weights than the default init (the whole weight range), so sums reach the limits
        for m in model.modules():
            if isinstance(m, (QConv2d, QLinear)):
                nn.init.uniform_(m.weight, -1.0, 1.0)
                nn.init.uniform_(m.bias, -2.0, 2.0)
    return freeze(model).eval()


def _digits_cnn(accum0: str) -> nn.Sequential:
    model = nn.Sequential(
        QConv2d(1, 3, 3, padding=1, input=PX, weight=CW, bias=B, accum=accum0, output=Y),
        QReLU(output=U),
        QMaxPool2d(2),
        QConv2d(3, 4, 3, stride=2, padding=1, input=U, weight=CW, bias=B, output=Y),
        QReLU(output=U),
        QFlatten(),
        QLinear(16, 5, input=U, weight=CW, bias=B, output=Y),
    )
    return _init_frozen(model, seed=6)


def _two_channel_conv(accum: str) -> nn.Sequential:
    model = nn.Sequential(
        QConv2d(2, 3, (2, 3), stride=(1, 2), padding=(1, 0), input=SX, weight=CW, bias=B, accum=accum, output=Y),
        QReLU(output=U),
    )
    return _init_frozen(model, seed=8)


def _image_inputs(fmt: str, c: int, h: int, w: int, n_random: int, seed: int) -> torch.Tensor:
    """Corner cases (on the grid: zeros, the extremes, the smallest step, checkerboards, single
    pixels; off the grid: half-lsb ties and values beyond the range), then random images on
    and off the grid."""
    t = parse_type(fmt)
    lo, hi, lsb = float(t.min), float(t.max), 2.0 ** -t.frac_bits
    shape = (c, h, w)
    f64 = torch.float64

    def full(v: float) -> torch.Tensor:
        return torch.full(shape, v, dtype=f64)

    checker = ((torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2 == 0).expand(shape)
    corners = [full(0.0), full(hi), full(lo), full(lsb), full(-lsb),
               torch.where(checker, full(hi), full(lo)), torch.where(checker, full(lo), full(hi)),
               full(hi + 5.0), full(lo - 5.0),  # saturate in the input cast
               full(0.5 * lsb), full(-1.5 * lsb), full(hi + 0.5 * lsb)]  # ties, rounded by the input mode
    for k in range(12):  # single hot pixels, max and min
        one = torch.zeros(c * h * w, dtype=f64)
        one[(k * 7) % (c * h * w)] = hi if k % 2 == 0 else lo
        corners.append(one.reshape(shape))
    g = torch.Generator().manual_seed(seed)
    span = hi - lo
    on_grid = qfx.quantize(lo + torch.rand(n_random, *shape, generator=g, dtype=f64) * span, fmt).double()
    off_grid = lo - 0.1 * span + torch.rand(n_random, *shape, generator=g, dtype=f64) * 1.2 * span
    return torch.cat([torch.stack(corners), on_grid, off_grid])


def _check_cnn(hls_model: Any, model: nn.Sequential, x: torch.Tensor, out_dir: Any) -> np.ndarray:
    """hls4ml's C simulation == the emulation == the integer reference; returns the outputs."""
    got = hls_model.predict(x.numpy().reshape(len(x), -1))  # PyTorch's NCHW order, flattened
    want = model(x).detach().double().numpy().reshape(len(x), -1)
    assert got.dtype == np.float64 and got.shape == want.shape
    mismatches = int((got != want).sum())
    assert mismatches == 0, f"{mismatches} of {got.size} outputs differ from the qfx emulation"
    export(model, x, out_dir)
    man = load_manifest(out_dir)
    ref = reference_values(man, reference_run(man, x))[man.output].reshape(len(x), -1)
    assert np.array_equal(ref, got), "hls4ml differs from the integer reference"
    return want


@pytest.fixture(scope="module")
def digits_cnn_hls(tmp_path_factory):
    """The digits-sized CNN, converted and compiled once (the compile takes most of a minute)."""
    model = _digits_cnn(CONV_NARROW_SAT)
    hls_model = to_hls4ml(model, torch.zeros(1, 1, 8, 8), tmp_path_factory.mktemp("cnn") / "prj", backend="Vitis")
    hls_model.compile()
    return model, hls_model


@pytest.mark.slow
def test_hls4ml_cnn_csim_matches_qfx_bit_exact(digits_cnn_hls, tmp_path):
    model, hls_model = digits_cnn_hls
    types = {layer.name: {k: str(v.precision) for k, v in layer.types.items()} for layer in hls_model.get_layers()}
    assert types["conv0"]["accum_t"] == "fixed<15,3,TRN,SAT,0>"
    assert types["conv0"]["weight_t"] == "fixed<6,1,RND_CONV,SAT,0>"
    assert types["pool2"]["result_t"] == "ufixed<8,3,RND,SAT,0>"
    assert types["conv3"]["result_t"] == "fixed<10,4,RND_CONV,SAT,0>"

    x = _image_inputs(PX, 1, 8, 8, n_random=200, seed=9)
    want = _check_cnn(hls_model, model, x, tmp_path / "export")
    assert want.shape == (len(x), 5)
    # meaningful: the outputs reach both saturation limits and many distinct values,
    # and the first conv's narrow accumulator really saturated somewhere
    assert (want == 8.0 - 2.0**-6).any() and (want == -8.0).any()
    assert len(np.unique(want)) > 100
    wide = _digits_cnn("auto")
    assert (wide(x).detach().double().numpy() != want).any()


@pytest.mark.slow
def test_hls4ml_conv_feature_map_output_and_wrapping_accum(tmp_path):
    # two input channels (hls4ml transposes the input to channels last), a non-square kernel,
    # unequal strides, padding on one axis, a wrapping accumulator narrower than the partial
    # sums (hls4ml's channels-last order differs from qfx's; wrapping makes it irrelevant),
    # and a feature-map output (transposed back to PyTorch's order)
    model = _two_channel_conv(CONV_NARROW_WRAP)
    hls_model = to_hls4ml(model, torch.zeros(1, 2, 5, 6), tmp_path / "prj", backend="Vivado")
    hls_model.compile()
    x = _image_inputs(SX, 2, 5, 6, n_random=200, seed=10)
    want = _check_cnn(hls_model, model, x, tmp_path / "export")
    assert want.shape == (len(x), 3 * 6 * 2)
    assert len(np.unique(want)) > 50
    wide = _two_channel_conv("auto")
    assert (wide(x).detach().double().numpy().reshape(len(x), -1) != want).any()  # it wrapped


def _conv(**kw: Any) -> QConv2d:
    args: dict[str, Any] = dict(in_channels=2, out_channels=3, kernel_size=3, input=SX, weight=CW, bias=B, output=Y)
    args.update(kw)
    return QConv2d(**args)


# holds every product of Y * CW (ap_fixed<16,5>), not the sums of 108 of them
DENSE_NARROW_SAT = "ap_fixed<20,6,AP_TRN,AP_SAT>"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: [_conv(groups=2, out_channels=4)], "groups=2"),
        (lambda: [_conv(dilation=2)], "dilation"),
        (lambda: [_conv(accum="ap_fixed<12,4,AP_RND,AP_SAT>")], "casts each product to accum_t"),
        (lambda: [_conv(accum=CONV_NARROW_SAT)], r"\(kernel row, kernel column, channel\) order"),
        (lambda: [_conv(), QReLU(output=U), QMaxPool2d(2, padding=1)], "padding"),
        (lambda: [_conv(), QReLU(output=U), QMaxPool2d(2, ceil_mode=True)], "ceil_mode"),
        (lambda: [_conv(), QAvgPool2d(2, input=Y, output=Y)], "QAvgPool2d"),
        (lambda: [_conv(padding=1), QLinear(6, 2, input=Y, weight=CW, bias=B, output=Y)], "QFlatten before"),
        (
            lambda: [_conv(padding=1), QFlatten(),
                     QLinear(108, 2, input=Y, weight=CW, bias=B, accum=DENSE_NARROW_SAT, output=Y)],
            r"\(row, column, channel\) order",
        ),
        (lambda: [_conv(), QFlatten(start_dim=2)], "start_dim"),
        (lambda: [_conv(), QReLU(input="ap_fixed<8,3,AP_RND,AP_SAT>", output=U)], "no input cast"),
    ],
    ids=["groups", "dilation", "accum-products", "sat-order-conv", "pool-padding", "ceil-mode", "avgpool",
         "no-flatten", "sat-order-dense", "partial-flatten", "input-cast"],
)
def test_refuses_conv_configs_hls4ml_cannot_match(tmp_path, make: Callable[[], list], match: str):
    model = freeze(nn.Sequential(*make())).eval()
    with pytest.raises(Hls4mlInteropError, match=match) as err:
        to_hls4ml(model, torch.zeros(1, 2, 6, 6), tmp_path / "prj")
    assert "layer " in str(err.value) or "not QAvgPool2d" in str(err.value)  # the layer is named
    assert not (tmp_path / "prj").exists()


@pytest.mark.parametrize(
    ("make", "accum_t"),
    [
        # one input channel: hls4ml's order is qfx's, a saturating narrow accum is fine
        (lambda: _conv(in_channels=1, input=PX, accum=CONV_NARROW_SAT), "fixed<15,3,TRN,SAT,0>"),
        # one kernel tap: the same
        (lambda: _conv(kernel_size=1, accum=CONV_NARROW_SAT), "fixed<15,3,TRN,SAT,0>"),
        # wrapping: the order does not matter
        (lambda: _conv(accum=CONV_NARROW_WRAP), "fixed<14,4,TRN,WRAP,0>"),
    ],
    ids=["one-channel", "one-tap", "wrap"],
)
def test_accepts_narrow_accum_where_order_cannot_matter(tmp_path, make: Callable[[], QConv2d], accum_t: str):
    conv = make()
    model = freeze(nn.Sequential(conv, QReLU(output=U))).eval()
    hls_model = to_hls4ml(model, torch.zeros(1, conv.in_channels, 6, 6), tmp_path / "prj")  # converted, not compiled
    types = {layer.name: {k: str(v.precision) for k, v in layer.types.items()} for layer in hls_model.get_layers()}
    assert types["conv0"]["accum_t"] == accum_t


# -- an issue-14 model: the autoencoder MLP of tests/test_i14_ops.py ----------------
class _AutoencoderLinearOut(AutoencoderMLP):
    """test_i14_ops' AutoencoderMLP without its final Hardtanh: the decoder ends in its Linear.

    The Hardtanh (a QClamp) is refused by ``to_hls4ml``: hls4ml 1.3's PyTorch converter has no
    nn.Hardtanh, and its C++ ``hard_tanh`` is ``2 * clip(slope * x + shift, 0, 1) - 1`` with fixed
    bounds -1 and 1 (test_refuses_the_autoencoders_hardtanh_naming_the_node)."""

    def __init__(self) -> None:
        super().__init__()
        self.dec = self.dec[:3]


def _autoencoder_inputs(fmt: Any, n_random: int, seed: int) -> torch.Tensor:
    """Random inputs (most beyond the input range: they saturate in the input cast), uniform ones
    over the range and 2 beyond, the extremes, zeros and half-lsb ties."""
    lo, hi, lsb = float(fmt.min), float(fmt.max), 2.0 ** -fmt.frac_bits
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    rows = [torch.randn(n_random, 12, generator=g, dtype=f64) * 4.0,
            lo - 2.0 + torch.rand(n_random, 12, generator=g, dtype=f64) * (hi - lo + 4.0)]
    rows += [torch.full((1, 12), v, dtype=f64) for v in (0.0, hi, lo, hi + 3.0, lo - 3.0, 0.5 * lsb, -1.5 * lsb)]
    return torch.cat(rows)


@pytest.mark.slow
def test_hls4ml_csim_matches_qfx_on_the_i14_autoencoder(tmp_path):
    """qfx.convert (a torch.fx GraphModule of nested Sequentials) -> a few QAT steps with learned
    binary points -> freeze -> to_hls4ml -> g++ C simulation == the emulation == the integer reference."""
    q, _ = short_qat(_AutoencoderLinearOut, (12,), I14_CFG, target=lambda x, _y: x)
    freeze(q).eval()
    assert isinstance(q, torch.fx.GraphModule)
    fin = q.get_submodule("enc.0").effective_format("input")
    x = _autoencoder_inputs(fin, n_random=200, seed=11)
    hls_model = to_hls4ml(q, x, tmp_path / "prj", backend="Vitis")
    types = {layer.name: {k: str(v.precision) for k, v in layer.types.items()} for layer in hls_model.get_layers()}
    for i, (name, kind) in enumerate([("enc.0", "dense"), ("enc.1", "relu"), ("enc.2", "dense"), ("enc.3", "relu"),
                                      ("dec.0", "dense"), ("dec.1", "relu"), ("dec.2", "dense")]):
        out = str(q.get_submodule(name).effective_format("output"))  # the learned formats are the hls4ml types
        t = parse_type(out)  # hls4ml prints ap_fixed<8,3,AP_RND,AP_SAT> as fixed<8,3,RND,SAT,0>
        want_t = f"{'' if t.signed else 'u'}fixed<{t.width},{t.int_bits},{t.rounding.value[3:]},{t.overflow.value[3:]},0>"
        assert types[f"{kind}{i}"]["result_t"] == want_t, (name, types[f"{kind}{i}"])
    hls_model.compile()

    qfx.nn.set_track_overflow(q, True)
    want = _check_cnn(hls_model, q, x, tmp_path / "export")  # hls4ml == emulation == reference, 0 mismatches
    assert want.shape == (len(x), 12)
    # meaningful: many distinct outputs, and the casts really saturated (the input cast on the
    # out-of-range inputs, and at least one hidden layer's output)
    assert len(np.unique(want)) > 100
    counts = {n: m.overflow_counts() for n, m in q.named_modules() if isinstance(m, (QLinear, QReLU))}
    assert counts["enc.0"]["input"] > 0, counts
    assert sum(c["output"] for n, c in counts.items() if n != "enc.0") > 0, counts


def test_refuses_the_autoencoders_hardtanh_naming_the_node(tmp_path):
    q = freeze(qfx.convert(AutoencoderMLP(), I14_CFG)).eval()
    with pytest.raises(Hls4mlInteropError, match=r"node 'dec_3' \(dec\.3\): hls4ml cannot express QClamp") as err:
        to_hls4ml(q, torch.zeros(1, 12), tmp_path / "prj")
    assert "no handler for nn.Hardtanh" in str(err.value) and "hard_tanh" in str(err.value)
    assert not (tmp_path / "prj").exists()


def test_refuses_a_branching_graph_naming_the_node(tmp_path):
    q = qfx.convert(BranchConcat(), I14_CFG)
    q(torch.randn(4, 2, 3, 3))
    freeze(q).eval()
    with pytest.raises(Hls4mlInteropError, match=r"node 'x' feeds 2 nodes \('a', 'b'\); to_hls4ml needs a straight chain"):
        to_hls4ml(q, torch.zeros(1, 2, 3, 3), tmp_path / "prj")
    assert not (tmp_path / "prj").exists()


def test_refuses_a_function_node_naming_it(tmp_path):
    # a chain whose ReLU is torch.relu (a call_function node), not a QReLU module: hls4ml would get no
    # output cast for it
    root = nn.Module()
    root.fc = QLinear(16, 4, input=X, weight=W, bias=B, output=Y)
    g = torch.fx.Graph()
    y = g.call_module("fc", (g.placeholder("x"),))
    g.output(g.call_function(torch.relu, (y,)))
    gm = freeze(torch.fx.GraphModule(root, g)).eval()
    with pytest.raises(Hls4mlInteropError, match=r"node 'relu' \(call_function relu\): to_hls4ml supports a chain"):
        to_hls4ml(gm, _inputs(2, 0), tmp_path / "prj")
    assert not (tmp_path / "prj").exists()
