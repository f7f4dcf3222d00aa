"""Measuring what training does: covariance conditioning (:class:`ConditionMonitor`), the
loss landscape (CVPR 2020 probe), common-corruption robustness, and the one evaluation loop."""

from __future__ import annotations

from .condition import (
    ConditionMonitor,
    covariance_condition,
    effective_weight,
    find_pre_svd_modules,
    trainable_weight,
)
from .evaluate import Evaluation, evaluate_classifier
from .landscape import (
    LandscapeProbe,
    LandscapeRecord,
    measure_landscape,
    plot_landscape,
    split_resnet,
)
from .robustness import (
    CORRUPTIONS,
    CORRUPTIONS_VERSION,
    SEVERITY_PARAMETERS,
    corrupt,
    evaluate_corruptions,
    format_corruption_report,
    mean_corruption_error,
)

__all__ = [
    "CORRUPTIONS",
    "CORRUPTIONS_VERSION",
    "SEVERITY_PARAMETERS",
    "ConditionMonitor",
    "Evaluation",
    "LandscapeProbe",
    "LandscapeRecord",
    "corrupt",
    "covariance_condition",
    "effective_weight",
    "evaluate_classifier",
    "evaluate_corruptions",
    "find_pre_svd_modules",
    "format_corruption_report",
    "mean_corruption_error",
    "measure_landscape",
    "plot_landscape",
    "split_resnet",
    "trainable_weight",
]
