"""Hard orthogonality of a Pre-SVD weight by parametrization (torch.nn.utils.parametrize).

Every parametrization here acts on the flattened matrix ``W (C_out, C_in*kh*kw)`` and
reshapes back, never on each ``kh x kw`` kernel (which is what a generic parametrization
of a 4-D tensor would constrain).
"""

from __future__ import annotations

import math

import geotorch
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from orthocond._checks import as_weight_matrix, check_bool, check_float, check_int
from orthocond.linalg import inv_sqrtm, polar
from orthocond.linalg._utils import compute_dtype, no_autocast

TRIVIALIZATIONS = ("expm", "cayley")


def _check_weight(module: object, name: object, owner: str) -> Tensor:
    if not isinstance(module, nn.Module):
        raise TypeError(f"{owner}: module must be an nn.Module, got {type(module).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"{owner}: name must be a str, got {type(name).__name__}")
    if parametrize.is_parametrized(module, name):
        raise ValueError(
            f"{owner}: {type(module).__name__}.{name} is already parametrized; remove it first "
            f"with torch.nn.utils.parametrize.remove_parametrizations(module, {name!r})"
        )
    tensor = getattr(module, name, None)
    if not isinstance(tensor, nn.Parameter):
        raise ValueError(
            f"{owner}: {type(module).__name__} has no parameter {name!r} "
            f"(got {type(tensor).__name__})"
        )
    if tensor.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{owner}: {name} must be float32 or float64, got {tensor.dtype}")
    as_weight_matrix(tensor, f"{owner}: {name}", finite=False)
    return tensor


class FlattenedOrthogonal(nn.Module):
    r"""Parametrization: unconstrained :math:`\theta` -> weight whose flattened matrix is
    (semi-)orthogonal, through geotorch's Stiefel manifold on ``(C_out, C_in*kh*kw)``.

    ``forward(theta (Tensor[m, n])) -> Tensor[shape]``; ``right_inverse(W)`` projects ``W``
    to its nearest orthogonal matrix (polar factor) and returns geotorch's coordinates of
    it (zeros, with the point stored as geotorch's base).
    """

    def __init__(self, shape: torch.Size, triv: str = "expm") -> None:
        super().__init__()
        self.shape = torch.Size(shape)
        self.rows = int(shape[0])
        self.cols = int(math.prod(shape[1:]))
        self.manifold = geotorch.Stiefel((self.rows, self.cols), triv=triv)

    def forward(self, theta: Tensor) -> Tensor:
        return self.manifold(theta).reshape(self.shape)

    @torch.no_grad()
    def right_inverse(self, weight: Tensor) -> Tensor:
        X = polar(weight.reshape(self.rows, self.cols))
        return self.manifold.right_inverse(X, check_in_manifold=False)


def orthogonal(module: nn.Module, name: str = "weight", *, triv: str = "expm") -> nn.Module:
    r"""Constrain ``module.<name>`` to be orthogonal as a flattened matrix, with geotorch.

    The weight ``(C_out, C_in, kh, kw)`` is the matrix ``W (C_out, C_in*kh*kw)``;
    :math:`WW^T = I` (orthonormal filters) when :math:`C_{out} \le C_{in}kh\,kw`,
    :math:`W^TW = I` otherwise. (``geotorch.orthogonal`` alone would make each
    ``kh x kw`` kernel orthogonal, which says nothing about ``W``.) The parametrization
    is :class:`FlattenedOrthogonal` registered with ``torch.nn.utils.parametrize``:
    ``W = B Q(\theta)`` with geotorch's base :math:`B` and :math:`Q` = ``triv`` of a skew
    matrix built from :math:`\theta`.

    Initialisation: the existing weight is replaced by its nearest orthogonal matrix (the
    polar factor :math:`UV^T` of ``W``), not re-sampled. Assigning ``module.<name> = X``
    later projects ``X`` the same way.

    The trainable tensor is ``module.parametrizations.<name>.original`` (shape
    ``(C_out, C_in*kh*kw)``), returned by :func:`trainable_tensor`; it is the same
    ``Parameter`` object as the former weight, so an optimizer built before still updates
    it. It holds coordinates :math:`\theta` relative to the base fixed at registration, not
    the weight: weight decay on it pulls :math:`W` back to its initial orthogonal matrix,
    and OLR's closed form (which assumes :math:`w` is the weight) has no meaning on it.

    Cost: geotorch parametrises the Stiefel manifold through SO(n), n = max(C_out,
    C_in*kh*kw), so every forward computes an n x n matrix exponential (and the state_dict
    holds an n x n base): cheap for a stem (27 x 27), heavy for a wide 1x1 reduction such as
    the ResNet-50 GCP Pre-SVD conv (256 x 2048: a 2048 x 2048 expm per step). For those, NOG
    + OLR or a penalty is the lighter way to orthogonality.

    Args:
        module: e.g. ``nn.Conv2d`` or ``nn.Linear``.
        name: parameter name (default ``"weight"``), float32/float64, >= 2 dims.
        triv: ``"expm"`` (default) or ``"cayley"``.

    Returns:
        ``module`` (modified in place).

    Example:
        >>> conv = orthogonal(torch.nn.Conv2d(3, 16, 3, bias=False))
        >>> W = conv.weight.reshape(16, 27)
        >>> torch.allclose(W @ W.T, torch.eye(16), atol=1e-5)
        True
    """
    _check_weight(module, name, "orthogonal")
    if triv not in TRIVIALIZATIONS:
        raise ValueError(f"orthogonal: triv must be one of 'expm', 'cayley'; got {triv!r}")
    weight = getattr(module, name)
    if not bool(torch.isfinite(weight).all()):
        raise ValueError(f"orthogonal: {name} contains NaN or Inf values")
    param = FlattenedOrthogonal(weight.shape, triv).to(device=weight.device, dtype=weight.dtype)
    parametrize.register_parametrization(module, name, param)
    return module


def trainable_tensor(module: nn.Module, name: str = "weight") -> nn.Parameter:
    """The tensor an optimizer trains for ``module.<name>``.

    For a parametrized tensor (:func:`orthogonal`, :func:`oni`, :func:`own`, or any
    ``torch.nn.utils.parametrize`` parametrization) that is
    ``module.parametrizations.<name>.original``; otherwise the parameter itself.

    Example:
        >>> conv = orthogonal(torch.nn.Conv2d(3, 16, 3))
        >>> trainable_tensor(conv).shape
        torch.Size([16, 27])
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if parametrize.is_parametrized(module, name):
        plist = module.parametrizations[name]
        if not plist.is_tensor:
            raise ValueError(
                f"{type(module).__name__}.{name} is parametrized by {plist.ntensors} tensors "
                "(original0, original1, ...); there is no single trainable tensor"
            )
        return plist.original
    tensor = getattr(module, name, None)
    if not isinstance(tensor, nn.Parameter):
        raise ValueError(
            f"{type(module).__name__} has no parameter {name!r} (got {type(tensor).__name__})"
        )
    return tensor


class _Gain(nn.Module):
    """Output scale shared by ONI and OWN: a float, or a learnable per-row gain."""

    def __init__(self, rows: int, scale: float, learnable: bool) -> None:
        super().__init__()
        self.scale = scale
        if learnable:
            self.gain = nn.Parameter(torch.full((rows, 1), scale))
        else:
            self.gain = None

    def scale_rows(self, W: Tensor) -> Tensor:
        if self.gain is not None:
            return W * self.gain.to(W.dtype)
        return W if self.scale == 1.0 else W * self.scale


class ONI(nn.Module):
    r"""Orthogonalization by Newton's Iteration (Huang et al., CVPR 2020) as a parametrization.

    :math:`Z` = the flattened ``(m, n)`` input, :math:`Z_c = Z - ` row means (if
    ``centering``); for :math:`m \le n`: :math:`S = Z_cZ_c^T + \epsilon I`,
    :math:`S_N = S/\|S\|_F`, :math:`B_0 = I`, :math:`B_{t+1} = \tfrac32 B_t - \tfrac12
    B_t^3 S_N` (``iters`` times, :math:`B_t \to S_N^{-1/2}`; computed in the equivalent,
    numerically stable coupled form),
    :math:`\hat W = B_T Z_c / \sqrt{\|S\|_F}` (:math:`\to S^{-1/2}Z_c`, orthonormal rows);
    for :math:`m > n` the same on :math:`Z_c^TZ_c` with :math:`\hat W = Z_cB_T/\sqrt{\|S\|_F}`.
    Then :math:`\hat W` is multiplied by ``scale`` (or a learnable per-row gain starting at
    ``scale``). Plain autograd through the iteration. Few iterations orthogonalise only
    approximately (by design: "controllable" orthogonality).
    """

    def __init__(self, shape: torch.Size, iters: int = 5, eps: float = 1e-5, scale: float = 1.0,
                 centering: bool = True, learnable_scale: bool = False) -> None:
        super().__init__()
        self.shape = torch.Size(shape)
        self.rows, self.cols = int(shape[0]), int(math.prod(shape[1:]))
        self.iters, self.eps, self.centering = iters, eps, centering
        self.gain = _Gain(self.rows, scale, learnable_scale)

    def forward(self, V: Tensor) -> Tensor:
        # float32 or better, also under autocast (the iteration amplifies 16-bit rounding)
        with no_autocast(V.device.type):
            return self._orthogonalize(V.to(compute_dtype(V.dtype))).to(V.dtype)

    def _orthogonalize(self, V: Tensor) -> Tensor:
        Z = V.reshape(self.rows, self.cols)
        if self.centering:
            Z = Z - Z.mean(dim=1, keepdim=True)
        wide = self.rows <= self.cols
        S = Z @ Z.T if wide else Z.T @ Z
        eye = torch.eye(S.shape[0], dtype=S.dtype, device=S.device)
        S = S + self.eps * eye
        norm = torch.linalg.matrix_norm(S).clamp_min(torch.finfo(S.dtype).tiny ** 0.5)
        # Coupled form of B <- 1.5 B - 0.5 B^3 S_N: Y_0 = S_N, B_0 = I, T = (3I - B Y) / 2,
        # Y <- Y T, B <- T B. Identical in exact arithmetic (all iterates are polynomials in
        # S_N), but stable in floating point, where the uncoupled form diverges after a few
        # dozen iterations once S_N is ill-conditioned.
        Y = S / norm
        B = eye
        for t in range(self.iters):
            T = 0.5 * (3.0 * eye - B @ Y)
            if t + 1 < self.iters:
                Y = Y @ T
            B = T @ B
        W = (B @ Z if wide else Z @ B) / norm.sqrt()
        return self.gain.scale_rows(W).reshape(self.shape)


class OWN(nn.Module):
    r"""Orthogonal Weight Normalization (Huang et al., AAAI 2018) as a parametrization.

    Rows of the flattened ``(m, n)`` input are split into groups of ``group_size`` (the last
    group may be smaller; None = one group). Per group :math:`Z`: :math:`Z_c = Z - ` row
    means (if ``centering``), :math:`S = Z_cZ_c^T + \epsilon I`,
    :math:`\hat W = S^{-1/2}Z_c` (orthonormal rows; eigendecomposition with the exact
    Daleckii–Krein backward of :func:`orthocond.linalg.inv_sqrtm`); a group with more rows
    than columns uses :math:`S = Z_c^TZ_c + \epsilon I`, :math:`\hat W = Z_cS^{-1/2}`.
    Centring drops the rank by one, hence :math:`\epsilon`. Then ``scale`` / learnable gain.
    Groups are batched (at most two ``inv_sqrtm`` calls).
    """

    def __init__(self, shape: torch.Size, group_size: int | None = None, eps: float = 1e-5,
                 scale: float = 1.0, centering: bool = True,
                 learnable_scale: bool = False) -> None:
        super().__init__()
        self.shape = torch.Size(shape)
        self.rows, self.cols = int(shape[0]), int(math.prod(shape[1:]))
        self.group_size = min(group_size or self.rows, self.rows)
        self.eps, self.centering = eps, centering
        self.gain = _Gain(self.rows, scale, learnable_scale)

    def _whiten(self, Z: Tensor) -> Tensor:
        # Z (G, r, n): orthonormal rows (r <= n) or columns (r > n) per group.
        if self.centering:
            Z = Z - Z.mean(dim=-1, keepdim=True)
        if Z.shape[-2] <= Z.shape[-1]:
            S = Z @ Z.transpose(-2, -1)
            return inv_sqrtm(S, method="eig", eps=self.eps) @ Z
        S = Z.transpose(-2, -1) @ Z
        return Z @ inv_sqrtm(S, method="eig", eps=self.eps)

    def forward(self, V: Tensor) -> Tensor:
        with no_autocast(V.device.type):  # float32 or better, also under autocast
            return self._orthogonalize(V.to(compute_dtype(V.dtype))).to(V.dtype)

    def _orthogonalize(self, V: Tensor) -> Tensor:
        Z = V.reshape(self.rows, self.cols)
        gs = self.group_size
        full = (self.rows // gs) * gs
        parts = [self._whiten(Z[:full].reshape(-1, gs, self.cols)).reshape(full, self.cols)]
        if full < self.rows:
            parts.append(self._whiten(Z[full:].unsqueeze(0))[0])
        W = torch.cat(parts) if len(parts) > 1 else parts[0]
        return self.gain.scale_rows(W).reshape(self.shape)


def _check_gain_options(eps: object, scale: object, centering: object, learnable_scale: object) -> None:
    check_float(eps, "eps", low=0, low_open=True)
    check_float(scale, "scale", low=0, low_open=True)
    if not (isinstance(centering, bool) or centering == "auto"):
        raise TypeError(f"centering must be a bool or 'auto', got {centering!r}")
    check_bool(learnable_scale, "learnable_scale")


def _resolve_centering(centering: bool | str, rows: int, cols: int) -> bool:
    # Centred rows sum to zero, so Z_c 1 = 0: with rows >= cols the columns can then never
    # be orthonormal (W^T W = I - 11^T/n at best). "auto" centres only wide matrices.
    return rows < cols if centering == "auto" else bool(centering)


def _register(module: nn.Module, name: str, weight: Tensor, param: nn.Module) -> nn.Module:
    parametrize.register_parametrization(
        module, name, param.to(device=weight.device, dtype=weight.dtype)
    )
    return module


def oni(module: nn.Module, name: str = "weight", *, iters: int = 5, eps: float = 1e-5,
        scale: float = 1.0, centering: bool | str = "auto",
        learnable_scale: bool = False) -> nn.Module:
    r"""Register :class:`ONI` on ``module.<name>`` (flattened ``(C_out, C_in*kh*kw)`` matrix).

    The stored weight becomes the unconstrained :math:`V` (``trainable_tensor(module)``); the
    module sees the orthogonalised weight.

    Args:
        module: e.g. ``nn.Conv2d`` / ``nn.Linear``.
        name: parameter name (default ``"weight"``).
        iters: Newton iterations T (default 5; ONI uses 5 for ImageNet VGG, 3-4 elsewhere).
        eps: :math:`\epsilon` added to the Gram (default 1e-5).
        scale: output factor (default 1.0; ONI/OWN use 1.414 = sqrt(2) without BN after).
        centering: subtract row means first: True, False or ``"auto"`` (default: only when the
            flattened weight has fewer rows than columns; centred rows sum to zero, so a tall
            or square weight could never get orthonormal columns).
        learnable_scale: make the factor a learnable per-output-row gain (its parameter lives
            in the parametrization; add it to the optimizer yourself if the optimizer already
            exists).

    Returns:
        ``module`` (modified in place).

    Example:
        >>> conv = oni(torch.nn.Conv2d(3, 16, 3), iters=30)
        >>> W = conv.weight.reshape(16, 27)
        >>> torch.allclose(W @ W.T, torch.eye(16), atol=1e-3)
        True
    """
    weight = _check_weight(module, name, "oni")
    check_int(iters, "iters")
    _check_gain_options(eps, scale, centering, learnable_scale)
    rows, cols = weight.shape[0], weight[0].numel()
    param = ONI(weight.shape, iters, float(eps), float(scale),
                _resolve_centering(centering, rows, cols), learnable_scale)
    return _register(module, name, weight, param)


def own(module: nn.Module, name: str = "weight", *, group_size: int | None = None,
        eps: float = 1e-5, scale: float = 1.0, centering: bool | str = "auto",
        learnable_scale: bool = False) -> nn.Module:
    r"""Register :class:`OWN` on ``module.<name>`` (flattened ``(C_out, C_in*kh*kw)`` matrix).

    Args:
        module: e.g. ``nn.Conv2d`` / ``nn.Linear``.
        name: parameter name (default ``"weight"``).
        group_size: rows per group (default None: all rows, one group; OWN used 64).
        eps: :math:`\epsilon` added to each group's Gram (default 1e-5).
        scale: output factor (default 1.0; 1.414 in the OWN/ONI papers).
        centering: subtract row means first: True, False or ``"auto"`` (default: only when a
            group has fewer rows than columns; see :func:`oni`).
        learnable_scale: learnable per-output-row gain starting at ``scale``.

    Returns:
        ``module`` (modified in place).

    Example:
        >>> lin = own(torch.nn.Linear(32, 8))
        >>> torch.allclose(lin.weight @ lin.weight.T, torch.eye(8), atol=1e-3)
        True
    """
    weight = _check_weight(module, name, "own")
    if group_size is not None:
        check_int(group_size, "group_size")
    _check_gain_options(eps, scale, centering, learnable_scale)
    rows, cols = weight.shape[0], weight[0].numel()
    group_rows = min(group_size or rows, rows)
    param = OWN(weight.shape, group_size, float(eps), float(scale),
                _resolve_centering(centering, group_rows, cols), learnable_scale)
    return _register(module, name, weight, param)
