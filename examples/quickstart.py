"""Quick start: NOG + OLR on the Pre-SVD layer of a decorrelated-BN ResNet (CPU, < 1 minute).

Trains a small ResNet-18 whose stem conv (the Pre-SVD layer) feeds a ZCA-whitening
meta-layer, on the embedded MNIST digits, for a few steps; the optimizer is wrapped
with Nearest Orthogonal Gradient and Optimal Learning Rate, and a ConditionMonitor
prints the condition number of the covariance the whitening layer receives.

Run::

    python examples/quickstart.py                         # 30 steps
    python examples/quickstart.py --steps 60 --vanilla   # same, without NOG/OLR
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

import optim
from orthocond.analysis import ConditionMonitor
from orthocond.data import load_dataset
from orthocond.models import cifar_resnet18, pre_svd_parameters


def main(argv: list[str] | None = None) -> float:
    """Train a few steps; returns the final condition number."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--vanilla", action="store_true", help="plain SGD (no NOG, no OLR)")
    args = p.parse_args(argv)

    # A model this small gains nothing from intra-op threads (and they crawl on busy cores).
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = load_dataset("mnist")  # 4,000 / 1,000 real digits, no download
    model = cifar_resnet18(10, in_channels=1, width=args.width)  # ZCA after the stem conv

    # The Pre-SVD parameters get a param group of their own (OLR sets that group's lr).
    pre = pre_svd_parameters(model)
    rest = [p for p in model.parameters() if all(p is not q for q in pre)]
    opt = torch.optim.SGD([{"params": pre}, {"params": rest}], lr=0.1, momentum=0.9,
                          weight_decay=5e-4)
    if not args.vanilla:
        optim.NOG(opt, pre)  # Pre-SVD gradient -> nearest orthogonal matrix U V^T
        olr = optim.OLR(opt, pre)  # registered after NOG: sees the orthogonal gradient
    mon = ConditionMonitor(model, every=5)

    t0 = time.perf_counter()
    train = data.train_batches(128, seed=0)  # on-device shuffling + random crops
    batches = iter(train)
    for step in range(args.steps):
        try:
            x, y = next(batches)
        except StopIteration:  # next epoch
            batches = iter(train)
            x, y = next(batches)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        rec = mon.step(loss=loss)  # after backward, before the optimizer step
        opt.step()
        acc = float((logits.argmax(1) == y).float().mean())
        if rec is not None:
            extra = "" if args.vanilla else f"  Pre-SVD lr (OLR) {olr.last_lr[0]:.4f}"
            print(f"step {step:3d}  loss {rec['loss']:.3f}  "
                  f"log10 cond(Sigma) {math.log10(rec['cond/bn1']):.2f}  "
                  f"||WW^T - I||_F {rec['ortho_err/conv1']:.3f}{extra}")

    s = mon.summary()["metrics"]["cond/bn1"]
    print(f"{args.steps} steps in {time.perf_counter() - t0:.0f} s; cond(Sigma) of the whitening "
          f"input: first {s['first']:.3g}, final {s['final']:.3g}, max {s['max']:.3g}; "
          f"accuracy on the last batch {100 * acc:.1f}%")
    mon.close()
    return s["final"]


if __name__ == "__main__":
    main()
