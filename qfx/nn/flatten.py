"""QFlatten: a reshape (no arithmetic, no formats)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .config import ConfigLike, as_config

__all__ = ["QFlatten"]


class QFlatten(nn.Flatten):
    """:class:`torch.nn.Flatten` in a quantized model: values pass unchanged.

    Parameters
    ----------
    start_dim, end_dim
        As for :class:`torch.nn.Flatten`.
    config, **overrides
        Accepted (and validated) for a uniform constructor; no key is used.
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1, *, config: ConfigLike = None, **overrides: Any) -> None:
        as_config(config, **overrides)
        super().__init__(start_dim, end_dim)
