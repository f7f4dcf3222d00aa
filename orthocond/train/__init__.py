"""Training runs: what ``orthocond train`` and ``orthocond compare`` do, as library code.

- :mod:`.config`: :class:`TrainConfig`, the single source of a run's settings and defaults
  (the command-line options are generated from it).
- :mod:`.treatments`: treatment names (``"nog-grad+olr"``) and what they mean.
- :mod:`.schedules`: the one lr-schedule engine (the CVPR 2020 GCP schedules and the usual).
- :mod:`.build`: model, optimizer (param groups by name), NOG/OLR hooks, hybrid switch.
- :mod:`.hybrid`: the ICCV 2021 hybrid NS→SVD switch.
- :mod:`.trainer`: :class:`Trainer` and :func:`train` (also under torchrun, :mod:`.distributed`).
- :mod:`.run_dir`: checkpoints, RNG state, the run folder's files.
- :mod:`.result`, :mod:`.compare`, :mod:`.plots`: results, the comparison grid and its figures.
- :mod:`.evaluate`: clean and corruption accuracy of a checkpoint.
- :mod:`.tasks`, :mod:`.gan`: what the trainer delegates per task (the classifier's loss and
  evaluation; the GAN's discriminator step, penalties, FID/PPL/VP), GAN treatments and table.

Example::

    >>> from orthocond.train import TrainConfig, train
    >>> result = train(TrainConfig(epochs=1, width=8, limit_train=512, treatment="nog-grad+olr"))
"""

from __future__ import annotations

from .build import (
    PRE_SVD_GROUP,
    REST_GROUP,
    build_hybrid,
    build_model,
    build_optimizer,
    param_group,
)
from .compare import (
    COMPARE_DEFAULTS,
    COMPARE_PRESETS,
    COMPARE_TASKS,
    TASK_COMPARE_DEFAULTS,
    compare,
    compare_tasks,
    runs_for_task,
)
from .config import ARCHS, TASK_DEFAULTS, TASKS, TrainConfig
from .distributed import distributed_env
from .evaluate import evaluate_checkpoint
from .gan import (
    GAN_DEFAULT_TREATMENTS,
    GAN_STUDY_TREATMENTS,
    GAN_TREATMENT_PARTS,
    GanTask,
    aggregate_gan,
    format_gan_table,
    parse_gan_treatment,
)
from .hybrid import HybridSwitch
from .plots import plot_compare, plot_compare_landscape, plot_run, read_landscape
from .result import RunResult, aggregate, format_table
from .run_dir import CHECKPOINT_NAME, RUN_FILES, clear_run_outputs, load_checkpoint, save_checkpoint
from .schedules import SCHEDULES, ScheduleFactor, last_decay_epoch, lr_lambda, make_scheduler
from .study import format_study, paired_rows, plot_study
from .trainer import Trainer, train
from .treatments import (
    DEFAULT_TREATMENTS,
    FAILURE_TREATMENTS,
    ORTHO_KINDS,
    PENALTY_COEFFICIENT,
    RECOMMENDED_TREATMENT,
    STUDY_TREATMENTS,
    TREATMENT_PARTS,
    UPDATE_NOG_PARTS,
    Treatment,
    parse_treatment,
)

__all__ = [
    "ARCHS",
    "CHECKPOINT_NAME",
    "COMPARE_DEFAULTS",
    "COMPARE_PRESETS",
    "COMPARE_TASKS",
    "DEFAULT_TREATMENTS",
    "FAILURE_TREATMENTS",
    "GAN_DEFAULT_TREATMENTS",
    "GAN_STUDY_TREATMENTS",
    "GAN_TREATMENT_PARTS",
    "ORTHO_KINDS",
    "PENALTY_COEFFICIENT",
    "PRE_SVD_GROUP",
    "RECOMMENDED_TREATMENT",
    "REST_GROUP",
    "RUN_FILES",
    "SCHEDULES",
    "STUDY_TREATMENTS",
    "TASKS",
    "TASK_COMPARE_DEFAULTS",
    "TASK_DEFAULTS",
    "TREATMENT_PARTS",
    "UPDATE_NOG_PARTS",
    "GanTask",
    "HybridSwitch",
    "RunResult",
    "ScheduleFactor",
    "TrainConfig",
    "Trainer",
    "Treatment",
    "aggregate",
    "aggregate_gan",
    "build_hybrid",
    "build_model",
    "build_optimizer",
    "clear_run_outputs",
    "compare",
    "compare_tasks",
    "distributed_env",
    "evaluate_checkpoint",
    "format_study",
    "format_gan_table",
    "format_table",
    "last_decay_epoch",
    "load_checkpoint",
    "lr_lambda",
    "make_scheduler",
    "paired_rows",
    "param_group",
    "parse_gan_treatment",
    "parse_treatment",
    "plot_compare",
    "plot_compare_landscape",
    "plot_run",
    "plot_study",
    "read_landscape",
    "runs_for_task",
    "save_checkpoint",
    "train",
]
