"""Measuring what training does: covariance conditioning (:class:`ConditionMonitor`), the
loss landscape (CVPR 2020 probe), common-corruption robustness, the one evaluation loop, and
the metrics of generators (FID, PPL, VP in a digit-feature space; :mod:`.generative`)."""

from __future__ import annotations

from .condition import (
    ConditionMonitor,
    covariance_condition,
    effective_weight,
    find_pre_svd_modules,
    trainable_weight,
)
from .evaluate import Evaluation, evaluate_classifier
from .generative import (
    digit_features,
    fid,
    frechet_distance,
    latent_traversal,
    layer_conditioning,
    perceptual_path_length,
    save_traversal_grid,
    variation_predictability,
)
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
    "digit_features",
    "effective_weight",
    "evaluate_classifier",
    "evaluate_corruptions",
    "fid",
    "find_pre_svd_modules",
    "format_corruption_report",
    "frechet_distance",
    "latent_traversal",
    "layer_conditioning",
    "mean_corruption_error",
    "measure_landscape",
    "perceptual_path_length",
    "plot_landscape",
    "save_traversal_grid",
    "split_resnet",
    "trainable_weight",
    "variation_predictability",
]
