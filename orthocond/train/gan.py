"""The GAN task (latent disentanglement, TPAMI 2023): treatments, the per-batch step and the
evaluation the :class:`~orthocond.train.Trainer` delegates to, and the comparison table.

The trainer's model is the generator (its first layer or its subspace bases are the marked
layer the plug-ins act on) and its optimizer is the generator's Adam with the marked
parameters in the ``"pre_svd"`` group; :class:`GanTask` owns the discriminator and its Adam.
Each batch: one discriminator step (non-saturating logistic loss), then the generator's
loss (plus the treatment's penalty) is returned for the trainer's backward, condition
monitor, divergence checks and ``optimizer.step()`` (where NOG/OLR act).

Treatments (parts joined by ``+``, at most one of each kind):

- ``vanilla``;
- ``ol``: EigenGAN's soft loss, :data:`OL_COEFFICIENT` · :func:`~orthocond.ortho.ol_penalty`
  of the marked weights;
- ``hessian``: :data:`HESSIAN_COEFFICIENT` · :func:`~orthocond.ortho.hessian_penalty` of the
  generator at the batch's codes;
- ``nog`` / ``nog-grad``: NOG on the gradient (the paper; under Adam the step that follows
  is rescaled per entry, so it is no longer orthogonal, and Adam's scale invariance makes
  the two nearly identical);
- ``nog-update`` / ``nog-update-grad``: NOG on the step Adam applied (``target="update"``:
  every singular value of the step equals the lr, or the step keeps Adam's Frobenius norm);
- ``olr``: OLR in update mode (``mode="update"``: the applied step is shortened by the
  α ∈ [0, 1] that brings the weight closest to orthonormal rows), the mode for Adam.

``penalty_coef`` overrides the penalty's coefficient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from orthocond import models, optim, ortho
from orthocond.analysis import generative
from orthocond.data import DataSplits

from .result import mean_ci
from .treatments import split_treatment

__all__ = [
    "GAN_ARCHS",
    "GAN_DEFAULT_TREATMENTS",
    "GAN_STUDY_TREATMENTS",
    "GAN_TREATMENT_PARTS",
    "HESSIAN_COEFFICIENT",
    "OL_COEFFICIENT",
    "GanTask",
    "GanTreatment",
    "aggregate_gan",
    "build_gan_optimizer",
    "build_generator",
    "format_gan_table",
    "parse_gan_treatment",
]

GAN_ARCHS = ("dcgan", "eigengan")
GAN_TREATMENT_PARTS = (
    "vanilla", "ol", "hessian", "nog", "nog-grad", "nog-update", "nog-update-grad", "olr",
)  # fmt: skip
#: What ``orthocond compare --tasks gan`` runs without ``--treatments``.
GAN_DEFAULT_TREATMENTS = ("vanilla", "ol", "hessian", "nog", "nog-update", "olr", "nog-update+olr")
#: The grid of ``orthocond compare --preset gan-study`` (the default grid; nog-grad and nog-update-grad are left
#: out to fit one CPU core for ~30 minutes: under Adam nog-grad is nog up to Adam's epsilon).
GAN_STUDY_TREATMENTS = GAN_DEFAULT_TREATMENTS
#: EigenGAN's weight of its soft orthogonality loss.
OL_COEFFICIENT = 100.0
#: Weight of the Hessian Penalty (the value of the Hessian Penalty paper's runs is unconfirmed).
HESSIAN_COEFFICIENT = 0.1
#: Generated images per FID / PPL sample count (equal N keeps the biased FID comparable).
EVAL_SAMPLES = 1000
#: (train, test) image pairs of the VP predictor.
VP_PAIRS = (4000, 1000)


@dataclass
class GanTreatment:
    """What a GAN treatment name means (:func:`parse_gan_treatment`)."""

    name: str
    nog_target: str | None = None  # "gradient" | "update"
    nog_scale: str = "none"  # "none" | "grad"
    olr: bool = False
    penalty: str | None = None  # "ol" | "hessian"


def parse_gan_treatment(name: str) -> GanTreatment:
    """Parse a GAN treatment: parts of :data:`GAN_TREATMENT_PARTS` joined by ``+``.

    Example::

        >>> parse_gan_treatment("nog-update+olr")
        GanTreatment(name='nog-update+olr', nog_target='update', nog_scale='none', olr=True, penalty=None)
    """
    stripped, parts = split_treatment(
        name, GAN_TREATMENT_PARTS,
        lambda part: "nog" if part.startswith("nog") else "penalty" if part in ("ol", "hessian") else part,
        what="GAN treatment",
    )  # fmt: skip
    t = GanTreatment(name=stripped)
    seen = {kind for _, kind in parts}
    for part, kind in parts:
        if part.startswith("nog"):
            t.nog_target = "update" if "-update" in part else "gradient"
            t.nog_scale = "grad" if part.endswith("-grad") else "none"
        elif part == "olr":
            t.olr = True
        elif kind == "penalty":
            t.penalty = part
    if "vanilla" in seen and len(seen) > 1:
        raise ValueError(f"'vanilla' combines with no other part, got {name!r}")
    return t


# --------------------------------------------------------------------------- building
def build_generator(arch: str, data: DataSplits, *, latent_dim: int, width: int) -> nn.Module:
    """The generator ``arch`` (:data:`GAN_ARCHS`) for ``data``'s images.

    ``dcgan``: :class:`~orthocond.models.DCGANGenerator` (``latent_dim``, ``width``);
    ``eigengan``: :class:`~orthocond.models.EigenGenerator` with 3 subspace layers of
    ``latent_dim // 3`` dims (28-pixel images only; ``latent_dim`` a multiple of 3).
    """
    if arch == "dcgan":
        return models.DCGANGenerator(
            latent_dim, width, out_channels=data.in_channels, image_size=data.image_size
        )
    if arch == "eigengan":
        if data.image_size != 28 or latent_dim % 3:
            raise ValueError(
                "arch 'eigengan' builds 28x28 images from 3 subspace layers: it needs 28-pixel "
                f"data and a latent_dim divisible by 3, got {data.image_size} px, latent_dim "
                f"{latent_dim}"
            )
        return models.EigenGenerator(3, latent_dim // 3, width, out_channels=data.in_channels)
    raise ValueError(f"arch must be one of {GAN_ARCHS} for task 'gan', got {arch!r}")


def build_gan_optimizer(
    generator: nn.Module,
    treatment: GanTreatment,
    *,
    lr: float,
    beta1: float,
    weight_decay: float,
    groups: tuple[str, str],
) -> tuple[torch.optim.Optimizer, dict[str, Any], list[nn.Parameter]]:
    """Adam (β = (``beta1``, 0.999)) over the generator, the marked parameters in the param
    group named ``groups[0]``, the rest in ``groups[1]``; NOG then OLR on the marked group as
    the treatment says. Returns ``(optimizer, {"nog", "olr"}, marked parameters)``."""
    pre, rest = ortho.split_pre_svd_parameters(generator)
    if not pre:
        raise ValueError("the generator has no marked (is_pre_svd) layer")
    opt = torch.optim.Adam(
        [{"params": pre, "name": groups[0]}, {"params": rest, "name": groups[1]}],
        lr=lr, betas=(beta1, 0.999), weight_decay=weight_decay,
    )  # fmt: skip
    hooks: dict[str, Any] = {"nog": None, "olr": None}
    if treatment.nog_target is not None:
        hooks["nog"] = optim.NOG(opt, pre, scale=treatment.nog_scale, target=treatment.nog_target)
    if treatment.olr:
        hooks["olr"] = optim.OLR(opt, pre, mode="update")
    return opt, hooks, pre


# --------------------------------------------------------------------------- the task
class GanTask:
    """Per-batch step and evaluation of a GAN run (built by the trainer for ``task="gan"``).

    Args:
        generator: the trainer's model; its marked weights are ``pre_svd_params``.
        treatment: :class:`GanTreatment`.
        data: the real images (any :class:`~orthocond.data.DataSplits`; its batches arrive
            normalised by ``data.mean``/``data.std`` and are mapped back to [0, 1]).
        lr, beta1: the discriminator's Adam (the same as the generator's).
        width: the discriminator's width.
        penalty_coef: overrides :data:`OL_COEFFICIENT` / :data:`HESSIAN_COEFFICIENT`.
        seed: seeds the fixed evaluation codes (private generator).

    FID and PPL use the digit-feature network (:func:`~orthocond.analysis.generative.digit_features`)
    and are reported for 28x28 single-channel data only (None otherwise); VP, κ and the
    orthogonality error are reported for any data.
    """

    def __init__(
        self,
        generator: nn.Module,
        pre_svd_params: Sequence[nn.Parameter],
        treatment: GanTreatment,
        data: DataSplits,
        *,
        device: torch.device,
        lr: float,
        beta1: float,
        width: int,
        penalty_coef: float | None,
        seed: int,
    ) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise ValueError(
                "task 'gan' trains in one process (its discriminator is not synchronised over "
                "ranks); run it without torchrun"
            )
        self.generator = generator
        self.pre = list(pre_svd_params)
        self.treatment = treatment
        self.device = device
        self.latent_dim = int(generator.latent_dim)
        self.discriminator = models.Discriminator(width, data.in_channels, data.image_size).to(device)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(beta1, 0.999))
        default = {"ol": OL_COEFFICIENT, "hessian": HESSIAN_COEFFICIENT, None: 0.0}[treatment.penalty]
        self.penalty_coef = default if penalty_coef is None else float(penalty_coef)
        shape = (1, data.in_channels, 1, 1)
        self.mean = torch.tensor(data.mean, dtype=torch.float32, device=device).reshape(shape)
        self.std = torch.tensor(data.std, dtype=torch.float32, device=device).reshape(shape)
        self.digits = data.image_size == 28 and data.in_channels == 1 and data.is_tensor
        self.reference = data.test[0][:EVAL_SAMPLES] if self.digits else None
        self.seed = seed
        self._extractor: Any = None

    # ---------------------------------------------------------------- training
    def unnormalize(self, x: Tensor) -> Tensor:
        """Batches of the data pipeline back to [0, 1]."""
        return (x * self.std + self.mean).clamp(0, 1)

    def loss(
        self, net: nn.Module, x: Tensor, y: Tensor, epoch: int = 0
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """One discriminator step, then the generator's loss.

        Returns ``(generator loss, loss + penalty (to backpropagate), sums)`` with ``sums``
        the batch's ``g_loss``/``d_loss`` times its size (the trainer averages them over the
        epoch; ``train_loss`` is the generator's).
        """
        real = self.unnormalize(x)
        b = real.shape[0]
        z = torch.randn(b, self.latent_dim, device=real.device)
        fake = net(z)
        disc = self.discriminator
        d_loss = F.softplus(-disc(real)).mean() + F.softplus(disc(fake.detach())).mean()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        disc.requires_grad_(False)  # the generator's backward needs no discriminator grads
        try:
            g_loss = F.softplus(-disc(fake)).mean()
        finally:
            disc.requires_grad_(True)
        total = g_loss
        if self.penalty_coef and self.treatment.penalty == "ol":
            total = total + self.penalty_coef * ortho.ol_penalty(self.pre)
        elif self.penalty_coef and self.treatment.penalty == "hessian":
            total = total + self.penalty_coef * ortho.hessian_penalty(net, z, output=fake)
        sums = {"train_loss": g_loss.detach().double() * b, "d_loss": d_loss.detach().double() * b}
        return g_loss, total, sums

    # ---------------------------------------------------------------- evaluation
    def _features(self) -> Any:
        if self._extractor is None:
            self._extractor = generative.digit_features().to(self.device)
        return self._extractor

    @torch.no_grad()
    def samples(self, n: int | None = None) -> Tensor:
        """``n`` (default :data:`EVAL_SAMPLES`) images from fixed codes (seeded by the run's
        seed), in eval mode, on the CPU."""
        z = torch.randn(EVAL_SAMPLES if n is None else n, self.latent_dim, generator=torch.Generator().manual_seed(self.seed + 1))
        g = self.generator
        was = g.training
        g.eval()
        try:
            return torch.cat([g(c.to(self.device)).float().cpu() for c in z.split(250)])
        finally:
            g.train(was)

    def evaluate(self) -> dict[str, float | None]:
        """Per-epoch evaluation: FID of :data:`EVAL_SAMPLES` generated digits against as many
        test digits (None for other data)."""
        if not self.digits:
            return {"fid": None}
        ext = self._features()
        return {"fid": generative.fid(self.samples(), self.reference, ext)}

    def final_metrics(self) -> dict[str, float | None]:
        """FID, PPL (digits only), VP, and κ / orthogonality error of the marked layer(s)."""
        out: dict[str, float | None] = dict(self.evaluate())
        g = self.generator
        out["ppl"] = (
            generative.perceptual_path_length(
                g, samples=EVAL_SAMPLES, extractor=self._features(), seed=self.seed
            ) if self.digits else None
        )  # fmt: skip
        out["vp"] = generative.variation_predictability(
            g, train_pairs=VP_PAIRS[0], test_pairs=VP_PAIRS[1], seed=self.seed
        )
        out.update(generative.layer_conditioning(self.pre))
        return out

    @staticmethod
    def describe(stats: dict[str, Any]) -> str:
        fid = stats.get("fid")
        return (f"G loss {stats['train_loss']:.3f} D loss {stats['d_loss']:.3f}"
                + ("" if fid is None else f" FID {fid:.1f}"))

    def write_outputs(self, out: Path) -> None:
        """``traversal.png``: each latent dim swept over [-3, 3] (needs matplotlib)."""
        try:
            images = generative.latent_traversal(self.generator, seed=self.seed)
            generative.save_traversal_grid(images, out / "traversal.png", title=self.treatment.name)
        except ImportError:
            pass

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"discriminator": self.discriminator.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_d.load_state_dict(state["opt_d"])


# --------------------------------------------------------------------------- the table
GAN_COLUMNS = (("fid", "FID ↓"), ("ppl", "PPL ↓"), ("vp", "VP % ↑"), ("kappa", "κ(W)"),
               ("ortho_err", "ortho err"))  # fmt: skip
def _mean_ci(values: Sequence[float]) -> tuple[float | None, float | None]:
    """:func:`~orthocond.train.result.mean_ci`, with a half-width of 0 for a single run (the
    GAN table prints ``mean ± 0`` then)."""
    mean, half = mean_ci(values)
    return mean, (0.0 if mean is not None and half is None else half)


def aggregate_gan(results: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per treatment: mean and 95 % CI half-width over the successful seeds of each
    :data:`GAN_COLUMNS` metric (VP in %), failures counted."""
    groups: dict[str, list[Any]] = {}
    for r in results:
        groups.setdefault(r.label, []).append(r)
    rows = []
    for label, runs in groups.items():
        ok = [r for r in runs if not r.failed and r.metrics]
        row: dict[str, Any] = {"treatment": label, "runs": len(runs), "failed": len(runs) - len(ok),
                               "reasons": [r.reason for r in runs if r.failed],
                               "wall_s": float(sum(r.wall_s for r in runs))}  # fmt: skip
        for key, _ in GAN_COLUMNS:
            scale = 100.0 if key == "vp" else 1.0
            vals = [scale * r.metrics[key] for r in ok if r.metrics.get(key) is not None]
            row[key], row[f"{key}_ci"] = _mean_ci(vals)
        rows.append(row)
    return rows


def format_gan_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`aggregate_gan` rows (mean ± 95 % CI)."""
    head = "| treatment | " + " | ".join(title for _, title in GAN_COLUMNS) + " | failed |"
    lines = [head, "|---" * (len(GAN_COLUMNS) + 2) + "|"]
    for r in rows:
        cells = []
        for key, _ in GAN_COLUMNS:
            m, ci = r[key], r[f"{key}_ci"]
            spec = ".4f" if key in ("kappa", "ortho_err") and m is not None and m < 10 else ".3g"
            spec = ".1f" if key in ("fid", "vp") else spec
            cells.append("—" if m is None else f"{format(m, spec)} ± {format(ci, spec)}")
        lines.append(f"| {r['treatment']} | " + " | ".join(cells) + f" | {r['failed']}/{r['runs']} |")
    return "\n".join(lines)
