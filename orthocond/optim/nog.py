"""Nearest Orthogonal Gradient (NOG): replace a weight's gradient, or the step an optimizer
took, by its polar factor U V^T."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from orthocond._checks import as_weight_matrix, check_int
from orthocond.linalg.polar import POLAR_METHODS, polar_unchecked

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
    group_of,
    snapshot,
)

NOG_METHODS = POLAR_METHODS  # the polar factor's methods: svd (exact) or ns (Polar Express)
NOG_SCALES = ("none", "grad", "spectral")
NOG_TARGETS = ("gradient", "update")


def spectral_factor(shape: tuple[int, ...] | torch.Size) -> float:
    r""":math:`\sqrt{\max(1, m/n)}` of a weight flattened to ``(m, n) = (shape[0], rest)``.

    Muon's shape rule, computed on the matrix the polar factor is taken of: a conv weight
    ``(C_out, C_in, kh, kw)`` counts as ``(C_out, C_in*kh*kw)``, never as its last two dims.

    Example:
        >>> spectral_factor((64, 3, 3, 3))   # 64 x 27: sqrt(64 / 27)
        1.5396007178390021
        >>> spectral_factor((16, 64, 3, 3))  # wide: 1
        1.0
    """
    if len(shape) < 2:
        raise ValueError(f"shape must have at least 2 dims, got {tuple(shape)}")
    m = int(shape[0])
    n = math.prod(int(s) for s in shape[1:])
    if m <= 0 or n <= 0:
        raise ValueError(f"shape must be non-empty, got {tuple(shape)}")
    return math.sqrt(max(1.0, m / n))


def _check_options(
    method: object, rtol: object, scale: object, steps: object, owner: str, target: object = "gradient"
) -> None:
    if method not in NOG_METHODS:
        raise ValueError(f"{owner}: method must be one of 'svd', 'ns'; got {method!r}")
    if scale not in NOG_SCALES:
        raise ValueError(f"{owner}: scale must be one of 'none', 'grad', 'spectral'; got {scale!r}")
    if target not in NOG_TARGETS:
        raise ValueError(f"{owner}: target must be one of 'gradient', 'update'; got {target!r}")
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
        check_int(steps, f"{owner}: steps")
        if method != "ns":
            raise ValueError(f"{owner}: steps applies to method='ns' only; got method={method!r}")


def _rank_tol(X: Tensor, rtol: float | None) -> float:
    """Relative singular-value cut: ``rtol`` or the numerical-rank rule ``max(m, n) * eps``."""
    return max(X.shape[-2:]) * torch.finfo(X.dtype).eps if rtol is None else rtol


def _svd_polar(X: Tensor, rtol: float | None) -> Tensor:
    """U V^T of a batch of tall matrices, singular values below the cut mapped to 0.

    ``rtol=None``: the numerical-rank cut ``max(m, n) * eps * sigma_1`` (``numpy.linalg.
    matrix_rank``'s rule), so a rank-deficient matrix gains no arbitrary unit directions
    from rounding noise and agrees with the ``"ns"`` iteration, which maps zero singular
    values to 0. Exact zeros are always cut.
    """
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    keep = (S > 0) & (S >= S[..., :1] * _rank_tol(X, rtol))
    return (U * keep.to(U.dtype).unsqueeze(-2)) @ Vh


# Below this many columns (of the tall orientation) a float32 polar factor on the CPU comes
# from the float64 eigendecomposition of the Gram: faster than LAPACK's float32 SVD there
# (64 x 27: ~0.11 vs ~0.14 ms, 1 thread) and as accurate (float32 products are exact in
# float64, so the Gram's eigenvalues are exact to ~1e-16 * sigma_1^2, far below the cut).
_GRAM_MAX_COLS = 32


def _gram_polar(X: Tensor) -> Tensor | None:
    """float32 tall ``X (Tensor[..., m, n])`` -> U V^T via ``eigh`` of the float64 Gram
    ``X^T X = V diag(sigma^2) V^T``: ``R = X V diag(1/sigma) V^T`` over the singular values
    above the numerical-rank cut (``max(m, n) * eps_float32 * sigma_1``). None if a matrix
    is zero or not finite (float32's largest value squared is finite in float64)."""
    Xd = X.double()
    try:
        L, V = torch.linalg.eigh(Xd.mT @ Xd)
    except torch.linalg.LinAlgError:
        return None
    rows = L.reshape(-1, L.shape[-1]).tolist()  # ascending eigenvalues per matrix
    if not all(0 < r[-1] < math.inf for r in rows):  # also False for NaN
        return None
    tol = max(X.shape[-2:]) * torch.finfo(torch.float32).eps
    if all(r[0] > r[-1] * (tol * tol) for r in rows):  # full numerical rank: no mask needed
        inv = L.rsqrt()
    else:
        keep = L > L[..., -1:] * (tol * tol)
        inv = torch.where(keep, L.clamp_min(torch.finfo(torch.float64).tiny).rsqrt(), 0.0)
    return (Xd @ ((V * inv.unsqueeze(-2)) @ V.mT)).float()


def _svd_polar_cpu(Y: Tensor, rtol: float | None) -> Tensor | None:
    """:func:`_svd_polar` for a CPU batch of tall matrices with the fewest tensor ops
    (reading CPU values costs no synchronisation); None if a matrix is zero or non-finite
    (the caller then takes the masked path).

    NOG runs once per step on small matrices (a 64 x 27 stem: ~0.13 ms of SVD), where each
    extra elementwise op costs several microseconds. So the SVD itself is the validity
    check (LAPACK raises on NaN/Inf, sigma_1 = 0 means a zero matrix), a batch of one calls
    the unbatched SVD (fewer copies), LAPACK's gesdd rescales badly scaled input itself, and
    the rank cut masks only when a singular value actually falls below it. Narrow float32
    matrices take :func:`_gram_polar`.
    """
    X = Y[0] if Y.shape[0] == 1 else Y
    if rtol is None and X.dtype == torch.float32 and X.shape[-1] <= _GRAM_MAX_COLS:
        R = _gram_polar(X)
        if R is not None:
            return R.unsqueeze(0) if Y.shape[0] == 1 else R
    try:
        U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    except torch.linalg.LinAlgError:
        return None
    tol = _rank_tol(Y, rtol)
    rows = S.reshape(-1, S.shape[-1]).tolist()
    if not all(0 < r[0] < math.inf for r in rows):  # also False for NaN
        return None
    if all(r[-1] >= r[0] * tol and r[-1] > 0 for r in rows):
        R = U @ Vh
    else:
        keep = (S > 0) & (S >= S[..., :1] * tol)
        R = (U * keep.to(U.dtype).unsqueeze(-2)) @ Vh
    return R.unsqueeze(0) if Y.shape[0] == 1 else R


def _orthogonalize(
    G: Tensor,
    method: str,
    rtol: float | None,
    scale: str,
    steps: int | None,
    factor: Tensor | float | None = None,
    skip: Tensor | None = None,
) -> Tensor:
    """Batched core: ``G (Tensor[B, m, n])`` -> s * polar of every matrix, same dtype.

    ``scale``: ``"none"`` s = 1, ``"grad"`` s = ||G||_F / ||polar(G)||_F, ``"spectral"``
    s = sqrt(max(1, m/n)); ``factor`` (a float, a scalar tensor or a ``(B,)`` tensor)
    multiplies the result further (the lr of an update target, GradScaler's scale for a
    fused optimizer). Matrices that are all zero or hold a non-finite value come back
    unchanged, and so does everything when ``skip`` (a scalar tensor, GradScaler's
    ``found_inf``) is non-zero.

    Cost: the SVD runs on the tall orientation (LAPACK is up to 3x faster on a 576 x 64
    matrix than on its 64 x 576 transpose). On the CPU, a batch of valid matrices takes
    :func:`_svd_polar_cpu`; otherwise one reduction (max |G|, which propagates NaN and Inf)
    finds the invalid matrices and they are swapped for a placeholder on the device, so the
    only host synchronisation is the one of cuSOLVER's error check in ``torch.linalg.svd``
    (``"ns"`` has none).
    """
    work = torch.float64 if G.dtype == torch.float64 else torch.float32
    X = G.to(work)
    m, n = X.shape[-2:]
    tall = m >= n
    Y = X if tall else X.mT
    R = None
    norm: Tensor | None = None
    if (
        method == "svd"
        and X.device.type == "cpu"
        and skip is None
        and not torch.compiler.is_compiling()
    ):
        R = _svd_polar_cpu(Y, rtol)
    masked = R is None
    if masked:
        amax = torch.linalg.vector_norm(X, float("inf"), dim=(-2, -1))
        valid = torch.isfinite(amax) & (amax > 0)
        if skip is not None:
            valid = valid & (skip.to(X.device) == 0)
        # max |G| normalises: Polar Express divides by ||Y Y^T||_F^{1/2}, which could
        # overflow, and cuSOLVER does not rescale
        norm = torch.where(valid, amax, 1)[:, None, None]
        if method == "svd":
            placeholder = torch.eye(Y.shape[-2], Y.shape[-1], dtype=work, device=X.device)
            Y = torch.where(valid[:, None, None], Y / norm, placeholder)
            R = _svd_polar(Y, rtol)
        else:
            Y = Y / norm  # NaN matrices give NaN, masked below
            R = polar_unchecked(Y, "ns", steps, None)
    if scale == "grad":
        # ||G||_F / ||R||_F, with ||G||_F = max|G| * ||G / max|G|||_F (no overflow)
        if norm is None:
            norm = torch.linalg.vector_norm(Y, float("inf"), dim=(-2, -1))[:, None, None]
            Y = Y / norm
        ratio = torch.linalg.matrix_norm(Y) / torch.linalg.matrix_norm(R).clamp_min(
            torch.finfo(work).tiny
        )
        R = R * (ratio[:, None, None] * norm)
    elif scale == "spectral":
        R = R * math.sqrt(max(1.0, m / n))
    if factor is not None:
        if isinstance(factor, Tensor):
            factor = factor.to(device=R.device, dtype=work)
            if factor.ndim == 1:
                factor = factor[:, None, None]
        R = R * factor
    if not tall:
        R = R.mT
    if masked:
        R = torch.where(valid[:, None, None], R, X)
    return R.to(G.dtype)


def nearest_orthogonal_gradient(
    grad: Tensor,
    method: str = "svd",
    *,
    rtol: float | None = None,
    scale: str = "none",
    steps: int | None = None,
) -> Tensor:
    r"""Nearest orthogonal matrix of a gradient, reshaped back to the gradient's shape.

    With :math:`G` = ``grad`` flattened to ``(m, n) = (C_out, C_in*kh*kw)`` (never per
    kernel) and the thin SVD :math:`G = U S V^T`, returns :math:`s\,R` with
    :math:`R = U V^T`, the minimiser of :math:`\|G - R\|_F` over matrices with orthonormal
    rows or columns. Singular values that are numerically zero (below
    :math:`\max(m, n)\,\epsilon\,\sigma_1`) map to 0, so :math:`\|R\|_F = \sqrt{\mathrm{rank}}`
    and ``"svd"`` agrees with ``"ns"`` on a rank-deficient gradient (the published NOG adds
    arbitrary unit directions there, made of rounding noise). With ``rtol``, singular values
    below ``rtol * sigma_1`` map to 0 as well (pseudo-inverse semantics).

    ``scale``: ``"none"`` (the ECCV 2022 NOG) :math:`s = 1`; ``"grad"`` :math:`s =
    \|G\|_F / \|R\|_F` (the gradient's norm); ``"spectral"`` :math:`s = \sqrt{\max(1, m/n)}`
    (:func:`spectral_factor`, Muon's rule on the flattened shape).

    A zero or non-finite gradient is returned unchanged (a copy), never NaN.

    Args:
        grad (Tensor[m, ...]): gradient of a weight with at least 2 dims (Linear
            ``(out, in)``, Conv ``(C_out, C_in, kh, kw)``), any floating dtype (half types
            compute in float32).
        method: ``"svd"`` (default, ``torch.linalg.svd``) or ``"ns"`` (matmul-only Polar
            Express iteration of :func:`orthocond.linalg.polar`, GPU friendly; singular
            values below about 1e-4 of the largest, its design floor, come out between 0
            and 1: on a rank-deficient float32 gradient the rounding-noise directions get
            ~1e-3, so "ns" and "svd" agree to ~1% there, not to rounding).
        rtol: None (default: the numerical-rank cut) or a relative cut-off in [0, 1);
            needs ``method="svd"``.
        scale: ``"none"`` (default), ``"grad"`` or ``"spectral"``.
        steps: Polar Express iterations for ``method="ns"`` (default: polar's).

    Returns:
        Tensor of ``grad``'s shape and dtype.

    Example:
        >>> g = torch.randn(64, 3, 3, 3, dtype=torch.float64)
        >>> r = nearest_orthogonal_gradient(g).reshape(64, 27)
        >>> torch.allclose(r.T @ r, torch.eye(27, dtype=torch.float64))
        True
    """
    as_weight_matrix(grad, "grad", finite=False)  # a non-finite gradient is the caller's to handle
    _check_options(method, rtol, scale, steps, "nearest_orthogonal_gradient")
    G = grad.detach().reshape(1, grad.shape[0], -1)
    return _orthogonalize(G, method, rtol, scale, steps)[0].reshape(grad.shape)


def _buckets(tensors: list[Tensor]) -> dict[tuple, list[int]]:
    """Indices of ``tensors`` grouped by flattened shape, dtype and device (one batched call
    each)."""
    out: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        out.setdefault((t.shape[0], t[0].numel(), t.dtype, t.device), []).append(i)
    return out


def _write(dst: Tensor, matrix: Tensor) -> None:
    """Copy a flattened ``(m, n)`` matrix into ``dst`` (of the parameter's shape)."""
    if dst.is_contiguous():
        dst.view(matrix.shape).copy_(matrix)  # no intermediate copy of a transposed result
    else:  # e.g. channels_last: reshape would copy, so write through the full shape
        dst.copy_(matrix.reshape(dst.shape))


def _as_batch(tensors: list[Tensor], m: int, n: int) -> Tensor:
    if len(tensors) == 1:
        return tensors[0].reshape(1, m, n)  # a view when contiguous: no stacking copy
    return torch.stack([t.reshape(m, n) for t in tensors])


class NOG:
    r"""Nearest Orthogonal Gradient as an optimizer step hook (Song, Sebe, Wang, ECCV 2022),
    on the gradient (the paper) or on the step the optimizer took (any optimizer).

    Every matrix is the parameter flattened to ``(m, n) = (C_out, C_in*kh*kw)``; :math:`P`
    is its polar factor :math:`U V^T` (see :func:`nearest_orthogonal_gradient`: numerically
    zero singular values map to 0, so :math:`\|P\|_F = \sqrt{\mathrm{rank}}`). Parameters of
    the same flattened shape, dtype and device share one batched call.

    ``target="gradient"`` (default, the paper): a step pre-hook replaces each gradient
    :math:`G` in place by :math:`s\,P(G)`, after ``backward``, gradient accumulation, DDP's
    all-reduce and ``GradScaler.unscale_``, before the optimizer applies weight decay and
    momentum (with SGD the applied step is the momentum average of :math:`sP(G) + \lambda
    W`). :math:`s`: ``"none"`` 1, ``"grad"`` :math:`\|G\|_F/\|P(G)\|_F`, ``"spectral"``
    :math:`\sqrt{\max(1, m/n)}`.

    ``target="update"``: a step pre-hook records :math:`W_{before}`, a step post-hook takes
    the step the optimizer applied, :math:`D = W_{after} - W_{before}` (momentum, Adam's
    scaling, weight decay included), and sets :math:`W \leftarrow W_{before} + s\,P(D)`.
    :math:`s`: ``"none"`` the group's lr (every singular value of the step equals the lr:
    Muon's rule, on top of any optimizer), ``"grad"`` :math:`\|D\|_F/\|P(D)\|_F` (the
    optimizer's step length, its direction orthogonalised), ``"spectral"``
    :math:`\text{lr}\sqrt{\max(1, m/n)}`. A step that did not move :math:`W` (GradScaler
    skipped it, no gradient) stays a zero step; a non-finite step is left as the optimizer
    made it. The optimizer's state (momentum, Adam's moments) is untouched: only the
    weight is corrected, so ``optimizer.step(closure)``, foreach and fused kernels, DDP
    (every rank applies the same step) and GradScaler need no special care.

    - ``None`` gradient: skipped. All-zero gradient: left as is. Gradient with NaN/Inf: left
      as is, so ``GradScaler`` still sees the overflow and skips the step.
    - Register NOG before :class:`~optim.OLR` on the same parameters (hooks run in
      registration order; OLR must see the orthogonalised gradient or step). Creating a NOG
      after an OLR that shares parameters raises ``ValueError``.

    GradScaler with fused optimizers (``fused=True``, gradient target): ``GradScaler.step``
    does not unscale the gradients of an optimizer that unscales inside its fused kernel; it
    sets ``optimizer.grad_scale`` and ``optimizer.found_inf`` and calls ``step``, so the
    pre-hook sees gradients still multiplied by the loss scale :math:`c` and the kernel
    divides the update by :math:`c` afterwards. :math:`U V^T` is scale invariant, so NOG
    would silently shrink the step by :math:`c` (e.g. 65536). NOG detects
    ``optimizer.grad_scale`` and multiplies its output by it, so the kernel's division gives
    back :math:`U V^T` (with ``scale="grad"`` the rescaling already carries :math:`c`); on
    a step GradScaler marked as overflowed (``optimizer.found_inf > 0``) NOG does nothing
    and the kernel skips it. Calling ``scaler.unscale_(optimizer)`` before
    ``scaler.step(optimizer)`` is the simplest, equally correct alternative.

    Args:
        optimizer: the ``torch.optim.Optimizer`` holding ``params``.
        params: a tensor or an iterable of tensors with at least 2 dims, each one of the
            optimizer's parameters (for a parametrized weight, its trainable tensor:
            :func:`orthocond.ortho.trainable_tensor`).
        method: ``"svd"`` (default) or ``"ns"``.
        scale: ``"none"`` (default), ``"grad"`` or ``"spectral"`` (meaning per target above).
        target: ``"gradient"`` (default, the paper) or ``"update"``.
        rtol: None (default: the numerical-rank cut) or relative singular-value cut-off in
            [0, 1) (``"svd"`` only).
        steps: Polar Express iterations for ``method="ns"``.

    Example:
        >>> conv = torch.nn.Conv2d(3, 64, 3, bias=False)
        >>> opt = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9)
        >>> nog = NOG(opt, [conv.weight])
        >>> conv(torch.randn(2, 3, 8, 8)).square().mean().backward()
        >>> opt.step()        # conv.weight moved by -0.1 * U V^T of its gradient
        >>> nog.remove()
        >>> adam = torch.optim.Adam(conv.parameters(), lr=1e-3)
        >>> muon_like = NOG(adam, [conv.weight], target="update", scale="spectral")
        >>> conv(torch.randn(2, 3, 8, 8)).square().mean().backward()
        >>> adam.step()       # Adam's step, orthogonalised: singular values 1e-3 * sqrt(64/27)
    """

    _kind = "nog"

    def __init__(
        self,
        optimizer: Optimizer,
        params: ParamsArg,
        *,
        method: str = "svd",
        scale: str = "none",
        target: str = "gradient",
        rtol: float | None = None,
        steps: int | None = None,
    ) -> None:
        self.optimizer = check_optimizer(optimizer, "NOG")
        self.params = collect_params(params, "NOG")
        _check_options(method, rtol, scale, steps, "NOG", target)
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
        self.target = target
        self.steps = steps
        self._before: list[Tensor | None] = [None] * len(self.params)
        attach(self.optimizer, self)
        self._post: Any = None
        if target == "gradient":
            self._handle: Any = self.optimizer.register_step_pre_hook(self._hook)
        else:
            self._handle = self.optimizer.register_step_pre_hook(self._record)
            self._post = self.optimizer.register_step_post_hook(self._correct)

    # -- gradient target ----------------------------------------------------------------
    def _hook(self, optimizer: Optimizer, args: Any, kwargs: Any) -> Any:
        return after_gradients(
            args, kwargs, lambda: self.apply_(grad_scale_of(optimizer), found_inf_of(optimizer))
        )

    @torch.no_grad()
    def apply_(self, grad_scale: Tensor | None = None, found_inf: Tensor | None = None) -> None:
        """Orthogonalise the current gradients in place now (what the gradient-target hook
        does each step).

        Args:
            grad_scale: loss scale still multiplying the gradients (see the class notes);
                None when they are unscaled.
            found_inf: GradScaler's overflow flag for a fused optimizer; non-zero leaves
                the gradients untouched (checked on the device, without synchronising).
        """
        grads = []
        for p in self.params:
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                raise TypeError("NOG: sparse gradients are not supported")
            grads.append(g)
        factor = grad_scale if self.scale != "grad" else None
        for (m, n, _, _), idx in _buckets(grads).items():
            bucket = [grads[i] for i in idx]
            G = _as_batch(bucket, m, n)
            R = _orthogonalize(G, self.method, self.rtol, self.scale, self.steps, factor, found_inf)
            for g, r in zip(bucket, R.unbind(0)):
                _write(g, r)

    # -- update target ------------------------------------------------------------------
    @torch.no_grad()
    def _record(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        # The weights do not change while a closure recomputes the gradients, so they can
        # be recorded before it runs. Buffers are reused from step to step.
        for i, p in enumerate(self.params):
            self._before[i] = snapshot(p, self._before[i])

    @torch.no_grad()
    def _correct(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        groups = group_of(optimizer)
        params, befores, steps, lrs = [], [], [], []
        for p, before in zip(self.params, self._before):
            if before is None or p.grad is None:  # the optimizer did not move it
                continue
            params.append(p)
            befores.append(before)
            steps.append(p.detach() - before)
            lrs.append(groups[id(p)]["lr"])
        for (m, n, _, device), idx in _buckets(steps).items():
            D = _as_batch([steps[i] for i in idx], m, n)
            factor: Tensor | float | None = None
            if self.scale != "grad":
                lr = [lrs[i] for i in idx]
                if len(lr) == 1 and not isinstance(lr[0], Tensor):
                    factor = float(lr[0])
                else:
                    factor = torch.stack(
                        [torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in lr]
                    )
            R = _orthogonalize(D, self.method, self.rtol, self.scale, self.steps, factor)
            for i, r in zip(idx, R.unbind(0)):
                params[i].detach().copy_(befores[i] + r.reshape(params[i].shape))

    def remove(self) -> None:
        """Detach the hooks; the optimizer behaves as if NOG had never been registered."""
        if self._handle is not None:
            self._handle.remove()
            if self._post is not None:
                self._post.remove()
            self._handle = self._post = None
            self._before = [None] * len(self.params)
            detach(self.optimizer, self)

    @property
    def active(self) -> bool:
        """Whether the hook is still registered."""
        return self._handle is not None

    def __repr__(self) -> str:
        return (
            f"NOG(params={len(self.params)}, method={self.method!r}, scale={self.scale!r}, "
            f"target={self.target!r}, rtol={self.rtol!r}, active={self.active})"
        )
