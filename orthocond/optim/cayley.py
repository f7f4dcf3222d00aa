"""Riemannian SGD / Adam on the Stiefel manifold with the iterative Cayley transform.

Li, Li, Todorovic. Efficient Riemannian Optimization on the Stiefel Manifold via the Cayley
Transform. ICLR 2020.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

from orthocond._checks import check_float, check_int
from orthocond.linalg import polar


def _to_stiefel(p: Tensor) -> tuple[Tensor, bool]:
    """The matrix X (n x k, k <= n) of a weight: W^T for a wide W (rows orthonormal), else W."""
    W = p.detach().reshape(p.shape[0], -1)
    wide = W.shape[0] <= W.shape[1]
    return (W.T if wide else W), wide


def _from_stiefel(X: Tensor, wide: bool, p: Tensor) -> None:
    p.detach().copy_((X.T if wide else X).reshape(p.shape))


def _cayley_retract(X: Tensor, M: Tensor, lr: float, q: float, s: int, eps: float,
                    omega_scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One iterative-Cayley move of X (n x k, X^T X = I) along the ascent direction M.

    Omega = What - What^T with What = M X^T - X (X^T M X^T) / 2; the fixed point starts at
    Y0 = X + alpha Omega X (the tangent momentum) and iterates Y <- X + alpha/2 Omega (X + Y).
    Returns the new X and the skew generator Omega (n x n) used.
    """
    MX = M @ X.T
    What = MX - 0.5 * X @ (X.T @ MX)
    Omega = What - What.T
    if omega_scale is not None:
        Omega = Omega / omega_scale
    # ||Omega||_1: largest absolute column sum. alpha = min(lr, 2q / (||Omega||_1 + eps)),
    # computed on the device (no host sync).
    norm1 = Omega.abs().sum(dim=0).amax()
    alpha = torch.clamp(2.0 * q / (norm1 + eps), max=lr)
    # Start from the tangent momentum Omega X (Algorithm 1: M <- Omega X, then Y0 = X + alpha M).
    # The raw M has a normal component that the fixed-point iteration does not remove: with
    # alpha clipped, two iterations then leave an O(1) orthogonality error (or diverge).
    Y = X + alpha * (Omega @ X)
    half = 0.5 * alpha
    for _ in range(s):
        Y = X + half * (Omega @ (X + Y))
    return Y, Omega


class _StiefelOptimizer(Optimizer):
    """Shared machinery: parameter classification, first-step projection, re-orthonormalisation."""

    def _is_stiefel(self, group: dict, p: Tensor) -> bool:
        return bool(group["stiefel"]) and p.ndim >= 2

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """``Optimizer.add_param_group`` that also checks the group's own settings (a bad
        ``q``, ``s`` or ``momentum`` in a group would otherwise give NaN weights silently)."""
        super().add_param_group(param_group)
        try:
            self._check_group(self.param_groups[-1])
        except (TypeError, ValueError) as exc:
            self.param_groups.pop()
            raise type(exc)(f"param group {len(self.param_groups)}: {exc}") from None

    def _check_group(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    @staticmethod
    def _evaluate(closure: Callable[[], Any] | None) -> Any:
        """The loss of ``step(closure)``'s closure, evaluated with gradients on (None without)."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def _stiefel_matrix(self, p: Tensor, state: dict) -> tuple[Tensor, bool]:
        X, wide = _to_stiefel(p)
        work = torch.float64 if X.dtype == torch.float64 else torch.float32
        X = X.to(work)
        if "step" not in state:
            # Start point on the manifold: the nearest matrix with orthonormal columns.
            X = polar(X)
        return X, wide

    @staticmethod
    def _polish(X: Tensor, steps: int) -> Tensor:
        # Newton-Schulz towards the polar factor: X <- X (3I - X^T X) / 2. Each step maps an
        # orthogonality error e to about 0.75 e^2 (2 small matmuls, k x k Gram).
        for _ in range(steps):
            X = 1.5 * X - 0.5 * X @ (X.T @ X)
        return X

    @staticmethod
    def _check_common(lr: object, q: object, s: object, eps: object, polish: object) -> None:
        if isinstance(lr, Tensor) and lr.ndim == 0 and lr.is_floating_point():
            lr = float(lr)  # a 0-dim tensor lr, as torch.optim accepts
        check_float(lr, "lr", low=0.0)
        check_float(q, "q", low=0.0, low_open=True, high=1.0, high_open=True)
        check_int(s, "s")  # Cayley fixed-point iterations
        check_float(eps, "eps", low=0.0, low_open=True)
        check_int(polish, "polish", minimum=0)


class CayleySGD(_StiefelOptimizer):
    r"""Cayley SGD with momentum on the Stiefel manifold (Li et al., ICLR 2020, Algorithm 1).

    Every parameter with at least 2 dims of a group with ``stiefel=True`` (the default) is
    flattened to :math:`W` ``(C_out, C_in*kh*kw)`` and kept orthogonal: orthonormal rows when
    :math:`C_{out} \le C_{in}kh\,kw` (then :math:`X = W^T`), orthonormal columns otherwise
    (:math:`X = W`); :math:`X \in \mathbb{R}^{n\times k}`, :math:`X^TX = I`. Each step:

    1. :math:`M \leftarrow \beta M - \nabla_X l` (``momentum`` :math:`\beta`).
    2. :math:`\hat W = MX^T - \tfrac12 X(X^TMX^T)`, :math:`\Omega = \hat W - \hat W^T` (skew).
    3. :math:`\alpha = \min(\text{lr}, 2q/(\|\Omega\|_1 + \epsilon))`.
    4. :math:`Y_0 = X + \alpha\Omega X` (the momentum projected to the tangent space,
       Algorithm 1's :math:`M \leftarrow \Omega X`); :math:`Y_{i+1} = X + \tfrac{\alpha}{2}\Omega(X + Y_i)`,
       ``s`` times (fixed-point iteration of the Cayley transform
       :math:`(I - \tfrac{\alpha}{2}\Omega)^{-1}(I + \tfrac{\alpha}{2}\Omega)X`, contraction
       :math:`\le q`); :math:`X \leftarrow Y_s`.
    5. :math:`M \leftarrow \Omega X` (momentum moved to the tangent space).

    At its first step each Stiefel parameter is projected onto the manifold (its polar factor,
    the nearest orthonormal matrix; for a weight that is already orthogonal a no-op up to
    round-off). With ``s = 2`` the fixed-point iteration stops short of the Cayley point,
    by up to about :math:`q^s` of the step when :math:`\alpha` is clipped: the orthogonality
    error reaches ~5e-3 early in training. Each update therefore ends with ``polish``
    Newton–Schulz steps :math:`X \leftarrow \tfrac12 X(3I - X^TX)` (default 2; each maps an
    error :math:`e` to :math:`\approx 0.75e^2`, two :math:`k\times k`-Gram matmuls), which
    keeps :math:`\|X^TX - I\|_F` below 1e-5 in float32; ``polish=0`` is the paper's
    algorithm (whose released code re-orthonormalises by QR with probability 1/101 instead).
    Updates are computed in float32 (float64 for float64 weights). Weight decay is ignored on the
    manifold (the norm is fixed) and applied to the other parameters, which get plain SGD
    with momentum (``d = \beta d + g + \lambda w``; ``w -= lr d``).

    Args:
        params: parameters or param-group dicts (torch.optim convention).
        lr: learning rate (upper bound of :math:`\alpha` on the manifold).
        momentum: :math:`\beta` in [0, 1) (default 0.9).
        weight_decay: L2 coefficient for non-Stiefel parameters (default 0).
        q: contraction bound in (0, 1) (default 0.5).
        s: Cayley fixed-point iterations (default 2, as in the paper).
        eps: :math:`\epsilon` of step 3 (default 1e-8).
        stiefel: group option; False gives every parameter of the group plain SGD.
        polish: Newton–Schulz re-orthonormalisation steps after each update (default 2).

    Example:
        >>> conv = torch.nn.Conv2d(3, 16, 3, bias=False)
        >>> opt = CayleySGD([{"params": [conv.weight]}], lr=0.1)
        >>> conv(torch.randn(2, 3, 8, 8)).square().mean().backward()
        >>> opt.step()      # conv.weight.reshape(16, 27) now has orthonormal rows
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        *,
        weight_decay: float = 0.0,
        q: float = 0.5,
        s: int = 2,
        eps: float = 1e-8,
        stiefel: bool = True,
        polish: int = 2,
    ) -> None:
        # every group, these defaults included, is checked by add_param_group
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, q=q, s=s, eps=eps,
                        stiefel=stiefel, polish=polish)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        self._check_common(group["lr"], group["q"], group["s"], group["eps"], group["polish"])
        check_float(group["momentum"], "momentum", low=0.0, high=1.0, high_open=True)
        check_float(group["weight_decay"], "weight_decay", low=0.0)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimisation step (``closure`` re-evaluates the loss, optional)."""
        loss = self._evaluate(closure)
        for group in self.param_groups:
            lr, beta = float(group["lr"]), group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise TypeError("CayleySGD does not support sparse gradients")
                state = self.state[p]
                if self._is_stiefel(group, p):
                    X, wide = self._stiefel_matrix(p, state)
                    G, _ = _to_stiefel(p.grad)
                    G = G.to(X.dtype)
                    M = state.get("momentum_buffer")
                    M = -G if M is None else beta * M - G
                    X_new, Omega = _cayley_retract(X, M, lr, group["q"], group["s"], group["eps"])
                    X_new = self._polish(X_new, group["polish"])
                    # FORMULAS §7 step 5 after step 4 (X <- Y_s): the momentum is moved to the
                    # tangent space at the new point. Li et al.'s Algorithm 1 writes W_k X_k
                    # with the old X; the two differ by O(alpha) per step.
                    state["momentum_buffer"] = Omega @ X_new
                    _from_stiefel(X_new, wide, p)
                else:
                    g = p.grad
                    if group["weight_decay"]:
                        g = g.add(p, alpha=group["weight_decay"])
                    buf = state.get("momentum_buffer")
                    if beta:
                        if buf is None:
                            buf = g.detach().clone()
                        else:
                            buf.mul_(beta).add_(g)
                        state["momentum_buffer"] = buf
                        g = buf
                    p.add_(g, alpha=-lr)
                state["step"] = state.get("step", 0) + 1
        return loss


class CayleyAdam(_StiefelOptimizer):
    r"""Cayley Adam on the Stiefel manifold (Li et al., ICLR 2020, Algorithm 2 in spirit).

    Same manifold treatment as :class:`CayleySGD`, with a matrix first moment and a scalar
    second moment per Stiefel parameter:

    1. :math:`m \leftarrow \beta_1 m + (1-\beta_1)\nabla_X l`;
       :math:`v \leftarrow \beta_2 v + (1-\beta_2)\|\nabla_X l\|_F^2`;
       :math:`\hat m = m/(1-\beta_1^t)`, :math:`\hat v = v/(1-\beta_2^t)`.
    2. :math:`\hat W = -\hat mX^T + \tfrac12 X(X^T\hat mX^T)`,
       :math:`\Omega = (\hat W - \hat W^T)/\sqrt{\hat v + \epsilon}`.
    3. :math:`\alpha = \min(\text{lr}, 2q/(\|\Omega\|_1 + \epsilon))`; iterative Cayley
       move from :math:`Y_0 = X + \alpha\Omega X` (``s`` iterations).
    4. :math:`m \leftarrow -(1-\beta_1^t)\sqrt{\hat v + \epsilon}\,\Omega X` (first moment moved
       to the tangent space).

    Non-Stiefel parameters get standard Adam (L2 ``weight_decay`` added to the gradient).

    Args:
        params: parameters or param-group dicts.
        lr: learning rate (default 1e-3).
        betas: (:math:`\beta_1`, :math:`\beta_2`), default (0.9, 0.999).
        eps: default 1e-8. weight_decay, q, s, stiefel, polish: as in CayleySGD.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        *,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        q: float = 0.5,
        s: int = 2,
        stiefel: bool = True,
        polish: int = 2,
    ) -> None:
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, (tuple, list)) else betas, eps=eps, weight_decay=weight_decay, q=q, s=s,
                        stiefel=stiefel, polish=polish)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        self._check_common(group["lr"], group["q"], group["s"], group["eps"], group["polish"])
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair of floats in [0, 1), got {betas!r}")
        check_float(betas[0], "betas[0]", low=0.0, high=1.0, high_open=True)
        check_float(betas[1], "betas[1]", low=0.0, high=1.0, high_open=True)
        check_float(group["weight_decay"], "weight_decay", low=0.0)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimisation step (``closure`` re-evaluates the loss, optional)."""
        loss = self._evaluate(closure)
        for group in self.param_groups:
            lr = float(group["lr"])
            b1, b2 = group["betas"]
            eps = group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise TypeError("CayleyAdam does not support sparse gradients")
                state = self.state[p]
                t = state.get("step", 0) + 1
                c1, c2 = 1.0 - b1**t, 1.0 - b2**t
                if self._is_stiefel(group, p):
                    X, wide = self._stiefel_matrix(p, state)
                    G, _ = _to_stiefel(p.grad)
                    G = G.to(X.dtype)
                    m = state.get("exp_avg")
                    m = (1 - b1) * G if m is None else b1 * m + (1 - b1) * G
                    v = state.get("exp_avg_sq")
                    gsq = G.square().sum()
                    v = (1 - b2) * gsq if v is None else b2 * v + (1 - b2) * gsq
                    denom = (v / c2 + eps).sqrt()
                    X_new, Omega = _cayley_retract(X, -m / c1, lr, group["q"], group["s"], eps,
                                                   omega_scale=denom)
                    X_new = self._polish(X_new, group["polish"])
                    state["exp_avg"] = -(c1 * denom) * (Omega @ X_new)
                    state["exp_avg_sq"] = v
                    _from_stiefel(X_new, wide, p)
                else:
                    g = p.grad
                    if group["weight_decay"]:
                        g = g.add(p, alpha=group["weight_decay"])
                    if "exp_avg" not in state:
                        state["exp_avg"] = torch.zeros_like(p)
                        state["exp_avg_sq"] = torch.zeros_like(p)
                    m, v = state["exp_avg"], state["exp_avg_sq"]
                    m.mul_(b1).add_(g, alpha=1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    p.addcdiv_(m / c1, (v / c2).sqrt().add_(eps), value=-lr)
                state["step"] = t
        return loss
