"""Small float models for the 8x8 digits demo; convert them with :func:`qfx.convert`.

``digits_mlp``   Flatten -> Linear(64, 32) -> ReLU -> Linear(32, 10)
``digits_cnn``   conv-BN-ReLU stem, one residual block (conv-BN-ReLU-conv-BN, ``+`` skip,
                 ReLU), 2x2 max pooling, flatten, Linear(8*4*4, 10)
``digits_encoder`` a one-layer transformer encoder: the 64 pixels as 16 tokens of 4
                 (``reshape``), Linear(4, 32) embedding, 2-head self-attention
                 (``nn.MultiheadAttention``, converted as :mod:`qfx.attention`), ``+`` skip,
                 LayerNorm, feed-forward 32-64-32 with ReLU, ``+`` skip, LayerNorm, flatten,
                 Linear(16*32, 10)

Module names (what a config's ``layers:`` section uses):

- MLP: ``flatten``, ``fc1``, ``relu1``, ``fc2``
- CNN: ``conv1``, ``bn1``, ``relu1``, ``block.conv1``, ``block.bn1``, ``block.relu1``,
  ``block.conv2``, ``block.bn2``, ``add`` (the residual ``+``, named by torch.fx),
  ``block.relu2``, ``pool``, ``flatten``, ``fc``
- encoder: ``embed``, ``attn.heads.H.q`` / ``.k`` / ``.v`` / ``.o`` (H = 0, 1), ``ln1``, ``ff1``,
  ``ff2``, ``ln2``, ``fc``; the matmuls, softmaxes and adds are named by torch.fx
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["digits_mlp", "digits_cnn", "digits_encoder", "DigitsEncoder", "ResidualBlock", "MODELS", "build_model"]


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


class DigitsEncoder(nn.Module):
    """One transformer-encoder layer over the digits as a sequence (``[N, 64]`` inputs).

    Post-norm (as ``nn.TransformerEncoderLayer(norm_first=False)``), no dropout, no positional
    encoding: the final Linear over the flattened tokens sees each token's position.
    """

    def __init__(self, d_model: int = 32, heads: int = 2, tokens: int = 16, d_ff: int = 64, classes: int = 10) -> None:
        super().__init__()
        if 64 % tokens:
            raise ValueError(f"tokens must divide the 64 pixels, not {tokens!r}")
        self.tokens, self.d_token = tokens, 64 // tokens
        self.embed = nn.Linear(self.d_token, d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.ln1 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, d_ff)
        self.ff2 = nn.Linear(d_ff, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(tokens * d_model, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(-1, self.tokens, self.d_token))
        a, _ = self.attn(h, h, h)
        h = self.ln1(h + a)
        h = self.ln2(h + self.ff2(torch.relu(self.ff1(h))))
        return self.fc(torch.flatten(h, 1))


def digits_encoder(d_model: int = 32, heads: int = 2) -> DigitsEncoder:
    """The issue-14 encoder target: d=32, 2 heads, sequence 16 (``[N, 64]`` inputs)."""
    return DigitsEncoder(d_model, heads)


#: Demo model names -> (constructor, wants image-shaped inputs).
MODELS: dict[str, tuple[Callable[[], nn.Module], bool]] = {
    "digits_mlp": (digits_mlp, False),
    "digits_cnn": (digits_cnn, True),
    "digits_encoder": (digits_encoder, False),
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
