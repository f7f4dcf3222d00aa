"""Device-resident batches of tensor datasets, DataLoader batches of file-backed ones, and
the one per-rank slicing of a global batch that distributed training uses."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Union

import torch
from torch import Tensor

from orthocond._checks import check_int

__all__ = ["LoaderBatches", "TensorBatches", "random_crop_flip", "rank_slice"]


def rank_slice(batch: Tensor, rank: int, world_size: int) -> Tensor:
    """The part of a global ``batch`` (split along dim 0) that process ``rank`` of
    ``world_size`` trains on: ``batch.tensor_split(world_size)[rank]``. Every rank draws the
    same global batch, so the slices partition it."""
    return batch if world_size == 1 else batch.tensor_split(world_size)[rank]


def _check_rank(rank: Any, world_size: Any) -> None:
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int)
            and 0 <= rank < world_size):
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")


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
        rank, world_size (int): this process's rank and the number of ranks (default 0, 1).
            Every rank draws and augments the same global batch and yields its
            :func:`rank_slice`; global batches with fewer samples than ranks are skipped on
            every rank alike.

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
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check_rank(rank, world_size)
        if not isinstance(x, Tensor) or x.ndim != 4:
            raise ValueError("x must be a Tensor of shape (N, C, H, W)")
        if not isinstance(y, Tensor) or y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"y must be a 1-D Tensor with one label per image ({x.shape[0]}), got "
                f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}"
            )
        check_int(batch_size, "batch_size")
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
        self.rank, self.world_size = rank, world_size
        self.per_rank = world_size > 1

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
            xb, yb = self._prepare(self.x[idx]), self.y[idx]
            if self.per_rank:
                if yb.shape[0] < self.world_size:  # same global batch on every rank: all skip
                    continue
                xb, yb = rank_slice(xb, self.rank, self.world_size), rank_slice(yb, self.rank, self.world_size)
            yield xb, yb

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
                yield rank_slice(batch, self.rank, self.world_size).tolist()


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
        check_int(batch_size, "batch_size")
        _check_rank(rank, world_size)
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
