"""The one evaluation loop: a classifier over batches in eval mode, capture paused."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orthocond._checks import check_module
from orthocond.nn.meta import meta_layer_mode

__all__ = ["Evaluation", "evaluate_classifier"]


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate_classifier` measured: the mean cross-entropy (``inf`` when it is
    not finite), the number of correct top-1 predictions and of samples."""

    loss: float
    correct: int
    num_samples: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.num_samples

    @property
    def error(self) -> float:
        """Top-1 error, ``(num_samples - correct) / num_samples`` (exact in the counts)."""
        return (self.num_samples - self.correct) / self.num_samples


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    device: torch.device | str | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> Evaluation:
    """Top-1 accuracy and mean cross-entropy of ``model`` over ``batches``.

    The model runs in eval mode under ``torch.no_grad()`` inside
    :func:`~orthocond.nn.meta_layer_mode` (no covariance capture; every module's training
    flag, the capture flags and captured covariances are restored afterwards). Counts stay
    on the device: one host synchronisation per call, not per batch.

    Args:
        model: a classifier returning logits ``(B, classes)``.
        batches: an iterable of ``(images, labels)`` pairs.
        device: where to move each batch first (default: leave it where it is).
        transform: applied to each image batch before the model (e.g. a corruption).

    Returns an :class:`Evaluation`; ``ValueError`` when ``batches`` yields no sample.

    Example:
        >>> ev = evaluate_classifier(model, data.test_batches(256))       # doctest: +SKIP
        >>> ev.accuracy, ev.loss
    """
    check_module(model)
    loss_sum: Tensor | float = 0.0
    correct: Tensor | int = 0
    n = 0
    with meta_layer_mode(model, training=False):
        for item in batches:
            if not (isinstance(item, (tuple, list)) and len(item) >= 2):
                raise ValueError("every batch must be an (images, labels) pair")
            x, y = item[0], item[1]
            if device is not None:
                x, y = x.to(device), y.to(device)
            if transform is not None:
                x = transform(x)
            logits = model(x)
            if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != y.shape[0]:
                raise ValueError("model must return logits of shape (B, classes)")
            loss_sum = loss_sum + F.cross_entropy(logits.double(), y, reduction="sum")
            correct = correct + (logits.argmax(1) == y).sum()
            n += int(y.shape[0])
    if n == 0:
        raise ValueError(
            "the batches yielded no samples (a one-shot iterator? it is read once per call)"
        )
    loss = float(loss_sum) / n
    return Evaluation(loss if math.isfinite(loss) else math.inf, int(correct), n)
