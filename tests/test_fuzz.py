"""Fuzzing of the text entry points: format spellings, run configs, manifests, qfx-gen.

Property: whatever the input, the entry point either accepts it (and then behaves: a parsed format
round-trips through its spelling) or refuses it with the documented error type (``ValueError`` /
``ManifestError`` / ``CliError``, exit status 2 for the commands) -- never an unrelated exception
(``KeyError``, ``IndexError``, ``AttributeError``, a traceback).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qfx.cli import CliError, load_run_config
from qfx.gen import main as qfx_gen
from qfx.manifest import ManifestError, load
from qfx.types import parse_type

VALID_SPELLINGS = [
    "ap_fixed<8,3,AP_RND_CONV,AP_SAT>", "ap_ufixed<6,-2,AP_TRN_ZERO,AP_WRAP>", "ap_int<12>", "ap_uint<1>",
    "ap_fixed<16,20,AP_RND_MIN_INF,AP_WRAP_SM>", "fp8_e4m3fn", "fp8_e5m2", "fp4_e2m1fn",
    "khot<2,ap_fixed<8,1>>", "fp8_e4m3fn<saturate=true>",
]
ALPHABET = "ap_fixedunsigkhotmE0123456789<>,=-_ AP_RNDSATWRPZOCVMINF"


def _mutate(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        pos = rng.randrange(len(chars) + 1)
        if op < 0.4 and chars:
            del chars[min(pos, len(chars) - 1)]
        elif op < 0.8:
            chars.insert(pos, rng.choice(ALPHABET))
        elif chars:
            chars[min(pos, len(chars) - 1)] = rng.choice(ALPHABET)
    return "".join(chars)


def _check_spelling(text: str) -> None:
    try:
        fmt = parse_type(text)
    except ValueError:
        return
    assert parse_type(str(fmt)) == fmt, f"{text!r} parsed to {fmt}, which does not round-trip"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=40))
def test_parse_type_random_text(text):
    _check_spelling(text)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID_SPELLINGS), st.integers(0, 2**32))
def test_parse_type_mutated_spellings(spelling, seed):
    _check_spelling(_mutate(spelling, random.Random(seed)))


def test_parse_type_rejects_non_strings_with_type_error():
    for bad in (None, 8, 3.5, b"ap_int<8>", ["ap_int<8>"]):
        with pytest.raises((TypeError, ValueError)):
            parse_type(bad)


# ---------------------------------------------------------------------------
# Run configs (qfx train)
# ---------------------------------------------------------------------------

CONFIG = {
    "model": "digits_cnn",
    "data": {"name": "digits", "batch_size": 64, "split_seed": 0},
    "train": {"seed": 0, "float_epochs": 2, "epochs": 1, "lr": 0.001, "optimizer": "adam"},
    "quant": {"default": {"input": "ap_fixed<8,3,AP_RND,AP_SAT>", "weight": "ap_fixed<8,1,AP_RND_CONV,AP_SAT>",
                          "accum": "auto", "output": "ap_fixed<8,3,AP_RND,AP_SAT>"}},
}
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.lists(st.integers(), max_size=3),
                    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


def _paths(d, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from _paths(v, prefix + (k,))


PATHS = list(_paths(CONFIG))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(PATHS), _VALUES, st.booleans())
def test_run_config_fuzz(path, value, delete):
    import copy

    cfg = copy.deepcopy(CONFIG)
    node = cfg
    for k in path[:-1]:
        node = node[k]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    try:
        load_run_config(cfg)
    except (CliError, ValueError):
        pass


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_run_config_file_garbage(tmp_path, blob):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(blob)
    try:
        load_run_config(path)
    except (CliError, ValueError):
        pass


# ---------------------------------------------------------------------------
# Manifests (qfx.manifest.load and qfx-gen)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    from qfx.export import export
    from tests.qmodels import MODELS, model_inputs

    make, shape, scale, _ = MODELS["residual"]
    d = tmp_path_factory.mktemp("fuzz") / "m"
    export(make(), model_inputs(shape, scale, 3)[:4], d)
    return d


def _mutate_manifest(text: str, rng: random.Random) -> str:
    data = yaml.safe_load(text)
    for _ in range(rng.randint(1, 3)):
        node = rng.choice(data["nodes"])
        section = rng.choice(["params", "formats", "inputs", "input_shapes", "output_shape", "name", "op", "arrays"])
        choice = rng.random()
        if section in ("params", "formats", "arrays") and isinstance(node.get(section), dict) and node[section]:
            key = rng.choice(sorted(node[section]))
            if choice < 0.3:
                del node[section][key]
            else:
                node[section][key] = rng.choice([None, -1, 0, 3, 2**40, "x", "ap_fixed<8,3>", "fp8_e4m3fn",
                                                 [1, 2], {"a": 1}, "khot<9,ap_int<4>>", True])
        elif choice < 0.2:
            node.pop(section, None)
        else:
            node[section] = rng.choice([None, [], [[1]], "x", 7, ["nope"], [2, 6, 6], "conv2d", "relu", {"a": 1}])
    if rng.random() < 0.2:
        data[rng.choice(["version", "input", "output", "tensors", "schema"])] = rng.choice([None, 2, "zz", []])
    return yaml.safe_dump(data, sort_keys=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32))
def test_mutated_manifests_load_or_fail_cleanly(exported, tmp_path_factory, seed):
    d = tmp_path_factory.mktemp("mut")
    shutil.copy(exported / "tensors.npz", d / "tensors.npz")
    (d / "manifest.yaml").write_text(_mutate_manifest((exported / "manifest.yaml").read_text(), random.Random(seed)))
    try:
        load(d)
    except ManifestError:
        pass


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32))
def test_qfx_gen_on_mutated_manifests_exits_0_or_2(exported, tmp_path_factory, seed, capsys):
    d = tmp_path_factory.mktemp("gen")
    shutil.copy(exported / "tensors.npz", d / "tensors.npz")
    (d / "manifest.yaml").write_text(_mutate_manifest((exported / "manifest.yaml").read_text(), random.Random(seed)))
    out = d / "out"
    rc = qfx_gen([str(d), "-o", str(out), "--target", "rtl"])
    assert rc in (0, 2)
    if rc == 2:
        assert capsys.readouterr().err.startswith("qfx-gen: error:")
        assert not out.exists()
