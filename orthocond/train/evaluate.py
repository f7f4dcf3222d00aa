"""Evaluating a checkpoint: clean and common-corruption accuracy of a trained run."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

from orthocond._checks import check_int, resolve_device
from orthocond._io import jsonable
from orthocond.analysis import evaluate_classifier, evaluate_corruptions
from orthocond.data import DataSplits, load_dataset
from orthocond.nn import meta_layer_methods

from .build import build_hybrid, build_model
from .config import TrainConfig
from .run_dir import CHECKPOINT_NAME, load_checkpoint, seed_everything

__all__ = ["evaluate_checkpoint"]


def _baseline_corruptions(baseline: Any) -> dict[str, Any]:
    """The corruption result inside ``baseline``: an :func:`evaluate_checkpoint` result
    (its ``"corruptions"``) or an :func:`~orthocond.analysis.evaluate_corruptions`
    result."""
    if isinstance(baseline, dict) and isinstance(baseline.get("corruptions"), dict):
        baseline = baseline["corruptions"]
    if not isinstance(baseline, dict) or "errors" not in baseline:
        raise ValueError(
            "baseline must be an `orthocond eval --corruptions ...` result (or an "
            "evaluate_corruptions dict) with corruption errors"
        )
    return baseline


def evaluate_checkpoint(
    path: Union[str, os.PathLike],
    *,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    baseline: dict[str, Any] | None = None,
    seed: int = 0,
    device: str | None = None,
    data_dir: Union[str, os.PathLike, None] = None,
    batch_size: int | None = None,
    data: DataSplits | None = None,
) -> dict[str, Any]:
    """Clean and common-corruption accuracy of a checkpoint written by :class:`Trainer`.

    Rebuilds the run's data (its ``dataset``, ``limit_test`` subset and normalisation) and
    model from the checkpoint's config, loads the weights and the hybrid-switch state (a
    switched run evaluates with ``eig``), and evaluates the test set in eval mode; with
    ``corruptions``, also :func:`orthocond.analysis.evaluate_corruptions` (corruptions
    generated on the fly from ``seed``: the result is deterministic given ``seed``).

    Args:
        path: ``checkpoint.pt`` or the run directory holding it.
        corruptions: names of :data:`orthocond.analysis.CORRUPTIONS` (None: clean only).
        severities: subset of 1…5 (default all).
        baseline: an earlier result of this function (or of ``evaluate_corruptions``) with
            the same corruptions and severities: adds CE, mCE, relative CE/mCE (in %).
        seed: seed of the corruption noise. Default 0.
        device: overrides the checkpoint's device (e.g. ``"cpu"``); data_dir: overrides
            its data directory; batch_size: evaluation batch (default max(batch, 256)).
        data: preloaded :class:`~orthocond.data.DataSplits` (must match the config).

    Returns a JSON-ready dict: ``checkpoint``, ``label``, ``epoch``, ``config``,
    ``meta_layers`` ({name: [method, backward, iters]}), ``num_samples``,
    ``clean_accuracy``, ``clean_loss``, ``seed`` and ``corruptions`` (the
    ``evaluate_corruptions`` dict, or None).

    Example::

        >>> res = evaluate_checkpoint("runs/gcp", corruptions=["contrast"])  # doctest: +SKIP
        >>> res["clean_accuracy"], res["corruptions"]["mean_errors"]["contrast"]
    """
    ckpt = Path(path)
    if ckpt.is_dir():
        ckpt = ckpt / CHECKPOINT_NAME
    check_int(seed, "seed", minimum=0)
    if baseline is not None and not corruptions:
        raise ValueError("a baseline needs corruptions to compare (--corruptions)")
    state = load_checkpoint(ckpt)
    changes: dict[str, Any] = {"tensorboard": False, "plots": False, "checkpoint": False}
    if device is not None:
        changes["device"] = device
    if data_dir is not None:
        changes["data_dir"] = str(data_dir)
    cfg = TrainConfig.from_dict(state["config"]).replace(**changes)
    check_int(batch_size, "batch_size", allow_none=True)
    dev = resolve_device(cfg.device)
    if data is None:
        data = load_dataset(
            cfg.dataset, data_dir=cfg.data_dir, download=cfg.download,
            limit_train=cfg.limit_train, limit_test=cfg.limit_test, num_workers=cfg.workers,
        )  # fmt: skip
    seed_everything(cfg.seed)
    model = build_model(cfg, data).to(dev)
    model.load_state_dict(state["model"])
    hybrid = build_hybrid(cfg, model)
    if hybrid is not None and state.get("hybrid") is not None:
        hybrid.load_state_dict(state["hybrid"])
    bs = batch_size or max(cfg.batch_size, 256)
    batches = data.test_batches(bs, device=dev)
    clean = evaluate_classifier(model, batches)
    loss, acc, n = clean.loss, clean.accuracy, clean.num_samples
    result: dict[str, Any] = {
        "checkpoint": str(ckpt), "label": cfg.label, "epoch": int(state["epoch"]),
        "config": cfg.to_dict(),
        "meta_layers": {k: list(v) for k, v in meta_layer_methods(model).items()},
        "num_samples": n, "clean_accuracy": acc, "clean_loss": loss, "seed": seed,
        "corruptions": None,
    }  # fmt: skip
    if corruptions:
        result["corruptions"] = evaluate_corruptions(
            model, batches, corruptions=tuple(corruptions), severities=tuple(severities),
            mean=data.mean, std=data.std, seed=seed, batch_size=bs, device=dev,
            baseline=None if baseline is None else _baseline_corruptions(baseline),
        )  # fmt: skip
    return jsonable(result)

