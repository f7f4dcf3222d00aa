"""Optimal Learning Rate (OLR) for the Pre-SVD parameters' param group(s)."""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.optim import Optimizer

from ._common import (
    ParamsArg,
    after_gradients,
    attach,
    check_in_optimizer,
    check_optimizer,
    collect_params,
    detach,
    grad_scale_of,
    snapshot,
    step_will_be_skipped,
)

OLR_MODES = ("paper", "exact", "update")
#: Modes that compute a step size from the gradient before the step.
GRADIENT_MODES = ("paper", "exact")

_GROUP_HOWTO = """\
Build the optimizer with the OLR parameters in a group of their own, e.g.

    pre_svd = orthocond.models.pre_svd_parameters(model)   # or [model.conv1.weight]
    ids = {id(p) for p in pre_svd}
    others = [p for p in model.parameters() if id(p) not in ids]
    optimizer = torch.optim.SGD(
        [{"params": others}, {"params": pre_svd}], lr=0.1, momentum=0.9, weight_decay=5e-4
    )
    nog = optim.NOG(optimizer, pre_svd)   # optional; register NOG first
    olr = optim.OLR(optimizer, pre_svd)"""


def _check_mode(mode: object) -> None:
    if mode not in OLR_MODES:
        raise ValueError(f"OLR: mode must be one of 'paper', 'exact', 'update'; got {mode!r}")


def is_plain_sgd(optimizer: Optimizer, groups: Sequence[dict]) -> bool:
    """Whether the step on ``groups`` is exactly ``-lr * grad``: ``torch.optim.SGD`` itself
    (not a subclass) with ``momentum == 0`` and ``weight_decay == 0`` in every group (the
    gradient modes' step-size formulas assume that step; ``maximize`` is accounted for)."""
    return type(optimizer) is torch.optim.SGD and all(
        float(g.get("momentum", 0.0)) == 0.0 and float(g.get("weight_decay", 0.0)) == 0.0
        for g in groups
    )


def _as_matrices(weights: Sequence[Tensor], grads: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """float64 (W, G) pairs, flattened to (C_out, rest) and oriented tall (rows >= cols)."""
    if len(weights) != len(grads) or not weights:
        raise ValueError("weights and grads must be non-empty and of equal length")
    pairs = []
    for w, g in zip(weights, grads):
        if not isinstance(w, Tensor) or not isinstance(g, Tensor):
            raise TypeError("weights and grads must be torch.Tensors")
        if w.shape != g.shape:
            raise ValueError(f"shape mismatch {tuple(w.shape)} vs {tuple(g.shape)}")
        if w.ndim < 2:
            raise ValueError(f"weights must have at least 2 dims, got shape {tuple(w.shape)}")
        W = w.detach().reshape(w.shape[0], -1).to(torch.float64)
        G = g.detach().reshape(g.shape[0], -1).to(W.device, torch.float64)
        if W.shape[0] < W.shape[1]:
            W, G = W.T, G.T
        pairs.append((W, G))
    return pairs


def olr_paper(weights: Sequence[Tensor], grads: Sequence[Tensor]) -> float:
    r"""The closed-form OLR candidate :math:`\eta^* = ab / (ac + 2b^2)` (float, may be <= 0).

    :math:`a = w^T w`, :math:`b = g^T w`, :math:`c = g^T g` for :math:`w`, :math:`g` the
    concatenation of all flattened ``weights`` and ``grads`` (one scalar for the group),
    accumulated in float64. It is the root of the linearised derivative of
    :math:`J(\eta) = (\|w - \eta g\|^2)^2`. Returns ``nan`` when :math:`ac + 2b^2 = 0`
    (zero gradient or zero weight) or the inputs are not finite.

    Args:
        weights: tensors of any shape.
        grads: their gradients, same shapes.

    Example:
        >>> w, g = torch.ones(4, 4), torch.full((4, 4), 0.5)
        >>> round(olr_paper([w], [g]), 6)   # a=16, b=8, c=4: 128 / (64 + 128)
        0.666667
    """
    if len(weights) != len(grads) or not weights:
        raise ValueError("olr_paper: weights and grads must be non-empty and of equal length")
    dev = weights[0].device
    acc = torch.zeros(3, dtype=torch.float64, device=dev)
    for w, g in zip(weights, grads):
        if w.shape != g.shape:
            raise ValueError(f"olr_paper: shape mismatch {tuple(w.shape)} vs {tuple(g.shape)}")
        wf = w.detach().reshape(-1).to(dev, torch.float64)
        gf = g.detach().reshape(-1).to(dev, torch.float64)
        acc += torch.stack([wf @ wf, gf @ wf, gf @ gf])
    a, b, c = acc.tolist()
    den = a * c + 2.0 * b * b
    if not (math.isfinite(den) and den > 0 and math.isfinite(a * b)):
        return math.nan
    return a * b / den


def orthogonality_quartic(weights: Sequence[Tensor], grads: Sequence[Tensor]) -> np.ndarray:
    r"""Coefficients ``[c4, c3, c2, c1, c0]`` (float64) of :math:`f(\eta) = \sum_i
    \|(W_i - \eta G_i)^T (W_i - \eta G_i) - I\|_F^2`.

    Each :math:`W_i` is flattened to ``(C_out, rest)`` and the smaller Gram is used (for a
    wide :math:`W` the roles of rows and columns swap), so :math:`f(\eta)` is the squared
    orthogonality error after the step :math:`W - \eta G`. With :math:`P = W^TW`,
    :math:`Q = G^TG`, :math:`S = W^TG + G^TW`, :math:`E = P - I`:
    :math:`c_4 = tr(Q^2)`, :math:`c_3 = -2 tr(SQ)`, :math:`c_2 = tr(S^2) + 2 tr(EQ)`,
    :math:`c_1 = -2 tr(ES)`, :math:`c_0 = tr(E^2)`.

    Args:
        weights: tensors with at least 2 dims.
        grads: their gradients, same shapes.

    Returns:
        numpy array of 5 floats, highest degree first (``numpy.polyval`` order).
    """
    pairs = _as_matrices(weights, grads)
    coef = torch.zeros(5, dtype=torch.float64, device=pairs[0][0].device)
    for W, G in pairs:
        G = G.to(coef.device)
        W = W.to(coef.device)
        P = W.T @ W
        Q = G.T @ G
        WG = W.T @ G
        S = WG + WG.T
        E = P - torch.eye(P.shape[0], dtype=P.dtype, device=P.device)
        coef += torch.stack(
            [
                (Q * Q).sum(),
                -2.0 * (S * Q).sum(),
                (S * S).sum() + 2.0 * (E * Q).sum(),
                -2.0 * (E * S).sum(),
                (E * E).sum(),
            ]
        )
    return coef.cpu().numpy()


def olr_exact(weights: Sequence[Tensor], grads: Sequence[Tensor], lr: float) -> float:
    r"""The step size in ``[0, lr]`` minimising the orthogonality error after the step.

    Minimises the quartic :math:`f` of :func:`orthogonality_quartic` exactly: the minimiser on
    an interval is an end point or a root of the cubic :math:`f'`, so the candidates are
    0, ``lr`` and the real parts of the roots of :math:`f'` clipped to ``[0, lr]``; the one
    with the smallest :math:`f` wins (ties go to the largest step, so a constant :math:`f`,
    e.g. a zero gradient, keeps ``lr``). May return 0 (the gradient step only makes the
    weight less orthogonal), which freezes the group for this step.

    Example:
        >>> W = torch.eye(3) * 2.0                       # f minimal at W - eta*W = I
        >>> round(olr_exact([W], [W], lr=1.0), 12)
        0.5
    """
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
        raise ValueError(f"olr_exact: lr must be a finite float >= 0, got {lr!r}")
    coef = orthogonality_quartic(weights, grads)
    if not np.all(np.isfinite(coef)):
        return float(lr)
    deriv = np.polyder(coef)
    # Drop leading zeros (zero gradient): np.roots handles them, but keep it explicit.
    candidates = [0.0, float(lr)]
    if np.any(deriv != 0):
        roots = np.roots(np.trim_zeros(deriv, "f"))
        candidates += [float(np.clip(r.real, 0.0, lr)) for r in roots]
    values = np.polyval(coef, np.asarray(candidates))
    best = values.min()
    return float(max(c for c, v in zip(candidates, values) if v <= best))


class OLR:
    r"""Optimal Learning Rate for the Pre-SVD parameters (Song, Sebe, Wang, ECCV 2022).

    Registers a step pre-hook and a step post-hook. In the gradient modes, before each step,
    for every param group holding the given parameters, with :math:`w` and :math:`g` the
    concatenation of the group's flattened weights and gradients (gradients after
    :class:`~optim.NOG` if NOG was registered first, before weight decay), a candidate step
    size is computed:

    - ``mode="paper"``: :math:`\eta^* = (w\cdot w)(g\cdot w) / ((w\cdot w)(g\cdot g) +
      2 (g\cdot w)^2)`; the group uses :math:`\eta^*` if :math:`0 < \eta^* <` scheduled lr,
      else the scheduled lr (OLR only ever lowers the lr).
    - ``mode="exact"``: the :math:`\eta \in [0, \text{lr}]` minimising
      :math:`\sum_i \|(W_i - \eta G_i)(W_i - \eta G_i)^T - I\|_F^2` (smaller Gram) exactly
      (quartic in :math:`\eta`, see :func:`olr_exact`); it can be 0.

    Both formulas are for the plain SGD step :math:`w - \eta g`. They warn (``UserWarning``,
    once, when OLR is created) unless the optimizer is ``torch.optim.SGD`` itself with
    ``momentum == 0`` and ``weight_decay == 0`` in the managed groups
    (:func:`is_plain_sgd`): with momentum, weight decay, Adam or RMSprop the applied step
    has another direction, and :math:`\eta^*` is optimal for a step that is never taken
    (it then acts as a per-step lr cap).

    ``mode="update"`` works for any optimizer: the pre-hook records :math:`W_{before}`, and
    after the step (and after an update-target NOG registered before it), with :math:`D_i =
    W_i - W_{before,i}` the step the optimizer applied, the post-hook sets
    :math:`W_i \leftarrow W_{before,i} + \alpha^* D_i` with :math:`\alpha^* \in [0, 1]`
    minimising :math:`\sum_i \|\mathrm{Gram}(W_{before,i} + \alpha D_i) - I\|_F^2` exactly
    (the quartic of :func:`olr_exact`, one :math:`\alpha^*` per param group; ties go to the
    larger step). ``last_lr`` reports :math:`\alpha^*` times the scheduled lr and
    ``last_eta`` :math:`\alpha^*`. The optimizer's state is untouched. A group whose step
    is not finite is left as the optimizer made it (``last_eta`` ``nan``).

    After the step the post-hook writes the scheduled lr back into ``group["lr"]``, so LR
    schedulers (StepLR, MultiStepLR, cosine, chained) keep owning it and checkpoints never
    hold :math:`\eta^*`. If a step raised before the post-hook ran, the next pre-hook
    restores the scheduled lr first (unless ``group["lr"]`` was changed since, e.g. by
    ``load_state_dict``).

    ``optimizer.step(closure)`` works: the lr is computed after the closure has produced the
    gradients (and NOG has run on them). ``torch.optim.LBFGS`` reads its lr before calling
    the closure and is refused. Groups with ``maximize=True`` step along :math:`+g`, which
    OLR accounts for.

    The parameters must form their own param group(s): every group containing one of them
    must contain only them (else ``ValueError``). Several parameters in one group share a
    single lr computed over their concatenation; put each in its own group for one lr each.

    Attributes:
        last_lr (list[float] | None): the lr used at the last step for each managed group, in
            param-group order (None before the first step).
        last_eta (list[float] | None): the raw candidate of each group at the last step
            (``nan`` when undefined, e.g. a zero gradient), before clipping.

    With ``GradScaler`` and a fused optimizer the gradients reaching the hook are still
    multiplied by the loss scale (see :class:`~optim.NOG`); OLR divides them by
    ``optimizer.grad_scale`` before computing :math:`\eta`. On a step GradScaler marks as
    overflowed (``optimizer.found_inf > 0``), which the fused kernel skips, OLR does
    nothing: ``group["lr"]``, ``last_lr`` and ``last_eta`` keep their values.

    Args:
        optimizer: the ``torch.optim.Optimizer`` holding ``params``.
        params: tensor or iterable of tensors, all in the optimizer, forming whole groups.
        mode: ``"paper"`` (default), ``"exact"`` or ``"update"`` (those two need params with
            at least 2 dims).

    Example:
        >>> conv = torch.nn.Conv2d(3, 64, 3, bias=False)
        >>> opt = torch.optim.SGD([{"params": [conv.weight]}], lr=0.1, momentum=0.9)
        >>> nog = optim.NOG(opt, [conv.weight])
        >>> olr = optim.OLR(opt, [conv.weight])
        >>> conv(torch.randn(2, 3, 8, 8)).square().mean().backward()
        >>> opt.step(); olr.last_lr      # doctest: +SKIP
        [0.0123...]
    """

    _kind = "olr"

    def __init__(self, optimizer: Optimizer, params: ParamsArg, *, mode: str = "paper") -> None:
        self.optimizer = check_optimizer(optimizer, "OLR")
        self.params = collect_params(params, "OLR")
        _check_mode(mode)
        for i, p in enumerate(self.params):
            if not p.is_floating_point():
                raise TypeError(f"OLR: params[{i}] must be floating point, got {p.dtype}")
            if mode != "paper" and p.ndim < 2:
                raise ValueError(
                    f"OLR: mode={mode!r} needs weights with at least 2 dims; params[{i}] has "
                    f"shape {tuple(p.shape)}"
                )
        check_in_optimizer(self.params, self.optimizer, "OLR")
        if mode in GRADIENT_MODES and isinstance(self.optimizer, torch.optim.LBFGS):
            raise ValueError(
                "OLR: torch.optim.LBFGS reads its lr before it evaluates the closure, so no "
                "step size computed from the gradient can reach it; use OLR with a first-order "
                "optimizer (SGD, Adam, AdamW, ...)"
            )
        self.mode = mode
        self._group_indices = self._find_groups()
        self.last_lr: list[float] | None = None
        self.last_eta: list[float] | None = None
        self._saved: list[tuple[int, Any, float]] | None = None
        self._before: dict[int, Tensor] = {}
        if mode in GRADIENT_MODES and not is_plain_sgd(self.optimizer, self.groups):
            warnings.warn(
                f"OLR: mode={mode!r} computes the step size for the plain SGD step -lr * grad, "
                f"but {type(self.optimizer).__name__} with these settings (momentum, weight "
                "decay or adaptive scaling) applies another step, so the lr is optimal for a "
                "step that is never taken; mode='update' optimises the step the optimizer "
                "actually applies",
                UserWarning,
                stacklevel=2,
            )
        attach(self.optimizer, self)
        self._pre: Any = self.optimizer.register_step_pre_hook(self._before_step)
        self._post: Any = self.optimizer.register_step_post_hook(self._after_step)

    def _find_groups(self) -> list[int]:
        ids = {id(p) for p in self.params}
        indices = []
        for gi, group in enumerate(self.optimizer.param_groups):
            inside = [p for p in group["params"] if id(p) in ids]
            if not inside:
                continue
            outside = len(group["params"]) - len(inside)
            if outside:
                raise ValueError(
                    f"OLR: param group {gi} of the optimizer holds {len(inside)} OLR parameter(s) "
                    f"and {outside} other parameter(s); OLR sets the lr of whole groups, so its "
                    f"parameters need param group(s) of their own.\n{_GROUP_HOWTO}"
                )
            indices.append(gi)
        return indices

    @property
    def groups(self) -> list[dict]:
        """The param groups OLR manages (looked up in the optimizer each time)."""
        return [self.optimizer.param_groups[i] for i in self._group_indices]

    def _restore(self) -> None:
        if self._saved is None:
            return
        for gi, lr, used in self._saved:
            group = self.optimizer.param_groups[gi]
            # else someone (load_state_dict) has set it since: leave their value alone
            if isinstance(group["lr"], Tensor):
                if group["lr"] is used:  # the tensor OLR filled, not a newly loaded one
                    group["lr"].fill_(lr)
            elif group["lr"] == used:
                group["lr"] = lr
        self._saved = None

    def _candidate(self, group: dict, lr: float, grad_scale: Tensor | None) -> tuple[float, float]:
        ps = [p for p in group["params"] if p.grad is not None]
        if not ps:
            return math.nan, lr
        grads = [p.grad for p in ps]
        if grad_scale is not None:
            inv = 1.0 / float(grad_scale)
            grads = [g.to(torch.float64) * inv for g in grads]
        if group.get("maximize", False):
            grads = [-g for g in grads]  # the optimizer steps along +g
        if self.mode == "paper":
            eta = olr_paper(ps, grads)
            use = eta if (math.isfinite(eta) and 0.0 < eta < lr) else lr
            return eta, use
        eta = olr_exact(ps, grads, lr)
        return eta, eta

    def _before_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> Any:
        self._restore()
        if self.mode == "update":
            self._record()
            return None
        return after_gradients(args, kwargs, lambda: self._set_lr(optimizer))

    @torch.no_grad()
    def _record(self) -> None:
        # The weights do not change while a closure recomputes the gradients: record now.
        for p in self.params:
            self._before[id(p)] = snapshot(p, self._before.get(id(p)))

    @torch.no_grad()
    def _scale_step(self, optimizer: Optimizer) -> None:
        """Update mode: W <- W_before + alpha* D per managed group (see the class notes)."""
        if step_will_be_skipped(optimizer):
            return
        used, raw = [], []
        for gi in self._group_indices:
            group = optimizer.param_groups[gi]
            ps = [p for p in group["params"] if id(p) in self._before]
            befores = [self._before[id(p)] for p in ps]
            steps = [p.detach() - b for p, b in zip(ps, befores)]
            lr = float(group["lr"])
            if not ps or not all(bool(torch.isfinite(d).all()) for d in steps):
                used.append(lr)  # nothing to scale / a non-finite step stays as it is
                raw.append(math.nan)
                continue
            alpha = olr_exact(befores, [-d for d in steps], 1.0)
            if alpha != 1.0:
                for p, b, d in zip(ps, befores, steps):
                    p.detach().copy_(b + alpha * d)
            used.append(alpha * lr)
            raw.append(alpha)
        self.last_lr = used
        self.last_eta = raw

    @torch.no_grad()
    def _set_lr(self, optimizer: Optimizer) -> None:
        self._restore()  # an optimizer may call the closure more than once per step
        if step_will_be_skipped(optimizer):
            # GradScaler found an overflow and the fused kernel will skip this step: leave
            # the lr and the last report alone (a non-fused step is never even called).
            return
        grad_scale = grad_scale_of(optimizer)
        saved, used, raw = [], [], []
        for gi in self._group_indices:
            group = optimizer.param_groups[gi]
            sched = group["lr"]
            sched_value = sched.clone() if isinstance(sched, Tensor) else sched
            eta, lr = self._candidate(group, float(sched), grad_scale)
            saved.append((gi, sched_value, sched if isinstance(sched, Tensor) else lr))
            raw.append(eta)
            used.append(lr)
            if isinstance(sched, Tensor):
                sched.fill_(lr)
            else:
                group["lr"] = lr
        self._saved = saved
        self.last_lr = used
        self.last_eta = raw

    def _after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if self.mode == "update":
            self._scale_step(optimizer)
        self._restore()

    def remove(self) -> None:
        """Detach both hooks (restoring the scheduled lr if a step is half done)."""
        if self._pre is not None:
            self._restore()
            self._pre.remove()
            self._post.remove()
            self._pre = self._post = None
            self._before = {}
            detach(self.optimizer, self)

    @property
    def active(self) -> bool:
        """Whether the hooks are still registered."""
        return self._pre is not None

    def state_dict(self) -> dict[str, Any]:
        """The configuration only (``{"mode": ...}``); no lr is ever stored."""
        return {"mode": self.mode}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the configuration saved by :meth:`state_dict`."""
        if not isinstance(state_dict, dict) or set(state_dict) != {"mode"}:
            raise ValueError(
                f"OLR.load_state_dict expects a dict with exactly the key 'mode', got {state_dict!r}"
            )
        _check_mode(state_dict["mode"])
        if state_dict["mode"] != "paper":
            for i, p in enumerate(self.params):
                if p.ndim < 2:
                    raise ValueError(
                        f"OLR: mode={state_dict['mode']!r} needs weights with at least 2 dims; params[{i}] has "
                        f"shape {tuple(p.shape)}"
                    )
        self.mode = state_dict["mode"]

    def __repr__(self) -> str:
        return (
            f"OLR(params={len(self.params)}, groups={self._group_indices}, mode={self.mode!r}, "
            f"active={self.active})"
        )
