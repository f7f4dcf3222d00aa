"""What the :class:`~orthocond.train.Trainer` delegates to its task: the loss of a batch and
the evaluation. One training loop serves every task:

- :class:`ClassifierTask` (``dbn``, ``gcp``): cross-entropy plus the orthogonality penalty of
  ``cfg.ortho``; test loss and accuracy each epoch.
- :class:`~orthocond.train.gan.GanTask` (``gan``): a discriminator step, then the
  generator's loss plus the treatment's penalty; FID each epoch and FID, PPL, VP, κ and the
  orthogonality error at the end.

A task offers ``loss(net, x, y, epoch) -> (loss, loss to backpropagate, sums)`` (``sums``:
per-batch totals the trainer averages over the epoch's samples), ``evaluate()``,
``final_metrics()``, ``describe(stats)``, ``write_outputs(out)``, ``state_dict()`` and
``load_state_dict(state)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orthocond import ortho
from orthocond.analysis import evaluate_classifier
from orthocond.data import DataSplits

from .config import TrainConfig
from .gan import (
    GAN_DEFAULT_TREATMENTS,
    GanTask,
    aggregate_gan,
    format_gan_table,
    parse_gan_treatment,
)
from .result import RunResult, aggregate, format_number, format_table
from .treatments import DEFAULT_TREATMENTS, PENALTY_COEFFICIENT, parse_treatment

__all__ = ["ClassifierTask", "TaskKind", "build_task", "task_kind"]


@dataclass(frozen=True)
class TaskKind:
    """What ``compare`` needs to know of a task's runs: its default treatments and their
    parser, how its runs aggregate into a table and read in one line, and whether its runs
    leave latent traversals (GAN) rather than condition/accuracy curves to plot. ``run_line``
    is the part of the one-line report after ``"<treatment> seed <s>: "``."""

    default_treatments: tuple[str, ...]
    parse_treatment: Callable[[str], Any]
    aggregate: Callable[[Sequence[RunResult]], list[dict[str, Any]]]
    format_table: Callable[[Sequence[dict[str, Any]]], str]
    run_line: Callable[[RunResult], str]
    traversals: bool = False


def _classifier_line(res: RunResult) -> str:
    acc = "failed" if res.failed else f"acc {100 * (res.final_acc or 0):.2f}%"
    return (f"{acc}, κ final {format_number(res.cond_final, '.3g')}, "
            f"max {format_number(res.cond_max, '.3g')} ({res.wall_s:.1f} s)"
            + (f" -- {res.reason}" if res.failed else ""))


def _gan_line(res: RunResult) -> str:
    m = res.metrics
    return (f"failed -- {res.reason}" if res.failed else
            f"FID {format_number(m.get('fid'), '.1f')}, VP {100 * m.get('vp', 0):.1f}%, "
            f"κ {format_number(m.get('kappa'), '.4g')}") + f" ({res.wall_s:.1f} s)"


_KINDS = {
    "classifier": TaskKind(DEFAULT_TREATMENTS, parse_treatment, aggregate, format_table, _classifier_line),
    "gan": TaskKind(GAN_DEFAULT_TREATMENTS, parse_gan_treatment, aggregate_gan, format_gan_table,
                    _gan_line, traversals=True),
}  # fmt: skip


def task_kind(task: str) -> TaskKind:
    """The :class:`TaskKind` of ``task`` (``dbn`` and ``gcp`` are classifiers)."""
    return _KINDS["gan" if task == "gan" else "classifier"]


class ClassifierTask:
    """Cross-entropy and the orthogonality penalty (so/dso/mc/srip) of the Pre-SVD layer."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, test_batches: Any) -> None:
        self.cfg = cfg
        self.model = model
        self.test_batches = test_batches
        self.penalty_kind = cfg.ortho if cfg.ortho in ortho.PENALTY_KINDS else None

    def penalty(self, epoch: int) -> Tensor | None:
        """λ·penalty of the Pre-SVD weights (None without one or with λ = 0)."""
        if self.penalty_kind is None:
            return None
        coef = self.cfg.penalty_coef
        if coef is None:
            coef = ortho.srip_schedule(epoch) if self.penalty_kind == "srip" else PENALTY_COEFFICIENT
        if coef == 0:
            return None
        weights = [m.weight for m in ortho.pre_svd_modules(self.model)]
        return ortho.orthogonality_penalty(weights, self.penalty_kind, coefficient=coef)

    def loss(self, net: nn.Module, x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        pen = self.penalty(epoch)
        total = loss if pen is None else loss + pen
        sums = {
            "train_loss": loss.detach().double() * y.shape[0],
            "train_acc": (logits.detach().argmax(1) == y).sum().double(),
        }
        return loss, total, sums

    def evaluate(self) -> dict[str, float]:
        """Test loss and accuracy (:func:`~orthocond.analysis.evaluate_classifier`: eval mode,
        capture paused, the model's mode restored)."""
        ev = evaluate_classifier(self.model, self.test_batches)
        return {"test_loss": ev.loss, "test_acc": ev.accuracy}

    def final_metrics(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def describe(stats: dict[str, Any]) -> str:
        return f"loss {stats['train_loss']:.3f} test acc {100 * stats['test_acc']:.2f}%"

    def write_outputs(self, out: Path) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def build_task(
    cfg: TrainConfig,
    data: DataSplits,
    model: nn.Module,
    pre_svd_params: list[nn.Parameter],
    test_batches: Any,
    device: torch.device,
) -> Any:
    """The task object of ``cfg.task`` for a trainer's model and data."""
    if cfg.task != "gan":
        return ClassifierTask(cfg, model, test_batches)
    r = cfg.resolved(data.name)
    return GanTask(
        model, pre_svd_params, parse_gan_treatment(cfg.treatment or "vanilla"), data,
        device=device, lr=r["lr"], beta1=cfg.beta1, width=r["width"],
        penalty_coef=cfg.penalty_coef, seed=cfg.seed,
    )  # fmt: skip
