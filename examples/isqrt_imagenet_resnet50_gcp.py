"""iSQRT-COV setting: ResNet-50 with a global covariance pooling head on ImageNet.

Li, Xie, Wang, Gao. Towards Faster Training of Global Covariance Pooling Networks by
Iterative Matrix Square Root Normalization. CVPR 2018 (FORMULAS.md §1). Last stage at
stride 1 (224² input -> 14x14x2048), Pre-SVD layer = 1x1 conv 2048 -> 256 + BN + ReLU,
256x256 covariance, coupled Newton-Schulz square root with 5 iterations and trace
pre-normalisation / post-compensation, upper triangle (32,896 features), FC -> 1000.
The PyTorch re-run of the paper: SGD lr 0.1, momentum 0.9, weight decay 1e-4,
batch 160, 65 epochs, lr x0.1 at epochs 30/45/60; random-resized crop 224 + flip,
evaluation resize 256 + centre crop 224.

Exact command line (ImageNet in the torchvision ImageFolder layout, DIR/train/<wnid>/*.JPEG
and DIR/val/<wnid>/*.JPEG)::

    python examples/isqrt_imagenet_resnet50_gcp.py --data-dir /data/imagenet \\
        --treatment vanilla --seed 0 --out runs/isqrt-in1k-r50

which is the same as::

    orthocond train --task gcp --arch resnet50 --dataset imagefolder --data-dir /data/imagenet \\
        --epochs 65 --batch-size 160 --lr 0.1 --momentum 0.9 --weight-decay 1e-4 \\
        --schedule multistep --milestones 30,45,60 --gamma 0.1 --method ns --iters 5 \\
        --reduced-channels 256 --width 64 --workers 8 --seed 0 --out runs/isqrt-in1k-r50

--treatment nog+olr applies NOG and OLR to the 1x1 reduction conv (the GCP Pre-SVD layer);
--method eig --backward pade gives the SVD-Padé meta-layer of ICCV 2021. One GPU of the
H100 class trains this in days; add --resume to continue (checkpoint every epoch).
"""

from __future__ import annotations

import argparse
import json

from orthocond.train import TrainConfig, train

PAPER = dict(
    task="gcp", arch="resnet50", dataset="imagefolder", epochs=65, batch_size=160, lr=0.1,
    momentum=0.9, weight_decay=1e-4, schedule="multistep", milestones=(30, 45, 60), gamma=0.1,
    method="ns", iters=5, backward="exact", reduced_channels=256, width=64,
)  # fmt: skip


def config(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """Parse the command line into the paper's :class:`TrainConfig`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="ImageFolder root with train/ and val/")
    p.add_argument("--treatment", default="vanilla", help="e.g. vanilla, nog, nog+olr, hard")
    p.add_argument("--method", default="ns", choices=("eig", "ns", "mpa"))
    p.add_argument("--backward", default="exact", choices=("exact", "svd", "taylor", "pade"))
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--print-config", action="store_true", help="print the settings and exit")
    a = p.parse_args(argv)
    # the 5 Newton-Schulz iterations belong to ns; eig has none
    settings = dict(PAPER, method=a.method, backward=a.backward,
                    iters=PAPER["iters"] if a.method == "ns" else None)
    cfg = TrainConfig(**settings, data_dir=a.data_dir, treatment=a.treatment, seed=a.seed,
                      device=a.device, workers=a.workers)
    if cfg.ineffective_settings():  # the same check as `orthocond train`
        p.error("; ".join(cfg.ineffective_settings()))
    return cfg, a


def main(argv: list[str] | None = None) -> int:
    cfg, a = config(argv)
    if a.print_config:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    out = a.out or f"runs/isqrt-in1k-r50-{cfg.label.replace('+', '_')}-s{cfg.seed}"
    result = train(cfg, out=out, resume=a.resume, progress=True)
    best = result.best_acc
    print(f"{cfg.label}: best top-1 error {100 * (1 - best):.2f}%" if best is not None
          else f"{cfg.label}: failed ({result.reason})")
    return 1 if result.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
