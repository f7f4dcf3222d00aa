"""Treatment names: what ``orthocond compare`` and ``--treatment`` accept, and what they mean.

A treatment joins parts with ``+`` (``"nog-grad+olr"``), at most one part of each kind: NOG,
OLR, orthogonality of the Pre-SVD layer, and the meta-layers' eigen-gradient (``bwd-*``).
"""

from __future__ import annotations

from dataclasses import dataclass

from orthocond import linalg

__all__ = [
    "BACKWARD_PARTS",
    "DEFAULT_TREATMENTS",
    "FAILURE_TREATMENTS",
    "ORTHO_KINDS",
    "PENALTY_COEFFICIENT",
    "TREATMENT_PARTS",
    "Treatment",
    "parse_treatment",
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
#: Parts a treatment name may combine with ``+``.
TREATMENT_PARTS = (
    "vanilla", "nog", "nog-grad", "nog-ns", "nog-ns-grad", "olr", "olr-exact",
) + ORTHO_KINDS[1:] + BACKWARD_PARTS  # fmt: skip
#: The grid ``orthocond compare`` runs without ``--treatments``.
DEFAULT_TREATMENTS = (
    "vanilla", "nog", "nog-grad", "olr", "nog+olr", "nog-grad+olr", "hard", "soc",
)

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
    nog_scale: str = "none"  # "none" | "grad"
    olr: str | None = None  # "paper" | "exact"
    ortho: str = "none"  # one of ORTHO_KINDS
    backward: str | None = None  # one of linalg.ALL_BACKWARDS; None keeps the config's


def parse_treatment(name: str) -> Treatment:
    """Parse a treatment name: parts of :data:`TREATMENT_PARTS` joined by ``+``.

    ``vanilla`` = nothing; ``nog`` = NOG with the paper's unscaled U Vᵀ (SVD);
    ``nog-grad`` = NOG rescaled to the gradient norm; ``nog-ns``/``nog-ns-grad`` = the
    Polar-Express (matmul) variants; ``olr``/``olr-exact`` = OLR (paper closed form /
    exact quartic minimiser); ``hard`` = ``orthocond.ortho.orthogonal`` on the Pre-SVD
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
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"treatment must be a non-empty string, got {name!r}")
    t = Treatment(name=name.strip())
    seen: set[str] = set()
    for raw in t.name.split("+"):
        part = raw.strip().lower()
        if part not in TREATMENT_PARTS:
            raise ValueError(
                f"unknown treatment part {raw!r} in {name!r}; expected parts of "
                f"{', '.join(TREATMENT_PARTS)} joined by '+'"
            )
        kind = "nog" if part.startswith("nog") else "olr" if part.startswith("olr") else (
            "backward" if part.startswith("bwd-") else "vanilla" if part == "vanilla" else "ortho"
        )
        if kind in seen:
            raise ValueError(f"treatment {name!r} has more than one {kind} part")
        seen.add(kind)
        if part.startswith("nog"):
            t.nog = "ns" if "-ns" in part else "svd"
            t.nog_scale = "grad" if part.endswith("-grad") else "none"
        elif part.startswith("olr"):
            t.olr = "exact" if part == "olr-exact" else "paper"
        elif kind == "backward":
            t.backward = part[len("bwd-"):]
        elif part != "vanilla":
            t.ortho = part
    if "vanilla" in seen and len(seen - {"backward"}) > 1:
        raise ValueError(
            f"'vanilla' combines only with a bwd-* part, not with the other parts in {name!r}"
        )
    return t



def treatment_label(
    nog: str | None, nog_scale: str, olr: str | None, ortho: str, backward: str
) -> str:
    """The treatment name of these settings (the inverse of :func:`parse_treatment`).

    Example::

        >>> treatment_label("svd", "grad", "paper", "none", "exact")
        'nog-grad+olr'
    """
    parts = []
    if nog:
        parts.append("nog" + ("-ns" if nog == "ns" else "") + ("-grad" if nog_scale == "grad" else ""))
    if olr:
        parts.append("olr" if olr == "paper" else "olr-exact")
    if ortho != "none":
        parts.append(ortho)
    if backward != "exact":
        parts.append(f"bwd-{backward}")
    return "+".join(parts) or "vanilla"
