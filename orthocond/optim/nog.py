"""Nearest Orthogonal Gradient (NOG): replace a weight's gradient by its polar factor U V^T."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from orthocond.linalg.polar import polar_unchecked

from ._common import (
    ParamsArg,
    after_gradients,
    attach,
    attached,
    check_in_optimizer,
    check_optimizer,
    collect_params,
    detach,
    found_inf_of,
    grad_scale_of,
)

NOG_METHODS = ("svd", "ns")
NOG_SCALES = ("none", "grad")


def _check_options(method: object, rtol: object, scale: object, steps: object, owner: str) -> None:
    if method not in NOG_METHODS:
        raise ValueError(f"{owner}: method must be one of 'svd', 'ns'; got {method!r}")
    if scale not in NOG_SCALES:
        raise ValueError(f"{owner}: scale must be one of 'none', 'grad'; got {scale!r}")
    if rtol is not None:
        if (
            not isinstance(rtol, (int, float))
            or isinstance(rtol, bool)
            or not 0 <= rtol < 1  # also rejects NaN
        ):
            raise ValueError(f"{owner}: rtol must be None or a float in [0, 1), got {rtol!r}")
        if method != "svd":
            raise ValueError(
                f"{owner}: rtol needs method='svd' (the 'ns' iteration cannot cut singular "
                "values); got method='ns'"
            )
    if steps is not None:
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"{owner}: steps must be None or a positive int, got {steps!r}")
        if method != "ns":
            raise ValueError(f"{owner}: steps applies to method='ns' only; got method={method!r}")


def _orthogonalize(
    G: Tensor,
    method: str,
    rtol: float | None,
    scale: str,
    steps: int | None,
    factor: Tensor | None = None,
    skip: Tensor | None = None,
) -> Tensor:
    """Batched core: ``G (Tensor[B, m, n])`` -> NOG of every matrix, same dtype.

    Matrices that are all zero or hold a non-finite value come back unchanged, and so does
    everything when ``skip`` (a scalar tensor, GradScaler's ``found_inf``) is non-zero.
    ``factor`` (a scalar tensor) multiplies the orthogonalised matrices only (used to put
    GradScaler's scale back for fused optimizers). No host synchronisation of its own: the
    polar core is called without ``polar``'s input checks, which the placeholder makes
    unnecessary (``method="svd"`` still has the one of cuSOLVER's error check in
    ``torch.linalg.svd``; ``"ns"`` has none).
    """
    work = torch.float64 if G.dtype == torch.float64 else torch.float32
    X = G.to(work)
    finite = torch.isfinite(X).all(dim=(-2, -1))
    if skip is not None:
        finite = finite & (skip.to(X.device) == 0)
    # Largest entry: a robust normaliser (polar is scale invariant) that cannot overflow.
    amax = torch.where(finite[:, None, None], X, 0).abs().amax(dim=(-2, -1))
    valid = finite & (amax > 0)
    mask = valid[:, None, None]
    safe_amax = torch.where(valid, amax, 1)[:, None, None]
    # Invalid matrices become a harmless placeholder so that polar never sees them.
    placeholder = torch.eye(X.shape[-2], X.shape[-1], dtype=work, device=X.device)
    Xn = torch.where(mask, X / safe_amax, placeholder)
    R = polar_unchecked(Xn, method, steps, rtol)
    if scale == "grad":
        # ||G||_F / ||R||_F, with ||G||_F = amax * ||G / amax||_F (no overflow in the norm).
        ratio = torch.linalg.matrix_norm(Xn) / torch.linalg.matrix_norm(R).clamp_min(
            torch.finfo(work).tiny
        )
        R = R * (ratio[:, None, None] * safe_amax)
    if factor is not None:
        R = R * factor.to(device=R.device, dtype=work)
    return torch.where(mask, R, X).to(G.dtype)


def nearest_orthogonal_gradient(
    grad: Tensor,
    method: str = "svd",
    *,
    rtol: float | None = None,
    scale: str = "none",
    steps: int | None = None,
) -> Tensor:
    r"""Nearest orthogonal matrix of a gradient, reshaped back to the gradient's shape.

    With :math:`G` = ``grad`` flattened to ``(C_out, C_in*kh*kw)`` (never per kernel) and
    the thin SVD :math:`G = U S V^T`, returns :math:`R = U V^T`, the minimiser of
    :math:`\|G - R\|_F` over matrices with orthonormal rows or columns. ``scale="none"``
    (the ECCV 2022 NOG) keeps :math:`\|R\|_F = \sqrt{\mathrm{rank}}`; ``scale="grad"``
    rescales :math:`R` to :math:`\|G\|_F`. With ``rtol``, singular values below
    ``rtol * sigma_1`` map to 0 (:math:`R = U_k V_k^T`, pseudo-inverse semantics) instead of
    adding arbitrary unit directions to a rank-deficient gradient.

    A zero or non-finite gradient is returned unchanged (a copy), never NaN.

    Args:
        grad (Tensor[m, ...]): gradient of a weight with at least 2 dims (Linear
            ``(out, in)``, Conv ``(C_out, C_in, kh, kw)``), any floating dtype (half types
            compute in float32).
        method: ``"svd"`` (default, ``torch.linalg.svd``) or ``"ns"`` (matmul-only Polar
            Express iteration of :func:`orthocond.linalg.polar`, GPU friendly).
        rtol: None (default: every singular value to 1) or a relative cut-off in [0, 1);
            needs ``method="svd"``.
        scale: ``"none"`` (default) or ``"grad"``.
        steps: Polar Express iterations for ``method="ns"`` (default: polar's).

    Returns:
        Tensor of ``grad``'s shape and dtype.

    Example:
        >>> g = torch.randn(64, 3, 3, 3, dtype=torch.float64)
        >>> r = nearest_orthogonal_gradient(g).reshape(64, 27)
        >>> torch.allclose(r.T @ r, torch.eye(27, dtype=torch.float64))
        True
    """
    if not isinstance(grad, Tensor):
        raise TypeError(f"grad must be a torch.Tensor, got {type(grad).__name__}")
    if not grad.is_floating_point():
        raise TypeError(f"grad must have a floating dtype, got {grad.dtype}")
    if grad.ndim < 2:
        raise ValueError(
            f"grad must have at least 2 dims (out, in, ...) to be flattened to a matrix, got shape "
            f"{tuple(grad.shape)}"
        )
    if grad.numel() == 0:
        raise ValueError(f"grad must be non-empty, got shape {tuple(grad.shape)}")
    _check_options(method, rtol, scale, steps, "nearest_orthogonal_gradient")
    G = grad.detach().reshape(1, grad.shape[0], -1)
    return _orthogonalize(G, method, rtol, scale, steps)[0].reshape(grad.shape)


class NOG:
    r"""Nearest Orthogonal Gradient as an optimizer step pre-hook (Song, Sebe, Wang, ECCV 2022).

    Before every ``optimizer.step()``, each given parameter's gradient :math:`G`, flattened
    to ``(C_out, C_in*kh*kw)``, is replaced in place (``grad.copy_``) by its polar factor
    :math:`U V^T` (see :func:`nearest_orthogonal_gradient`). A step pre-hook runs after
    ``backward``, gradient accumulation, DDP's all-reduce and ``GradScaler.unscale_``, and
    before the optimizer applies weight decay and momentum, so with SGD the applied step is
    the momentum average of :math:`U V^T + \lambda W`. Writing in place keeps DDP buckets,
    foreach and fused optimizers working. Parameters of the same flattened shape, dtype and
    device are orthogonalised in one batched ``polar`` call.

    - ``None`` gradient: skipped. All-zero gradient: left as is. Gradient with NaN/Inf: left
      as is, so ``GradScaler`` still sees the overflow and skips the step.
    - Register NOG before :class:`~optim.OLR` on the same parameters (hooks run in
      registration order; OLR must see the orthogonalised gradient). Creating a NOG after
      an OLR that shares parameters raises ``ValueError``.

    GradScaler with fused optimizers (``fused=True``): ``GradScaler.step`` does not unscale
    the gradients of an optimizer that unscales inside its fused kernel; it sets
    ``optimizer.grad_scale`` and ``optimizer.found_inf`` and calls ``step``, so the pre-hook
    sees gradients still multiplied by the loss scale :math:`s` and the kernel divides the
    update by :math:`s` afterwards. :math:`U V^T` is scale invariant, so NOG would silently
    shrink the step by :math:`s` (e.g. 65536). NOG detects ``optimizer.grad_scale`` and
    multiplies its output by it, so the kernel's division gives back :math:`U V^T` (with
    ``scale="grad"`` the rescaling already carries :math:`s`); on a step GradScaler marked
    as overflowed (``optimizer.found_inf > 0``) NOG does nothing and the kernel skips it.
    Calling ``scaler.unscale_(optimizer)`` before ``scaler.step(optimizer)`` is the
    simplest, equally correct alternative (then ``grad_scale`` is None and NOG sees true
    gradients). Without either, a hook that is not scale-aware would be wrong by :math:`s`.

    Args:
        optimizer: the ``torch.optim.Optimizer`` holding ``params``.
        params: a tensor or an iterable of tensors with at least 2 dims, each one of the
            optimizer's parameters (for a parametrized weight, its trainable tensor:
            :func:`orthocond.ortho.trainable_tensor`).
        method: ``"svd"`` (default) or ``"ns"``.
        rtol: None (default) or relative singular-value cut-off in [0, 1) (``"svd"`` only).
        scale: ``"none"`` (default, the paper: :math:`\|R\|_F = \sqrt{rank}`) or ``"grad"``.
        steps: Polar Express iterations for ``method="ns"``.

    Example:
        >>> conv = torch.nn.Conv2d(3, 64, 3, bias=False)
        >>> opt = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9)
        >>> nog = NOG(opt, [conv.weight])
        >>> conv(torch.randn(2, 3, 8, 8)).square().mean().backward()
        >>> opt.step()        # conv.weight moved by -0.1 * U V^T of its gradient
        >>> nog.remove()
    """

    _kind = "nog"

    def __init__(
        self,
        optimizer: Optimizer,
        params: ParamsArg,
        *,
        method: str = "svd",
        rtol: float | None = None,
        scale: str = "none",
        steps: int | None = None,
    ) -> None:
        self.optimizer = check_optimizer(optimizer, "NOG")
        self.params = collect_params(params, "NOG")
        _check_options(method, rtol, scale, steps, "NOG")
        for i, p in enumerate(self.params):
            if p.ndim < 2:
                raise ValueError(
                    f"NOG: params[{i}] has shape {tuple(p.shape)}; NOG needs a weight with at "
                    "least 2 dims (Linear (out, in) or Conv (C_out, C_in, kh, kw)); leave biases "
                    "and norm parameters out"
                )
            if not p.is_floating_point():
                raise TypeError(f"NOG: params[{i}] must be floating point, got {p.dtype}")
        check_in_optimizer(self.params, self.optimizer, "NOG")
        ids = {id(p) for p in self.params}
        for plugin in attached(self.optimizer):
            if getattr(plugin, "_kind", None) == "olr" and ids & {id(p) for p in plugin.params}:
                raise ValueError(
                    "NOG: an OLR is already registered on this optimizer for some of these "
                    "parameters; step hooks run in registration order and OLR must see NOG's "
                    "gradient. Create NOG first, then OLR (or call olr.remove() and re-create it)"
                )
        self.method = method
        self.rtol = rtol
        self.scale = scale
        self.steps = steps
        attach(self.optimizer, self)
        self._handle: Any = self.optimizer.register_step_pre_hook(self._hook)

    def _hook(self, optimizer: Optimizer, args: Any, kwargs: Any) -> Any:
        return after_gradients(
            args, kwargs, lambda: self.apply_(grad_scale_of(optimizer), found_inf_of(optimizer))
        )

    @torch.no_grad()
    def apply_(self, grad_scale: Tensor | None = None, found_inf: Tensor | None = None) -> None:
        """Orthogonalise the current gradients in place now (what the hook does each step).

        Args:
            grad_scale: loss scale still multiplying the gradients (see the class notes);
                None when they are unscaled.
            found_inf: GradScaler's overflow flag for a fused optimizer; non-zero leaves
                the gradients untouched (checked on the device, without synchronising).
        """
        buckets: dict[tuple, list[Tensor]] = {}
        for p in self.params:
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                raise TypeError("NOG: sparse gradients are not supported")
            key = (g.shape[0], g[0].numel(), g.dtype, g.device)
            buckets.setdefault(key, []).append(g)
        factor = grad_scale if self.scale == "none" else None
        for (m, n, _, _), grads in buckets.items():
            G = torch.stack([g.reshape(m, n) for g in grads])
            R = _orthogonalize(G, self.method, self.rtol, self.scale, self.steps, factor, found_inf)
            for g, r in zip(grads, R.unbind(0)):
                g.copy_(r.reshape(g.shape))

    def remove(self) -> None:
        """Detach the hook; the optimizer behaves as if NOG had never been registered."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
            detach(self.optimizer, self)

    @property
    def active(self) -> bool:
        """Whether the hook is still registered."""
        return self._handle is not None

    def __repr__(self) -> str:
        return (
            f"NOG(params={len(self.params)}, method={self.method!r}, rtol={self.rtol!r}, "
            f"scale={self.scale!r}, active={self.active})"
        )
