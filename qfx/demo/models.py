"""Small float models for the 8x8 digits demo; convert them with :func:`qfx.convert`.

``digits_mlp``   Flatten -> Linear(64, 32) -> ReLU -> Linear(32, 10)
``digits_cnn``   conv-BN-ReLU stem, one residual block (conv-BN-ReLU-conv-BN, ``+`` skip,
                 ReLU), 2x2 max pooling, flatten, Linear(8*4*4, 10)

Module names (what a config's ``layers:`` section uses):

- MLP: ``flatten``, ``fc1``, ``relu1``, ``fc2``
- CNN: ``conv1``, ``bn1``, ``relu1``, ``block.conv1``, ``block.bn1``, ``block.relu1``,
  ``block.conv2``, ``block.bn2``, ``add`` (the residual ``+``, named by torch.fx),
  ``block.relu2``, ``pool``, ``flatten``, ``fc``
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["digits_mlp", "digits_cnn", "ResidualBlock", "MODELS", "build_model"]


def digits_mlp(hidden: int = 32) -> nn.Sequential:
    """64 - hidden - 10 perceptron for flat or ``[N, 1, 8, 8]`` digits."""
    from collections import OrderedDict

    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(64, hidden),
            relu1=nn.ReLU(),
            fc2=nn.Linear(hidden, 10),
        )
    )


class ResidualBlock(nn.Module):
    """``relu2(x + bn2(conv2(relu1(bn1(conv1(x))))))``, channels preserved."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(x + y)


class DigitsCNN(nn.Module):
    """Stem conv-BN-ReLU, one residual block, 2x2 max pool, dense classifier (8x8 inputs)."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.block = ResidualBlock(channels)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.block(x)
        return self.fc(self.flatten(self.pool(x)))


def digits_cnn(channels: int = 8) -> DigitsCNN:
    """The demo CNN (``[N, 1, 8, 8]`` inputs)."""
    return DigitsCNN(channels)


#: Demo model names -> (constructor, wants image-shaped inputs).
MODELS: dict[str, tuple[Callable[[], nn.Module], bool]] = {
    "digits_mlp": (digits_mlp, False),
    "digits_cnn": (digits_cnn, True),
}


def build_model(name: str, seed: int | None = None) -> nn.Module:
    """A fresh float demo model by name (initialised under ``torch.manual_seed(seed)`` if given)."""
    if name not in MODELS:
        import difflib

        close = difflib.get_close_matches(str(name), MODELS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown demo model {name!r}{hint}; available: {', '.join(MODELS)}")
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return MODELS[name][0]()
    return MODELS[name][0]()
