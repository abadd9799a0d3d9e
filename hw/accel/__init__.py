"""The whole-network accelerator generated from a manifest.

* :class:`Accelerator` -- the top: engines chained as the manifest's graph, AXI4-Stream
  input and output, start/done/busy control.
* :mod:`.engines` -- one engine per layer kind (MAC, pool, add, element-wise).
* :class:`EngineError` -- a node the accelerator cannot build (names the node and why).
"""

from .engines import EngineError
from .resources import estimate_resources
from .top import SUPPORTED_OPS, Accelerator, axis_width

__all__ = ["Accelerator", "EngineError", "SUPPORTED_OPS", "axis_width", "estimate_resources"]
