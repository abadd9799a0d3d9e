"""Back-to-back tensors through a dense engine whose initiation interval (the input load floor)
is shorter than its pipeline depth: no output beat may be lost (expected codes from
qfx.reference, never from the hardware). The
loss was in the simulation sink (a beat in the cycle of the registered ``done`` went to the
previous tensor), not in the engines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qfx.export import export
from qfx.hw.accel import Accelerator
from qfx.hw.accel.folding import Folding
from qfx.manifest import load
from qfx.nn import QLinear
from qfx.reference import run
from qfx.sim.amaranth_run import run_accelerator


@pytest.mark.parametrize("fold", [
    (2, 1),  # ii 8 > 4 beats in / out: passes
    (2, 2),  # ii 4 == input beats == output beats: the sink must take a beat in done's cycle
    (1, 4),
])
def test_dense_4x4_folded_back_to_back(tmp_path, fold):
    torch.manual_seed(3)
    model = nn.Sequential(QLinear(4, 4, input="ap_fixed<8,3>", weight="ap_fixed<8,1>",
                    bias="ap_fixed<8,3>", output="ap_fixed<8,3,AP_RND,AP_SAT>"))
    x = torch.randn(6, 4)
    export(model, x, tmp_path / "m")
    man = load(tmp_path / "m")
    ref = run(man, x)
    xs, want = ref[man.input][:3], ref[man.output].reshape(len(x), -1)[:3]
    node = next(n for n in man if n.op == "dense")
    acc = Accelerator(man, folding={node.name: Folding(*fold)})
    est = acc.cycle_estimate()
    r = run_accelerator(acc, xs, back_to_back=True, max_cycles=20 * est["total"])
    assert np.array_equal(r.outputs, want)
    assert np.diff(r.done_at).tolist() == [est["ii"]] * 2
