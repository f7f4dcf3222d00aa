"""Quick start: condition the whitened covariance of a decorrelated-BN ResNet (CPU, ~1-2 min).

Trains the same small ResNet-18 from the same seed on the embedded MNIST digits with plain
SGD and with the recommended treatments of the Pre-SVD layer (the stem conv that feeds the
ZCA-whitening meta-layer), and prints the condition number κ of the covariance the whitening
layer receives, side by side:

- ``plug-ins`` (``nog-update+olr-update``): NOG on the step the optimizer actually applies
  (momentum and weight decay included; ``target="update"``, the step's length kept), then
  OLR scaling that step by the fraction that makes the weight most orthogonal
  (``mode="update"``) -- for any ``torch.optim`` optimizer and any Pre-SVD layer.
- ``soc``: the orthogonal SOC stem (``cifar_resnet18(stem="soc")``), the one treatment that
  lowers κ more than tenfold in our multi-seed study (README, "Which treatment to use").
- ``paper`` (``--paper``): the ECCV 2022 recipe (NOG on the gradient + OLR), which raises κ
  on this stem.

Run::

    python examples/quickstart.py               # vanilla, plug-ins, soc: 40 steps each
    python examples/quickstart.py --paper       # ... and the paper's NOG + OLR
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import torch
import torch.nn.functional as F

import optim
from orthocond.analysis import ConditionMonitor
from orthocond.data import load_dataset
from orthocond.models import cifar_resnet18
from orthocond.ortho import pre_svd_parameters


def make_optimizer(model: torch.nn.Module, treatment: str) -> torch.optim.Optimizer:
    """SGD with the Pre-SVD parameters in a param group of their own, plus the plug-ins."""
    pre = pre_svd_parameters(model)
    rest = [p for p in model.parameters() if all(p is not q for q in pre)]
    opt = torch.optim.SGD([{"params": pre}, {"params": rest}], lr=0.1, momentum=0.9,
                          weight_decay=5e-4)
    if treatment == "plug-ins":
        # the applied step -> its polar factor at the step's own length (register NOG first),
        # then alpha* in [0, 1] of that step: the most orthogonal weight on the segment
        optim.NOG(opt, pre, target="update", scale="grad")
        optim.OLR(opt, pre, mode="update")
    elif treatment == "paper":
        optim.NOG(opt, pre)  # gradient -> U V^T (the ECCV 2022 NOG)
        with warnings.catch_warnings():  # OLR's formula assumes plain SGD: it warns here
            warnings.simplefilter("ignore")
            optim.OLR(opt, pre)
    return opt


def train(treatment: str, steps: int, width: int, data) -> dict[str, float]:
    """``steps`` SGD steps from seed 0; returns the κ records and the training accuracy."""
    torch.manual_seed(0)
    stem = "soc" if treatment == "soc" else "conv"
    model = cifar_resnet18(10, in_channels=1, width=width, stem=stem)  # ZCA after the stem
    opt = make_optimizer(model, treatment)
    mon = ConditionMonitor(model, every=5)
    train_batches = data.train_batches(128, seed=0)  # on-device shuffling + random crops
    batches = iter(train_batches)
    curve, hits = [], []
    for _ in range(steps):
        try:
            x, y = next(batches)
        except StopIteration:  # next epoch
            batches = iter(train_batches)
            x, y = next(batches)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        rec = mon.step(loss=loss)  # after backward, before the optimizer step
        opt.step()
        hits.append(float((logits.argmax(1) == y).float().mean()))
        if rec is not None:
            curve.append(rec["cond/bn1"])
    s = mon.summary()["metrics"]["cond/bn1"]
    mon.close()
    # accuracy on the last 10 training batches, as the network saw them (a few dozen steps
    # are too few for the running statistics that a test-set evaluation would use)
    return {"curve": curve, "final": s["final"], "max": s["max"], "acc": sum(hits[-10:]) / len(hits[-10:])}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--paper", action="store_true", help="also run the paper's NOG + OLR")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # a model this small gains nothing from intra-op threads
    data = load_dataset("mnist")  # 4,000 / 1,000 real digits, no download

    t0 = time.perf_counter()
    names = ["vanilla", "plug-ins", "soc"] + (["paper"] if args.paper else [])
    runs = {name: train(name, args.steps, args.width, data) for name in names}
    print("step  " + "  ".join(f"{'log10 κ ' + n:>16}" for n in names))
    for k, row in enumerate(zip(*(runs[n]["curve"] for n in names))):
        print(f"{5 * k:4d}  " + "  ".join(f"{math.log10(v):16.2f}" for v in row))
    base = runs["vanilla"]["max"]
    for name, r in runs.items():
        print(f"{name:>8}: κ final {r['final']:.3g}, max {r['max']:.3g} "
              f"({r['max'] / base:.2f}x vanilla), accuracy on the last 10 batches {100 * r['acc']:.1f}%")
    print(f"{args.steps} steps each, {time.perf_counter() - t0:.0f} s")
    return runs


if __name__ == "__main__":
    main()
