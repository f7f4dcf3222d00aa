"""Training engine: configuration, treatments, the train loop, checkpoints, comparisons.

This module is what ``orthocond train`` and ``orthocond compare`` run; it is a thin
layer over the library (models, meta-layers, ``optim`` plug-ins, diagnostics).

- :class:`TrainConfig`: every knob of a run (task defaults follow the papers: DBN
  ECCV 2022 -- SGD lr 0.1, momentum 0.9, weight decay 5e-4, ZCA ε 1e-2, lr x0.1 at
  100/200/300 of 350 epochs; GCP iSQRT-COV -- SGD lr 0.1, momentum 0.9, weight
  decay 1e-4, x0.1 at 30/45/60 of 65 epochs; milestones scale with ``epochs``).
- :func:`parse_treatment`: ``"nog-grad+olr"`` -> NOG / OLR / orthogonality settings.
- :class:`Trainer`: builds data, model, optimizer (the Pre-SVD parameters always in
  a param group of their own), NOG/OLR hooks, lr schedule (per iteration) and a
  :class:`~orthocond.diagnostics.ConditionMonitor`; trains, evaluates, detects
  divergence (non-finite loss/gradients, loss above a threshold, eigensolver
  failures) and writes atomic checkpoints that resume bit-for-bit on the CPU.
- :func:`train`, :func:`compare`: one run / a grid of treatments x seeds, with the
  markdown/JSON table and the plots.
- Research workflows (all off by default): the CVPR 2020 lr schedules ``normal`` /
  ``fast`` / ``adjusted`` (and ``step``) of :mod:`orthocond.schedules`, stretched onto
  ``epochs``; the ICCV 2021 hybrid NS→SVD switch (:class:`~orthocond.hybrid.HybridSwitch`,
  ``hybrid_switch_epoch``); the CVPR 2020 landscape probe
  (:class:`~orthocond.landscape.LandscapeProbe`, ``landscape_every``); and
  :func:`evaluate_checkpoint` (clean and common-corruption accuracy of a checkpoint,
  :mod:`orthocond.robustness`).

Example::

    >>> from orthocond.training import TrainConfig, train
    >>> cfg = TrainConfig(task="dbn", epochs=1, width=8, limit_train=512, treatment="nog+olr")
    >>> result = train(cfg, out="runs/demo")                     # doctest: +SKIP
    >>> result.final_acc, result.summary["metrics"]["cond/bn1"]["max"]
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from . import linalg
from .data import DATASETS, DataSplits, load_dataset
from .diagnostics import ConditionMonitor, jsonable

__all__ = [
    "TASKS",
    "ARCHS",
    "SCHEDULES",
    "ORTHO_KINDS",
    "PENALTY_KINDS",
    "TREATMENT_PARTS",
    "DEFAULT_TREATMENTS",
    "PENALTY_COEFFICIENT",
    "TrainConfig",
    "Treatment",
    "RunResult",
    "Trainer",
    "parse_treatment",
    "resolve_device",
    "distributed_env",
    "build_model",
    "build_optimizer",
    "train",
    "compare",
    "aggregate",
    "format_table",
    "plot_run",
    "plot_compare",
    "save_checkpoint",
    "load_checkpoint",
    "evaluate_checkpoint",
    "build_hybrid",
    "read_landscape",
    "plot_compare_landscape",
    "RUN_FILES",
    "clear_run_outputs",
]

TASKS = ("dbn", "gcp")
#: Architectures per task.
ARCHS = {"dbn": ("resnet18", "resnet34", "resnet50"), "gcp": ("resnet18", "resnet50", "resnet101")}
#: lr schedules: ``multistep`` (×gamma at ``milestones``), ``cosine`` and ``constant`` are
#: evaluated per iteration (:class:`StepSchedule`); ``normal``, ``fast``, ``adjusted``
#: (CVPR 2020) and ``step`` come from :func:`orthocond.schedules.lr_lambda`, stretched onto
#: ``epochs`` and constant within an epoch.
SCHEDULES = ("multistep", "cosine", "constant", "normal", "fast", "adjusted", "step")
#: The schedules built by :mod:`orthocond.schedules` (per epoch).
EPOCH_SCHEDULES = ("normal", "fast", "adjusted", "step")
#: Eigen-gradients the hybrid switch may move the meta-layers to (method ``eig``).
HYBRID_BACKWARDS = ("pade", "exact", "taylor", "svd")
#: Values of ``TrainConfig.ortho``.
ORTHO_KINDS = ("none", "hard", "soc", "so", "dso", "mc", "srip", "oni", "own", "cayley")
PENALTY_KINDS = ("so", "dso", "mc", "srip")
#: Penalty weight λ of so/dso/mc (loss = task + λ·penalty); SRIP follows
#: ``orthocond.ortho.srip_schedule(epoch)`` (1e-2 for the first 20 epochs) unless
#: ``penalty_coef`` is given.
PENALTY_COEFFICIENT = 1e-2
#: Treatment parts that pick the meta-layers' eigen-gradient (``bwd-<backward>``).
BACKWARD_PARTS = tuple(f"bwd-{b}" for b in linalg.ALL_BACKWARDS)
#: Parts a treatment name may combine with ``+``.
TREATMENT_PARTS = (
    "vanilla", "nog", "nog-grad", "nog-ns", "nog-ns-grad", "olr", "olr-exact",
) + ORTHO_KINDS[1:] + BACKWARD_PARTS  # fmt: skip
#: The grid ``orthocond compare`` runs without ``--treatments``.
DEFAULT_TREATMENTS = (
    "vanilla", "nog", "nog-grad", "olr", "nog+olr", "nog-grad+olr", "hard", "soc",
)

#: The grid of ``orthocond compare --preset failures``: the eigen-gradients, then the
#: unguarded textbook gradient alone and under the conditioning treatments.
FAILURE_TREATMENTS = (
    "bwd-exact", "bwd-svd", "bwd-taylor", "bwd-pade", "bwd-svd-unguarded",
    "bwd-svd-unguarded+olr", "bwd-svd-unguarded+nog+olr", "bwd-svd-unguarded+nog-grad+olr",
    "bwd-svd-unguarded+hard",
)  # fmt: skip

# Paper lr milestones as fractions of the run (DBN: 100/200/300 of 350 epochs;
# GCP iSQRT-COV PyTorch re-run: 30/45/60 of 65 epochs).
_MILESTONE_FRACTIONS = {"dbn": (100 / 350, 200 / 350, 300 / 350), "gcp": (30 / 65, 45 / 65, 60 / 65)}
_TASK_DEFAULTS = {
    "dbn": {"lr": 0.1, "weight_decay": 5e-4, "method": "eig", "eps": 1e-2},
    "gcp": {"lr": 0.1, "weight_decay": 1e-4, "method": "ns", "eps": 0.0},
}
# 2: eps None = the task's default (v1 stored 1e-2 for every task, but the GCP head got 0);
# ONI/OWN centring "auto" (v1 runs centred every stem)
_CKPT_VERSION = 2
CHECKPOINT_NAME = "checkpoint.pt"
LANDSCAPE_NAME = "landscape.json"
#: Everything a run writes into its output folder (besides the TensorBoard folder tb/).
RUN_FILES = (CHECKPOINT_NAME, "metrics.jsonl", "steps.csv", "summary.json", "condition.png",
             "accuracy.png", LANDSCAPE_NAME, "landscape.png")


# --------------------------------------------------------------------------- config


@dataclass
class Treatment:
    """What a treatment name means (see :func:`parse_treatment`)."""

    name: str
    nog: str | None = None  # "svd" | "ns"
    nog_scale: str = "none"  # "none" | "grad"
    olr: str | None = None  # "paper" | "exact"
    ortho: str = "none"  # one of ORTHO_KINDS
    backward: str | None = None  # one of linalg.ALL_BACKWARDS; None keeps the config's


def parse_treatment(name: str) -> Treatment:
    """Parse a treatment name: parts of :data:`TREATMENT_PARTS` joined by ``+``.

    ``vanilla`` = nothing; ``nog`` = NOG with the paper's unscaled U Vᵀ (SVD);
    ``nog-grad`` = NOG rescaled to the gradient norm; ``nog-ns``/``nog-ns-grad`` = the
    Polar-Express (matmul) variants; ``olr``/``olr-exact`` = OLR (paper closed form /
    exact quartic minimiser); ``hard`` = ``orthocond.ortho.orthogonal`` on the Pre-SVD
    layer; ``soc`` = SOC stem; ``so``/``dso``/``mc``/``srip`` = penalty (λ =
    :data:`PENALTY_COEFFICIENT`, SRIP: ``srip_schedule``); ``oni``, ``own``; ``cayley`` =
    Cayley SGD for the Pre-SVD parameter; ``bwd-<b>`` = eigen-gradient ``b`` of the
    meta-layers (``bwd-exact``, ``bwd-svd``, ``bwd-svd-unguarded``, ``bwd-taylor``,
    ``bwd-pade``; method ``eig``). At most one part of each kind (NOG, OLR, orthogonality,
    backward); ``vanilla`` combines with a backward part only.

    Example::

        >>> parse_treatment("nog-grad+olr")
        Treatment(name='nog-grad+olr', nog='svd', nog_scale='grad', olr='paper', ortho='none', backward=None)
        >>> parse_treatment("bwd-svd-unguarded+olr").backward
        'svd-unguarded'
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"treatment must be a non-empty string, got {name!r}")
    t = Treatment(name=name.strip())
    seen: set[str] = set()
    for raw in t.name.split("+"):
        part = raw.strip().lower()
        if part not in TREATMENT_PARTS:
            raise ValueError(
                f"unknown treatment part {raw!r} in {name!r}; expected parts of "
                f"{', '.join(TREATMENT_PARTS)} joined by '+'"
            )
        kind = "nog" if part.startswith("nog") else "olr" if part.startswith("olr") else (
            "backward" if part.startswith("bwd-") else "vanilla" if part == "vanilla" else "ortho"
        )
        if kind in seen:
            raise ValueError(f"treatment {name!r} has more than one {kind} part")
        seen.add(kind)
        if part.startswith("nog"):
            t.nog = "ns" if "-ns" in part else "svd"
            t.nog_scale = "grad" if part.endswith("-grad") else "none"
        elif part.startswith("olr"):
            t.olr = "exact" if part == "olr-exact" else "paper"
        elif kind == "backward":
            t.backward = part[len("bwd-"):]
        elif part != "vanilla":
            t.ortho = part
    if "vanilla" in seen and len(seen - {"backward"}) > 1:
        raise ValueError(
            f"'vanilla' combines only with a bwd-* part, not with the other parts in {name!r}"
        )
    return t


@dataclass
class TrainConfig:
    """Every setting of one training run (defaults: the quick embedded-MNIST DBN run).

    ``None`` means "the task's default": ``lr`` 0.1, ``weight_decay`` 5e-4 (dbn) / 1e-4
    (gcp), ``method`` "eig" (dbn) / "ns" (gcp), ``milestones`` the papers' fractions of
    ``epochs`` (dbn 100/200/300 of 350, gcp 30/45/60 of 65), ``width`` 16 on MNIST and 64
    otherwise, ``reduced_channels`` min(256, 8·width) (gcp). A ``treatment`` name
    (:func:`parse_treatment`) overrides ``nog``/``nog_scale``/``olr``/``ortho``.

    Schedules (:data:`SCHEDULES`): ``milestones`` are the decay epochs of ``multistep``
    (floats) and ``step`` (integers in [1, epochs]; default ⌊epochs/2⌋, ⌊3·epochs/4⌋);
    ``normal``/``fast``/``adjusted`` take none.

    Research options (off by default):

    - ``hybrid_switch_epoch``: None, a 0-based epoch ``E`` >= 0 or ``"auto"``; from epoch
      ``E`` on every meta-layer computes ``method="eig"`` with the eigen-gradient
      ``hybrid_backward`` (default ``"pade"``, SVD-Padé) -- the ICCV 2021 hybrid NS→SVD
      protocol. ``"auto"`` is the epoch of the schedule's last lr decay
      (:meth:`hybrid_epoch`); it is an error for a schedule without one.
    - ``landscape_every``: K > 0 measures the CVPR 2020 loss landscape / gradient
      predictiveness (:class:`~orthocond.landscape.LandscapeProbe`) after the backward
      of every K-th step, with ``landscape_steps`` step sizes η in [0.1, 75] (default
      50, the paper's); 0 (default) is off.
    """

    task: str = "dbn"
    arch: str = "resnet18"
    dataset: str = "mnist"
    data_dir: str | None = None
    download: bool = False
    limit_train: int | None = None
    limit_test: int | None = None
    epochs: int = 4
    batch_size: int = 128
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    schedule: str = "multistep"
    milestones: tuple[float, ...] | None = None
    gamma: float = 0.1
    hybrid_switch_epoch: int | str | None = None
    hybrid_backward: str = "pade"
    nog: str | None = None
    nog_scale: str = "none"
    nog_rtol: float | None = None
    olr: str | None = None
    ortho: str = "none"
    penalty_coef: float | None = None
    treatment: str | None = None
    method: str | None = None
    backward: str = "exact"
    iters: int | None = None
    eps: float | None = None
    groups: int = 1
    width: int | None = None
    reduced_channels: int | None = None
    augment: bool = True
    device: str = "auto"
    seed: int = 0
    monitor_every: int = 10
    landscape_every: int = 0
    landscape_steps: int = 50
    divergence_loss: float = 1e3
    workers: int = 4
    tensorboard: bool = True
    plots: bool = True
    checkpoint: bool = True

    def __post_init__(self) -> None:
        if self.milestones is not None:
            self.milestones = tuple(float(m) for m in self.milestones)
        if self.treatment:
            t = parse_treatment(self.treatment)
            self.nog, self.nog_scale, self.olr, self.ortho = t.nog, t.nog_scale, t.olr, t.ortho
            if t.backward is not None:
                self.backward = t.backward
        self.validate()

    # -- validation ---------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError/TypeError naming the bad field."""

        def choice(name: str, allowed: Sequence[Any]) -> None:
            v = getattr(self, name)
            if v not in allowed:
                raise ValueError(f"{name} must be one of {tuple(allowed)}, got {v!r}")

        def pos_int(name: str, allow_none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")

        def nonneg(name: str, allow_none: bool = True, positive: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
            if v < 0 or (positive and v == 0):
                raise ValueError(f"{name} must be {'positive' if positive else '>= 0'}, got {v!r}")

        choice("task", TASKS)
        choice("arch", ARCHS[self.task])
        choice("dataset", DATASETS)
        choice("schedule", SCHEDULES)
        choice("nog", (None, "svd", "ns"))
        choice("nog_scale", ("none", "grad"))
        choice("olr", (None, "paper", "exact"))
        choice("ortho", ORTHO_KINDS)
        choice("method", (None, "eig", "ns", "mpa"))
        choice("backward", linalg.ALL_BACKWARDS)
        method = self.method or _TASK_DEFAULTS[self.task]["method"]
        if self.backward != "exact" and method != "eig":
            raise ValueError(
                f"backward={self.backward!r} is an eigendecomposition gradient and needs "
                f"method='eig'; method={method!r} has only backward='exact'"
            )
        for name in ("epochs", "batch_size", "monitor_every", "groups", "landscape_steps"):
            pos_int(name)
        for name in ("limit_train", "limit_test", "width", "reduced_channels", "iters"):
            pos_int(name, allow_none=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers must be a non-negative int, got {self.workers!r}")
        nonneg("lr", positive=True)
        nonneg("weight_decay")
        nonneg("penalty_coef")
        nonneg("nog_rtol")
        nonneg("eps")
        if not isinstance(self.divergence_loss, (int, float)) or not self.divergence_loss > 0:
            raise ValueError(f"divergence_loss must be > 0 (inf disables), got {self.divergence_loss!r}")
        nonneg("gamma", allow_none=False, positive=True)
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.milestones is not None and any(m < 0 for m in self.milestones):
            raise ValueError(f"milestones must be >= 0 (in epochs), got {self.milestones}")
        self._validate_schedule()
        choice("hybrid_backward", HYBRID_BACKWARDS)
        h = self.hybrid_switch_epoch
        if h is not None and h != "auto" and (isinstance(h, bool) or not isinstance(h, int) or h < 0):
            raise ValueError(
                f"hybrid_switch_epoch must be None, 'auto' or a 0-based epoch >= 0, got {h!r}"
            )
        if h == "auto" and self.hybrid_epoch() is None:
            raise ValueError(
                f"hybrid_switch_epoch='auto' switches at the last lr decay, but schedule "
                f"{self.schedule!r} has no decay within {self.epochs} epochs; use multistep, "
                "normal or step (with a milestone inside the run) or give the epoch"
            )
        le = self.landscape_every
        if isinstance(le, bool) or not isinstance(le, int) or le < 0:
            raise ValueError(f"landscape_every must be an int >= 0 (0 = off), got {le!r}")
        if self.olr and self.ortho == "hard":
            raise ValueError(
                "olr with ortho='hard': the optimizer trains geotorch's coordinates around a "
                "fixed base, not the weight that OLR's step-size formula assumes; use one of them"
            )
        if self.ortho == "soc" and self.task != "dbn":
            raise ValueError(
                "ortho='soc' (SOC stem) is only available for task='dbn': the GCP Pre-SVD "
                "layer is a 1x1 reduction conv"
            )
        if self.dataset != "mnist" and self.data_dir is None:
            raise ValueError(f"dataset {self.dataset!r} needs data_dir (--data-dir DIR)")
        if not isinstance(self.device, str):
            raise TypeError(f"device must be a string such as 'auto', 'cpu', 'cuda:0', got {self.device!r}")

    def _validate_schedule(self) -> None:
        if self.schedule not in EPOCH_SCHEDULES:
            return
        if self.schedule != "step" and self.milestones is not None:
            raise ValueError(
                f"milestones apply to the multistep and step schedules, not {self.schedule!r} "
                f"(got milestones={self.milestones})"
            )
        if self.schedule == "step":
            if not 0 < self.gamma <= 1:
                raise ValueError(f"gamma of the step schedule must be in (0, 1], got {self.gamma!r}")
            ms = self.milestones or ()
            if any(m != int(m) or not 1 <= m <= self.epochs for m in ms) or any(
                b <= a for a, b in zip(ms, ms[1:])
            ):
                raise ValueError(
                    "milestones of the step schedule must be strictly increasing whole epochs "
                    f"in [1, epochs={self.epochs}], got {self.milestones}"
                )

    def schedule_kwargs(self) -> dict[str, Any]:
        """``milestones``/``gamma`` for :func:`orthocond.schedules.lr_lambda` (``step``
        only; the other epoch schedules take neither)."""
        if self.schedule != "step":
            return {}
        kw: dict[str, Any] = {"gamma": float(self.gamma)}
        if self.milestones is not None:
            kw["milestones"] = [int(m) for m in self.milestones]
        return kw

    def hybrid_epoch(self) -> int | None:
        """The 0-based epoch from which the hybrid switch runs ``eig`` (None: no switch).

        ``"auto"``: :func:`orthocond.schedules.last_decay_epoch` for ``normal``/``step``;
        for ``multistep``, ⌊m⌋ of the last milestone m with 0 < m < epochs (the epoch in
        which that decay takes effect); None when the schedule has no such decay.
        """
        h = self.hybrid_switch_epoch
        if h != "auto":
            return h
        if self.schedule == "multistep":
            if self.gamma == 1:
                return None
            inside = [m for m in self.resolved()["milestones"] if 0 < m < self.epochs]
            return int(math.floor(max(inside))) if inside else None
        if self.schedule in ("normal", "step"):
            from .schedules import last_decay_epoch

            return last_decay_epoch(self.schedule, self.epochs, **self.schedule_kwargs())
        return None

    # -- derived values ------------------------------------------------------
    @property
    def label(self) -> str:
        """The treatment's name, or one built from the settings."""
        if self.treatment:
            return self.treatment
        parts = []
        if self.nog:
            parts.append("nog" + ("-ns" if self.nog == "ns" else "") + ("-grad" if self.nog_scale == "grad" else ""))
        if self.olr:
            parts.append("olr" if self.olr == "paper" else "olr-exact")
        if self.ortho != "none":
            parts.append(self.ortho)
        if self.backward != "exact":
            parts.append(f"bwd-{self.backward}")
        return "+".join(parts) or "vanilla"

    def ineffective_settings(self) -> list[str]:
        """Settings that differ from their defaults but change nothing in this run (the CLI
        refuses them rather than record a setting that was never applied)."""
        out = []
        if self.nog_scale != "none" and self.nog is None:
            out.append(f"nog_scale={self.nog_scale!r} needs NOG (--nog)")
        if self.nog_rtol is not None and self.nog != "svd":
            out.append("nog_rtol needs NOG with method svd (--nog svd)")
        if self.penalty_coef is not None and self.ortho not in PENALTY_KINDS:
            out.append(f"penalty_coef needs a penalty ortho ({', '.join(PENALTY_KINDS)})")
        if self.milestones is not None and self.schedule not in ("multistep", "step"):
            out.append(f"milestones apply to the multistep/step schedules, not {self.schedule!r}")
        if self.groups != 1 and self.task != "dbn":
            out.append("groups (ZCA channel groups) applies to task dbn only")
        if self.reduced_channels is not None and self.task != "gcp":
            out.append("reduced_channels applies to task gcp only")
        if self.iters is not None and self.resolved()["method"] == "eig":
            out.append("iters applies to method ns/mpa, not eig")
        if self.hybrid_backward != "pade" and self.hybrid_switch_epoch is None:
            out.append("hybrid_backward needs hybrid_switch_epoch (--hybrid-switch-epoch)")
        if self.landscape_steps != 50 and not self.landscape_every:
            out.append("landscape_steps needs landscape_every > 0 (--landscape-every)")
        return out

    def resolved(self, dataset: str | None = None) -> dict[str, Any]:
        """Task defaults filled in (what the run actually uses)."""
        d = _TASK_DEFAULTS[self.task]
        ds = dataset or self.dataset
        width = self.width or (16 if ds == "mnist" else 64)
        return {
            "lr": d["lr"] if self.lr is None else float(self.lr),
            "weight_decay": d["weight_decay"] if self.weight_decay is None else float(self.weight_decay),
            "method": self.method or d["method"],
            "width": width,
            "reduced_channels": self.reduced_channels or min(256, 8 * width),
            "eps": d["eps"] if self.eps is None else float(self.eps),
            "milestones": self.milestones
            if self.milestones is not None
            else tuple(f * self.epochs for f in _MILESTONE_FRACTIONS[self.task]),
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["milestones"] is not None:
            d["milestones"] = list(d["milestones"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (re-validated)."""
        d = self.to_dict()
        d.update(changes)
        return TrainConfig.from_dict(d)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; other strings as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


def distributed_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's environment variables (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``) when ``WORLD_SIZE`` > 1, else None (a single process).

    Example::

        >>> distributed_env()  # outside torchrun                    # doctest: +SKIP
    """
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None
    if world <= 1:
        return None
    try:
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    except (KeyError, ValueError):
        raise ValueError(
            "WORLD_SIZE > 1 but RANK/LOCAL_RANK are missing or not integers; launch with torchrun"
        ) from None
    return rank, world, local


def _ddp_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# --------------------------------------------------------------------------- building


def build_model(cfg: TrainConfig, data: DataSplits) -> nn.Module:
    """The model of ``cfg`` for ``data`` (classes, channels, image size), with the
    orthogonality parametrisation (hard/oni/own) applied to its Pre-SVD layers."""
    from . import models

    r = cfg.resolved(data.name)
    common = {"in_channels": data.in_channels, "width": r["width"], "backward": cfg.backward}
    if cfg.task == "dbn":
        builder = getattr(models, f"cifar_{cfg.arch}")
        model = builder(
            data.num_classes, method=r["method"], eps=r["eps"], groups=cfg.groups,
            stem="soc" if cfg.ortho == "soc" else "conv", iters=cfg.iters, **common,
        )  # fmt: skip
    else:
        builder = getattr(models, f"gcp_{cfg.arch}")
        model = builder(
            data.num_classes, head="gcp", reduced_channels=r["reduced_channels"],
            method=r["method"], iters=cfg.iters if cfg.iters is not None else 5,
            cifar_stem=data.image_size <= 64, eps=r["eps"], **common,
        )  # fmt: skip
    if cfg.ortho in ("hard", "oni", "own"):
        from . import ortho

        wrap = {"hard": ortho.orthogonal, "oni": ortho.oni, "own": ortho.own}[cfg.ortho]
        for module in models.pre_svd_modules(model):
            wrap(module)
    return model


def _split_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    from .models import pre_svd_parameters

    pre = list(pre_svd_parameters(model))
    ids = {id(p) for p in pre}
    rest = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    return pre, rest


def build_optimizer(
    cfg: TrainConfig, model: nn.Module
) -> tuple[torch.optim.Optimizer, dict[str, Any], list[nn.Parameter]]:
    """SGD (momentum, weight decay) with the Pre-SVD parameters in param group 0 of their
    own -- CayleySGD with that group on the Stiefel manifold for ``ortho="cayley"``, no
    weight decay on it for ``ortho="hard"`` (geotorch coordinates) -- and the NOG then OLR
    hooks. Returns ``(optimizer, {"nog": NOG|None, "olr": OLR|None},
    pre_svd_params)``."""
    from orthocond import optim as plugins

    r = cfg.resolved()
    pre, rest = _split_params(model)
    if not pre:
        raise ValueError("the model has no Pre-SVD parameter (no module marked is_pre_svd)")
    if cfg.ortho == "cayley":
        opt: torch.optim.Optimizer = plugins.CayleySGD(
            [{"params": pre, "stiefel": True}, {"params": rest, "stiefel": False}],
            lr=r["lr"], momentum=cfg.momentum, weight_decay=r["weight_decay"],
        )  # fmt: skip
    else:
        # "hard": the trained tensor holds geotorch coordinates around a fixed base, where
        # weight decay would pull W back to its initial orthogonal matrix, not shrink it
        pre_group: dict[str, Any] = {"params": pre}
        if cfg.ortho == "hard":
            pre_group["weight_decay"] = 0.0
        opt = torch.optim.SGD(
            [pre_group, {"params": rest}],
            lr=r["lr"], momentum=cfg.momentum, weight_decay=r["weight_decay"],
        )  # fmt: skip
    hooks: dict[str, Any] = {"nog": None, "olr": None}
    if cfg.nog:
        hooks["nog"] = plugins.NOG(opt, pre, method=cfg.nog, rtol=cfg.nog_rtol, scale=cfg.nog_scale)
    if cfg.olr:
        hooks["olr"] = plugins.OLR(opt, pre, mode=cfg.olr)
    return opt, hooks, pre


def build_hybrid(cfg: TrainConfig, model: nn.Module) -> Any:
    """The :class:`~orthocond.hybrid.HybridSwitch` of ``cfg`` on ``model`` (meta-layers to
    ``eig`` with ``cfg.hybrid_backward`` at :meth:`TrainConfig.hybrid_epoch`), or None."""
    epoch = cfg.hybrid_epoch()
    if epoch is None:
        return None
    from .hybrid import HybridSwitch

    return HybridSwitch(model, epoch, method="eig", backward=cfg.hybrid_backward)


def _meta_method(model: nn.Module) -> dict[str, str]:
    """``{"meta_method", "meta_backward"}`` of the model's meta-layers (distinct values
    joined by ","), as recorded per epoch."""
    from .hybrid import meta_layer_methods

    triples = meta_layer_methods(model).values()
    return {
        "meta_method": ",".join(sorted({t[0] for t in triples})),
        "meta_backward": ",".join(sorted({t[1] for t in triples})),
    }


class StepSchedule:
    """Per-iteration lr factor (picklable, for ``LambdaLR``): ``multistep`` multiplies by
    ``gamma`` at each milestone step, ``cosine`` anneals to 0 over ``total_steps``,
    ``constant`` keeps 1."""

    def __init__(self, kind: str, total_steps: int, milestones: Sequence[int], gamma: float) -> None:
        self.kind = kind
        self.total_steps = int(total_steps)
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)

    def __call__(self, step: int) -> float:
        if self.kind == "multistep":
            return self.gamma ** sum(step >= m for m in self.milestones)
        if self.kind == "cosine":
            t = min(step, self.total_steps) / max(self.total_steps, 1)
            return 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(state: dict[str, Any], path: Union[str, os.PathLike]) -> None:
    """``torch.save`` to ``path.tmp`` then ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """Load a checkpoint written by :meth:`Trainer.save` (``weights_only`` safe)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("version") not in (1, _CKPT_VERSION):
        raise ValueError(f"{str(path)!r} is not an orthocond checkpoint (version {_CKPT_VERSION})")
    if state["version"] == 1:
        _migrate_v1(state, path)
    return state


def _migrate_v1(state: dict[str, Any], path: Path) -> None:
    """Bring a version-1 checkpoint's config to what that run actually used."""
    config = state["config"]
    if config.get("ortho") in ("oni", "own"):
        raise ValueError(
            f"{str(path)!r} is a version-1 checkpoint of an {config['ortho']} run, whose "
            "centred parametrisation this version no longer builds by default (centering is "
            "'auto' now); rebuild the model with orthocond.ortho."
            f"{config['ortho']}(module, centering=True) and load state['model'] yourself"
        )
    if config.get("task") == "gcp":
        config["eps"] = 0.0  # v1 recorded 1e-2 but never passed it to the GCP head
    state["version"] = _CKPT_VERSION


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002 - the global state is what we restore
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *map(_py, np_state[2:])],
        "python": _py(random.getstate()),
    }


def _py(x: Any) -> Any:
    if isinstance(x, tuple):
        return [_py(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return x


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    state_np = (n[0], n[1].numpy().astype(np.uint32), int(n[2]), int(n[3]), float(n[4]))
    np.random.set_state(state_np)  # noqa: NPY002
    random.setstate(_tuplify(state["python"]))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - user code may use the global generator
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- results


@dataclass
class RunResult:
    """Outcome of one run (plain data; :meth:`to_dict` is JSON-ready)."""

    label: str
    seed: int
    config: dict[str, Any]
    failed: bool = False
    reason: str | None = None
    epochs_completed: int = 0
    steps: int = 0
    wall_s: float = 0.0
    final_acc: float | None = None
    best_acc: float | None = None
    epochs: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    cond_key: str | None = None
    cond_steps: list[int] = field(default_factory=list)
    cond_values: list[float | None] = field(default_factory=list)
    cond_final: float | None = None
    cond_max: float | None = None
    ortho_err: float | None = None
    weight_norm: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))


# --------------------------------------------------------------------------- trainer


class Trainer:
    """One training run of a :class:`TrainConfig`.

    Args:
        cfg (TrainConfig): the run.
        data (DataSplits, optional): preloaded data (compare shares one load); default
            :func:`~orthocond.data.load_dataset` of ``cfg``.
        out (path, optional): output directory (metrics.jsonl, steps.csv, summary.json,
            checkpoint.pt, tb/, condition.png, accuracy.png; landscape.json and
            landscape.png with ``cfg.landscape_every``); None writes nothing.
        progress (bool): show a tqdm bar (also requires a TTY). Default False.
        log (callable): where one-line messages go (``print`` to stderr by default).
        sync_bn (bool, optional): inside an initialised process group of size > 1
            (torchrun, see :func:`train`), convert the decorrelated BNs to
            :func:`~orthocond.nn.convert_sync_decorrelated_batchnorm` layers. Default
            (None): on under DDP. Ignored in a single process.

    Distributed data parallel: when a process group of size R > 1 is initialised, the
    model is wrapped in ``DistributedDataParallel`` after the optimizer and the NOG/OLR
    hooks are built (the hooks are optimizer step pre-hooks, so they see the all-reduced
    gradients; ``self.model`` stays the unwrapped module, which is what checkpoints
    save). Every rank draws the same global batch (same seed) and trains on its slice
    ``torch.tensor_split(batch, R)[rank]``; the recorded loss and the train statistics
    are averaged over the global batch. Every rank evaluates the full test set.

    Example::

        >>> t = Trainer(TrainConfig(epochs=1, width=8, limit_train=256))   # doctest: +SKIP
        >>> result = t.fit()
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        data: DataSplits | None = None,
        out: Union[str, os.PathLike, None] = None,
        progress: bool = False,
        log: Callable[[str], None] | None = None,
        sync_bn: bool | None = None,
    ) -> None:
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
        if sync_bn is not None and not isinstance(sync_bn, bool):
            raise TypeError(f"sync_bn must be a bool or None, got {sync_bn!r}")
        self.cfg = cfg
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.out = Path(out) if out is not None else None
        self.progress = bool(progress)
        self.device = resolve_device(cfg.device)
        self.ddp = _ddp_active()
        self.rank = dist.get_rank() if self.ddp else 0
        self.world_size = dist.get_world_size() if self.ddp else 1
        if cfg.batch_size < self.world_size:
            raise ValueError(
                f"batch_size {cfg.batch_size} is the global batch and must give each of the "
                f"{self.world_size} processes at least one sample"
            )
        if self.ddp and self.device.type == "cuda":
            env = distributed_env()
            self.device = torch.device("cuda", env[2] if env is not None else torch.cuda.current_device())
            torch.cuda.set_device(self.device)
        _seed_everything(cfg.seed)
        if data is None:
            data = load_dataset(
                cfg.dataset, data_dir=cfg.data_dir, download=cfg.download,
                limit_train=cfg.limit_train, limit_test=cfg.limit_test, num_workers=cfg.workers,
            )  # fmt: skip
        self.data = data
        self.resolved = cfg.resolved(data.name)
        self.model = build_model(cfg, data)
        if self.ddp and sync_bn is not False:
            from .nn import convert_sync_decorrelated_batchnorm

            self.model = convert_sync_decorrelated_batchnorm(self.model)
        self.model = self.model.to(self.device)
        self.optimizer, self.hooks, self.pre_svd_params = build_optimizer(cfg, self.model)
        # The module the training forward runs through (DDP wrapper under torchrun).
        self.net: nn.Module = self.model
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.train_batches = data.train_batches(
            cfg.batch_size, device=self.device, seed=cfg.seed, augment=cfg.augment,
            rank=self.rank, world_size=self.world_size,
        )
        self.test_batches = data.test_batches(max(cfg.batch_size, 256), device=self.device)
        self.steps_per_epoch = len(self.train_batches)
        if self.steps_per_epoch == 0:
            raise ValueError("the training set is empty")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._schedule_fn())
        self.penalty_kind = cfg.ortho if cfg.ortho in PENALTY_KINDS else None
        self.hybrid = build_hybrid(cfg, self.model)
        self.landscape = None
        if cfg.landscape_every:
            from .landscape import LandscapeProbe

            self.landscape = LandscapeProbe(
                self.model, every=cfg.landscape_every, num_steps=cfg.landscape_steps
            )
        writer = None
        if self.out is not None and cfg.tensorboard:
            writer = self._tensorboard_writer()
        self.monitor = ConditionMonitor(self.model, every=cfg.monitor_every, writer=writer)
        # the headline κ: of Σ + εI, or over the numerical range when ε = 0 (a GCP head's
        # covariance of fewer positions than channels is singular: κ = ∞ at every record)
        self.cond_key = next(
            (f"cond/{n}" if float(getattr(m, "eps", 0.0) or 0.0) else f"cond_range/{n}"
             for n, m in self.monitor.meta_layers),
            None,
        )
        self.epoch = 0
        self.global_step = 0
        self.epoch_log: list[dict[str, Any]] = []
        self.failed: str | None = None
        self.elapsed = 0.0

    def _schedule_fn(self) -> Callable[[int], float]:
        """The per-iteration lr factor of ``cfg.schedule`` over ``cfg.epochs``."""
        cfg, spe = self.cfg, self.steps_per_epoch
        if cfg.schedule in EPOCH_SCHEDULES:
            from .schedules import lr_lambda

            return lr_lambda(cfg.schedule, cfg.epochs, steps_per_epoch=spe, **cfg.schedule_kwargs())
        milestones = [round(m * spe) for m in self.resolved["milestones"]]
        return StepSchedule(cfg.schedule, spe * cfg.epochs, milestones, cfg.gamma)

    def _tensorboard_writer(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(log_dir=str(self.out / "tb"))

    # ---------------------------------------------------------------- steps
    def _penalty(self) -> Tensor | None:
        if self.penalty_kind is None:
            return None
        from . import ortho
        from .models import pre_svd_modules

        coef = self.cfg.penalty_coef
        if coef is None:
            coef = ortho.srip_schedule(self.epoch) if self.penalty_kind == "srip" else PENALTY_COEFFICIENT
        if coef == 0:
            return None
        weights = [m.weight for m in pre_svd_modules(self.model)]
        return ortho.orthogonality_penalty(weights, self.penalty_kind, coefficient=coef)

    def train_epoch(self, bar: Any = None) -> dict[str, Any]:
        """One pass over the training batches; stops early on divergence (``self.failed``)."""
        model, opt, mon = self.net, self.optimizer, self.monitor
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen = 0
        sliced = getattr(self.train_batches, "per_rank", False)  # the loader sliced already
        for x, y in self.train_batches:
            if self.ddp and not sliced:
                if y.shape[0] < self.world_size:  # same global batch on every rank: all skip
                    continue
                x = x.tensor_split(self.world_size)[self.rank]
                y = y.tensor_split(self.world_size)[self.rank]
            lr = opt.param_groups[1]["lr"]
            try:
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                total = loss
                pen = self._penalty()
                if pen is not None:
                    total = loss + pen
                opt.zero_grad(set_to_none=True)
                total.backward()
            except torch.linalg.LinAlgError as exc:
                self.failed = f"linalg error at step {self.global_step}: {str(exc).splitlines()[0]}"
                break
            n_events = len(mon.events)
            # Under DDP the global-batch loss, so that every rank takes the same decisions.
            rec = mon.step(loss=self._global_loss(loss, y.shape[0]) if self.ddp else loss, lr=lr)
            if len(mon.events) > n_events:
                ev = mon.events[n_events]
                self.failed = f"non-finite {ev['kind']} at step {ev['step']}"
                break
            loss_value = mon.last_loss
            if loss_value is None:
                loss_value = float(loss.detach())
            if loss_value > self.cfg.divergence_loss:
                self.failed = f"diverged: loss {loss_value:.3g} > {self.cfg.divergence_loss:g} at step {self.global_step}"
                break
            if self.landscape is not None and self.landscape.due(self.global_step):
                self._measure_landscape(x, y)
            try:
                opt.step()
            except torch.linalg.LinAlgError as exc:
                self.failed = f"linalg error in the optimizer at step {self.global_step}: {str(exc).splitlines()[0]}"
                break
            olr = self.hooks["olr"]
            if rec is not None and olr is not None and olr.last_lr:
                # the lr OLR actually used on the Pre-SVD group (known only after the step)
                rec["olr_lr"] = olr.last_lr[0]
                if mon.writer is not None:
                    mon.writer.add_scalar("olr_lr", olr.last_lr[0], rec["step"])
            self.scheduler.step()
            self.global_step += 1
            b = y.shape[0]
            loss_sum += loss.detach().double() * b
            correct += (logits.detach().argmax(1) == y).sum()
            seen += b
            if bar is not None:
                bar.update(1)
                if rec is not None:
                    post = {"loss": f"{loss_value:.3f}"}
                    if self.cond_key and rec.get(self.cond_key) is not None:
                        c = rec[self.cond_key]
                        post["log10k"] = f"{math.log10(c):.2f}" if 0 < c < math.inf else "inf"
                    bar.set_postfix(post, refresh=False)
        if self.ddp and self.failed is None:
            totals = torch.stack([loss_sum, correct.double(), loss_sum.new_tensor(float(seen))])
            dist.all_reduce(totals)
            loss_sum, correct, seen = totals[0], totals[1], int(totals[2])
        seen = max(seen, 1)
        return {"train_loss": float(loss_sum) / seen, "train_acc": float(correct) / seen}

    def _global_loss(self, loss: Tensor, n: int) -> Tensor:
        """The mean loss over the global batch (all ranks' slices of ``n`` samples each)."""
        both = torch.stack([loss.detach().double() * n, loss.new_tensor(float(n), dtype=torch.float64)])
        dist.all_reduce(both)
        return (both[0] / both[1]).to(loss.dtype)

    def _measure_landscape(self, x: Tensor, y: Tensor) -> None:
        """One :class:`~orthocond.landscape.LandscapeProbe` record on the current batch
        (after the backward, before the update; the probe leaves the model, its buffers,
        the gradients and the RNG streams as they were). An eigensolver failure on the
        perturbed features skips the record instead of failing the run."""
        assert self.landscape is not None
        try:
            self.landscape.measure(x, y, step=self.global_step)
        except torch.linalg.LinAlgError as exc:
            self.log(f"[{self.cfg.label}] landscape probe skipped at step {self.global_step}: "
                     f"{str(exc).splitlines()[0]}")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Test loss and accuracy (model in eval mode, capture paused)."""
        model = self.model
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        n = 0
        with self.monitor.paused():
            for x, y in self.test_batches:
                logits = model(x)
                loss_sum += F.cross_entropy(logits.double(), y, reduction="sum")
                correct += (logits.argmax(1) == y).sum()
                n += y.shape[0]
        model.train()
        n = max(n, 1)
        loss, acc = float(loss_sum) / n, float(correct) / n
        return {"test_loss": loss if math.isfinite(loss) else math.inf, "test_acc": acc}

    # ---------------------------------------------------------------- loop
    def fit(self) -> RunResult:
        """Train from ``self.epoch`` to ``cfg.epochs`` (evaluating and checkpointing every
        epoch); returns the :class:`RunResult` (also written to ``out/summary.json``)."""
        cfg = self.cfg
        bar = None
        if self.progress and sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm

                bar = tqdm(
                    total=self.steps_per_epoch * cfg.epochs, initial=self.global_step,
                    desc=cfg.label, unit="step", dynamic_ncols=True, leave=False,
                )  # fmt: skip
            except ImportError:
                bar = None
        try:
            while self.epoch < cfg.epochs and self.failed is None:
                t0 = time.perf_counter()
                if self.hybrid is not None and self.hybrid.on_epoch_start(self.epoch):
                    msg = (f"[{cfg.label}] epoch {self.epoch}: hybrid switch, meta-layers now "
                           f"eig/{self.hybrid.backward}")
                    if bar is not None:
                        bar.write(msg)
                    else:
                        self.log(msg)
                meta = _meta_method(self.model)
                stats = self.train_epoch(bar)
                if self.failed is not None:
                    self.elapsed += time.perf_counter() - t0
                    break
                stats.update(self.evaluate())
                self.epoch += 1
                self.elapsed += time.perf_counter() - t0
                stats.update(
                    epoch=self.epoch, step=self.global_step,
                    lr=self.optimizer.param_groups[1]["lr"], time_s=self.elapsed, **meta,
                )  # fmt: skip
                self.epoch_log.append(stats)
                if self.monitor.writer is not None:
                    for k in ("train_loss", "train_acc", "test_loss", "test_acc"):
                        if math.isfinite(stats[k]):
                            self.monitor.writer.add_scalar(f"epoch/{k}", stats[k], self.epoch)
                if bar is not None:
                    bar.write(
                        f"[{cfg.label}] epoch {self.epoch}/{cfg.epochs} "
                        f"loss {stats['train_loss']:.3f} test acc {100 * stats['test_acc']:.2f}%"
                    )
                if self.out is not None:
                    self._write_outputs(final=False)
                    if cfg.checkpoint:
                        self.save(self.out / CHECKPOINT_NAME)
        finally:
            if bar is not None:
                bar.close()
        result = self.result()
        if self.out is not None:
            self._write_outputs(final=True, result=result)
        if self.monitor.writer is not None:
            self.monitor.writer.flush()
        return result

    def result(self) -> RunResult:
        """The :class:`RunResult` of the run so far."""
        summary = self.monitor.summary()
        accs = [e["test_acc"] for e in self.epoch_log]
        res = RunResult(
            label=self.cfg.label, seed=self.cfg.seed, config=self.cfg.to_dict(),
            failed=self.failed is not None, reason=self.failed,
            epochs_completed=self.epoch, steps=self.global_step, wall_s=self.elapsed,
            final_acc=accs[-1] if accs and self.failed is None else None,
            best_acc=max(accs) if accs and self.failed is None else None,
            epochs=[dict(e) for e in self.epoch_log], summary=summary, cond_key=self.cond_key,
        )  # fmt: skip
        if self.cond_key is not None:
            steps, vals = self.monitor.series(self.cond_key)
            res.cond_steps, res.cond_values = steps, vals
            finite = [v for v in vals if v is not None]
            if finite:
                res.cond_max = max(finite)
                # "final": geometric mean over the records of the last epoch (less noisy).
                start = self.global_step - self.steps_per_epoch
                last = [v for s, v in zip(steps, vals) if v is not None and s >= start] or finite[-1:]
                if all(0 < v < math.inf for v in last):
                    res.cond_final = float(math.exp(sum(math.log(v) for v in last) / len(last)))
                else:
                    res.cond_final = math.inf
        # of the weights as they are now, not of the last record (up to monitor_every steps
        # old, and before that step's update: Cayley SGD projects at its first step)
        now = self.monitor.weight_metrics()
        res.ortho_err = next((v for k, v in now.items() if k.startswith("ortho_err/")), None)
        res.weight_norm = next((v for k, v in now.items() if k.startswith("weight_norm/")), None)
        return res

    def _write_outputs(self, *, final: bool, result: RunResult | None = None) -> None:
        out = self.out
        assert out is not None
        out.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(jsonable({"kind": "step", **r})) for r in self.monitor.history]
        lines += [json.dumps(jsonable({"kind": "epoch", **e})) for e in self.epoch_log]
        _atomic_write(out / "metrics.jsonl", "\n".join(lines) + ("\n" if lines else ""))
        self.monitor.write_csv(out / "steps.csv")
        if self.landscape is not None:
            payload = {
                "label": self.cfg.label, "seed": self.cfg.seed, "every": self.landscape.every,
                "num_steps": self.cfg.landscape_steps,
                "records": [r.to_dict() for r in self.landscape.history],
            }  # fmt: skip
            _atomic_write(out / LANDSCAPE_NAME, json.dumps(jsonable(payload), indent=1) + "\n")
        if final:
            res = result or self.result()
            _atomic_write(out / "summary.json", json.dumps(res.to_dict(), indent=1) + "\n")
            if self.cfg.plots:
                plot_run(res, out)
                if self.landscape is not None and self.landscape.history and _pyplot() is not None:
                    from .landscape import plot_landscape

                    plot_landscape({self.cfg.label: self.landscape.history}, out / "landscape.png")

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a bit-for-bit resume needs."""
        return {
            "version": _CKPT_VERSION,
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "elapsed": self.elapsed,
            "failed": self.failed,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "hooks": {
                "nog": None if self.hooks["nog"] is None else {
                    "method": self.cfg.nog, "scale": self.cfg.nog_scale, "rtol": self.cfg.nog_rtol
                },
                "olr": None if self.hooks["olr"] is None else self.hooks["olr"].state_dict(),
            },
            "monitor": self.monitor.state_dict(),
            "hybrid": None if self.hybrid is None else self.hybrid.state_dict(),
            "landscape": None if self.landscape is None else self.landscape.state_dict(),
            "epoch_log": [dict(e) for e in self.epoch_log],
            "data": self.train_batches.state_dict(),
            "rng": _rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the config must describe the same run)."""
        _check_same_run(self.cfg, TrainConfig.from_dict(state["config"]))
        if (state["hooks"]["nog"] is None) != (self.hooks["nog"] is None) or (
            state["hooks"]["olr"] is None
        ) != (self.hooks["olr"] is None):
            raise ValueError("the checkpoint's NOG/OLR configuration differs from this run's")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["hooks"]["olr"] is not None:
            self.hooks["olr"].load_state_dict(state["hooks"]["olr"])
        self.monitor.load_state_dict(state["monitor"])
        self.train_batches.load_state_dict(state["data"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.elapsed = float(state["elapsed"])
        self.failed = state["failed"]
        self.epoch_log = [dict(e) for e in state["epoch_log"]]
        if self.hybrid is not None and state.get("hybrid") is not None:
            self.hybrid.load_state_dict(state["hybrid"])  # re-applies a past switch
            if not self.hybrid.switched:  # "auto" follows a grown epoch budget
                self.hybrid.switch_epoch = self.cfg.hybrid_epoch()
        if self.landscape is not None and state.get("landscape") is not None:
            self.landscape.load_state_dict(state["landscape"])
        _set_rng_state(state["rng"])
        # The schedule's length follows the (possibly longer) epochs of this run: cosine
        # anneals over the new total, the epoch schedules and the default (fractional)
        # multistep milestones are stretched onto the new budget, as the hybrid "auto"
        # switch is; milestones given in epochs stay where they were.
        saved_epochs = TrainConfig.from_dict(state["config"]).epochs
        fresh = self._schedule_fn()
        for fn in self.scheduler.lr_lambdas:
            if isinstance(fn, StepSchedule) and self.cfg.milestones is not None:
                fn.total_steps = self.steps_per_epoch * self.cfg.epochs
            elif type(fn) is type(fresh):  # default milestones are fractions of the budget
                fn.__dict__.update(fresh.__dict__)
        if saved_epochs != self.cfg.epochs:  # the lr of the next step, on the new schedule
            sched = self.scheduler
            for group, base, fn in zip(self.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
                group["lr"] = base * fn(sched.last_epoch)
            sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Atomic checkpoint (tmp file + ``os.replace``)."""
        save_checkpoint(self.state_dict(), path)

    def resume(self, path: Union[str, os.PathLike]) -> None:
        """Load a checkpoint written by :meth:`save`."""
        self.load_state_dict(load_checkpoint(path))


_RESUME_FREE = {"epochs", "device", "tensorboard", "plots", "checkpoint", "workers", "download",
                "data_dir", "treatment"}


def _check_same_run(cfg: TrainConfig, saved: TrainConfig) -> None:
    """ValueError unless ``cfg`` describes the run of ``saved`` (``epochs``, ``device`` and
    output options may differ; a treatment name is compared through its meaning)."""
    mine, theirs = cfg.to_dict(), saved.to_dict()
    mine["eps"], theirs["eps"] = cfg.resolved()["eps"], saved.resolved()["eps"]  # None = default
    diff = sorted(k for k in mine if k not in _RESUME_FREE and mine[k] != theirs[k])
    if diff:
        raise ValueError(
            "the checkpoint was written by a different configuration; differing settings: "
            + ", ".join(f"{k}={theirs[k]!r} in the checkpoint, {mine[k]!r} now" for k in diff)
        )


def clear_run_outputs(out: Union[str, os.PathLike]) -> None:
    """Remove what a run wrote into ``out`` (:data:`RUN_FILES` and ``tb/``), so that a fresh
    run there leaves no file of the previous one (TensorBoard would merge the two runs)."""
    import shutil

    out = Path(out)
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    if (out / "tb").is_dir():
        shutil.rmtree(out / "tb")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- entry points


def train(
    cfg: TrainConfig,
    *,
    out: Union[str, os.PathLike, None] = None,
    resume: bool = False,
    data: DataSplits | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    sync_bn: bool | None = None,
) -> RunResult:
    """Train one run; with ``resume`` continue from ``out/checkpoint.pt``: ``cfg`` must
    describe the same run (``epochs`` may grow; ``device`` and output options may change).

    Under ``torchrun --nproc_per_node=R`` (:func:`distributed_env` not None) this
    initialises the process group (``gloo`` on the CPU, ``nccl`` on CUDA with device
    ``cuda:LOCAL_RANK``), trains with DistributedDataParallel (see :class:`Trainer`;
    ``sync_bn``: synchronised decorrelated BN, default on) and destroys the group at the
    end. Only rank 0 writes ``out`` (metrics, checkpoints, plots, TensorBoard), shows the
    progress bar and logs; every rank returns the same :class:`RunResult`.

    Raises:
        FileNotFoundError: ``resume`` without a checkpoint in ``out``.
    """
    env = distributed_env()
    own_group = False
    if env is not None and not dist.is_initialized():
        if not dist.is_available():
            raise ValueError("WORLD_SIZE > 1 (torchrun) but torch.distributed is not available")
        rank, world, local = env
        if resolve_device(cfg.device).type == "cuda":
            if local >= torch.cuda.device_count():
                raise ValueError(
                    f"LOCAL_RANK {local} needs cuda:{local} but only {torch.cuda.device_count()} "
                    "CUDA device(s) are visible; use --nproc_per_node <= the GPU count"
                )
            torch.cuda.set_device(local)
            backend = "nccl"
        else:
            backend = "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        own_group = True
    try:
        if _ddp_active() and dist.get_rank() != 0:
            out_rank, progress, log = None, False, (lambda msg: None)
        else:
            out_rank = out
        return _train(cfg, out=out, out_rank=out_rank, resume=resume, data=data,
                      progress=progress, log=log, sync_bn=sync_bn)
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(
    cfg: TrainConfig,
    *,
    out: Union[str, os.PathLike, None],
    out_rank: Union[str, os.PathLike, None],
    resume: bool,
    data: DataSplits | None,
    progress: bool,
    log: Callable[[str], None] | None,
    sync_bn: bool | None,
) -> RunResult:
    if resume:
        if out is None:
            raise ValueError("resume=True needs out= (the run directory holding checkpoint.pt)")
        path = Path(out) / CHECKPOINT_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"--resume: no checkpoint at {str(path)!r}; run without --resume first "
                "(checkpoints are written at the end of every epoch)"
            )
        state = load_checkpoint(path)
        _check_same_run(cfg, TrainConfig.from_dict(state["config"]))
        trainer = Trainer(cfg, data=data, out=out_rank, progress=progress, log=log, sync_bn=sync_bn)
        trainer.load_state_dict(state)
    else:
        trainer = Trainer(cfg, data=data, out=out_rank, progress=progress, log=log, sync_bn=sync_bn)
    try:
        return trainer.fit()
    finally:
        trainer.monitor.close()


@torch.no_grad()
def _clean_eval(model: nn.Module, batches: Any, device: torch.device) -> tuple[float, float, int]:
    """(mean cross-entropy, accuracy, samples) of ``model`` in eval mode over ``batches``."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    try:
        for x, y in batches:
            logits = model(x)
            loss_sum += F.cross_entropy(logits.double(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            n += y.shape[0]
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("the test set is empty")
    loss = float(loss_sum) / n
    return (loss if math.isfinite(loss) else math.inf), float(correct) / n, n


def _baseline_corruptions(baseline: Any) -> dict[str, Any]:
    """The corruption result inside ``baseline``: an :func:`evaluate_checkpoint` result
    (its ``"corruptions"``) or an :func:`~orthocond.robustness.evaluate_corruptions`
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
    ``corruptions``, also :func:`orthocond.robustness.evaluate_corruptions` (corruptions
    generated on the fly from ``seed``: the result is deterministic given ``seed``).

    Args:
        path: ``checkpoint.pt`` or the run directory holding it.
        corruptions: names of :data:`orthocond.robustness.CORRUPTIONS` (None: clean only).
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
    from . import robustness
    from .hybrid import meta_layer_methods

    ckpt = Path(path)
    if ckpt.is_dir():
        ckpt = ckpt / CHECKPOINT_NAME
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if baseline is not None and not corruptions:
        raise ValueError("a baseline needs corruptions to compare (--corruptions)")
    state = load_checkpoint(ckpt)
    changes: dict[str, Any] = {"tensorboard": False, "plots": False, "checkpoint": False}
    if device is not None:
        changes["device"] = device
    if data_dir is not None:
        changes["data_dir"] = str(data_dir)
    cfg = TrainConfig.from_dict(state["config"]).replace(**changes)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    dev = resolve_device(cfg.device)
    if data is None:
        data = load_dataset(
            cfg.dataset, data_dir=cfg.data_dir, download=cfg.download,
            limit_train=cfg.limit_train, limit_test=cfg.limit_test, num_workers=cfg.workers,
        )  # fmt: skip
    _seed_everything(cfg.seed)
    model = build_model(cfg, data).to(dev)
    model.load_state_dict(state["model"])
    hybrid = build_hybrid(cfg, model)
    if hybrid is not None and state.get("hybrid") is not None:
        hybrid.load_state_dict(state["hybrid"])
    bs = batch_size or max(cfg.batch_size, 256)
    batches = data.test_batches(bs, device=dev)
    loss, acc, n = _clean_eval(model, batches, dev)
    result: dict[str, Any] = {
        "checkpoint": str(ckpt), "label": cfg.label, "epoch": int(state["epoch"]),
        "config": cfg.to_dict(),
        "meta_layers": {k: list(v) for k, v in meta_layer_methods(model).items()},
        "num_samples": n, "clean_accuracy": acc, "clean_loss": loss, "seed": seed,
        "corruptions": None,
    }  # fmt: skip
    if corruptions:
        result["corruptions"] = robustness.evaluate_corruptions(
            model, batches, corruptions=tuple(corruptions), severities=tuple(severities),
            mean=data.mean, std=data.std, seed=seed, batch_size=bs, device=dev,
            baseline=None if baseline is None else _baseline_corruptions(baseline),
        )  # fmt: skip
    return jsonable(result)


def aggregate(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One row per treatment (in first-seen order) over its seeds: accuracy mean/std of
    the successful runs, κ final (geometric mean over seeds) and max, orthogonality error and
    weight norm (mean), failure count and, of those, the runs that hit a NaN/Inf
    (``nonfinite``; the others diverged or had an eigensolver error)."""
    rows: dict[str, list[RunResult]] = {}
    for r in results:
        rows.setdefault(r.label, []).append(r)
    table = []
    for label, runs in rows.items():
        ok = [r for r in runs if not r.failed and r.final_acc is not None]
        accs = [100.0 * r.final_acc for r in ok]
        finals = [r.cond_final for r in runs if r.cond_final is not None]
        maxes = [r.cond_max for r in runs if r.cond_max is not None]
        errs = [r.ortho_err for r in runs if r.ortho_err is not None]
        norms = [r.weight_norm for r in runs if r.weight_norm is not None]
        table.append({
            "treatment": label,
            "runs": len(runs),
            "failed": len(runs) - len(ok),
            "nonfinite": sum(1 for r in runs if r.failed and (r.reason or "").startswith("non-finite")),
            "acc_mean": float(np.mean(accs)) if accs else None,
            "acc_std": float(np.std(accs)) if len(accs) > 1 else (0.0 if accs else None),
            "cond_final": _geomean(finals),
            "cond_max": max(maxes) if maxes else None,
            "ortho_err": float(np.mean(errs)) if errs else None,
            "weight_norm": float(np.mean(norms)) if norms else None,
            "wall_s": float(sum(r.wall_s for r in runs)),
            "reasons": [r.reason for r in runs if r.failed],
        })  # fmt: skip
    return table


def _geomean(vals: Sequence[float]) -> float | None:
    if not vals:
        return None
    if any(not (0 < v < math.inf) for v in vals):
        return math.inf
    return float(math.exp(sum(math.log(v) for v in vals) / len(vals)))


def _fmt(v: float | None, spec: str) -> str:
    if v is None:
        return "—"
    if math.isinf(v):
        return "inf"
    return format(v, spec)


def _failed_cell(row: dict[str, Any]) -> str:
    cell = f"{row['failed']}/{row['runs']}"
    nonfinite = row.get("nonfinite", 0)
    return cell + (f" ({nonfinite} NaN/Inf)" if nonfinite else "")


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`aggregate` rows."""
    head = (
        "| treatment | test acc % (mean ± std) | κ(Σ) final | κ(Σ) max | ortho err | ‖W‖_F | failed |\n"
        "|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        acc = "—" if r["acc_mean"] is None else f"{r['acc_mean']:.2f} ± {r['acc_std']:.2f}"
        lines.append(
            f"| {r['treatment']} | {acc} | {_fmt(r['cond_final'], '.3g')} | {_fmt(r['cond_max'], '.3g')} "
            f"| {_fmt(r['ortho_err'], '.3g')} | {_fmt(r['weight_norm'], '.3g')} | {_failed_cell(r)} |"
        )
    return "\n".join(lines)


def compare(
    base: TrainConfig,
    treatments: Sequence[str] = DEFAULT_TREATMENTS,
    *,
    seeds: int = 1,
    out: Union[str, os.PathLike, None] = None,
    data: DataSplits | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    jobs: int = 1,
    threads: int | None = None,
) -> tuple[list[dict[str, Any]], list[RunResult]]:
    """Run every treatment for seeds ``base.seed .. base.seed + seeds - 1`` and aggregate.

    Failed runs (non-finite values, divergence, eigensolver errors) are counted, not
    raised. With ``out``: ``compare.md``, ``compare.json``, ``condition.png`` (log10 κ vs
    step, one line per treatment), ``accuracy.png`` and ``runs/<treatment>-s<seed>/``
    (metrics.jsonl, steps.csv, summary.json).

    Args:
        base (TrainConfig): settings shared by all runs (its treatment fields are replaced).
        treatments (sequence of str): treatment names (:func:`parse_treatment`).
        seeds (int): runs per treatment. Default 1.
        out (path, optional): output folder.
        data (DataSplits, optional): preloaded data (``jobs=1`` only; workers load their own).
        progress (bool): progress bars (``jobs=1`` only).
        log (callable): receives one line per finished run.
        jobs (int): runs trained at the same time, each in its own process (``spawn``).
            Small CPU models gain nothing from intra-op threads, so on a 2-core CPU two
            single-threaded jobs train about twice as fast as one two-threaded run. Default 1.
        threads (int, optional): ``torch.set_num_threads`` in each run (None: unchanged).

    Returns:
        (rows of :func:`aggregate`, the individual :class:`RunResult` list, in grid order)
    """
    if distributed_env() is not None or _ddp_active():
        raise ValueError(
            "compare does not support torchrun / distributed training (WORLD_SIZE > 1); run "
            "`orthocond compare` as a single process (--jobs N trains runs in parallel) or "
            "`orthocond train` under torchrun"
        )
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive int, got {seeds!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    if not treatments:
        raise ValueError("treatments must name at least one treatment")
    for t in treatments:
        parse_treatment(t)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    outp = Path(out) if out is not None else None
    grid: list[tuple[TrainConfig, Path | None]] = []
    for t in treatments:
        for k in range(seeds):
            cfg = base.replace(
                treatment=t, seed=base.seed + k, checkpoint=False, tensorboard=False, plots=False
            )
            run_out = None if outp is None else outp / "runs" / f"{_slug(t)}-s{cfg.seed}"
            grid.append((cfg, run_out))

    def report(res: RunResult) -> None:
        acc = "failed" if res.failed else f"acc {100 * (res.final_acc or 0):.2f}%"
        log(
            f"[compare] {res.label} seed {res.seed}: {acc}, κ final {_fmt(res.cond_final, '.3g')}, "
            f"max {_fmt(res.cond_max, '.3g')} ({res.wall_s:.1f} s)"
            + (f" -- {res.reason}" if res.failed else "")
        )

    jobs = min(jobs, len(grid))
    results: list[RunResult] = []
    if jobs == 1:
        if data is None:
            data = load_dataset(
                base.dataset, data_dir=base.data_dir, download=base.download,
                limit_train=base.limit_train, limit_test=base.limit_test, num_workers=base.workers,
            )  # fmt: skip
        saved_threads = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            for cfg, run_out in grid:
                results.append(_run_one(cfg, run_out, data=data, progress=progress, log=log))
                report(results[-1])
        finally:
            torch.set_num_threads(saved_threads)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")
        slots: list[RunResult | None] = [None] * len(grid)
        with ProcessPoolExecutor(
            max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=(threads,)
        ) as pool:
            futures = {pool.submit(_run_one, cfg, run_out): i for i, (cfg, run_out) in enumerate(grid)}
            for fut in as_completed(futures):
                res = fut.result()
                slots[futures[fut]] = res
                report(res)
        results = [r for r in slots if r is not None]
    rows = aggregate(results)
    if outp is not None:
        outp.mkdir(parents=True, exist_ok=True)
        _atomic_write(outp / "compare.md", format_table(rows) + "\n")
        payload = {"config": base.to_dict(), "treatments": list(treatments), "seeds": seeds,
                   "rows": rows, "runs": [r.to_dict() for r in results]}
        _atomic_write(outp / "compare.json", json.dumps(jsonable(payload), indent=1) + "\n")
        if base.plots:
            plot_compare(results, outp)
            if base.landscape_every:
                plot_compare_landscape(
                    [(res, run_out) for res, (_, run_out) in zip(results, grid)], outp,
                    with_seed=seeds > 1,
                )  # fmt: skip
    return rows, results


def read_landscape(path: Union[str, os.PathLike]) -> list[Any]:
    """The :class:`~orthocond.landscape.LandscapeRecord` list of a run's ``landscape.json``
    (non-finite values, stored as null, come back as NaN)."""
    from .landscape import LandscapeRecord

    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
        raise ValueError(f"{str(path)!r} is not a landscape.json (no 'records' list)")

    def nan(v: Any) -> Any:
        if v is None:
            return math.nan
        return [nan(x) for x in v] if isinstance(v, list) else v

    return [
        LandscapeRecord.from_dict({k: (v if k == "step" else nan(v)) for k, v in r.items()})
        for r in payload["records"]
    ]


def plot_compare_landscape(
    runs: Sequence[tuple[RunResult, Path | None]], out: Union[str, os.PathLike], *,
    with_seed: bool = False,
) -> Path | None:
    """``landscape.png`` in ``out``: the landscape bands of every run (read from its
    ``landscape.json``) overlaid, one colour per run (label ``treatment`` or, with
    ``with_seed``, ``treatment s<seed>``). None when no run has records or matplotlib is
    missing."""
    if _pyplot() is None:
        return None
    from .landscape import plot_landscape

    histories: dict[str, list[Any]] = {}
    for res, run_out in runs:
        path = None if run_out is None else Path(run_out) / LANDSCAPE_NAME
        if path is None or not path.is_file():
            continue
        records = read_landscape(path)
        if records:
            histories[f"{res.label} s{res.seed}" if with_seed else res.label] = records
    if not histories:
        return None
    return plot_landscape(histories, Path(out) / "landscape.png",
                          title="loss landscape per treatment (CVPR 2020 probe)")


def _init_worker(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def _run_one(
    cfg: TrainConfig,
    out: Path | None,
    *,
    data: DataSplits | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    trainer = Trainer(cfg, data=data, out=out, progress=progress, log=log)
    try:
        return trainer.fit()
    finally:
        trainer.monitor.close()


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name.replace("+", "_"))


# --------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    return plt


def _log10_series(steps: Sequence[int], vals: Sequence[float | None]) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for s, v in zip(steps, vals):
        if v is not None and 0 < v < math.inf:
            xs.append(s)
            ys.append(math.log10(v))
    return xs, ys


def plot_run(result: RunResult, out: Union[str, os.PathLike]) -> list[Path]:
    """``condition.png`` (log10 κ vs step) and ``accuracy.png`` (train/test accuracy vs
    epoch) of one run; returns the written paths (none without matplotlib)."""
    plt = _pyplot()
    if plt is None:
        return []
    out = Path(out)
    written = []
    if result.cond_steps:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        xs, ys = _log10_series(result.cond_steps, result.cond_values)
        ax.plot(xs, ys, lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel(f"log10 κ ({result.cond_key})")
        ax.set_title(f"covariance condition number: {result.label}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "condition.png", dpi=110)
        plt.close(fig)
        written.append(out / "condition.png")
    if result.epochs:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ep = [e["epoch"] for e in result.epochs]
        ax.plot(ep, [100 * e["train_acc"] for e in result.epochs], "o-", label="train")
        ax.plot(ep, [100 * e["test_acc"] for e in result.epochs], "s-", label="test")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy %")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "accuracy.png", dpi=110)
        plt.close(fig)
        written.append(out / "accuracy.png")
    return written


def plot_compare(results: Sequence[RunResult], out: Union[str, os.PathLike]) -> list[Path]:
    """``condition.png``: log10 κ(Σ) vs step, one line per treatment (mean of log10 over
    seeds, min-max band with several seeds), as in the ECCV 2022 figure;
    ``accuracy.png``: test accuracy vs epoch per treatment (mean over seeds)."""
    plt = _pyplot()
    if plt is None:
        return []
    out = Path(out)
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        groups.setdefault(r.label, []).append(r)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, runs in groups.items():
        per_step: dict[int, list[float]] = {}
        for r in runs:
            for s, v in zip(*_log10_series(r.cond_steps, r.cond_values)):
                per_step.setdefault(s, []).append(v)
        if not per_step:
            continue
        xs = sorted(per_step)
        mean = [float(np.mean(per_step[s])) for s in xs]
        (line,) = ax.plot(xs, mean, lw=1.2, label=label)
        if len(runs) > 1:
            ax.fill_between(xs, [min(per_step[s]) for s in xs], [max(per_step[s]) for s in xs],
                            color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xlabel("training step")
    ax.set_ylabel("log10 κ(Σ) of the meta-layer covariance")
    ax.set_title("covariance conditioning per treatment")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "condition.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, runs in groups.items():
        per_epoch: dict[int, list[float]] = {}
        for r in runs:
            for e in r.epochs:
                per_epoch.setdefault(e["epoch"], []).append(100 * e["test_acc"])
        if per_epoch:
            xs = sorted(per_epoch)
            ax.plot(xs, [float(np.mean(per_epoch[x])) for x in xs], "o-", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    plt.close(fig)
    return [out / "condition.png", out / "accuracy.png"]
