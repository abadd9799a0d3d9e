"""Issue 14: nonlinear activations as lookup tables (qfx.tables), four ways.

A small MLP with Sigmoid, Tanh, SiLU, GELU, Hardsigmoid and Hardswish layers (module, function and
method forms; one table saturating outside a narrower table_range with several input codes per
entry) goes float -> ``qfx.convert`` -> a few QAT steps -> export -> integer reference == emulation
on every layer -> ``qfx-gen`` (rtl, hls) -> ``verify`` (Verilator RTL and g++ C simulation against
the real ap_types headers) with 0 mismatches. Expected values come from the integer reference and
the emulation (and, for the table semantics, from torch's float functions), never from the hardware.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qfx
from qfx.conversion import ConversionError
from qfx.export import emulate, export
from qfx.manifest import ManifestError, load
from qfx.reference import run
from qfx.tables import TableError
from tests.fourway import config, assert_verilog_lints_clean

CFG = config(
    types={
        "Sigmoid": {"output": "ap_ufixed<8,0,AP_RND,AP_SAT>"},
        "Tanh": {"output": "ap_fixed<8,1,AP_RND_CONV,AP_SAT>"},
        "Hardsigmoid": {"output": "ap_ufixed<6,1,AP_RND,AP_SAT>"},
    },
    # a narrower range than the input format's (saturating ends), 4 input codes per entry
    layers={"tanh": {"table_range": [-2, 2], "table_size": 32}},
)


class TableMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 6)
        self.fc4, self.fc5, self.fc6 = nn.Linear(6, 6), nn.Linear(6, 4), nn.Linear(4, 4)
        self.sig, self.gelu, self.hsig = nn.Sigmoid(), nn.GELU(), nn.Hardsigmoid()

    def forward(self, x):
        y = F.silu(self.fc1(x))
        y = self.sig(self.fc2(y))
        y = self.gelu(self.fc3(y)).tanh()
        y = self.hsig(self.fc4(y))
        return self.fc6(F.hardswish(self.fc5(y)))


def _qat():
    torch.manual_seed(0)
    q = qfx.convert(TableMLP(), CFG)
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    q.train()
    w0 = q.fc1.weight.detach().clone()
    for _ in range(4):
        x = torch.randn(32, 6, generator=g) * 1.5
        loss = F.mse_loss(q(x), torch.zeros(32, 4) + torch.linspace(0.1, 0.9, 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(w0, q.fc1.weight.detach())  # the gradient reaches through five tables
    q.eval()
    return q, torch.randn(40, 6, generator=g) * 2.0


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    q, x = _qat()
    d = tmp_path_factory.mktemp("table_mlp")
    export(q, x, d / "manifest")
    return q, x, d


def test_reference_equals_emulation_on_every_layer(exported):
    q, x, d = exported
    man = load(d / "manifest")
    tables = {n.source: n for n in man if n.op == "table"}
    assert {n.params["function"] for n in tables.values()} == {"silu", "sigmoid", "gelu", "tanh", "hardswish",
                                                                 "hardsigmoid"}
    assert (tables["tanh"].params["size"], tables["tanh"].params["shift"]) == (32, 2)
    ref, emu = run(man, x), emulate(q, x)
    with torch.no_grad():
        assert torch.equal(emu[man.output].double(), q(x).double())
    for node in man:
        codes = qfx.to_codes(emu[node.name], node.output_format).numpy()
        bad = np.argwhere(ref[node.name] != codes)
        assert bad.size == 0, f"node {node.name} ({node.op}) differs first at {bad[0].tolist()}"
    assert len(np.unique(ref[man.output])) > 3
    for n in tables.values():  # every table is exercised on more than a few entries
        assert len(np.unique(ref[n.name])) > 3, n.name


def test_rtl_and_hls_bit_exact(exported):
    from qfx.gen import generate
    from qfx.sim import verilator as qv
    from qfx.sim.check import verify

    q, x, d = exported
    try:
        qv.find_verilator()
    except qv.VerilatorNotFound:
        pytest.skip("no Verilator")
    generate(d / "manifest", d / "gen", board="ultra96", targets=("rtl", "hls"))
    cpp = "".join(p.read_text() for p in (d / "gen" / "hls").glob("*.cpp"))
    assert "static const tanh_out_t tanh_table[32]" in cpp
    rep = verify(d / "gen", vectors=60, model=q, seed=2)
    assert rep.ok, rep.table()
    names = [c.name for c in rep.checks]
    assert any(n.startswith("RTL") for n in names) and any(n.startswith("HLS") for n in names)
    assert all(c.mismatches == 0 for c in rep.checks)
    man = load(d / "manifest")
    fr = man.input_node.formats["output"].frac_bits
    xf = (rep.inputs * 2.0 ** -fr).reshape((len(rep.inputs),) + tuple(man.input_node.output_shape))
    assert np.array_equal(rep.rtl_outputs.reshape(len(xf), -1), run(man, xf)[man.output].reshape(len(xf), -1))


def test_cost_model_covers_the_table_engines(exported):
    from qfx.cost.estimate import estimate
    from qfx.hw.accel import Accelerator, estimate_resources

    _q, _x, d = exported
    man = load(d / "manifest")
    est = estimate(man)
    tables = [n for n in man if n.op == "table"]
    assert all(est["per_layer"][n.name]["lut"] > 0 and est["per_layer"][n.name]["dsp"] == 0 for n in tables)
    res = estimate_resources(man)["per_layer"]
    for n in tables:  # the ROM's bits, in LUTs (comb read), no block RAM
        assert res[n.name]["memory_bits"] == n.params["size"] * n.formats["output"].width
        assert res[n.name]["bram36"] == 0
    acc = Accelerator(man)
    acc._MustUse__silence = True
    cyc = acc.cycle_estimate()["engines"]
    assert all(cyc[n.name]["compute"] == int(np.prod(n.output_shape)) for n in tables)


def test_tampered_table_is_refused_on_load(exported, tmp_path):
    import shutil

    _q, _x, d = exported
    dst = tmp_path / "m"
    shutil.copytree(d / "manifest", dst)
    arrays = dict(np.load(dst / "tensors.npz"))
    arrays["sig.table"] = arrays["sig.table"].copy()
    arrays["sig.table"][5] += 1
    from qfx.export import write_npz

    write_npz(dst / "tensors.npz", arrays)
    with pytest.raises(ManifestError, match=r"node 'sig' \(table\).*differs from qfx.tables.contents of sigmoid .*at 5"):
        load(dst)


# ---------------------------------------------------------------------------
# Semantics against torch, and bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls,f", [(qfx.nn.QSigmoid, torch.sigmoid), (qfx.nn.QTanh, torch.tanh),
                                   (qfx.nn.QSiLU, F.silu), (qfx.nn.QGELU, F.gelu)])
def test_direct_table_is_the_rounded_float_function(cls, f):
    """One entry per input code: y = cast(f(cast(x, input)), output), within half an output lsb of
    torch's float64 function on every input code (round to nearest), and saturating outside."""
    m = cls(input="ap_fixed<7,3,AP_RND,AP_SAT>", output="ap_fixed<10,3,AP_RND,AP_SAT>")
    assert (m.spec.size, m.spec.shift) == (128, 0)
    x = torch.arange(-64, 64, dtype=torch.float64) / 16
    y = m(x)
    assert (y - f(x)).abs().max() <= 2**-7 / 2 + 1e-12
    assert torch.equal(m(torch.tensor([-100.0, 100.0])), m(torch.tensor([-4.0, 3.9375])))


def test_hard_functions_are_exact_rationals():
    x = torch.arange(-128, 128, dtype=torch.float64) / 16  # every code of ap_fixed<8,4>
    hs = qfx.nn.QHardswish(input="ap_fixed<8,4>", output="ap_fixed<16,4,AP_RND_CONV,AP_SAT>")
    want = qfx.quantize(F.hardswish(x), "ap_fixed<16,4,AP_RND_CONV,AP_SAT>")
    assert torch.equal(hs(x).double(), want)


def test_uncoverable_table_range_is_a_conversion_error():
    cfg = {"default": dict(CFG["default"]), "layers": {"sig": {"table_range": 8}}}
    with pytest.raises(ConversionError, match=r"layer 'sig' \(Sigmoid\): table_range \[-8.0, 8.0\) is not inside "
                                              r"the range \[-4.0, 4.0\) of the input format"):
        qfx.convert(TableMLP(), cfg)
    cfg["layers"] = {"sig": {"table_range": [-3, 3]}}
    with pytest.raises(ConversionError, match="layer 'sig'.*not a power of two"):
        qfx.convert(TableMLP(), cfg)
    cfg["layers"] = {"sig": {"table_size": 100}}
    with pytest.raises(ConversionError, match="table_size must be a power of two"):
        qfx.convert(TableMLP(), cfg)
    with pytest.raises(TableError, match="grid"):
        qfx.nn.QTanh(input="ap_fixed<8,3>", output="ap_fixed<8,1>", table_range=[-1 / 64, 1])


def test_unsupported_table_arguments_name_the_layer():
    class ApproxGelu(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.act = nn.Linear(4, 4), nn.GELU(approximate="tanh")

        def forward(self, x):
            return F.gelu(self.act(self.fc(x)), approximate="tanh")

    with pytest.raises(ConversionError, match=r"module 'act' \(GELU\): approximate='tanh'") as e:
        qfx.convert(ApproxGelu(), CFG)
    assert "gelu (node 'gelu'): argument approximate='tanh' is not supported" in str(e.value)
    with pytest.raises(ValueError, match="formats stay fixed"):
        qfx.nn.QSigmoid(input="ap_fixed<8,3>", output="ap_ufixed<8,0>", learn_binary_point=["input"])


def test_table_engine_verilog_lints_clean_and_is_deterministic(exported, tmp_path):
    """The table engines pass ``verilator --lint-only -Wall`` with the project's waivers only."""
    _q, _x, d = exported
    assert_verilog_lints_clean(d / "manifest", tmp_path)


# ---------------------------------------------------------------------------
# A jet-tagging style MLP 16-64-32-32-5 ending in a softmax, dropped for argmax outputs
# ---------------------------------------------------------------------------


class JetTagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.fc4 = nn.Linear(16, 64), nn.Linear(64, 32), nn.Linear(32, 32), nn.Linear(32, 5)
        self.act2 = nn.SiLU()
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x):
        y = torch.relu(self.fc1(x))
        y = torch.tanh(self.fc3(self.act2(self.fc2(y))))
        return self.softmax(self.fc4(y))


def _jet_data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(16, 5, generator=torch.Generator().manual_seed(123))
    x = torch.randn(n, 16, generator=g)
    return x, (x @ proj).argmax(dim=1)


def test_softmax_is_a_layer_unless_dropped_and_the_batch_dim_is_refused():
    # without drop_final_softmax the final softmax is a QSoftmax layer (tests/test_i14_softmax.py runs it four ways)
    cfg = {k: v for k, v in CFG.items() if k != "layers"}
    assert isinstance(qfx.convert(JetTagger(), cfg).softmax, qfx.nn.QSoftmax)

    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc2(F.softmax(self.fc1(x), dim=1)).softmax(0)

    with pytest.raises(ConversionError) as e:
        qfx.convert(Inner(), dict(cfg, drop_final_softmax=True))
    msg = str(e.value)
    assert "torch.nn.functional.softmax (node 'softmax')" not in msg  # a softmax inside the model converts
    assert "method .softmax() (node 'softmax_1'): argument dim=0 is not supported" in msg
    with pytest.raises(ConversionError, match="drop_final_softmax must be true or false"):
        qfx.convert(JetTagger(), dict(CFG, drop_final_softmax="yes"))


def test_jet_tagger_with_dropped_softmax_four_ways(tmp_path):
    from qfx.gen import generate
    from qfx.sim import verilator as qv
    from qfx.sim.check import verify

    torch.manual_seed(0)
    float_model = JetTagger()
    q = qfx.convert(float_model, CFG, drop_final_softmax=True)
    assert q.meta["qfx"]["dropped_softmax"] == ["softmax"]
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    q.train()
    for step in range(30):
        x, t = _jet_data(64, step)
        loss = F.cross_entropy(q(x), t)  # the logits: cross-entropy applies the softmax
        opt.zero_grad()
        loss.backward()
        opt.step()
    q.eval()
    x, t = _jet_data(200, 999)
    with torch.no_grad():
        logits = q(x)
    assert (logits.argmax(1) == t).float().mean() > 0.4  # learned something (chance 0.2)
    export(q, x[:40], tmp_path / "manifest")
    man = load(tmp_path / "manifest")
    assert [n.op for n in man].count("table") == 2 and man.node(man.output).output_shape == (5,)
    ref, emu = run(man, x[:40]), emulate(q, x[:40])
    for node in man:
        assert np.array_equal(ref[node.name], qfx.to_codes(emu[node.name], node.output_format).numpy()), node.name
    try:
        qv.find_verilator()
    except qv.VerilatorNotFound:
        pytest.skip("no Verilator")
    generate(tmp_path / "manifest", tmp_path / "gen", board="ultra96", targets=("rtl", "hls"))
    rep = verify(tmp_path / "gen", vectors=40, model=q, seed=3)
    assert rep.ok, rep.table()
    assert all(c.mismatches == 0 for c in rep.checks) and len(rep.checks) >= 4
