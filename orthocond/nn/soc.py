"""Skew orthogonal convolution (SOC, Singla & Feizi, ICML 2021).

A trainable kernel A ∈ R^{c×c×kh×kw} gives the kernel ``L = (A - Aᵀ)/2``, where ``Aᵀ`` swaps
input and output channels and flips the kernel spatially. Convolution with ``Aᵀ`` (zero
"same" padding, odd kernel) is the adjoint of convolution with ``A``, so the convolution
operator of ``L`` is skew-symmetric and its exponential is orthogonal::

    y = exp(L) ⋆ x ≈ Σ_{i=0}^{T} L^{⋆i} ⋆ x / i!

``L`` is first rescaled to ``0.7·L/σ̂`` with σ̂ an upper bound on its operator norm, so the
truncation error is at most ``Σ_{i>T} 0.7^i/i!`` (T = 5: 1.8e-4; T = 12: 1.6e-12).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import check_input, check_int, check_nonneg_float, no_autocast

__all__ = ["SkewOrthogonalConv2d", "conv_norm_bound_matrices"]

#: power iterations at construction and every ``_REFRESH_EVERY`` training steps; 1 otherwise.
_REFRESH_ITERS = 50
_REFRESH_EVERY = 200


def conv_norm_bound_matrices(kernel: Tensor) -> list[Tensor]:
    """The four reshapes R_1..R_4 of a conv kernel (Tensor[c_out, c_in, kh, kw]) whose spectral
    norms bound the operator norm of the zero-padded convolution:
    ``||conv_K||_2 <= sqrt(kh·kw) · min_i ||R_i||_2`` (Singla & Feizi, ICLR 2021).

    ``R_1[(o,p),(i,q)] = K[o,i,p,q]`` (c_out·kh × c_in·kw), ``R_2[(o,q),(i,p)]`` (c_out·kw ×
    c_in·kh), ``R_3 = K`` flattened to (c_out, c_in·kh·kw) and ``R_4[(o,p,q), i]``
    (c_out·kh·kw × c_in). Each bound follows from splitting the convolution into a partial
    im2col (norm <= sqrt(#shifts)), a matrix, and a sum of shifts (norm <= sqrt(#shifts)).

    Example:
        >>> [tuple(R.shape) for R in conv_norm_bound_matrices(torch.randn(4, 2, 3, 5))]
        [(12, 10), (20, 6), (4, 30), (60, 2)]
    """
    if not isinstance(kernel, Tensor):
        raise TypeError(f"kernel must be a torch.Tensor, got {type(kernel).__name__}")
    if kernel.ndim != 4:
        raise ValueError(
            f"kernel must have 4 dims (c_out, c_in, kh, kw), got shape {tuple(kernel.shape)}"
        )
    co, ci, kh, kw = kernel.shape
    return [
        kernel.permute(0, 2, 1, 3).reshape(co * kh, ci * kw),
        kernel.permute(0, 3, 1, 2).reshape(co * kw, ci * kh),
        kernel.reshape(co, ci * kh * kw),
        kernel.permute(0, 2, 3, 1).reshape(co * kh * kw, ci),
    ]


class SkewOrthogonalConv2d(nn.Module):
    r"""Orthogonal convolution as the exponential of a skew-symmetric convolution (SOC).

    With ``c = max(out_channels, in_channels·stride²)``: the input is space-to-depth
    rearranged for ``stride > 1`` (``F.pixel_unshuffle``, invertible), zero-padded to c
    channels, mapped by ``Σ_{i=0}^{T} L^{⋆i}/i!`` (T = ``train_terms`` in training,
    ``eval_terms`` in eval) and sliced to ``out_channels``; then the bias is added. When
    ``out_channels == in_channels·stride²`` the layer is norm-preserving up to the series
    error ``Σ_{i>T} bound_scale^i / i!``.

    ``L = bound_scale · S / σ̂`` with ``S = (A - Aᵀ)/2`` (``Aᵀ``: channels swapped, kernel
    flipped) and ``σ̂ = sqrt(kh·kw)·min_i ||R_i(S)||_2`` over the four reshapes of
    :func:`conv_norm_bound_matrices`; each ``||R_i||_2`` is ``||R_i v_i||`` with ``v_i`` from
    power iteration, warm-started from the buffer ``power_vectors`` (50 iterations at
    construction and every 200 training forwards, 1 per other training forward, none in eval).
    The training forwards are counted in the buffer ``num_train_forwards`` (in the state_dict,
    so a resumed run refreshes on the same steps). Every training forward counts, so under
    ``torch.utils.checkpoint`` (which runs the forward again in backward) a step advances the
    power iteration twice, and the recomputed forward divides by a σ̂ one power step newer.

    Args:
        in_channels, out_channels: channels of the (N, C_in, H, W) input and of the output.
        kernel_size: odd int or pair of odd ints (zero "same" padding).
        stride: 1 or s >= 2 (H and W must be divisible by s).
        bias: learnable bias (default True).
        train_terms: T in training (default 5). eval_terms: T in eval (default 12).
        bound_scale: target bound on ``||L||`` (default 0.7).
        device, dtype: where and in which dtype parameters and buffers are created (as
            ``torch.nn`` layers; default: the current defaults).

    Attributes:
        weight (nn.Parameter[c, c, kh, kw]): the trainable A, init N(0, 1/c); the tensor
            NOG/OLR act on (flattened to (c, c·kh·kw)).
        power_vectors (buffer, Tensor[sum of the R_i column counts]): power-iteration vectors.
        num_train_forwards (buffer, Tensor[] long): training forwards since the last reset.

    Example:
        >>> soc = SkewOrthogonalConv2d(16, 16, 3)
        >>> x = torch.randn(2, 16, 8, 8)
        >>> y = soc.eval()(x)     # ||y|| == ||x|| to ~1e-7 in float32
    """

    _version = 2  # 2: num_train_forwards is a buffer

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        *,
        bias: bool = True,
        train_terms: int = 5,
        eval_terms: int = 12,
        bound_scale: float = 0.7,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        check_int(in_channels, "in_channels")
        check_int(out_channels, "out_channels")
        check_int(stride, "stride")
        check_int(train_terms, "train_terms")
        check_int(eval_terms, "eval_terms")
        check_nonneg_float(bound_scale, "bound_scale")
        if not 0 < bound_scale <= 1:
            raise ValueError(f"bound_scale must lie in (0, 1], got {bound_scale}")
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if not (
            isinstance(ks, (tuple, list))
            and len(ks) == 2
            and all(isinstance(k, int) and not isinstance(k, bool) for k in ks)
        ):
            raise TypeError(f"kernel_size must be an int or a pair of ints, got {kernel_size!r}")
        ks = tuple(ks)
        if any(k < 1 or k % 2 == 0 for k in ks):
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size: tuple[int, int] = ks  # type: ignore[assignment]
        self.stride = stride
        self.train_terms = train_terms
        self.eval_terms = eval_terms
        self.bound_scale = float(bound_scale)
        self.channels = max(out_channels, in_channels * stride * stride)
        c, (kh, kw) = self.channels, ks
        self.weight = nn.Parameter(torch.empty(c, c, kh, kw, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        sizes = [m.shape[1] for m in conv_norm_bound_matrices(torch.empty(c, c, kh, kw))]
        self._vector_sizes = sizes
        self.register_buffer("power_vectors", torch.empty(sum(sizes), **factory))
        self.register_buffer("num_train_forwards", torch.tensor(0, dtype=torch.long, device=device))
        # Host-side mirror of num_train_forwards: schedules the refresh without reading the
        # buffer (a device sync) every step; re-read from the buffer by load_state_dict.
        self._train_forwards = 0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """A ~ N(0, 1/c), bias 0, fresh power-iteration vectors (converged for the new A)."""
        with torch.no_grad():
            nn.init.normal_(self.weight, std=1.0 / math.sqrt(self.channels))
            if self.bias is not None:
                nn.init.zeros_(self.bias)
            self.power_vectors.normal_()
            self.num_train_forwards.zero_()
        self._train_forwards = 0
        self._power_iterate(self.skew_symmetric_part().detach(), _REFRESH_ITERS)

    def _load_from_state_dict(
        self, state_dict: Mapping[str, Any], prefix: str, local_metadata: dict[str, Any],
        *args: Any, **kwargs: Any,
    ) -> None:
        key = prefix + "num_train_forwards"
        version = local_metadata.get("version")
        if (version is None or version < 2) and key not in state_dict:
            # checkpoints before the counter was a buffer: refresh at the next training forward
            state_dict[key] = torch.tensor(0, dtype=torch.long)  # type: ignore[index]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)
        self._train_forwards = int(self.num_train_forwards)

    def skew_symmetric_part(self) -> Tensor:
        """S = (A - Aᵀ)/2, Aᵀ = A with channels swapped and kernel flipped: (c, c, kh, kw)."""
        A = self.weight
        return 0.5 * (A - A.transpose(0, 1).flip(2, 3))

    def _power_iterate(self, S: Tensor, iters: int) -> None:
        with torch.no_grad():
            vectors = list(self.power_vectors.split(self._vector_sizes))
            tiny = torch.finfo(self.power_vectors.dtype).tiny ** 0.5
            for k, M in enumerate(conv_norm_bound_matrices(S.to(self.power_vectors.dtype))):
                v = vectors[k]
                for _ in range(iters):
                    v = F.normalize(M.T @ F.normalize(M @ v, dim=0, eps=tiny), dim=0, eps=tiny)
                # a zero matrix maps v to 0: keep the old vector rather than a zero one
                vectors[k] = torch.where(v.abs().sum() > 0, v, vectors[k])
            self.power_vectors.copy_(torch.cat(vectors))

    def norm_bound(self, S: Tensor | None = None) -> Tensor:
        """σ̂ = sqrt(kh·kw)·min_i ||R_i(S) v_i|| (differentiable in S; defaults to the current S)."""
        if S is None:
            S = self.skew_symmetric_part()
        vectors = self.power_vectors.split(self._vector_sizes)
        if self.training:
            # autograd must not save views of a buffer the next training forward overwrites
            # (a layer used twice before backward; torch.utils.checkpoint), as spectral_norm
            vectors = [v.clone() for v in vectors]
        norms = torch.stack(
            [
                torch.linalg.vector_norm(M @ v.to(M.dtype))
                for M, v in zip(conv_norm_bound_matrices(S), vectors)
            ]
        )
        kh, kw = self.kernel_size
        return math.sqrt(kh * kw) * norms.min()

    def skew_kernel(self) -> Tensor:
        """The scaled kernel L = bound_scale · S / σ̂ (c, c, kh, kw) used by forward; the bound
        is computed in the weight's dtype with autocast off (in training, after the power step)."""
        with no_autocast(self.weight.device.type):
            S = self.skew_symmetric_part()
            if self.training:
                iters = _REFRESH_ITERS if self._train_forwards % _REFRESH_EVERY == 0 else 1
                self._power_iterate(S.detach(), iters)
                self._train_forwards += 1
                self.num_train_forwards.add_(1)
            tiny = torch.finfo(S.dtype).tiny ** 0.5
            return S * (self.bound_scale / self.norm_bound(S).clamp_min(tiny))

    def forward(self, x: Tensor) -> Tensor:
        """x (Tensor[N, in_channels, H, W]) -> Tensor[N, out_channels, H/stride, W/stride]."""
        check_input(x, type(self).__name__, (4,), self.in_channels, "(N, C, H, W)")
        s = self.stride
        if s > 1:
            if x.shape[-2] % s or x.shape[-1] % s:
                raise ValueError(
                    f"{type(self).__name__} with stride={s} needs H and W divisible by {s}, "
                    f"got shape {tuple(x.shape)}"
                )
            x = F.pixel_unshuffle(x, s)
        if x.shape[1] < self.channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.channels - x.shape[1]))
        L = self.skew_kernel()
        padding = (self.kernel_size[0] // 2, self.kernel_size[1] // 2)
        terms = self.train_terms if self.training else self.eval_terms
        term, out = x, x
        for i in range(1, terms + 1):
            term = F.conv2d(term, L.to(term.dtype), padding=padding) / i
            out = out + term
        out = out[:, : self.out_channels]
        if self.bias is not None:
            out = out + self.bias.to(out.dtype).view(1, -1, 1, 1)
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, bias={self.bias is not None}, train_terms={self.train_terms}, "
            f"eval_terms={self.eval_terms}, bound_scale={self.bound_scale}"
        )
