"""Train/test splits: :class:`DataSplits` (what a model and the input pipeline need to know)
and stratified sampling."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from .batches import LoaderBatches, TensorBatches

__all__ = ["DataSplits", "stratified_split", "stratified_subset"]


def stratified_split(
    labels: Union[np.ndarray, Tensor], n_test: int, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split of sample indices into train and test.

    Each class c with n_c samples gives ``round(n_c * n_test / N)`` test samples
    (largest-remainder rounding so the test set has exactly ``n_test`` indices);
    the rest are training samples. Both index arrays are returned in a random
    (seeded) order so that any prefix is roughly class-balanced.

    Args:
        labels (ndarray[N] or Tensor[N]): integer class labels.
        n_test (int): size of the test split, ``0 <= n_test <= N``.
        seed (int): seed of the NumPy generator. Default 0.

    Returns:
        (train_idx, test_idx): int64 arrays partitioning ``range(N)``.

    Example::

        >>> tr, te = stratified_split(np.repeat(np.arange(10), 500), 1000)
        >>> len(tr), len(te), np.bincount(np.repeat(np.arange(10), 500)[te]).tolist()[:3]
        (4000, 1000, [100, 100, 100])
    """
    y = _as_label_array(labels)
    n = y.shape[0]
    if not isinstance(n_test, (int, np.integer)) or isinstance(n_test, bool):
        raise TypeError(f"n_test must be an int, got {type(n_test).__name__}")
    if not 0 <= n_test <= n:
        raise ValueError(f"n_test must be in [0, {n}] (the number of samples), got {n_test}")
    test = _stratified_pick(y, int(n_test), np.random.default_rng(seed))
    mask = np.ones(n, dtype=bool)
    mask[test] = False
    train = np.flatnonzero(mask)
    train = train[np.random.default_rng(seed + 1).permutation(train.shape[0])]
    return train.astype(np.int64), test.astype(np.int64)


def stratified_subset(
    labels: Union[np.ndarray, Tensor], n_select: int, *, seed: int = 0
) -> np.ndarray:
    """Indices of a deterministic, class-stratified subset of ``n_select`` samples.

    Args:
        labels (ndarray[N] or Tensor[N]): integer class labels.
        n_select (int): subset size, ``0 <= n_select <= N``.
        seed (int): seed of the NumPy generator. Default 0.

    Returns:
        ndarray[n_select] of int64 indices, in a random (seeded) order.

    Example::

        >>> idx = stratified_subset(np.repeat(np.arange(10), 500), 256)
        >>> len(idx)
        256
    """
    y = _as_label_array(labels)
    if not isinstance(n_select, (int, np.integer)) or isinstance(n_select, bool):
        raise TypeError(f"n_select must be an int, got {type(n_select).__name__}")
    if not 0 <= n_select <= y.shape[0]:
        raise ValueError(f"n_select must be in [0, {y.shape[0]}], got {n_select}")
    return _stratified_pick(y, int(n_select), np.random.default_rng(seed)).astype(np.int64)


def _as_label_array(labels: Union[np.ndarray, Tensor]) -> np.ndarray:
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional (N,), got shape {tuple(y.shape)}")
    if y.shape[0] and not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {y.dtype}")
    return y


def _stratified_pick(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    n = y.shape[0]
    if k == 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * (k / n)
    take = np.floor(quota).astype(np.int64)
    rest = k - int(take.sum())
    if rest > 0:  # largest remainder, ties broken by class order
        order = np.argsort(-(quota - take), kind="stable")
        take[order[:rest]] += 1
    picked = []
    for c, t in zip(classes, take):  # loop over classes, not samples
        idx = np.flatnonzero(y == c)
        picked.append(idx[rng.permutation(idx.shape[0])[:t]])
    out = np.concatenate(picked)
    return out[rng.permutation(out.shape[0])]



@dataclass
class DataSplits:
    """A train/test pair plus what a model and the input pipeline need to know.

    For tensor datasets ``train``/``test`` are ``(images uint8 Tensor[N, C, H, W],
    labels int64 Tensor[N])`` pairs; for file-backed ones they are torchvision
    datasets. ``padding``/``flip`` are the default training augmentation.
    """

    name: str
    train: Any
    test: Any
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    padding: int = 0
    flip: bool = False
    classes: list[str] | None = None
    num_workers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_tensor(self) -> bool:
        """True when the splits are in-memory tensors (served by :class:`TensorBatches`)."""
        return isinstance(self.train, tuple)

    @property
    def num_train(self) -> int:
        return int(self.train[0].shape[0]) if self.is_tensor else len(self.train)

    @property
    def num_test(self) -> int:
        return int(self.test[0].shape[0]) if self.is_tensor else len(self.test)

    def train_batches(
        self,
        batch_size: int,
        *,
        device: Union[str, torch.device] = "cpu",
        seed: int = 0,
        augment: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> Union[TensorBatches, LoaderBatches]:
        """Shuffled (and, with ``augment``, augmented) training batches. With ``rank`` and
        ``world_size`` every epoch draws the same global batches on every rank and yields
        the rank's :func:`~orthocond.data.rank_slice` of each (a file-backed loader reads
        only that slice)."""
        if self.is_tensor:
            return TensorBatches(
                self.train[0],
                self.train[1],
                batch_size,
                device=device,
                shuffle=True,
                padding=self.padding if augment else 0,
                flip=self.flip if augment else False,
                mean=self.mean,
                std=self.std,
                seed=seed,
                rank=rank,
                world_size=world_size,
            )
        return LoaderBatches(
            self.train, batch_size, device=device, shuffle=True,
            num_workers=self.num_workers, seed=seed, rank=rank, world_size=world_size,
        )

    def test_batches(
        self, batch_size: int, *, device: Union[str, torch.device] = "cpu"
    ) -> Union[TensorBatches, LoaderBatches]:
        """Test batches in a fixed order, no augmentation."""
        if self.is_tensor:
            return TensorBatches(
                self.test[0], self.test[1], batch_size, device=device, shuffle=False,
                mean=self.mean, std=self.std,
            )
        return LoaderBatches(
            self.test, batch_size, device=device, shuffle=False, num_workers=self.num_workers
        )


