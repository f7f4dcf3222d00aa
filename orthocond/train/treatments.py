"""Treatment names: what ``orthocond compare`` and ``--treatment`` accept, and what they mean.

A treatment joins parts with ``+`` (``"nog-grad+olr"``), at most one part of each kind: NOG,
OLR, orthogonality of the Pre-SVD layer, and the meta-layers' eigen-gradient (``bwd-*``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

from orthocond import linalg

__all__ = [
    "BACKWARD_PARTS",
    "DEFAULT_TREATMENTS",
    "FAILURE_TREATMENTS",
    "ORTHO_KINDS",
    "PENALTY_COEFFICIENT",
    "RECOMMENDED_TREATMENT",
    "STUDY_TREATMENTS",
    "MUON_MOMENTUM",
    "TREATMENT_PARTS",
    "Treatment",
    "UPDATE_NOG_PARTS",
    "parse_treatment",
    "split_treatment",
    "treatment_label",
]

#: Values of ``TrainConfig.ortho``.
ORTHO_KINDS = ("none", "hard", "soc", "so", "dso", "mc", "srip", "oni", "own", "cayley")
#: Penalty weight λ of so/dso/mc (loss = task + λ·penalty); SRIP follows
#: ``orthocond.ortho.srip_schedule(epoch)`` (1e-2 for the first 20 epochs) unless
#: ``penalty_coef`` is given.
PENALTY_COEFFICIENT = 1e-2
#: Treatment parts that pick the meta-layers' eigen-gradient (``bwd-<backward>``).
BACKWARD_PARTS = tuple(f"bwd-{b}" for b in linalg.ALL_BACKWARDS)
#: NOG parts on the step the optimizer applied (``target="update"``): ``nog-update`` keeps
#: the step's length (scale "grad"), ``nog-spectral`` makes every singular value
#: lr·√max(1, m/n); ``-ns`` = the Polar-Express iteration; ``muon`` = ``nog-spectral-ns`` on
#: SGD with Nesterov momentum 0.95 for the Pre-SVD group (Muon's recipe as a plug-in).
UPDATE_NOG_PARTS = ("nog-update", "nog-update-ns", "nog-spectral", "nog-spectral-ns", "muon")
#: Momentum of the Pre-SVD param group under ``muon`` (Nesterov), as torch.optim.Muon's.
MUON_MOMENTUM = 0.95
#: Parts a treatment name may combine with ``+``.
TREATMENT_PARTS = (
    "vanilla", "nog", "nog-grad", "nog-ns", "nog-ns-grad", *UPDATE_NOG_PARTS,
    "olr", "olr-exact", "olr-update",
) + ORTHO_KINDS[1:] + BACKWARD_PARTS  # fmt: skip
#: The grid ``orthocond compare`` runs without ``--treatments`` (on both applications): plain
#: training, the paper's NOG + OLR, the recommended optimizer plug-ins (NOG and OLR on the
#: applied step), and the orthogonal-weight baselines (the SOC stem: DBN only). See README,
#: "Which treatment to use", for the multi-seed study behind the choice.
DEFAULT_TREATMENTS = ("vanilla", "nog+olr", "nog-update+olr-update", "hard", "soc")
#: The optimizer plug-ins the README recommends (any optimizer, any Pre-SVD layer).
RECOMMENDED_TREATMENT = "nog-update+olr-update"

#: The grid of ``orthocond compare --preset study`` (on both applications; ``soc`` on the
#: DBN stem only): the paper's treatments, the update-target variants, and the
#: orthogonal-weight baselines.
STUDY_TREATMENTS = (
    "vanilla", "nog", "olr", "nog+olr", "nog-update", "nog-spectral", "olr-update",
    "nog-update+olr-update", "muon", "hard", "soc", "cayley",
)  # fmt: skip

#: The grid of ``orthocond compare --preset failures``: the eigen-gradients, then the
#: unguarded textbook gradient alone and under the conditioning treatments.
FAILURE_TREATMENTS = (
    "bwd-exact", "bwd-svd", "bwd-taylor", "bwd-pade", "bwd-svd-unguarded",
    "bwd-svd-unguarded+olr", "bwd-svd-unguarded+nog+olr", "bwd-svd-unguarded+nog-grad+olr",
    "bwd-svd-unguarded+hard",
)  # fmt: skip



@dataclass
class Treatment:
    """What a treatment name means (see :func:`parse_treatment`)."""

    name: str
    nog: str | None = None  # "svd" | "ns"
    nog_scale: str = "none"  # "none" | "grad" | "spectral"
    nog_target: str = "gradient"  # "gradient" | "update"
    olr: str | None = None  # "paper" | "exact" | "update"
    ortho: str = "none"  # one of ORTHO_KINDS
    backward: str | None = None  # one of linalg.ALL_BACKWARDS; None keeps the config's
    pre_svd_momentum: float | None = None  # None: the run's momentum
    pre_svd_nesterov: bool = False


def split_treatment(
    name: Any, allowed: Sequence[str], kind_of: Callable[[str], str], what: str = "treatment"
) -> tuple[str, list[tuple[str, str]]]:
    """``name`` split at ``+`` into ``(part, kind)`` pairs (parts lower-cased, each in
    ``allowed``, at most one part of each kind); returns the stripped name and the pairs. The
    one grammar of every treatment name (classifier and GAN)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"treatment must be a non-empty string, got {name!r}")
    stripped = name.strip()
    parts: list[tuple[str, str]] = []
    for raw in stripped.split("+"):
        part = raw.strip().lower()
        if part not in allowed:
            raise ValueError(
                f"unknown {what} part {raw!r} in {name!r}; expected parts of "
                f"{', '.join(allowed)} joined by '+'"
            )
        kind = kind_of(part)
        if any(kind == k for _, k in parts):
            raise ValueError(f"treatment {name!r} has more than one {kind} part")
        parts.append((part, kind))
    return stripped, parts


def parse_treatment(name: str) -> Treatment:
    """Parse a treatment name: parts of :data:`TREATMENT_PARTS` joined by ``+``.

    ``vanilla`` = nothing; ``nog`` = NOG with the paper's unscaled U Vᵀ (SVD);
    ``nog-grad`` = NOG rescaled to the gradient norm; ``nog-ns``/``nog-ns-grad`` = the
    Polar-Express (matmul) variants; ``nog-update`` = NOG on the step the optimizer applied,
    its length kept; ``nog-spectral`` = that step with every singular value lr·√max(1, m/n);
    ``-ns`` variants of both; ``muon`` = ``nog-spectral-ns`` with Nesterov momentum 0.95 on
    the Pre-SVD group; ``olr``/``olr-exact`` = OLR (paper closed form / exact quartic
    minimiser); ``olr-update`` = OLR on the applied step; ``hard`` = ``orthocond.ortho.orthogonal`` on the Pre-SVD
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
    def kind_of(part: str) -> str:
        if part.startswith("nog") or part == "muon":
            return "nog"
        if part.startswith("olr"):
            return "olr"
        return "backward" if part.startswith("bwd-") else "vanilla" if part == "vanilla" else "ortho"

    stripped, parts = split_treatment(name, TREATMENT_PARTS, kind_of)
    t = Treatment(name=stripped)
    seen = {kind for _, kind in parts}
    for part, kind in parts:
        if part in UPDATE_NOG_PARTS:
            t.nog_target = "update"
            t.nog = "ns" if part == "muon" or part.endswith("-ns") else "svd"
            t.nog_scale = "grad" if part.startswith("nog-update") else "spectral"
            if part == "muon":
                t.pre_svd_momentum, t.pre_svd_nesterov = MUON_MOMENTUM, True
        elif kind == "nog":
            t.nog = "ns" if "-ns" in part else "svd"
            t.nog_scale = "grad" if part.endswith("-grad") else "none"
        elif kind == "olr":
            t.olr = {"olr": "paper", "olr-exact": "exact", "olr-update": "update"}[part]
        elif kind == "backward":
            t.backward = part[len("bwd-"):]
        elif part != "vanilla":
            t.ortho = part
    if "vanilla" in seen and len(seen - {"backward"}) > 1:
        raise ValueError(
            f"'vanilla' combines only with a bwd-* part, not with the other parts in {name!r}"
        )
    return t



def _nog_label(
    nog: str, nog_scale: str, nog_target: str, pre_svd_momentum: float | None, pre_svd_nesterov: bool
) -> str:
    ns = "-ns" if nog == "ns" else ""
    if nog_target == "gradient":
        return "nog" + ns + {"none": "", "grad": "-grad"}.get(nog_scale, f"-{nog_scale}")
    if nog_scale == "spectral" and nog == "ns" and pre_svd_nesterov and pre_svd_momentum == MUON_MOMENTUM:
        return "muon"
    # (an update target with scale "none" has no treatment name: spelled out)
    return {"grad": "nog-update", "spectral": "nog-spectral"}.get(nog_scale, f"nog-update-{nog_scale}") + ns


def treatment_label(
    nog: str | None, nog_scale: str, olr: str | None, ortho: str, backward: str,
    nog_target: str = "gradient", pre_svd_momentum: float | None = None,
    pre_svd_nesterov: bool = False,
) -> str:  # fmt: skip
    """The treatment name of these settings (the inverse of :func:`parse_treatment`).

    Example::

        >>> treatment_label("svd", "grad", "paper", "none", "exact")
        'nog-grad+olr'
        >>> treatment_label("ns", "spectral", "update", "none", "exact", "update", 0.95, True)
        'muon+olr-update'
    """
    parts = []
    if nog:
        parts.append(_nog_label(nog, nog_scale, nog_target, pre_svd_momentum, pre_svd_nesterov))
    if olr:
        parts.append({"paper": "olr", "exact": "olr-exact", "update": "olr-update"}[olr])
    if ortho != "none":
        parts.append(ortho)
    if backward != "exact":
        parts.append(f"bwd-{backward}")
    return "+".join(parts) or "vanilla"
