"""Distributed data parallel set-up: torchrun's environment and the process group of a run.

Under ``torchrun --nproc_per_node=R`` every rank draws the same global batch and trains on its
:func:`~orthocond.data.rank_slice`; the NOG/OLR hooks see the all-reduced gradients.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

from orthocond._checks import resolve_device

__all__ = ["ddp_active", "distributed_env", "process_group"]


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


def ddp_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# --------------------------------------------------------------------------- building


@contextlib.contextmanager
def process_group(device: str) -> Iterator[None]:
    """Under torchrun (:func:`distributed_env` not None) and without a process group yet,
    initialise one for the run (``gloo`` on the CPU; ``nccl`` on CUDA with device
    ``cuda:LOCAL_RANK``) and destroy it at the end; otherwise do nothing."""
    env = distributed_env()
    if env is None or dist.is_initialized():
        yield
        return
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 (torchrun) but torch.distributed is not available")
    rank, world, local = env
    if resolve_device(device).type == "cuda":
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
    try:
        yield
    finally:
        dist.destroy_process_group()
