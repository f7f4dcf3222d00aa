"""The run folder: atomic checkpoints (format version 2, with the version-1 migration), the
RNG streams a bit-for-bit resume restores, and the files a run writes."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from orthocond._io import atomic_write

from .config import TrainConfig

__all__ = [
    "CHECKPOINT_NAME",
    "CHECKPOINT_VERSION",
    "LANDSCAPE_NAME",
    "RUN_FILES",
    "check_same_run",
    "clear_run_outputs",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
]

# 2: eps None = the task's default (v1 stored 1e-2 for every task, but the GCP head got 0);
# ONI/OWN centring "auto" (v1 runs centred every stem)
CHECKPOINT_VERSION = 2
CHECKPOINT_NAME = "checkpoint.pt"
LANDSCAPE_NAME = "landscape.json"
#: Everything a run writes into its output folder (besides the TensorBoard folder tb/).
RUN_FILES = (CHECKPOINT_NAME, "metrics.jsonl", "steps.csv", "summary.json", "condition.png",
             "accuracy.png", LANDSCAPE_NAME, "landscape.png")


def save_checkpoint(state: dict[str, Any], path: Union[str, os.PathLike]) -> None:
    """``torch.save`` through :func:`orthocond._io.atomic_write` (atomic on POSIX)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """Load a checkpoint written by :meth:`Trainer.save` (``weights_only`` safe)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("version") not in (1, CHECKPOINT_VERSION):
        raise ValueError(f"{str(path)!r} is not an orthocond checkpoint (version {CHECKPOINT_VERSION})")
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
    state["version"] = CHECKPOINT_VERSION


def rng_state() -> dict[str, Any]:
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


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    state_np = (n[0], n[1].numpy().astype(np.uint32), int(n[2]), int(n[3]), float(n[4]))
    np.random.set_state(state_np)  # noqa: NPY002
    random.setstate(_tuplify(state["python"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - user code may use the global generator
    torch.manual_seed(seed)


_RESUME_FREE = {"epochs", "device", "tensorboard", "plots", "checkpoint", "workers", "download",
                "data_dir", "treatment"}


def check_same_run(cfg: TrainConfig, saved: TrainConfig) -> None:
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
    out = Path(out)
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    if (out / "tb").is_dir():
        shutil.rmtree(out / "tb")

