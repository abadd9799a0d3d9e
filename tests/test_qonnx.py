"""QONNX export and import, checked by an executor qfx did not write.

* Export: qfx models (MLP; CNN with BatchNorm, grouped / dilated conv, max / average pools with a
  reciprocal, ReLU6, K-hot weights; residual block with add and leaky ReLU; pad / concat / clamp /
  sub / mul / global pool) go to QONNX with :func:`qfx.export.to_qonnx`; ``qonnx``'s own executor
  (``qonnx.core.onnx_exec.execute_onnx``) on the file equals qfx's integer reference
  (:mod:`qfx.reference`) bit for bit on random float inputs (ties at half an lsb included, so the
  input's rounding mode is exercised) and on exact codes. The models use every QONNX rounding mode
  qfx maps to, the split lowering of AP_RND / AP_RND_MIN_INF, and both saturating overflow modes
  (changing the ROUND or the AP_RND mapping makes these tests fail: checked by hand).
* Refusals: wrapping casts that can overflow, narrow accumulators, L-Mul, minifloat weights,
  too-wide formats: a QonnxExportError naming the node and the reason, nothing written.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("qonnx")

from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.core.onnx_exec import execute_onnx  # noqa: E402

from qfx.export import export, to_qonnx  # noqa: E402
from qfx.manifest import load  # noqa: E402
from qfx.nn import (  # noqa: E402
    QAdd,
    QAvgPool2d,
    QBatchNorm2d,
    QCat,
    QClamp,
    QConv2d,
    QFlatten,
    QGlobalAvgPool2d,
    QLeakyReLU,
    QLinear,
    QMaxPool2d,
    QMul,
    QReLU,
    QReLU6,
    QSub,
    QUpsample,
    QZeroPad2d,
)
from qfx.qonnx_export import QonnxExportError, manifest_to_qonnx  # noqa: E402
from qfx.reference import run  # noqa: E402
from tests.qmodels import KHOT, B, U, W, X, Y, code_sweep, init_weights  # noqa: E402

# ---------------------------------------------------------------------------
# Models QONNX can express (all saturating where a cast can overflow)
# ---------------------------------------------------------------------------


def mlp() -> nn.Module:
    return nn.Sequential(
        QLinear(12, 10, input=X, weight=W, bias=B, output=Y),
        QReLU(input=X, output="ap_ufixed<8,3,AP_RND,AP_WRAP>"),  # AP_WRAP that cannot overflow: exported
        QLinear(10, 6, input="ap_fixed<8,3,AP_TRN_ZERO,AP_SAT>", weight=W, bias=B, output=Y),
        QLeakyReLU(0.25, input=Y, output="ap_fixed<8,3,AP_RND_INF,AP_SAT>"),
        QLinear(6, 4, bias=False, input=X, weight=W, output="ap_fixed<10,4,AP_RND_ZERO,AP_SAT_SYM>"),
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        QConv2d(2, 4, 3, padding=1, input=X, weight=W, bias=B, output=Y),
        QBatchNorm2d(4, input=Y, scale="ap_fixed<10,2,AP_RND>", shift="ap_fixed<10,3,AP_RND_CONV>", output=Y),
        QReLU(input="ap_fixed<9,4,AP_RND_MIN_INF,AP_SAT>", output=U),
        QMaxPool2d(3, 2, 1),
        QConv2d(4, 4, (3, 2), padding=1, dilation=(1, 2), groups=2, input=X, weight=W, bias=B, output=Y),
        QAvgPool2d(3, 1, 1, input=X, output=Y, reciprocal="ap_ufixed<8,-3,AP_RND>"),
        QReLU6(input="ap_fixed<9,4,AP_RND,AP_SAT>", output=U),
        QMaxPool2d(2, 1, ceil_mode=True, output="ap_fixed<6,2,AP_TRN,AP_SAT_SYM>"),
        QAvgPool2d(2, 1, input=X, output=Y),
        QFlatten(),
        QLinear(4 * 2 * 1, 5, input=X, weight=KHOT, bias=B, output=Y),
    )


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        a = "ap_fixed<9,3,AP_RND,AP_SAT>"
        self.stem = QConv2d(2, 4, 3, padding=1, input=X, weight=W, bias=B, output=a)
        self.conv1 = QConv2d(4, 4, 3, padding=1, input=a, weight=W, bias=B, output=a)
        self.bn = QBatchNorm2d(4, input=a, scale="ap_fixed<10,2,AP_RND>", shift="ap_fixed<10,3>", output=a)
        self.act1 = QReLU(output=a)
        self.conv2 = QConv2d(4, 4, 1, bias=False, input=a, weight=W, output=a)
        self.add = QAdd(in_a="ap_fixed<10,4,AP_RND,AP_SAT>", in_b=a, output="ap_fixed<8,3,AP_RND_ZERO,AP_SAT>")
        self.act = QLeakyReLU(0.125, output="ap_fixed<8,3,AP_RND_MIN_INF,AP_SAT>")
        self.pool = QAvgPool2d(2, input=X, output=Y)
        self.fc = QLinear(4 * 3 * 3, 3, input=X, weight=W, bias=B, output=Y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        y = self.conv2(self.act1(self.bn(self.conv1(s))))
        y = self.act(self.add(s, y))
        return self.fc(torch.flatten(self.pool(y), 1))


class Ops(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pad = QZeroPad2d((1, 0, 0, 1))
        self.stem = QConv2d(2, 3, 2, input=X, weight=W, bias=B, output=Y)
        self.relu = QReLU(input=Y, output=U)
        self.sub = QSub(in_a=Y, in_b=U, output="ap_fixed<9,4,AP_RND_CONV,AP_SAT>")
        self.mul = QMul(in_a=X, in_b=U, output="ap_fixed<8,3,AP_TRN,AP_SAT>")
        self.cat = QCat(output="ap_fixed<8,3,AP_RND_INF,AP_SAT>")
        self.clamp = QClamp(-1.3, 2.6, input=X, output="ap_fixed<7,3,AP_RND,AP_SAT>")
        self.gap = QGlobalAvgPool2d(keepdim=False, input=X, output=Y, reciprocal="ap_ufixed<10,-3,AP_RND_CONV>")
        self.fc = QLinear(6, 3, input=X, weight=W, bias=B, output=Y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(self.pad(x))
        r = self.relu(s)
        c = self.clamp(self.cat(self.sub(s, r), self.mul(s, r)))
        return self.fc(self.gap(c))


def upsampled() -> nn.Module:
    """Nearest upsampling (Resize) by (2, 3) of the model input and by 2 after a conv."""
    return nn.Sequential(
        QUpsample(scale_factor=(2, 3)),
        QConv2d(2, 3, 3, stride=2, input=X, weight=W, bias=B, output=Y),
        QUpsample(scale_factor=2),
        QReLU(input=Y, output=U),
        QFlatten(),
        QLinear(3 * 4 * 10, 4, input=X, weight=W, bias=B, output=Y),
    )


def per_channel() -> nn.Module:
    """Per-channel weight formats whose binary points differ by 6 bits (learned on a calibration batch)."""
    cfg = dict(input=X, weight=W, bias=B, output=Y, learn_binary_point=True, weight_per_channel=True)
    model = init_weights(nn.Sequential(QConv2d(2, 3, 3, config=cfg), QReLU(output=U), QFlatten(),
                                       QLinear(3 * 2 * 2, 4, config=cfg)), 7)
    with torch.no_grad():
        model[0].weight.mul_(torch.tensor([0.05, 1.0, 4.0])[:, None, None, None])
        model(torch.randn(16, 2, 4, 4, generator=torch.Generator().manual_seed(0)))  # calibrates the binary points
    return model


MODELS = {
    "mlp": (lambda: init_weights(mlp(), 1), (12,)),
    "cnn": (lambda: init_weights(cnn(), 2), (2, 8, 6)),
    "residual": (lambda: init_weights(Residual(), 3), (2, 6, 6)),
    "ops": (lambda: init_weights(Ops(), 4), (2, 4, 5)),
    "per_channel": (per_channel, (2, 4, 4)),
    "upsample": (lambda: init_weights(upsampled(), 5), (2, 3, 4)),
}


def _inputs(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random float32 values (many saturate at the input), values at exact half-lsb ties of X, and codes."""
    g = torch.Generator().manual_seed(seed)
    n = int(np.prod(shape))
    rnd = torch.randn(96, n, generator=g) * 2.5
    ties = (torch.randint(-140, 140, (32, n), generator=g).double() + 0.5) * 2.0**-5  # X: lsb 2**-5
    sweep = code_sweep(shape, rows=32).reshape(-1, n)
    return torch.cat([rnd.double(), ties, sweep]).reshape(-1, *shape).float().double()


def _qonnx_codes(path, x: torch.Tensor, frac_bits: int) -> np.ndarray:
    mw = ModelWrapper(str(path))
    out = execute_onnx(mw, {mw.graph.input[0].name: x.numpy().astype(np.float32)})
    (y,) = out.values()
    codes = y.astype(np.float64) * 2.0**frac_bits
    assert np.array_equal(codes, np.round(codes)), "qonnx values off the output grid"
    return codes.astype(np.int64)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_qonnx_execution_equals_reference(name: str, tmp_path) -> None:
    make, shape = MODELS[name]
    model = make()
    x = _inputs(shape, seed=len(name))
    model.eval()(x[:8])  # a forward pass (what a trained model has had)
    onnx_path = to_qonnx(model, x, tmp_path / f"{name}.onnx")
    m = load(export(model, x, tmp_path / "manifest"))
    ref = run(m, x)[m.output]
    got = _qonnx_codes(onnx_path, x, m.output_node.output_format.frac_bits)
    assert got.shape == ref.shape
    mismatches = int((got != ref).sum())
    assert mismatches == 0, f"{name}: {mismatches} of {ref.size} outputs differ from the integer reference"
    assert len(np.unique(ref)) > 4  # the outputs vary (not a constant that matches by chance)


def test_every_rounding_mode_is_exercised(tmp_path) -> None:
    """The exported models use every mapped QONNX rounding mode and the split (Where) lowering."""
    seen: set[str] = set()
    for name, (make, shape) in MODELS.items():
        model = make()
        x = _inputs(shape, 0)
        qm = manifest_to_qonnx(load(export(model, x, tmp_path / name)), batch=x.shape[0])
        seen |= {a.s.decode() for n in qm.graph.node if n.op_type == "Quant" for a in n.attribute
                 if a.name == "rounding_mode"}
        seen |= {"SPLIT"} if any(n.op_type == "Where" for n in qm.graph.node) else set()
    assert {"FLOOR", "DOWN", "ROUND", "HALF_UP", "HALF_DOWN", "SPLIT"} <= seen


def test_quant_attributes(tmp_path) -> None:
    """scale 2**-F, zero point 0, bit width W, signed, narrow for a signed AP_SAT_SYM."""
    model = init_weights(mlp(), 1)
    x = _inputs((12,), 0)
    qm = manifest_to_qonnx(load(export(model, x, tmp_path / "m")), batch=4)
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in qm.graph.initializer}
    by_name = {n.name: n for n in qm.graph.node}
    q = by_name["n4_output_quant"]  # the last dense: ap_fixed<10,4,AP_RND_ZERO,AP_SAT_SYM>
    attrs = {a.name: (a.i if a.type == a.INT else a.s.decode()) for a in q.attribute}
    assert attrs == {"signed": 1, "narrow": 1, "rounding_mode": "HALF_DOWN"}
    assert inits[q.input[1]] == np.float32(2.0**-6) and inits[q.input[2]] == 0 and inits[q.input[3]] == 10
    assert qm.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4


def test_export_is_deterministic(tmp_path) -> None:
    model = init_weights(Residual(), 3)
    x = _inputs((2, 6, 6), 0)
    a = to_qonnx(model, x, tmp_path / "a.onnx").read_bytes()
    b = to_qonnx(model, x, tmp_path / "b.onnx").read_bytes()
    assert a == b


# ---------------------------------------------------------------------------
# Refusals: the node and the reason named, nothing written
# ---------------------------------------------------------------------------


REFUSED = [
    (lambda: nn.Sequential(QLinear(4, 3, input=X, weight=W, bias=B, output="ap_fixed<6,2,AP_RND,AP_WRAP>")),
     r"node 'n0': the cast to the output format ap_fixed<6,2,AP_RND> can overflow .* AP_WRAP has no QONNX"),
    (lambda: nn.Sequential(QLinear(4, 3, input=X, weight=W, bias=B, output="ap_fixed<6,2,AP_RND,AP_SAT_ZERO>")),
     r"AP_SAT_ZERO has no QONNX equivalent"),
    (lambda: nn.Sequential(QLinear(4, 3, input=X, weight=W, bias=B, accum="ap_fixed<10,3,AP_RND,AP_SAT>", output=Y)),
     r"node 'n0': the accumulator ap_fixed<10,3,AP_RND,AP_SAT> can round or overflow inside the MAC loop"),
    (lambda: nn.Sequential(QLinear(4, 3, bias=False, input=X, weight="fp8_e4m3fn", output=Y)),
     r"node 'n0': minifloat weights"),
    (lambda: nn.Sequential(QLinear(32, 3, bias=False, input=X, weight="mxfp4_e2m1", output=Y)),
     r"node 'n0': MX block-scaled weights \(mxfp4_e2m1"),
    (lambda: nn.Sequential(QLinear(4, 3, bias=False, input=X, weight="fp8_e4m3fn", multiply="lmul", output=Y)),
     r"node 'n0': L-Mul"),
    (lambda: nn.Sequential(QLinear(4, 3, bias=False, input="ap_fixed<8,3,AP_RND,AP_WRAP>", weight=W, output=Y)),
     r"node 'input_1': the model input format ap_fixed<8,3,AP_RND> uses AP_WRAP"),
    (lambda: nn.Sequential(QLinear(4, 3, bias=False, input=X, weight=W, output="ap_fixed<26,8,AP_RND,AP_SAT>")),
     r"node 'n0': the output format ap_fixed<26,8,AP_RND,AP_SAT> is 26 bits wide"),
    (lambda: nn.Sequential(QLinear(64, 3, bias=False, input="ap_fixed<12,3,AP_RND,AP_SAT>", weight="ap_fixed<12,1,AP_RND,AP_SAT>",
                                   output=Y)),
     r"node 'n0': the exact accumulator .* reaches integers of magnitude 536870912 .* float32"),
]


@pytest.mark.parametrize("case", range(len(REFUSED)))
def test_refused_with_node_and_reason(case: int, tmp_path) -> None:
    make, match = REFUSED[case]
    model = init_weights(make(), 0)
    n_in = model[0].in_features
    x = torch.randn(4, n_in)
    model.eval()(x)
    target = tmp_path / "m.onnx"
    with pytest.raises(QonnxExportError, match=match):
        to_qonnx(model, x, target)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_needs_force(tmp_path) -> None:
    model = init_weights(mlp(), 1)
    x = _inputs((12,), 0)
    target = tmp_path / "m.onnx"
    target.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="pass force=True"):
        to_qonnx(model, x, target)
    assert target.read_bytes() == b"keep"
    to_qonnx(model, x, target, force=True)
    assert target.read_bytes() != b"keep"


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def test_cli_export_and_import(tmp_path, capsys) -> None:
    from qfx.cli import main

    model = init_weights(Residual(), 3)
    x = _inputs((2, 6, 6), 1)[:16]
    m = load(export(model, x, tmp_path / "manifest"))
    assert main(["export", str(tmp_path / "manifest"), "--qonnx", str(tmp_path / "m.onnx"), "--batch", "16"]) == 0
    got = _qonnx_codes(tmp_path / "m.onnx", x, m.output_node.output_format.frac_bits)
    assert np.array_equal(got, run(m, x)[m.output])
    assert main(["export", str(tmp_path / "manifest"), "--qonnx", str(tmp_path / "m.onnx")]) == 2  # exists
    assert "pass force=True" in capsys.readouterr().err


def test_cli_refusals_exit_2_and_write_nothing(tmp_path, capsys) -> None:
    from qfx.cli import main

    model = init_weights(nn.Sequential(QLinear(4, 3, input=X, weight=W, bias=B, output="ap_fixed<6,2,AP_RND,AP_WRAP>")), 0)
    x = torch.randn(4, 4)
    export(model, x, tmp_path / "manifest")
    assert main(["export", str(tmp_path / "manifest"), "--qonnx", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qfx: error: node 'n0': the cast to the output format") and "AP_WRAP" in err
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    assert main(["import", str(tmp_path / "junk.onnx"), "-o", str(tmp_path / "imported")]) == 2
    assert "junk.onnx: not an ONNX model" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.onnx", "manifest"]
