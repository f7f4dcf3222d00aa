"""Training diagnostics: covariance conditioning, Pre-SVD orthogonality, gradient health.

:class:`ConditionMonitor` watches a model that contains meta-layers (any module
with the ``capture_covariance`` attribute, see :mod:`orthocond.nn`) and its
Pre-SVD layers. Every ``every`` steps it records, from float64 eigenvalues of a
detached copy of the covariance each meta-layer received,

- ``cond/<layer>``: κ(Σ) = λ_max/λ_min of the covariance given to the matrix
  function (ε I included for decorrelated BN), the maximum over the matrices of
  the batch (GCP: one per sample, at most ``max_matrices``; DBN: one per group),
  plus ``cond_median/<layer>`` when there are several;
- ``cond_noeps/<layer>``: κ(Σ − ε I) for layers with ``eps > 0`` (FORMULAS §4
  "Metric": the conditioning of the data covariance itself; ∞ when Σ − ε I is
  singular, e.g. a 3x3 stem conv with fewer input patch dims than channels);
- ``cond_range/<layer>``: for layers with ``eps == 0`` (a GCP head by default), κ over the
  numerical range, λ_max over the smallest eigenvalue above d·ε_mach·λ_max: a covariance of
  fewer positions than channels is singular (κ = ∞ at every record), and this is the spread
  that is left to condition; the trainer reports it as its κ then;

and, for every Pre-SVD module (``orthocond.ortho.pre_svd_modules``),

- ``ortho_err/<module>``: ||W Wᵀ − I||_F on the smaller Gram of the *effective*
  flattened weight (``orthocond.ortho.orthogonality_error``; a parametrised
  weight is read through its parametrisation; a ``SkewOrthogonalConv2d`` is
  orthogonal by construction and is skipped),
- ``weight_norm/<module>``: ||W||_F of the effective weight (for a
  ``SkewOrthogonalConv2d``: ``param_norm/<module>``, the norm of its generator A),
- ``grad_norm/<module>``: ||∂l/∂θ||_F of its trainable tensor θ,

and ``grad_norm`` (global 2-norm of all gradients) and ``loss``. Non-finite
losses and gradients are checked on *every* step (one host sync) and counted
in :attr:`events`. Capture is switched on only for the forward passes of the
steps that are recorded, so the other steps cost nothing extra.

History and :meth:`summary` are plain Python data (``inf`` marks a singular
covariance); :meth:`write_jsonl` / :meth:`write_csv` export it (JSON ``null``
for non-finite numbers); ``jsonl=`` streams records as they come and
``writer=`` mirrors them to TensorBoard (κ as ``log10``).

Example::

    >>> from orthocond.models import cifar_resnet18          # doctest: +SKIP
    >>> model = cifar_resnet18(10, in_channels=1, width=8)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> mon = ConditionMonitor(model, every=10)
    >>> for x, y in batches:
    ...     loss = torch.nn.functional.cross_entropy(model(x), y)
    ...     opt.zero_grad(); loss.backward()
    ...     mon.step(loss=loss, lr=opt.param_groups[0]["lr"])
    ...     opt.step()
    >>> mon.history[-1]["cond/bn1"], mon.summary()["nonfinite_loss"]
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import warnings
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Union

import torch
from torch import Tensor, nn

from orthocond._checks import check_float, check_int, check_module
from orthocond._io import atomic_write, jsonable
from orthocond.nn import SkewOrthogonalConv2d
from orthocond.nn.meta import find_meta_layers, meta_layer_mode, plain_module_name
from orthocond.ortho import orthogonality_error, pre_svd_modules, trainable_tensor

__all__ = [
    "ConditionMonitor",
    "covariance_condition",
    "find_meta_layers",
    "find_pre_svd_modules",
    "effective_weight",
    "trainable_weight",
]


# --------------------------------------------------------------------------- functional


def covariance_condition(
    cov: Tensor, *, eps: float = 0.0, max_matrices: int | None = None
) -> dict[str, float | None]:
    """Condition numbers of a (batch of) covariance matrices from float64 eigenvalues.

    With λ the eigenvalues of each matrix (``torch.linalg.eigvalsh`` in float64),
    κ = λ_max / λ_min (∞ when λ_min <= 0) and, when ``eps > 0``,
    κ_ε = (λ_max − ε) / (λ_min − ε) = κ(Σ − ε I), ∞ when λ_min − ε <= tol with
    tol = d · ε_mach(input dtype) · λ_max: subtracting ε cancels, and what is left below
    that level is round-off of the stored matrix, not signal (the numerical-rank rule of
    ``numpy.linalg.matrix_rank``). A rank-deficient Σ − ε I thus reads ∞, not 1e9.

    κ itself is reported as measured: values above about 1/(d · ε_mach) (5.2e5 for d = 16,
    6.5e4 for d = 128 in float32) are beyond what the stored matrix resolves — its smallest
    eigenvalue is then partly round-off, so such values (and ∞) mean "singular at the working
    precision" rather than a precise number. ``median`` is the lower middle value for an even
    count (``torch.median``). Call the monitor's ``step`` after ``GradScaler.unscale_``, or the
    gradient norm it records is the scaled one.

    Args:
        cov (Tensor[..., d, d]): symmetric matrices (any float dtype, any device).
        eps (float): the ε that was added to the diagonal. Default 0.
        max_matrices (int, optional): only the first ``max_matrices`` matrices of the
            flattened batch are decomposed (cost control). Default: all.

    Returns:
        dict with ``"max"`` and ``"median"`` of κ over the matrices, ``"min_eig"`` and
        ``"max_eig"`` (over all), ``"max_range"``/``"median_range"`` (κ over the numerical
        range: λ_max over the smallest eigenvalue above d · ε_mach · λ_max, finite for a
        rank-deficient matrix), and with ``eps > 0`` ``"max_noeps"``, ``"median_noeps"``.
        Values are ``None`` when the input is not finite or the eigensolver fails.

    Example::

        >>> covariance_condition(torch.diag(torch.tensor([4.0, 1.0])))["max"]
        4.0
    """
    if not isinstance(cov, Tensor) or cov.ndim < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(
            "cov must be a Tensor of shape (..., d, d), got "
            f"{tuple(cov.shape) if isinstance(cov, Tensor) else type(cov).__name__}"
        )
    check_float(eps, "eps", low=0)
    keys = ["max", "median", "min_eig", "max_eig", "max_range", "median_range"]
    keys += ["max_noeps", "median_noeps"] if eps else []
    out: dict[str, float | None] = dict.fromkeys(keys)
    d = cov.shape[-1]
    mats = cov.detach().reshape(-1, d, d)
    if max_matrices is not None:
        mats = mats[:max_matrices]
    if mats.shape[0] == 0 or d == 0:
        return out
    unit = torch.finfo(mats.dtype).eps if mats.dtype.is_floating_point else 0.0
    mats = mats.to(torch.float64)
    if not bool(torch.isfinite(mats).all()):
        return out
    try:
        lam = torch.linalg.eigvalsh(mats)  # ascending, (K, d)
    except RuntimeError:  # eigensolver did not converge
        return out
    lo, hi = lam[:, 0], lam[:, -1]
    inf = torch.tensor(math.inf, dtype=torch.float64, device=lam.device)
    kappa = torch.where(lo > 0, hi / lo.clamp_min(torch.finfo(torch.float64).tiny), inf)
    # over the numerical range: the smallest eigenvalue above d·ε·λ_max (a rank-deficient GCP
    # covariance, fewer positions than channels, has κ = ∞ but a finite spread on its range)
    tol = (d * unit * hi.abs()).unsqueeze(-1)
    lo_range = torch.where(lam > tol, lam, inf).amin(dim=-1)
    kappa_range = torch.where(torch.isfinite(lo_range), hi / lo_range, inf)
    vals = [kappa.max(), kappa.median(), lo.min(), hi.max(), kappa_range.max(), kappa_range.median()]
    if eps:
        lo_e, hi_e = lo - eps, hi - eps
        tol = d * unit * hi.abs()
        kappa_e = torch.where(
            lo_e > tol, hi_e / lo_e.clamp_min(torch.finfo(torch.float64).tiny), inf
        )
        vals += [kappa_e.max(), kappa_e.median()]
    for k, v in zip(keys, torch.stack(vals).tolist()):
        out[k] = float(v)
    return out


def _disarm(layers: list[nn.Module], owner: object) -> None:
    for m in layers:
        if getattr(m, "_capture_owner", None) is owner:
            m.capture_covariance = False
            m.captured_covariance = None


def find_pre_svd_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the Pre-SVD layers (:func:`orthocond.ortho.pre_svd_modules`),
    named without wrapper prefixes."""
    wanted = {id(m) for m in pre_svd_modules(model)}
    return [(plain_module_name(n), m) for n, m in model.named_modules() if id(m) in wanted]


def effective_weight(module: nn.Module, name: str = "weight") -> Tensor | None:
    """The weight a module computes with (through any parametrisation), or None."""
    w = getattr(module, name, None)
    return w if isinstance(w, Tensor) else None


def trainable_weight(module: nn.Module, name: str = "weight") -> Tensor | None:
    """The trainable tensor behind ``module.<name>`` (:func:`orthocond.ortho.trainable_tensor`:
    the unconstrained original of a parametrisation, else the parameter), or None."""
    try:
        return trainable_tensor(module, name)
    except (ValueError, TypeError):
        return None


def _to_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, Tensor):
        return float(value.detach().float().item())
    return float(value)


# --------------------------------------------------------------------------- monitor


class ConditionMonitor:
    """Records covariance condition numbers, Pre-SVD orthogonality and gradient health.

    Call :meth:`step` once per training step, after ``loss.backward()`` and before
    ``optimizer.step()`` (gradient norms are those of the raw gradients, before any
    optimizer hook such as NOG). Step ``t`` (counting from 0) is recorded when
    ``t % every == 0``; the monitor turns the meta-layers' ``capture_covariance`` on
    only for the forward pass of such a step. Wrap evaluation code in
    :meth:`paused` so that eval forwards do not capture.

    Args:
        model (nn.Module): the network (meta-layers found by :func:`find_meta_layers`).
        every (int): record every ``every``-th step (>= 1). Default 10.
        pre_svd (sequence of nn.Module, optional): the Pre-SVD modules; default
            :func:`find_pre_svd_modules`.
        max_matrices (int, optional): matrices per meta-layer decomposed per record
            (GCP captures one per sample). Default 16; None = all.
        check_finite (bool): check loss and gradients for NaN/Inf every step. Default True.
        writer: a TensorBoard ``SummaryWriter`` (anything with ``add_scalar``) or a log
            directory (created only when ``tensorboard`` is importable, else a warning).
        jsonl (path, optional): append every record to this JSON-lines file as it is made.

    Attributes:
        history (list[dict]): one dict per recorded step (keys: ``step``, ``loss``,
            ``grad_norm``, ``cond/...``, ``cond_noeps/...``, ``ortho_err/...``,
            ``weight_norm/...``, ``grad_norm/...`` and the extra scalars given to step).
        events (list[dict]): ``{"step", "kind": "loss" | "grad"}`` for non-finite values.
        steps (int): number of :meth:`step` calls so far.

    Example::

        >>> mon = ConditionMonitor(model, every=5)                # doctest: +SKIP
        >>> loss.backward(); rec = mon.step(loss=loss)            # rec: dict or None
        >>> with mon.paused():
        ...     model.eval(); evaluate(model)
        >>> mon.summary()["metrics"]["cond/bn1"]["max"]
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int = 10,
        pre_svd: Sequence[nn.Module] | None = None,
        max_matrices: int | None = 16,
        check_finite: bool = True,
        writer: Any = None,
        jsonl: Union[str, os.PathLike] | None = None,
    ) -> None:
        check_module(model)
        check_int(every, "every")
        check_int(max_matrices, "max_matrices", allow_none=True)
        self.model = model
        self.every = every
        self.max_matrices = max_matrices
        self.check_finite = bool(check_finite)
        self.meta_layers = find_meta_layers(model)
        if pre_svd is None:
            self.pre_svd = find_pre_svd_modules(model)
        else:
            names = {id(m): n for n, m in model.named_modules()}
            missing = [type(m).__name__ for m in pre_svd if id(m) not in names]
            if missing:
                raise ValueError(f"pre_svd modules are not submodules of model: {missing}")
            self.pre_svd = [(plain_module_name(names[id(m)]), m) for m in pre_svd]
        self.history: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.steps = 0
        #: loss and global gradient norm seen by the last checked step (None if unchecked)
        self.last_loss: float | None = None
        self.last_grad_norm: float | None = None
        self._paused = 0
        self.writer = self._make_writer(writer)
        self._owns_writer = self.writer is not None and self.writer is not writer
        self._jsonl = None
        if jsonl is not None:
            self._jsonl = open(jsonl, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        # The layers remember which monitor armed them last: a monitor dropped without
        # close() disarms only the layers still its own, never those a newer monitor armed.
        self._owner_token = object()
        self._arm(True)
        self._finalizer = weakref.finalize(
            self, _disarm, [m for _, m in self.meta_layers], self._owner_token
        )

    # ---------------------------------------------------------------- capture control
    @staticmethod
    def _make_writer(writer: Any) -> Any:
        if writer is None or hasattr(writer, "add_scalar"):
            return writer
        if isinstance(writer, (str, os.PathLike)):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn(
                    "tensorboard is not installed: no TensorBoard events are written "
                    "(pip install tensorboard)",
                    stacklevel=3,
                )
                return None
            return SummaryWriter(log_dir=str(writer))
        raise TypeError(
            "writer must be None, a log directory or an object with add_scalar, "
            f"got {type(writer).__name__}"
        )

    def _arm(self, on: bool) -> None:
        for _, m in self.meta_layers:
            m.capture_covariance = bool(on) and not self._paused
            m.captured_covariance = None
            m._capture_owner = self._owner_token

    @property
    def will_record(self) -> bool:
        """True when the next :meth:`step` call makes a record."""
        return self.steps % self.every == 0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Context manager: no capture inside (use around evaluation forwards); the
        :func:`~orthocond.nn.meta_layer_mode` of the watched layers, which also keeps
        :meth:`arm` from switching capture back on inside."""
        self._paused += 1
        try:
            with meta_layer_mode([m for _, m in self.meta_layers]):
                yield
        finally:
            self._paused -= 1

    # ---------------------------------------------------------------- recording
    def step(self, loss: Any = None, **scalars: Any) -> dict[str, Any] | None:
        """Account for one training step; returns the record when this step is recorded.

        Args:
            loss (Tensor or float, optional): the step's loss (checked for finiteness).
            **scalars: extra numbers stored in the record (e.g. ``lr=0.1``).

        Returns:
            The new history entry (dict) or None when the step is not recorded.
        """
        t = self.steps
        record = t % self.every == 0
        loss_f: float | None = None
        grad_norm: float | None = None
        if self.check_finite or record:
            loss_f, grad_norm = self._loss_and_grad_norm(loss)
            self.last_loss, self.last_grad_norm = loss_f, grad_norm
            if loss_f is not None and not math.isfinite(loss_f):
                self.events.append({"step": t, "kind": "loss"})
            if grad_norm is not None and not math.isfinite(grad_norm):
                self.events.append({"step": t, "kind": "grad"})
        rec: dict[str, Any] | None = None
        if record:
            rec = {"step": t, "loss": loss_f, "grad_norm": grad_norm}
            for k, v in scalars.items():
                rec[k] = _to_float(v) if isinstance(v, (Tensor, int, float)) else v
            rec.update(self._measure())
            self.history.append(rec)
            self._emit(rec)
        self.steps = t + 1
        self._arm(self.will_record)
        return rec

    def _loss_and_grad_norm(self, loss: Any) -> tuple[float | None, float | None]:
        # One host sync for both numbers.
        grads = [p.grad.detach() for p in self.model.parameters() if p.grad is not None]
        vals: list[Tensor] = []
        if isinstance(loss, Tensor):
            vals.append(loss.detach().float().reshape(()))
        if grads:
            total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
            if total_norm is not None and len({g.device for g in grads}) == 1:
                gn_t = total_norm(grads, 2.0).float()
            else:
                gn_t = torch.stack([g.float().norm() for g in grads]).norm()
            vals.append(gn_t.to(vals[0].device if vals else gn_t.device))
        got = torch.stack(vals).tolist() if vals else []
        lf: float | None = None
        if isinstance(loss, Tensor):
            lf = float(got.pop(0))
        elif loss is not None:
            lf = float(loss)
        gn = float(got[0]) if grads else None
        return lf, gn

    @torch.no_grad()
    def _measure(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, m in self.meta_layers:
            cov = getattr(m, "captured_covariance", None)
            if cov is None:
                continue
            eps = float(getattr(m, "eps", 0.0) or 0.0)
            c = covariance_condition(cov, eps=eps, max_matrices=self.max_matrices)
            out[f"cond/{name}"] = c["max"]
            if cov.reshape(-1, cov.shape[-2], cov.shape[-1]).shape[0] > 1:
                out[f"cond_median/{name}"] = c["median"]
            if eps:
                out[f"cond_noeps/{name}"] = c["max_noeps"]
            else:  # without ε a rank-deficient Σ has κ = ∞: also its spread on the range
                out[f"cond_range/{name}"] = c["max_range"]
        out.update(self.weight_metrics())
        for name, m in self.pre_svd:
            theta = trainable_weight(m)
            if theta is not None and theta.grad is not None:
                out[f"grad_norm/{name}"] = float(theta.grad.detach().double().norm())
        return out

    @torch.no_grad()
    def weight_metrics(self) -> dict[str, float | None]:
        """``weight_norm/<layer>`` and ``ortho_err/<layer>`` of the Pre-SVD layers' effective
        weights as they are now (``param_norm/<layer>`` for a SOC layer, whose weight is the
        generator of an operator orthogonal by construction)."""
        out: dict[str, float | None] = {}
        for name, m in self.pre_svd:
            w = effective_weight(m)
            if w is None:
                continue
            w = w.detach()
            if _is_soc(m):
                out[f"param_norm/{name}"] = float(w.double().norm())
            else:
                out[f"weight_norm/{name}"] = float(w.double().norm())
                out[f"ortho_err/{name}"] = _ortho_error(w)
        return out

    def _emit(self, rec: dict[str, Any]) -> None:
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(jsonable(rec)) + "\n")
            self._jsonl.flush()
        if self.writer is not None:
            step = rec["step"]
            for k, v in rec.items():
                if k == "step" or not isinstance(v, (int, float)) or isinstance(v, bool):
                    continue
                if k.startswith("cond"):
                    if v > 0 and math.isfinite(v):
                        self.writer.add_scalar(f"log10_{k}", math.log10(v), step)
                elif math.isfinite(v):
                    self.writer.add_scalar(k, v, step)

    # ---------------------------------------------------------------- results
    @property
    def nonfinite_loss(self) -> int:
        """Number of steps with a non-finite loss."""
        return sum(e["kind"] == "loss" for e in self.events)

    @property
    def nonfinite_grad(self) -> int:
        """Number of steps with a non-finite gradient."""
        return sum(e["kind"] == "grad" for e in self.events)

    def series(self, key: str) -> tuple[list[int], list[float | None]]:
        """``(steps, values)`` of one history key (records without the key are skipped)."""
        pairs = [(r["step"], r[key]) for r in self.history if key in r]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def keys(self) -> list[str]:
        """All metric keys seen in the history, in first-seen order."""
        seen: dict[str, None] = {}
        for r in self.history:
            for k in r:
                seen.setdefault(k, None)
        return list(seen)

    def summary(self) -> dict[str, Any]:
        """Plain-data summary: counts, and per numeric key ``first``/``final``/``min``/``max``
        (``final`` and ``first`` may be ``inf``; None-valued records are skipped)."""
        metrics: dict[str, dict[str, float]] = {}
        for key in self.keys():
            if key == "step":
                continue
            vals = [
                r[key] for r in self.history
                if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
                and not math.isnan(r[key])
            ]
            if vals:
                metrics[key] = {
                    "first": float(vals[0]), "final": float(vals[-1]),
                    "min": float(min(vals)), "max": float(max(vals)),
                }
        return {
            "steps": self.steps,
            "records": len(self.history),
            "nonfinite_loss": self.nonfinite_loss,
            "nonfinite_grad": self.nonfinite_grad,
            "meta_layers": [n for n, _ in self.meta_layers],
            "pre_svd": [n for n, _ in self.pre_svd],
            "metrics": metrics,
        }

    def write_jsonl(self, path: Union[str, os.PathLike]) -> None:
        """Write the whole history as JSON lines (non-finite numbers -> null)."""
        atomic_write(path, "".join(json.dumps(jsonable(r)) + "\n" for r in self.history))

    def write_csv(self, path: Union[str, os.PathLike]) -> None:
        """Write the history as CSV (one column per key; ``inf`` written as ``inf``)."""
        keys = self.keys()
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=keys, restval="")
        w.writeheader()
        for r in self.history:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys if k in r})
        atomic_write(path, buf.getvalue())

    def state_dict(self) -> dict[str, Any]:
        """History, events and the step counter (for checkpoints)."""
        return {
            "every": self.every,
            "steps": self.steps,
            "history": [dict(r) for r in self.history],
            "events": [dict(e) for e in self.events],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (re-arms capture for the next step)."""
        self.every = int(state["every"])
        self.steps = int(state["steps"])
        self.history = [dict(r) for r in state["history"]]
        self.events = [dict(e) for e in state["events"]]
        self._arm(self.will_record)

    def close(self) -> None:
        """Turn capture off for good, close the JSONL stream and a writer it created."""
        self._finalizer.detach()
        _disarm([m for _, m in self.meta_layers], self._owner_token)
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self.writer is not None:
            flush = getattr(self.writer, "flush", None)
            if callable(flush):
                flush()
            if self._owns_writer:
                self.writer.close()

    remove = close

    def __enter__(self) -> ConditionMonitor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _is_soc(module: nn.Module) -> bool:
    return isinstance(module, SkewOrthogonalConv2d)


def _ortho_error(w: Tensor) -> float | None:
    if not bool(torch.isfinite(w).all()):
        return None
    return float(orthogonality_error(w))
