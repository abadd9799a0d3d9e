"""The folding contract and the automatic planner (hw/accel/folding.py): valid and invalid
foldings with their messages, the planner's board caps, balance, targets and determinism.

Expected cycle counts come from the definition (O/pe * P * K/simd, the stream beats) and the
board limits from boards/*.yaml via qfx.boards.check_fit, never from the planner itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from torch import nn

from qfx.boards import check_fit, get_board
from qfx.export import export
from qfx.hw.accel.engines import engine_cycles
from qfx.hw.accel.folding import (Folding, FoldingError, check_folding, folded_cycles, parse_foldings, plan,
                                  valid_pe, valid_simd)
from qfx.manifest import load
from qfx.nn import QLinear, QReLU
from tests.qmodels import MODELS, B, W, X, Y, init_weights, model_inputs


def _export(tmp_path_factory, name: str) -> "object":
    make, shape, scale, _ = MODELS[name]
    d = tmp_path_factory.mktemp("fold") / name
    export(make(), model_inputs(shape, scale, 1), d)
    return load(d)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    return _export(tmp_path_factory, "cnn")


@pytest.fixture(scope="module")
def residual(tmp_path_factory):
    return _export(tmp_path_factory, "residual")


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    # 256 x 256 8-bit dense: one DSP48 per product unit; reaching its stream floor (256 load beats)
    # needs 256 product units, over PYNQ-Z2's 176 safe DSPs but inside the Ultra96's 288
    model = init_weights(nn.Sequential(QLinear(256, 256, input=X, weight=W, bias=B, output=Y), QReLU(output=Y)), 5)
    d = tmp_path_factory.mktemp("fold") / "wide"
    export(model, model_inputs((256,), 1.0, 2)[:4], d)
    return load(d)


def _macs(m):
    return [n for n in m if n.op in ("dense", "conv2d")]


def test_valid_values_and_messages(cnn):
    conv = _macs(cnn)[0]  # conv 2 -> 4 channels, 3x3: K = 18
    assert valid_pe(conv) == [1, 2, 4]
    assert valid_simd(conv) == [1, 2, 3, 6, 9, 18]
    assert check_folding(conv, Folding(2, 9)) == Folding(2, 9)
    with pytest.raises(FoldingError, match=r"pe=3 does not divide its 4 output channels; valid pe: 1, 2, 4"):
        check_folding(conv, Folding(3, 1))
    with pytest.raises(FoldingError, match=r"simd=4 does not divide its 18 terms.*valid simd: 1, 2, 3, 6, 9, 18"):
        check_folding(conv, Folding(1, 4))
    with pytest.raises(ValueError, match=">= 1"):
        Folding(0, 1)
    with pytest.raises(TypeError):
        Folding(1.5, 1)  # type: ignore[arg-type]


def test_folded_cycles_follow_the_definition(cnn):
    conv = _macs(cnn)[0]
    o, ho, wo = conv.output_shape
    assert folded_cycles(conv, Folding(2, 9)) == {"load": math.prod(conv.input_shapes[0]),
                                                  "compute": (o // 2) * ho * wo * (18 // 9),
                                                  "outputs": o * ho * wo}
    assert folded_cycles(conv) == engine_cycles(conv)  # folding 1 is today's engine


def test_parse_foldings_errors(cnn):
    nodes = {n.name: n for n in cnn}
    conv = _macs(cnn)[0].name
    assert parse_foldings(nodes, {conv: {"pe": 2}}) == {conv: Folding(2, 1)}
    with pytest.raises(FoldingError, match="does not have; its dense/conv2d layers"):
        parse_foldings(nodes, {"nope": {"pe": 1}})
    with pytest.raises(FoldingError, match="mapping with keys pe and/or simd"):
        parse_foldings(nodes, {conv: {"pe": 1, "lanes": 2}})
    with pytest.raises(FoldingError, match="valid pe"):
        parse_foldings(nodes, {conv: {"pe": 3}})


def _fits(p) -> bool:
    return not check_fit(get_board(p.board), p.resources)


@pytest.mark.parametrize("board", ["ultra96", "pynq-z2"])
def test_plan_respects_the_board_caps(wide, board):
    p = plan(wide, board)
    assert _fits(p)
    fc = _macs(wide)[0]
    assert p.ii == max(folded_cycles(fc, p.foldings[fc.name]).values())
    if board == "pynq-z2":
        # the stream floor (256) needs 256 DSPs, over the 176 safe: stopped by the DSP cap
        assert p.ii > 256 and "DSP" in p.limit
        assert p.resources["dsp"] <= get_board(board).safe_limit("dsp")
    else:
        assert p.ii == 256 and "stream floor" in p.limit


def test_plan_is_balanced(residual, wide):
    """No single valid step of any layer's folding lowers the II inside the caps."""
    for m in (residual, wide):
        for board in ("ultra96", "pynq-z2"):
            p = plan(m, board)
            for node in _macs(m):
                f = p.foldings[node.name]
                for g in ([Folding(f.pe, s) for s in valid_simd(node) if s > f.simd][:1]
                          + [Folding(pe, f.simd) for pe in valid_pe(node) if pe > f.pe][:1]):
                    try:
                        q = plan(m, board, overrides={**p.foldings, node.name: g}, target_ii=10 ** 9)
                    except FoldingError as err:  # the step does not fit the board
                        assert "does not fit" in str(err)
                        continue
                    assert q.ii >= p.ii, (node.name, g)


def test_non_mac_floor(cnn):
    p = plan(cnn, "ultra96")
    floor = max(max(engine_cycles(n).values()) for n in cnn if n.op not in ("input", "flatten", "output", "dense",
                                                                              "conv2d"))
    assert p.ii == floor and p.limit.startswith("non-MAC floor")
    assert p.ii < plan(cnn, "ultra96", target_ii=10 ** 9).ii


def test_targets(wide):
    base = plan(wide, "ultra96", target_ii=10 ** 9)
    assert base.ii == 256 * 256 and all(f == Folding() for f in base.foldings.values())
    p = plan(wide, "ultra96", target_ii=4096)
    assert p.ii <= 4096 and p.resources["dsp"] <= plan(wide, "ultra96").resources["dsp"]
    # the smallest step meeting it: one step less does not
    q = plan(wide, "ultra96", fps=100e6 / 4096, clock_mhz=100.0)
    assert q.foldings == p.foldings
    with pytest.raises(FoldingError, match=r"II 100 cycles is not reachable on ultra96: the best reachable II is 256 "
                                           r"cycles .*stream floor"):
        plan(wide, "ultra96", target_ii=100)
    with pytest.raises(FoldingError, match=r"inferences/s .* not reachable on pynq-z2.*best reachable II.*DSP"):
        plan(wide, "pynq-z2", fps=1e6, clock_mhz=100.0)
    with pytest.raises(FoldingError, match="not both"):
        plan(wide, "ultra96", target_ii=10, fps=10.0)
    with pytest.raises(FoldingError, match="int >= 1"):
        plan(wide, "ultra96", target_ii=0)


def test_overrides_are_kept_and_checked(residual):
    p = plan(residual, "ultra96", overrides={"stem": Folding(2, 1)})
    assert p.foldings["stem"] == Folding(2, 1)
    with pytest.raises(FoldingError, match="not a dense/conv2d layer"):
        plan(residual, "ultra96", overrides={"bn": Folding()})
    with pytest.raises(FoldingError, match="valid pe"):
        plan(residual, "ultra96", overrides={"stem": Folding(3, 1)})


def test_plan_is_deterministic(residual):
    assert plan(residual, "ultra96").as_dict() == plan(residual, "ultra96").as_dict()
