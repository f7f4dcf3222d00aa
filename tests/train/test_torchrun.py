"""``orthocond train`` under torchrun (2 CPU processes, gloo), and the torchrun guards.

The launched run (NOG + OLR, synchronised decorrelated BN, DDP) must exit 0 with exactly one
summary.json (rank 0 writes, rank 1 writes nothing) holding a finite accuracy, and a checkpoint
of the unwrapped model. Not checked: equality of the final weights with a single-process run --
the ResNet's plain ``BatchNorm2d`` layers use per-rank batch statistics (nn.SyncBatchNorm does
not run on the CPU), so the two runs differ by design.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from orthocond.train import (
    CHECKPOINT_NAME,
    TrainConfig,
    compare,
    distributed_env,
    load_checkpoint,
)

gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed gloo unavailable"
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_under_torchrun(args: list[str], out: Path) -> subprocess.CompletedProcess:
    """`orthocond train ARGS` in 2 CPU processes (1 epoch, width 4); asserts exit 0."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "orthocond", "train",
        *args, "--epochs", "1", "--width", "4", "--quiet", "--no-plots", "--no-tensorboard",
        "--out", str(out), "--device", "cpu", "--threads", "1",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@gloo
def test_train_under_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _train_under_torchrun(
        ["--limit-train", "256", "--limit-test", "128", "--batch-size", "64", "--nog", "--olr"],
        out,
    )
    summaries = sorted(tmp_path.rglob("summary.json"))
    assert summaries == [out / "summary.json"]
    assert proc.stdout.count("test acc") == 1  # only rank 0 prints the summary
    res = json.loads(summaries[0].read_text())
    assert not res["failed"]
    assert isinstance(res["final_acc"], float) and math.isfinite(res["final_acc"])
    assert 0.0 <= res["final_acc"] <= 1.0
    # 256 images / global batch 64 = 4 steps: each rank trained on half of every global batch.
    assert res["steps"] == 4 and res["epochs_completed"] == 1
    assert math.isfinite(res["epochs"][0]["train_loss"])
    state = load_checkpoint(out / CHECKPOINT_NAME)
    assert not any(k.startswith("module.") for k in state["model"])  # DDP unwrapped
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not list(tmp_path.rglob(".*.tmp"))


@gloo
def test_imagefolder_under_torchrun(tmp_path: Path) -> None:
    # that each rank loads only its slice: tests/test_data.py (per-sample augmentation test)
    pil = pytest.importorskip("PIL.Image")
    import numpy as np

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for cls in ("cat", "dog"):
            folder = tmp_path / "data" / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                pil.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "run"
    _train_under_torchrun(
        ["--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"), "--workers", "0",
         "--batch-size", "4"],
        out,
    )
    res = json.loads((out / "summary.json").read_text())
    # 12 images / global batch 4 = 3 steps, each rank decoding 2 images per step
    assert not res["failed"] and res["steps"] == 3



def test_distributed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert distributed_env() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed_env() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="RANK"):
        distributed_env()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed_env() == (3, 4, 1)


def test_compare_refuses_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match="torchrun"):
        compare(TrainConfig(epochs=1, width=4, limit_train=64), ["vanilla"])
    from orthocond.cli import main

    assert main(["compare", "--epochs", "1", "--limit-train", "64", "--quiet"]) == 2
