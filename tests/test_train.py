"""qfx.train: determinism, checkpoint/resume, freezing, PTQ, bits penalty, the demo table."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Subset

import qfx
from qfx import train as qtrain
from qfx.data import digits_loaders, digits_splits
from qfx.demo import accuracy
from qfx.demo.models import build_model

CFG = accuracy.word_length_config(6)


@pytest.fixture(scope="module")
def splits():
    return digits_splits(0)


def _loaders(splits, seed=0, n=320):
    g = torch.Generator().manual_seed(seed)
    train = DataLoader(Subset(splits.train, range(n)), batch_size=64, shuffle=True, generator=g)
    val = DataLoader(Subset(splits.val, range(128)), batch_size=128)
    return train, val


def _qmodel(name="digits_mlp"):
    return qfx.convert(build_model(name, seed=0), CFG)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_digits_split_is_fixed_and_normalised(splits):
    assert splits.sizes == {"train": 1167, "val": 270, "test": 360}
    again = digits_splits(0)
    assert torch.equal(again.test.tensors[0], splits.test.tensors[0])
    x = splits.train.tensors[0]
    assert x.shape[1:] == (1, 8, 8) and float(x.min()) == 0.0 and float(x.max()) == 1.0
    other = digits_splits(1)
    assert not torch.equal(other.test.tensors[1], splits.test.tensors[1])
    flat, _, _ = digits_loaders(32, image=False)
    assert next(iter(flat))[0].shape == (32, 64)


def test_fit_is_deterministic_with_a_seed_and_freezes(splits):
    results, states = [], []
    for seed in (3, 3, 4):
        model = _qmodel()
        train, val = _loaders(splits)
        r = qtrain.fit(model, train, val, epochs=2, lr=1e-3, frac_lr=1e-2, seed=seed, progress=False)
        results.append(r)
        states.append(_state(model))
    _assert_same(states[0], states[1])
    assert results[0].history == [
        {**h, "seconds": results[0].history[i]["seconds"]} for i, h in enumerate(results[1].history)
    ]
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0])
    # frozen at the end: no learnable binary point left, the final metrics use the frozen formats
    assert qtrain.learnable_quantizers(model) == []
    assert all(not p.requires_grad or not n.endswith("frac_bits") for n, p in model.named_parameters())
    _, val = _loaders(splits)
    assert qtrain.evaluate(model, val)["accuracy"] == results[2].final["accuracy"]
    assert results[0].history[-1]["epoch"] == 2 and 0 < results[0].final["accuracy"] <= 1
    assert isinstance(model.get_submodule("fc1").effective_format("weight"), qfx.FixedType)


def test_progress_bar_does_not_change_the_training(splits):
    """progress=True trains on the same batches as progress=False (tqdm.auto's asyncio bar used to
    call iter(loader) in its constructor: an extra draw from the loader's generator, another shuffle)."""
    states = []
    for progress in (False, True):
        model = _qmodel()
        train, val = _loaders(splits, n=128)
        qtrain.fit(model, train, val, epochs=1, lr=1e-3, seed=5, progress=progress)
        states.append(_state(model))
    _assert_same(states[0], states[1])


class _Stop(Exception):
    pass


def test_interrupted_and_resumed_run_equals_uninterrupted_run(splits, tmp_path):
    kw = dict(epochs=3, lr=1e-3, frac_lr=1e-2, seed=7, bits_penalty=1e-3, progress=False)
    model = _qmodel("digits_cnn")
    train, val = _loaders(splits, n=128)
    full = qtrain.fit(model, train, val, checkpoint_dir=tmp_path / "a", **kw)
    want = _state(model)

    def crash(epoch, metrics):
        if epoch == 1:
            raise _Stop

    model = _qmodel("digits_cnn")
    train, val = _loaders(splits, n=128)
    with pytest.raises(_Stop):
        qtrain.fit(model, train, val, checkpoint_dir=tmp_path / "b", on_epoch_end=crash, **kw)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["epoch_0001.pt"]
    # a fresh process would rebuild everything: new model, new loaders
    model = _qmodel("digits_cnn")
    train, val = _loaders(splits, n=128)
    resumed = qtrain.fit(model, train, val, checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert resumed.resumed_from == 1 and resumed.epochs_run == 2
    _assert_same(_state(model), want)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    assert resumed.final == full.final
    # the newest two checkpoints are kept, no temporary files
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["epoch_0002.pt", "epoch_0003.pt"]
    # resuming a finished run trains nothing and gives the same model
    model = _qmodel("digits_cnn")
    again = qtrain.fit(model, train, val, checkpoint_dir=tmp_path / "a", resume=True, **kw)
    assert again.epochs_run == 0
    _assert_same(_state(model), want)


def test_ptq_calibrates_and_freezes(splits):
    fmodel = build_model("digits_mlp", seed=0)
    train, val = _loaders(splits)
    qtrain.fit(fmodel, train, val, epochs=3, lr=1e-2, progress=False)
    q = qfx.convert(fmodel.eval(), CFG)
    qtrain.ptq(q, train, batches=2)
    assert qtrain.learnable_quantizers(q) == []
    acc_f = qtrain.evaluate(fmodel, val)["accuracy"]
    acc_q = qtrain.evaluate(q, val)["accuracy"]
    assert acc_q > acc_f - 0.15
    q2 = qfx.convert(fmodel.eval(), CFG)
    qtrain.ptq(q2, train, freeze=False)
    assert all(bool(t.calibrated) for t in qtrain.learnable_quantizers(q2))


def test_bits_penalty_reduces_integer_bits(splits):
    bits = []
    for penalty in (0.0, 1.0):
        model = _qmodel()
        train, val = _loaders(splits)
        r = qtrain.fit(model, train, None, epochs=2, lr=1e-3, frac_lr=0.2, seed=0, bits_penalty=penalty,
                       progress=False, freeze=False)
        bits.append(r.history[-1]["int_bits"])
        assert r.final == {}
    assert bits[1] < bits[0] - 5


def test_fit_argument_errors(splits):
    train, val = _loaders(splits)
    with pytest.raises(ValueError, match="epochs"):
        qtrain.fit(_qmodel(), train, val, epochs=-1, lr=1e-3)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        qtrain.fit(_qmodel(), train, val, epochs=1, lr=1e-3, resume=True)
    with pytest.raises(ValueError, match="optimizer"):
        qtrain.fit(_qmodel(), train, val, epochs=1, lr=1e-3, optimizer="lbfgs")


def test_demo_accuracy_reduced_run(tmp_path):
    settings = {
        **accuracy.QUICK,
        "models": ("digits_mlp",),
        "widths": (4,),
        "float_epochs": {"digits_mlp": 4},
        "qat_epochs": {"digits_mlp": 1},
    }
    report = accuracy.run(settings, progress=False)
    rows = report["results"]["digits_mlp"]
    assert set(rows) == {"float", "PTQ W=4", "qfx W=4", "PTQ K-hot k=2 (8-bit base)", "qfx K-hot k=2 (8-bit base)"}
    assert all(0 < v[0] <= 1 for v in rows.values())
    md = accuracy.to_markdown(report)
    assert "| qfx W=4 |" in md and "digits_mlp" in md
    assert "digits_mlp 4-bit" in accuracy.targets(report)
    assert accuracy.khot_config(build_model("digits_mlp", seed=0))["layers"]["fc1"]["weight"].startswith("khot<2,ap_fixed<8,")


def test_freeze_bn_stats_keeps_running_statistics(splits):
    model = _qmodel("digits_cnn")
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    train, _ = _loaders(splits, n=64)
    qtrain.fit(model, train, None, epochs=1, lr=1e-3, seed=0, freeze_bn_stats=True, progress=False)
    after = model.state_dict()
    assert before and all(torch.equal(v, after[k]) for k, v in before.items())
    assert model.get_submodule("block.conv1").weight.grad is not None  # it did train
