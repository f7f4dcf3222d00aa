"""The single source of a run's settings and defaults: :class:`TrainConfig`.

Every field carries its command-line metadata (option group, help, choices, how to parse it),
from which :mod:`orthocond.cli` generates the ``train`` and ``compare`` options: the name,
type, default and help of each option are written here once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from orthocond import linalg
from orthocond._checks import check_choice, check_float, check_int
from orthocond.data import DATASETS
from orthocond.models.resnet import CIFAR_DEPTHS, GCP_DEPTHS
from orthocond.optim import NOG_METHODS, NOG_SCALES, NOG_TARGETS, OLR_MODES
from orthocond.ortho import PENALTY_KINDS

from .gan import GAN_ARCHS, parse_gan_treatment
from .schedules import EPOCH_SCHEDULES, SCHEDULES, last_decay_epoch
from .treatments import ORTHO_KINDS, parse_treatment, treatment_label

__all__ = ["ARCHS", "TASKS", "TASK_DEFAULTS", "TrainConfig", "cli_fields", "task_default_text"]

TASKS = ("dbn", "gcp", "gan")
#: Architectures per task (the first is the task's default).
ARCHS = {
    "dbn": tuple(f"resnet{d}" for d in CIFAR_DEPTHS),
    "gcp": tuple(f"resnet{d}" for d in GCP_DEPTHS),
    "gan": GAN_ARCHS,
}
#: What ``None`` means for the task-dependent fields (DBN: ECCV 2022; GCP: iSQRT-COV).
TASK_DEFAULTS = {
    "dbn": {"lr": 0.1, "weight_decay": 5e-4, "method": "eig", "eps": 1e-2, "epochs": 4, "batch_size": 128},
    "gcp": {"lr": 0.1, "weight_decay": 1e-4, "method": "ns", "eps": 0.0, "epochs": 4, "batch_size": 128},
    # GAN (TPAMI 2023): Adam 2e-4, batch 64, constant lr; method/eps unused (no meta-layer)
    "gan": {"lr": 2e-4, "weight_decay": 0.0, "method": "eig", "eps": 0.0, "epochs": 4, "batch_size": 64},
}
# Paper lr milestones as fractions of the run (DBN: 100/200/300 of 350 epochs;
# GCP iSQRT-COV PyTorch re-run: 30/45/60 of 65 epochs).
_MILESTONE_FRACTIONS = {
    "dbn": (100 / 350, 200 / 350, 300 / 350), "gcp": (30 / 65, 45 / 65, 60 / 65), "gan": (),
}  # fmt: skip
#: Latent dimensions of the GAN task's generator unless ``latent_dim`` is given.
GAN_LATENT_DIM = 10


def _opt(
    default: Any,
    group: str | None,
    help: str,
    *,
    choices: Sequence[Any] | None = None,
    argtype: str | None = None,
    flag: str | None = None,
    nargs: str | None = None,
    const: Any = None,
    metavar: str | None = None,
    compare: bool = True,
) -> Any:
    """A dataclass field with its command-line metadata (``group`` None: not an option)."""
    meta = {
        "group": group, "help": help, "choices": None if choices is None else tuple(choices),
        "argtype": argtype, "flag": flag, "nargs": nargs, "const": const, "metavar": metavar,
        "compare": compare,
    }  # fmt: skip
    return dataclasses.field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every setting of one training run (defaults: the quick embedded-MNIST DBN run).

    ``task="gan"`` trains a generator (:mod:`orthocond.train.gan`): 4 epochs of batch 64, Adam (``lr`` 2e-4,
    ``beta1`` 0.5), constant lr, ``latent_dim`` 10, ``width`` 32 on MNIST, no augmentation,
    the treatment by name only (``treatment="nog-update+olr"``).

    ``None`` means "the task's default": ``lr`` 0.1, ``weight_decay`` 5e-4 (dbn) / 1e-4
    (gcp), ``method`` "eig" (dbn) / "ns" (gcp), ``milestones`` the papers' fractions of
    ``epochs`` (dbn 100/200/300 of 350, gcp 30/45/60 of 65), ``width`` 16 on MNIST and 64
    otherwise, ``reduced_channels`` min(256, 8·width) (gcp). A ``treatment`` name
    (:func:`parse_treatment`) overrides ``nog``/``nog_scale``/``nog_target``/``olr``/``ortho``/
    ``pre_svd_momentum``/``pre_svd_nesterov``.

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
      predictiveness (:class:`~orthocond.analysis.LandscapeProbe`) after the backward
      of every K-th step, with ``landscape_steps`` step sizes η in [0.1, 75] (default
      50, the paper's); 0 (default) is off.
    """

    # -- model and data
    task: str = _opt("dbn", "model and data", "dbn: ZCA-whitening (decorrelated BN) after the stem conv (ECCV22); gcp: global covariance pooling head (iSQRT-COV); gan: a digit generator whose first layer (dcgan) or subspace bases (eigengan) NOG/OLR act on (TPAMI 2023 latent disentanglement)", choices=TASKS, compare=False)
    arch: str | None = _opt(None, "model and data", "resnet18/34/50 (dbn), resnet18/50/101 (gcp), dcgan/eigengan (gan); default the first")
    dataset: str = _opt("mnist", "model and data", "mnist = the embedded 5,000 real MNIST digits (4,000 train / 1,000 test, no download); cifar10/cifar100/imagefolder need --data-dir", choices=DATASETS)
    data_dir: str | None = _opt(None, "model and data", "folder with the dataset files")
    download: bool = _opt(False, "model and data", "let torchvision download CIFAR into --data-dir (never done implicitly)")
    limit_train: int | None = _opt(None, "model and data", "train on a stratified subset of this many images", argtype="positive_int")
    limit_test: int | None = _opt(None, "model and data", "evaluate on a stratified subset of this many images", argtype="positive_int")
    width: int | None = _opt(None, "model and data", "base width of the ResNet (default 16 on mnist, 64 otherwise) or of the GAN (default 32 on mnist, 64 otherwise)", argtype="positive_int")
    latent_dim: int | None = _opt(None, "model and data", f"latent dimensions of the gan generator (default {GAN_LATENT_DIM}; eigengan: a multiple of 3)", argtype="positive_int")
    method: str | None = _opt(None, "model and data", "matrix function of the meta-layer", choices=linalg.METHODS)
    backward: str = _opt("exact", "model and data", "gradient of method=eig (svd-unguarded is the textbook formula without a guard, which NaNs at tied eigenvalues: for failure studies)", choices=linalg.ALL_BACKWARDS)
    iters: int | None = _opt(None, "model and data", "Newton-Schulz iterations for method=ns (default 5)", argtype="positive_int")
    eps: float | None = _opt(None, "model and data", "eps added to the covariance before the meta-layer (the dbn ZCA whitening; 0 for the gcp head as in iSQRT-COV)", argtype="float")
    groups: int = _opt(1, "model and data", "ZCA channel groups", argtype="positive_int")
    reduced_channels: int | None = _opt(None, "model and data", "GCP covariance size d (default min(256, 8*width))", argtype="positive_int")
    augment: bool = _opt(True, "model and data", "no random crop / flip", flag="--no-augment")
    # -- optimisation
    epochs: int | None = _opt(None, "optimisation", "epochs", argtype="positive_int")
    batch_size: int | None = _opt(None, "optimisation", "global batch size", argtype="positive_int")
    lr: float | None = _opt(None, "optimisation", "SGD learning rate", argtype="float")
    momentum: float = _opt(0.9, "optimisation", "SGD momentum", argtype="float")
    beta1: float = _opt(0.5, "optimisation", "Adam beta1 of the gan task (generator and discriminator; beta2 0.999)", argtype="float")
    weight_decay: float | None = _opt(None, "optimisation", "weight decay (ECCV22 dbn / iSQRT-COV gcp)", argtype="float")
    schedule: str = _opt("multistep", "optimisation", "lr schedule, stepped every iteration (multistep: x--gamma at --milestones); normal/fast/adjusted: the CVPR 2020 GCP schedules (0.1^floor(e/30) of 100 epochs, (1-(e-1)/52)^11 of 30, (1-(e-1)/49)^2 of 50) stretched onto --epochs; step: x--gamma at whole-epoch --milestones (default epochs/2, 3*epochs/4)", choices=SCHEDULES)
    milestones: tuple[float, ...] | None = _opt(None, "optimisation", "multistep/step milestones in epochs, e.g. 100,200,300 (default: the papers' fractions of --epochs: dbn 100/200/300 of 350, gcp 30/45/60 of 65)", argtype="milestones")
    gamma: float = _opt(0.1, "optimisation", "multistep/step factor", argtype="float")
    hybrid_switch_epoch: int | str | None = _opt(None, "optimisation", "hybrid NS->SVD (ICCV 2021): from the 0-based epoch E on, the meta-layers compute method=eig with --hybrid-backward; auto = the epoch of the schedule's last lr decay (multistep, normal, step). Default off", argtype="switch_epoch", metavar="E|auto")
    hybrid_backward: str = _opt("pade", "optimisation", "eigen-gradient after the hybrid switch", choices=linalg.BACKWARDS)
    nog_rtol: float | None = _opt(None, "optimisation", "NOG singular-value cut-off (relative to the largest; default none)", argtype="float")
    penalty_coef: float | None = _opt(None, "optimisation", "lambda of the so/dso/mc/srip penalties (default 1e-2; srip: its epoch schedule)", argtype="float")
    # -- treatment (train only; compare takes --treatments)
    nog: str | None = _opt(None, "treatment", "Nearest Orthogonal Gradient on the Pre-SVD layer (svd when given without a value; ns = Polar-Express matmul iteration)", choices=NOG_METHODS, nargs="?", const="svd", compare=False)
    nog_scale: str = _opt("none", "treatment", "gradient target: none = the paper's U V^T, grad = rescaled to the gradient norm, spectral = times sqrt(max(1, m/n)); update target: none = every singular value of the step equals the lr, grad = the optimizer's step length, spectral = lr*sqrt(max(1, m/n))", choices=NOG_SCALES, compare=False)
    nog_target: str = _opt("gradient", "treatment", "what NOG orthogonalises: gradient = the paper (before momentum and weight decay); update = the step the optimizer applied (any optimizer)", choices=NOG_TARGETS, compare=False)
    olr: str | None = _opt(None, "treatment", "Optimal Learning Rate for the Pre-SVD layer (paper closed form when given without a value; exact = minimiser of the quartic; update = the fraction of the applied step that makes the weight most orthogonal)", choices=OLR_MODES, nargs="?", const="paper", compare=False)
    pre_svd_momentum: float | None = _opt(None, "treatment", "momentum of the Pre-SVD param group (default: --momentum; muon: 0.95)", argtype="float", compare=False)
    pre_svd_nesterov: bool = _opt(False, "treatment", "Nesterov momentum for the Pre-SVD param group (muon)", compare=False)
    ortho: str = _opt("none", "treatment", "orthogonality of the Pre-SVD layer: hard (geotorch), soc (SOC stem), so/dso/mc/srip (penalty), oni, own, cayley (Cayley SGD)", choices=ORTHO_KINDS, compare=False)
    treatment: str | None = _opt(None, "treatment", "a compare-style name such as nog-grad+olr (overrides --nog/--olr/--ortho)", compare=False)
    # -- run
    device: str = _opt("auto", "run", "auto (cuda when available), cpu, cuda:N")
    seed: int = _opt(0, "run", "random seed", argtype="non_negative_int")
    monitor_every: int = _opt(10, "run", "record the condition number every N steps", argtype="positive_int")
    landscape_every: int = _opt(0, "run", "measure the loss landscape / gradient predictiveness at the stem output (CVPR 2020) after the backward of every K-th step; writes landscape.json and landscape.png (compare overlays the runs). 0 = off", argtype="non_negative_int", metavar="K")
    landscape_steps: int = _opt(50, "run", "step sizes of each landscape measurement, evenly spaced in [0.1, 75] (50 as in the paper)", argtype="positive_int", metavar="N")
    workers: int = _opt(4, "run", "DataLoader workers (imagefolder only)", argtype="non_negative_int")
    tensorboard: bool = _opt(True, "run", "do not write TensorBoard events", flag="--no-tensorboard")
    plots: bool = _opt(True, "run", "do not write PNG plots", flag="--no-plots")
    # -- not on the command line
    divergence_loss: float = _opt(1e3, None, "a loss above this counts the run as diverged (inf disables)")
    checkpoint: bool = _opt(True, None, "write checkpoint.pt at the end of every epoch")

    def __post_init__(self) -> None:
        if self.milestones is not None:
            self.milestones = tuple(float(m) for m in self.milestones)
        # None = the task's default (filled in here: every later use sees an int)
        if self.arch is None:
            self.arch = ARCHS.get(self.task, ("",))[0]
        for name in ("epochs", "batch_size"):
            if getattr(self, name) is None:
                setattr(self, name, TASK_DEFAULTS.get(self.task, TASK_DEFAULTS["dbn"])[name])
        if self.task == "gan":
            if (self.nog or self.olr or self.ortho != "none" or self.nog_scale != "none"
                    or self.nog_target != "gradient" or self.pre_svd_momentum is not None
                    or self.pre_svd_nesterov):
                raise ValueError(
                    "task 'gan' takes its treatment by name (--treatment nog-update+olr, ...), "
                    "not --nog/--nog-scale/--olr/--ortho"
                )
            parse_gan_treatment(self.treatment or "vanilla")
        elif self.treatment:
            t = parse_treatment(self.treatment)
            self.nog, self.nog_scale, self.olr, self.ortho = t.nog, t.nog_scale, t.olr, t.ortho
            self.nog_target = t.nog_target
            self.pre_svd_momentum, self.pre_svd_nesterov = t.pre_svd_momentum, t.pre_svd_nesterov
            if t.backward is not None:
                self.backward = t.backward
        self.validate()

    # -- validation ---------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError/TypeError naming the bad field (the choices of every field are
        its metadata's, the same the command line offers)."""
        for f in dataclasses.fields(self):
            allowed = f.metadata.get("choices")
            if allowed is not None:
                check_choice(getattr(self, f.name), f.name, allowed + ((None,) if f.default is None else ()))
        check_choice(self.arch, "arch", ARCHS[self.task])
        method = self.method or TASK_DEFAULTS[self.task]["method"]
        if self.backward != "exact" and method != "eig":
            raise ValueError(
                f"backward={self.backward!r} is an eigendecomposition gradient and needs "
                f"method='eig'; method={method!r} has only backward='exact'"
            )
        for name in ("epochs", "batch_size", "monitor_every", "groups", "landscape_steps"):
            check_int(getattr(self, name), name)
        for name in ("limit_train", "limit_test", "width", "reduced_channels", "iters", "latent_dim"):
            check_int(getattr(self, name), name, allow_none=True)
        for name in ("seed", "workers", "landscape_every"):
            check_int(getattr(self, name), name, minimum=0)
        check_float(self.lr, "lr", low=0, low_open=True, allow_none=True)
        for name in ("weight_decay", "penalty_coef", "nog_rtol", "eps"):
            check_float(getattr(self, name), name, low=0, allow_none=True)
        check_float(self.divergence_loss, "divergence_loss", low=0, low_open=True, allow_inf=True)
        check_float(self.gamma, "gamma", low=0, low_open=True)
        check_float(self.momentum, "momentum", low=0, high=1, high_open=True)
        check_float(self.beta1, "beta1", low=0, high=1, high_open=True)
        check_float(self.pre_svd_momentum, "pre_svd_momentum", low=0, high=1, high_open=True, allow_none=True)
        if self.pre_svd_nesterov and (self.pre_svd_momentum if self.pre_svd_momentum is not None else self.momentum) <= 0:
            raise ValueError("pre_svd_nesterov needs a positive momentum for the Pre-SVD group")
        if self.ortho == "cayley" and (self.pre_svd_momentum is not None or self.pre_svd_nesterov):
            raise ValueError(
                "pre_svd_momentum/pre_svd_nesterov set the SGD group of the Pre-SVD layer; "
                "ortho='cayley' trains it with Cayley SGD instead"
            )
        if self.milestones is not None and any(m < 0 for m in self.milestones):
            raise ValueError(f"milestones must be >= 0 (in epochs), got {self.milestones}")
        self._validate_schedule()
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
        """``milestones``/``gamma`` for :func:`orthocond.train.schedules.lr_lambda` (``step``
        only; the other epoch schedules take neither)."""
        if self.schedule != "step":
            return {}
        kw: dict[str, Any] = {"gamma": float(self.gamma)}
        if self.milestones is not None:
            kw["milestones"] = [int(m) for m in self.milestones]
        return kw

    def hybrid_epoch(self) -> int | None:
        """The 0-based epoch from which the hybrid switch runs ``eig`` (None: no switch).

        ``"auto"``: :func:`orthocond.train.schedules.last_decay_epoch` for ``normal``/``step``;
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
            return last_decay_epoch(self.schedule, self.epochs, **self.schedule_kwargs())
        return None

    # -- derived values ------------------------------------------------------
    @property
    def label(self) -> str:
        """The treatment's name, or one built from the settings."""
        if self.treatment:
            return self.treatment
        return treatment_label(
            self.nog, self.nog_scale, self.olr, self.ortho, self.backward, self.nog_target,
            self.pre_svd_momentum, self.pre_svd_nesterov,
        )  # fmt: skip

    def ineffective_settings(self) -> list[str]:
        """Settings that differ from their defaults but change nothing in this run (the CLI
        refuses them rather than record a setting that was never applied)."""
        default = {f.name: f.default for f in dataclasses.fields(self)}
        out = []
        if self.nog_scale != default["nog_scale"] and self.nog is None:
            out.append(f"nog_scale={self.nog_scale!r} needs NOG (--nog)")
        if self.nog_target != default["nog_target"] and self.nog is None:
            out.append(f"nog_target={self.nog_target!r} needs NOG (--nog)")
        if self.nog_rtol is not None and self.nog != "svd":
            out.append("nog_rtol needs NOG with method svd (--nog svd)")
        gan_penalty = self.task == "gan" and parse_gan_treatment(self.treatment or "vanilla").penalty
        if self.penalty_coef is not None and self.ortho not in PENALTY_KINDS and not gan_penalty:
            out.append(f"penalty_coef needs a penalty ortho ({', '.join(PENALTY_KINDS)}) or gan treatment (ol, hessian)")
        if self.milestones is not None and self.schedule not in ("multistep", "step"):
            out.append(f"milestones apply to the multistep/step schedules, not {self.schedule!r}")
        if self.groups != default["groups"] and self.task != "dbn":
            out.append("groups (ZCA channel groups) applies to task dbn only")
        if self.reduced_channels is not None and self.task != "gcp":
            out.append("reduced_channels applies to task gcp only")
        if self.iters is not None and self.resolved()["method"] == "eig":
            out.append("iters applies to method ns/mpa, not eig")
        if self.hybrid_backward != default["hybrid_backward"] and self.hybrid_switch_epoch is None:
            out.append("hybrid_backward needs hybrid_switch_epoch (--hybrid-switch-epoch)")
        gan = self.task == "gan"
        if self.latent_dim is not None and not gan:
            out.append("latent_dim applies to task gan only")
        if self.beta1 != default["beta1"] and not gan:
            out.append("beta1 (Adam) applies to task gan only")
        if self.momentum != default["momentum"] and gan:
            out.append("momentum (SGD) does not apply to task gan (Adam: --beta1)")
        if gan and (self.method is not None or self.eps is not None or self.landscape_every):
            out.append("method/eps/landscape_every need a meta-layer, which task gan has not")
        if self.landscape_steps != default["landscape_steps"] and not self.landscape_every:
            out.append("landscape_steps needs landscape_every > 0 (--landscape-every)")
        return out

    def resolved(self, dataset: str | None = None) -> dict[str, Any]:
        """Task defaults filled in (what the run actually uses)."""
        d = TASK_DEFAULTS[self.task]
        ds = dataset or self.dataset
        gan = self.task == "gan"
        width = self.width or ((32 if gan else 16) if ds == "mnist" else 64)
        return {
            "lr": d["lr"] if self.lr is None else float(self.lr),
            "weight_decay": d["weight_decay"] if self.weight_decay is None else float(self.weight_decay),
            "method": self.method or d["method"],
            "width": width,
            "reduced_channels": self.reduced_channels or min(256, 8 * width),
            "eps": d["eps"] if self.eps is None else float(self.eps),
            "latent_dim": self.latent_dim or GAN_LATENT_DIM,
            # a GAN learns the data as it is: no random crop / flip
            "augment": self.augment and not gan,
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


def cli_fields() -> list[dataclasses.Field]:
    """The :class:`TrainConfig` fields that are command-line options, in declaration order."""
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("group") is not None]


def task_default_text(name: str) -> str | None:
    """How a task-dependent default reads in help texts (``"0.1"``, ``"eig (dbn) / ns
    (gcp)"``), or None for a field without one."""
    values = {task: d[name] for task, d in TASK_DEFAULTS.items() if name in d}
    if not values:
        return None
    text = {task: format(v, "g") if isinstance(v, float) else str(v) for task, v in values.items()}
    if len(set(text.values())) == 1:
        return next(iter(text.values()))
    return " / ".join(f"{v} ({task})" for task, v in text.items())
