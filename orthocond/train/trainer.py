"""The training loop: :class:`Trainer` (one run of a :class:`~orthocond.train.TrainConfig`)
and :func:`train` (a run, also under torchrun).

The Trainer builds data, model, optimizer (the Pre-SVD parameters always in a param group of
their own), NOG/OLR hooks, lr schedule (per iteration) and a
:class:`~orthocond.analysis.ConditionMonitor`; trains, evaluates, detects divergence
(non-finite loss/gradients, loss above a threshold, eigensolver failures) and writes atomic
checkpoints that resume bit-for-bit on the CPU.

Example::

    >>> from orthocond.train import TrainConfig, train
    >>> cfg = TrainConfig(task="dbn", epochs=1, width=8, limit_train=512, treatment="nog+olr")
    >>> result = train(cfg, out="runs/demo")                     # doctest: +SKIP
    >>> result.final_acc, result.summary["metrics"]["cond/bn1"]["max"]
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

from orthocond._checks import check_bool, resolve_device
from orthocond._io import atomic_write, jsonable
from orthocond.analysis import ConditionMonitor, LandscapeProbe, plot_landscape
from orthocond.data import DataSplits, load_dataset
from orthocond.nn import convert_sync_decorrelated_batchnorm

from .build import REST_GROUP, build_hybrid, build_model, build_optimizer, meta_method, param_group
from .config import TrainConfig
from .distributed import ddp_active, distributed_env, process_group
from .plots import plot_run, pyplot
from .result import RunResult, geomean
from .run_dir import (
    CHECKPOINT_NAME,
    CHECKPOINT_VERSION,
    LANDSCAPE_NAME,
    check_same_run,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from .schedules import lr_lambda
from .tasks import build_task

__all__ = ["Trainer", "train"]


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
    save). Every rank draws the same global batch (same seed) and trains on its
    :func:`~orthocond.data.rank_slice`; the recorded loss and the train statistics
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
        if sync_bn is not None:
            check_bool(sync_bn, "sync_bn")
        self.cfg = cfg
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.out = Path(out) if out is not None else None
        self.progress = bool(progress)
        self.device = resolve_device(cfg.device)
        self.ddp = ddp_active()
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
        seed_everything(cfg.seed)
        if data is None:
            data = load_dataset(
                cfg.dataset, data_dir=cfg.data_dir, download=cfg.download,
                limit_train=cfg.limit_train, limit_test=cfg.limit_test, num_workers=cfg.workers,
            )  # fmt: skip
        self.data = data
        self.resolved = cfg.resolved(data.name)
        self.model = build_model(cfg, data)
        if self.ddp and sync_bn is not False:
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
            cfg.batch_size, device=self.device, seed=cfg.seed, augment=self.resolved["augment"],
            rank=self.rank, world_size=self.world_size,
        )
        self.test_batches = data.test_batches(max(cfg.batch_size, 256), device=self.device)
        self.steps_per_epoch = len(self.train_batches)
        if self.steps_per_epoch == 0:
            raise ValueError("the training set is empty")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._schedule_fn())
        # the task's loss and evaluation (classifier; GAN: discriminator step, FID/VP, ...)
        self.task = build_task(cfg, data, self.model, self.pre_svd_params, self.test_batches, self.device)
        self.hybrid = build_hybrid(cfg, self.model)
        self.landscape = None
        if cfg.landscape_every:
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
        self.final_metrics: dict[str, Any] = {}  # the task's, once every epoch has run

    def _schedule_fn(self) -> Callable[[int], float]:
        """The per-iteration lr factor of ``cfg.schedule`` over ``cfg.epochs``."""
        cfg = self.cfg
        kwargs = cfg.schedule_kwargs()
        if cfg.schedule == "multistep":
            kwargs = {"milestones": self.resolved["milestones"], "gamma": cfg.gamma}
        return lr_lambda(cfg.schedule, cfg.epochs, steps_per_epoch=self.steps_per_epoch, **kwargs)

    def _tensorboard_writer(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(log_dir=str(self.out / "tb"))

    # ---------------------------------------------------------------- steps
    def train_epoch(self, bar: Any = None) -> dict[str, Any]:
        """One pass over the training batches; stops early on divergence (``self.failed``)."""
        model, opt, mon = self.net, self.optimizer, self.monitor
        model.train()
        sums: dict[str, Tensor] = {}
        seen = 0
        for x, y in self.train_batches:  # under DDP: this rank's slice of the global batch
            lr = param_group(opt, REST_GROUP)["lr"]
            try:
                loss, total, batch_sums = self.task.loss(model, x, y, self.epoch)
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
            for k, v in batch_sums.items():
                sums[k] = sums[k] + v if k in sums else v
            seen += y.shape[0]
            if bar is not None:
                bar.update(1)
                if rec is not None:
                    post = {"loss": f"{loss_value:.3f}"}
                    if self.cond_key and rec.get(self.cond_key) is not None:
                        c = rec[self.cond_key]
                        post["log10k"] = f"{math.log10(c):.2f}" if 0 < c < math.inf else "inf"
                    bar.set_postfix(post, refresh=False)
        keys = sorted(sums)
        totals = torch.stack([sums[k] for k in keys] + [torch.tensor(float(seen), dtype=torch.float64, device=self.device)])
        if self.ddp and self.failed is None:
            dist.all_reduce(totals)
        seen = max(int(totals[-1]), 1)
        return {k: float(v) / seen for k, v in zip(keys, totals[:-1])}

    def _global_loss(self, loss: Tensor, n: int) -> Tensor:
        """The mean loss over the global batch (all ranks' slices of ``n`` samples each)."""
        both = torch.stack([loss.detach().double() * n, loss.new_tensor(float(n), dtype=torch.float64)])
        dist.all_reduce(both)
        return (both[0] / both[1]).to(loss.dtype)

    def _measure_landscape(self, x: Tensor, y: Tensor) -> None:
        """One :class:`~orthocond.analysis.LandscapeProbe` record on the current batch
        (after the backward, before the update; the probe leaves the model, its buffers,
        the gradients and the RNG streams as they were). An eigensolver failure on the
        perturbed features skips the record instead of failing the run."""
        assert self.landscape is not None
        try:
            self.landscape.measure(x, y, step=self.global_step)
        except torch.linalg.LinAlgError as exc:
            self.log(f"[{self.cfg.label}] landscape probe skipped at step {self.global_step}: "
                     f"{str(exc).splitlines()[0]}")

    def evaluate(self) -> dict[str, Any]:
        """The task's evaluation (classifier: test loss and accuracy in eval mode, capture
        paused, the model's mode restored; GAN: FID)."""
        return self.task.evaluate()

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
                meta = meta_method(self.model)
                stats = self.train_epoch(bar)
                if self.failed is not None:
                    self.elapsed += time.perf_counter() - t0
                    break
                stats.update(self.evaluate())
                self.epoch += 1
                self.elapsed += time.perf_counter() - t0
                stats.update(
                    epoch=self.epoch, step=self.global_step,
                    lr=param_group(self.optimizer, REST_GROUP)["lr"], time_s=self.elapsed, **meta,
                )  # fmt: skip
                self.epoch_log.append(stats)
                if self.monitor.writer is not None:
                    for k, v in stats.items():
                        if isinstance(v, float) and k not in ("lr", "time_s") and math.isfinite(v):
                            self.monitor.writer.add_scalar(f"epoch/{k}", v, self.epoch)
                if bar is not None:
                    bar.write(f"[{cfg.label}] epoch {self.epoch}/{cfg.epochs} {self.task.describe(stats)}")
                if self.out is not None:
                    self._write_outputs(final=False)
                    if cfg.checkpoint:
                        self.save(self.out / CHECKPOINT_NAME)
        finally:
            if bar is not None:
                bar.close()
        if self.failed is None and self.epoch >= cfg.epochs:
            self.final_metrics = self.task.final_metrics()
        result = self.result()
        if self.out is not None:
            self._write_outputs(final=True, result=result)
        if self.monitor.writer is not None:
            self.monitor.writer.flush()
        return result

    def result(self) -> RunResult:
        """The :class:`RunResult` of the run so far."""
        summary = self.monitor.summary()
        accs = [e["test_acc"] for e in self.epoch_log if "test_acc" in e]
        res = RunResult(
            label=self.cfg.label, seed=self.cfg.seed, config=self.cfg.to_dict(),
            failed=self.failed is not None, reason=self.failed,
            epochs_completed=self.epoch, steps=self.global_step, wall_s=self.elapsed,
            final_acc=accs[-1] if accs and self.failed is None else None,
            best_acc=max(accs) if accs and self.failed is None else None,
            epochs=[dict(e) for e in self.epoch_log], summary=summary, cond_key=self.cond_key,
            metrics=dict(self.final_metrics),
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
                res.cond_final = geomean(last)
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
        atomic_write(out / "metrics.jsonl", "\n".join(lines) + ("\n" if lines else ""))
        self.monitor.write_csv(out / "steps.csv")
        if self.landscape is not None:
            payload = {
                "label": self.cfg.label, "seed": self.cfg.seed, "every": self.landscape.every,
                "num_steps": self.cfg.landscape_steps,
                "records": [r.to_dict() for r in self.landscape.history],
            }  # fmt: skip
            atomic_write(out / LANDSCAPE_NAME, json.dumps(jsonable(payload), indent=1) + "\n")
        if final:
            res = result or self.result()
            self.task.write_outputs(out)
            atomic_write(out / "summary.json", json.dumps(res.to_dict(), indent=1) + "\n")
            if self.cfg.plots:
                plot_run(res, out)
                if self.landscape is not None and self.landscape.history and pyplot() is not None:
                    plot_landscape({self.cfg.label: self.landscape.history}, out / "landscape.png")

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a bit-for-bit resume needs."""
        return {
            "version": CHECKPOINT_VERSION,
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
                    "method": self.cfg.nog, "scale": self.cfg.nog_scale, "rtol": self.cfg.nog_rtol,
                    "target": self.cfg.nog_target,
                },
                "olr": None if self.hooks["olr"] is None else self.hooks["olr"].state_dict(),
            },
            "monitor": self.monitor.state_dict(),
            "hybrid": None if self.hybrid is None else self.hybrid.state_dict(),
            "task": self.task.state_dict(),
            "landscape": None if self.landscape is None else self.landscape.state_dict(),
            "epoch_log": [dict(e) for e in self.epoch_log],
            "data": self.train_batches.state_dict(),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the config must describe the same run)."""
        check_same_run(self.cfg, TrainConfig.from_dict(state["config"]))
        if (state["hooks"]["nog"] is None) != (self.hooks["nog"] is None) or (
            state["hooks"]["olr"] is None
        ) != (self.hooks["olr"] is None):
            raise ValueError("the checkpoint's NOG/OLR configuration differs from this run's")
        self.model.load_state_dict(state["model"])
        names = [g.get("name") for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, name in zip(self.optimizer.param_groups, names):
            group["name"] = name  # a version-1 checkpoint's groups carry no names
        self.scheduler.load_state_dict(state["scheduler"])
        if state["hooks"]["olr"] is not None:
            self.hooks["olr"].load_state_dict(state["hooks"]["olr"])
        self.monitor.load_state_dict(state["monitor"])
        self.task.load_state_dict(state.get("task") or {})
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
        set_rng_state(state["rng"])
        # The schedule follows the (possibly longer) epochs of this run: cosine anneals over
        # the new total, the epoch schedules and the default (fractional) multistep
        # milestones are stretched onto the new budget, as the hybrid "auto" switch is;
        # milestones given in epochs stay where they were. The loaded lambdas are replaced
        # whole (a version-1 checkpoint stored another schedule class's attributes).
        saved_epochs = TrainConfig.from_dict(state["config"]).epochs
        fresh = self._schedule_fn()
        for fn in self.scheduler.lr_lambdas:
            fn.__dict__.clear()
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
    with process_group(cfg.device):
        if ddp_active() and dist.get_rank() != 0:
            out_rank, progress, log = None, False, (lambda msg: None)
        else:
            out_rank = out
        return _train(cfg, out=out, out_rank=out_rank, resume=resume, data=data,
                      progress=progress, log=log, sync_bn=sync_bn)


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
        check_same_run(cfg, TrainConfig.from_dict(state["config"]))
        trainer = Trainer(cfg, data=data, out=out_rank, progress=progress, log=log, sync_bn=sync_bn)
        trainer.load_state_dict(state)
    else:
        trainer = Trainer(cfg, data=data, out=out_rank, progress=progress, log=log, sync_bn=sync_bn)
    try:
        return trainer.fit()
    finally:
        trainer.monitor.close()

