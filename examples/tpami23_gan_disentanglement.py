"""TPAMI 2023 latent-disentanglement setting: a DCGAN on CelebA faces with NOG on the first layer.

Song, Sebe, Wang. Orthogonal SVD Covariance Conditioning and Latent Disentanglement. IEEE
TPAMI 45(7), 2023. In a DCGAN generator (latent dim 30), NOG acts on the first
ConvTranspose2d, whose weight (30, C, 4, 4) is the matrix (30, C·16): row i is everything
latent dimension i writes, and NOG makes those rows orthonormal. Adam, lr 2e-4, β1 0.5,
batch 64. Baselines: the Hessian Penalty (``--treatment hessian``) and vanilla; the other
treatments of ``orthocond compare --tasks gan`` work here too (nog-update, olr, ...).

Data: nothing is downloaded. Put the aligned CelebA images (img_align_celeba/*.jpg) in any
sub-folder of ``--data-dir`` (torchvision ImageFolder layout, e.g. ``~/data/celeba/faces/``);
each image is centre-cropped to 178x178 (the face) and resized to ``--image-size`` (64 or
128). The last 2 % of the files are held out.

Exact command line (the paper's NOG row)::

    python examples/tpami23_gan_disentanglement.py --data-dir ~/data/celeba --image-size 64 \\
        --treatment nog --epochs 30 --seed 0 --out runs/tpami23-celeba64-nog

which trains with::

    TrainConfig(task="gan", arch="dcgan", dataset="imagefolder", data_dir=..., latent_dim=30,
                width=64, epochs=30, batch_size=64, lr=2e-4, beta1=0.5, augment=False,
                treatment="nog", seed=0)

through the library's trainer (checkpoint.pt every epoch, --resume, TensorBoard under tb/,
traversal.png at the end; VP, κ and the orthogonality error of the first layer in
summary.json; FID and PPL need an Inception network, which this library does not ship,
so they are reported for the 28x28 digits only). The number of epochs of the paper's runs
is unconfirmed. About 3,100 steps per epoch at 64 px: use a GPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PAPER = dict(
    task="gan", arch="dcgan", dataset="imagefolder", latent_dim=30, width=64, epochs=30,
    batch_size=64, lr=2e-4, beta1=0.5, augment=False,
)  # fmt: skip


def load_faces(data_dir: str, image_size: int, held_out: float = 0.02):
    """CelebA (or any image folder) as :class:`~orthocond.data.DataSplits`, pixels
    normalised by mean 0.5 / std 0.5 (the GAN task maps them back to [0, 1])."""
    import torch
    import torchvision
    from torchvision import transforms as T

    from orthocond.data import DataSplits

    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise SystemExit(f"--data-dir {str(root)!r} is not a folder (see this file's docstring)")
    tf = T.Compose([
        T.CenterCrop(178), T.Resize(image_size), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3),
    ])  # fmt: skip
    images = torchvision.datasets.ImageFolder(str(root), transform=tf)
    n_test = max(1, int(len(images) * held_out))
    idx = torch.arange(len(images))
    return DataSplits(
        name="imagefolder",
        train=torch.utils.data.Subset(images, idx[:-n_test].tolist()),
        test=torch.utils.data.Subset(images, idx[-n_test:].tolist()),
        num_classes=len(images.classes), in_channels=3, image_size=image_size,
        mean=(0.5,) * 3, std=(0.5,) * 3, num_workers=4,
    )  # fmt: skip


def config(argv: list[str] | None = None):
    """Parse the command line into the paper's :class:`~orthocond.train.TrainConfig`."""
    from orthocond.train import TrainConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder with a sub-folder of face images")
    p.add_argument("--image-size", type=int, default=64, choices=(64, 128))
    p.add_argument("--treatment", default="nog", help="e.g. vanilla, hessian, nog, nog-update+olr")
    p.add_argument("--epochs", type=int, default=PAPER["epochs"])
    p.add_argument("--lr", type=float, default=PAPER["lr"], help="2e-4 (the paper: 1e-4 to 2e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--print-config", action="store_true", help="print the settings and exit")
    a = p.parse_args(argv)
    settings = dict(PAPER, epochs=a.epochs, lr=a.lr)
    cfg = TrainConfig(**settings, data_dir=a.data_dir, treatment=a.treatment, seed=a.seed,
                      device=a.device)
    return cfg, a


def main(argv: list[str] | None = None) -> None:
    cfg, a = config(argv)
    if a.print_config:
        print(json.dumps(dict(cfg.to_dict(), image_size=a.image_size), indent=1))
        return
    from orthocond.train import train

    out = a.out or f"runs/tpami23-celeba{a.image_size}-{cfg.label.replace('+', '_')}"
    result = train(cfg, data=load_faces(a.data_dir, a.image_size), out=out, resume=a.resume,
                   progress=True)
    print(json.dumps({"treatment": result.label, "failed": result.failed, **result.metrics},
                     indent=1))


if __name__ == "__main__":
    main()
