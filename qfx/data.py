"""Data sets for the demos and tests: scikit-learn's bundled 8x8 digits (no download).

:func:`digits_splits` gives a fixed train / validation / test split of the
1797 images of :func:`sklearn.datasets.load_digits`, stratified by class and
determined by ``split_seed`` alone (the training seed does not move it, so
runs with different training seeds are evaluated on the same held-out test
images). Pixels are scaled from 0..16 to [0, 1].

Any ``torch.utils.data.Dataset`` yielding ``(x, label)`` works with
:mod:`qfx.train`; these helpers only make the demos self-contained.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["DigitsSplits", "digits_splits", "digits_loaders", "DATASETS"]

#: Data set names the CLI accepts.
DATASETS = ("digits",)


@dataclass(frozen=True)
class DigitsSplits:
    """The three splits as TensorDatasets of ``(x float32, label int64)``.

    ``x`` has shape ``[N, 1, 8, 8]`` (``image=True``) or ``[N, 64]``.
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset

    @property
    def sizes(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("train", "val", "test")}


def digits_splits(
    split_seed: int = 0,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    image: bool = True,
) -> DigitsSplits:
    """Fixed stratified split of ``load_digits`` into train / val / test, pixels in [0, 1].

    Parameters
    ----------
    split_seed : int
        Determines the split (same seed, same split, on every machine).
    val_fraction, test_fraction : float
        Fractions of all 1797 images (defaults: 15 % validation, 20 % test).
    image : bool
        ``[N, 1, 8, 8]`` images (for CNNs) or flat ``[N, 64]`` vectors.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in (0, 1) "
            "with a sum below 1"
        )
    bunch = load_digits()
    x = (bunch.data.astype(np.float32) / 16.0)
    y = bunch.target.astype(np.int64)
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=test_fraction, random_state=split_seed, stratify=y)
    train, val = train_test_split(
        rest, test_size=val_fraction / (1 - test_fraction), random_state=split_seed + 1, stratify=y[rest]
    )
    shape = (-1, 1, 8, 8) if image else (-1, 64)

    def ds(i: np.ndarray) -> TensorDataset:
        i = np.sort(i)
        return TensorDataset(torch.from_numpy(x[i].reshape(shape)).contiguous(), torch.from_numpy(y[i]))

    return DigitsSplits(ds(train), ds(val), ds(test))


def digits_loaders(
    batch_size: int = 64,
    *,
    seed: int = 0,
    split_seed: int = 0,
    image: bool = True,
    **split_kw,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """``(train, val, test)`` loaders; the training loader shuffles with its own generator seeded by ``seed``."""
    s = digits_splits(split_seed, image=image, **split_kw)
    g = torch.Generator().manual_seed(int(seed))
    train = DataLoader(s.train, batch_size=batch_size, shuffle=True, generator=g)
    val = DataLoader(s.val, batch_size=512)
    test = DataLoader(s.test, batch_size=512)
    return train, val, test
