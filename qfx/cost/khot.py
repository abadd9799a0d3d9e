"""K-hot versus the DSP design of the same model (issue 13, item 2).

For every dense / conv2d layer with K-hot weights, the *DSP twin* is the same layer with the
weights in the K-hot base's fixed-point format: the same codes (a K-hot code is a code of its
base), the same folding and accumulation, so the same bits; its products go to DSP48E2
multipliers (WP486-packed where the operands allow) instead of shift-adds. :func:`khot_versus_dsp`
puts the two side by side from the analytic model (:func:`~qfx.hw.accel.folding.folded_resources`,
:mod:`qfx.cost.energy`): DSPs saved, LUT per MAC unit, product energy per MAC. At full unroll the
K-hot layer is hard-wired (:mod:`hw.accel.khot_wired`); rolled, it uses barrel-shifter K-hot
multipliers reading a weight ROM. ``bench/khot_unroll.py`` gives the same comparison from Yosys.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from qfx.manifest import Manifest
from qfx.types import KHot

__all__ = ["dsp_twin", "khot_versus_dsp"]


def dsp_twin(manifest: Manifest) -> Manifest:
    """``manifest`` with every K-hot weight format replaced by its base fixed-point format."""
    nodes = []
    for n in manifest.nodes:
        w = n.formats.get("weight")
        nodes.append(dataclasses.replace(n, formats={**n.formats, "weight": w.base}) if isinstance(w, KHot) else n)
    return dataclasses.replace(manifest, nodes=tuple(nodes))


def khot_versus_dsp(manifest: Manifest, foldings: "Mapping[str, Any] | None" = None, *,
                    family: str = "xcup") -> "dict[str, Any] | None":
    """Per K-hot layer at its folding (default 1): the K-hot design and its DSP twin.

    Returns None when the manifest has no K-hot layer, else ``{"layers": {name: {"folding",
    "mac_units", "hardwired", "khot": {lut, ff, dsp, lut_per_mac, product_pj}, "dsp_twin":
    {...}, "dsp_saved", "product_energy_ratio"}}, "dsp_saved", "basis"}`` (analytic).
    """
    from qfx.hw.accel.folding import Folding, folded_resources
    from qfx.hw.accel.khot_wired import hardwired

    from .energy import hardwired_product_pj, mac_op_energy
    from .estimate import estimate

    names = [n.name for n in manifest if n.op in ("dense", "conv2d") and isinstance(n.formats.get("weight"), KHot)]
    if not names:
        return None
    twin = dsp_twin(manifest)
    base_k, base_d = estimate(manifest)["per_layer"], estimate(twin)["per_layer"]
    out: dict[str, Any] = {}
    for name in names:
        node, tnode = manifest.node(name), twin.node(name)
        f = (foldings or {}).get(name) or Folding()
        units = f.pe * f.simd
        x, w = node.formats["input"], node.formats["weight"]
        p = x * w.base
        s_bits = (node.formats["accum"] + p).width
        wired = hardwired(node, f)
        rows = {}
        for key, m, n, base in (("khot", manifest, node, base_k[name]), ("dsp_twin", twin, tnode, base_d[name])):
            r = folded_resources(m, n, f, base, family=family)
            if key == "khot":
                e = hardwired_product_pj(node) if wired else mac_op_energy(x, w, "exact", p, s_bits, dsp=False)["product_pj"]
            else:
                e = mac_op_energy(x, w.base, "exact", p, s_bits, dsp=r["dsp"] > 0)["product_pj"]
            rows[key] = {"lut": r["lut"], "ff": r["ff"], "dsp": r["dsp"], "lut_per_mac": round(r["lut"] / units, 2),
                         "product_pj": round(e, 4)}
        out[name] = {"folding": f.as_dict(), "mac_units": units, "hardwired": wired, **rows,
                     "dsp_saved": rows["dsp_twin"]["dsp"] - rows["khot"]["dsp"],
                     "product_energy_ratio": round(rows["dsp_twin"]["product_pj"] / rows["khot"]["product_pj"], 3)
                     if rows["khot"]["product_pj"] else None}
    return {"layers": out, "dsp_saved": sum(v["dsp_saved"] for v in out.values()),
            "basis": "analytic (qfx.hw.accel.folding.folded_resources, qfx.cost.energy); DSP twin = the same "
                     "layers with the K-hot base's fixed-point weights at the same folding"}
