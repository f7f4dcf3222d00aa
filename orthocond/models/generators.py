"""Generators and a discriminator for 28x28 digits (latent disentanglement, TPAMI 2023);
the DCGAN pair also builds 16 to 256-pixel images (``image_size``) for the paper's setting.

Two generators, each with the layer the optimizer plug-ins act on marked ``is_pre_svd``
(so :func:`orthocond.ortho.pre_svd_parameters` finds it, like the ResNets' stem):

* :class:`DCGANGenerator`: ``z (B, latent_dim)`` → ``ConvTranspose2d(latent_dim, 2w, 7)`` on a
  1x1 map (the marked layer) → BN, ReLU → ``ConvTranspose2d(2w, w, 4, 2, 1)`` (14x14) → BN, ReLU
  → ``ConvTranspose2d(w, C, 4, 2, 1)`` (28x28) → sigmoid. The first weight ``(latent_dim, 2w, 7, 7)``
  is the matrix ``(latent_dim, 2w·49)`` whose row ``i`` is everything latent dimension ``i``
  writes; NOG makes those rows orthonormal (the TPAMI DCGAN setting, there with latent 30 on
  CelebA).
* :class:`EigenGenerator` (EigenGAN-style): a learned constant 7x7 map, then ``layers``
  stages; stage ``i`` adds its subspace point ``φ_i = Σ_j l_ij z_ij u_ij + μ_i`` (a
  :class:`SubspaceLayer`, marked) to the feature map, then convolves and upsamples (7 → 14 →
  28). ``z`` is the concatenation of the per-stage codes, ``latent_dim = layers · dims``.

Images are in ``[0, 1]`` (sigmoid), the range of the embedded MNIST digits divided by 255.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from orthocond._checks import check_int
from orthocond.nn._common import check_input

__all__ = ["DCGANGenerator", "Discriminator", "EigenGenerator", "SubspaceLayer"]

IMAGE_SIZE = 28
_BASE = 7  # 7 -> 14 -> 28 by two stride-2 transposed convs


def _check_latent(z: object, latent_dim: int) -> Tensor:
    if not isinstance(z, Tensor):
        raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
    if not z.is_floating_point():
        raise TypeError(f"z must have a floating dtype, got {z.dtype}")
    if z.ndim != 2 or z.shape[1] != latent_dim:
        raise ValueError(f"z must have shape (B, {latent_dim}), got {tuple(z.shape)}")
    return z


def _upsample(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False)


def _ladder(image_size: int) -> tuple[int, int]:
    """(base size, number of stride-2 stages) of a square image size."""
    check_int(image_size, "image_size")
    if image_size == IMAGE_SIZE:
        return _BASE, 2
    if image_size in (16, 32, 64, 128, 256):
        return 4, image_size.bit_length() - 3
    raise ValueError(f"image_size must be 28 or a power of two in [16, 256], got {image_size}")


class DCGANGenerator(nn.Module):
    """DCGAN-style generator of ``(B, out_channels, image_size, image_size)`` images in [0, 1].

    ``z`` → ``ConvTranspose2d(latent_dim, c_0, base)`` on a 1x1 map (the marked layer; base 7
    for 28-pixel digits, 4 for powers of two) → BN, ReLU → stride-2 ``ConvTranspose2d(4, 2, 1)``
    stages halving the channels down to ``width`` (each followed by BN, ReLU) → a last
    stride-2 ``ConvTranspose2d`` to ``out_channels`` → sigmoid. ``c_0 = width·2^(stages-1)``:
    for 28x28 that is ``2·width`` at 7x7, ``width`` at 14x14.

    Args:
        latent_dim (int): size of ``z``. Default 10.
        width (int): channels of the last hidden stage. Default 32.
        out_channels (int): image channels. Default 1.
        image_size (int): 28 (default) or 16, 32, 64, 128, 256.

    Attributes:
        project (nn.ConvTranspose2d): the first layer, ``weight (latent_dim, c_0, base, base)``,
            marked ``is_pre_svd = True``.
        latent_dim (int)

    Example:
        >>> g = DCGANGenerator(latent_dim=8, width=16)
        >>> g(torch.randn(4, 8)).shape
        torch.Size([4, 1, 28, 28])
        >>> pre_svd_parameters(g)[0] is g.project.weight
        True
    """

    def __init__(
        self, latent_dim: int = 10, width: int = 32, out_channels: int = 1, image_size: int = 28
    ) -> None:
        super().__init__()
        check_int(latent_dim, "latent_dim")
        check_int(width, "width")
        check_int(out_channels, "out_channels")
        base, stages = _ladder(image_size)
        self.latent_dim = latent_dim
        self.image_size = image_size
        channels = [width * 2 ** (stages - 1 - i) for i in range(stages)]
        self.project = nn.ConvTranspose2d(latent_dim, channels[0], base, bias=False)
        self.project.is_pre_svd = True
        layers: list[nn.Module] = [nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True)]
        for cin, cout in zip(channels, channels[1:]):
            layers += [_upsample(cin, cout), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        layers.append(nn.ConvTranspose2d(channels[-1], out_channels, 4, stride=2, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        z = _check_latent(z, self.latent_dim)
        return torch.sigmoid(self.body(self.project(z[:, :, None, None])))


class SubspaceLayer(nn.Module):
    r"""EigenGAN subspace: :math:`\phi = \sum_j l_j z_j u_j + \mu` as a ``(C, H, W)`` map.

    ``weight`` (the basis :math:`U`, Tensor[dims, C·H·W], row :math:`j` is :math:`u_j`) is
    initialised with orthonormal rows and marked for NOG/OLR (``is_pre_svd = True``); the
    EigenGAN ``ol`` baseline keeps it orthonormal with a soft loss instead. ``scale`` holds
    :math:`l`, initialised to :math:`\sqrt{C H W}` so that a unit :math:`z_j` moves each
    entry of the map by about 1, as much as the (batch-normalised) features it is added to;
    ``shift`` holds :math:`\mu` (initialised to 0).

    Args:
        dims (int): latent dimensions of the subspace.
        shape (tuple[int, int, int]): ``(C, H, W)`` of the map it adds to.

    Example:
        >>> layer = SubspaceLayer(4, (8, 7, 7))
        >>> layer(torch.randn(2, 4)).shape
        torch.Size([2, 8, 7, 7])
    """

    is_pre_svd = True

    def __init__(self, dims: int, shape: tuple[int, int, int]) -> None:
        super().__init__()
        check_int(dims, "dims")
        if len(shape) != 3:
            raise ValueError(f"shape must be (C, H, W), got {shape!r}")
        for s in shape:
            check_int(s, "shape")
        self.dims = dims
        self.shape = tuple(shape)
        size = shape[0] * shape[1] * shape[2]
        if dims > size:
            raise ValueError(f"dims ({dims}) must be at most C·H·W ({size})")
        self.weight = nn.Parameter(nn.init.orthogonal_(torch.empty(dims, size)))
        self.scale = nn.Parameter(torch.full((dims,), float(size) ** 0.5))
        self.shift = nn.Parameter(torch.zeros(size))

    def forward(self, z: Tensor) -> Tensor:
        z = _check_latent(z, self.dims)
        phi = (z * self.scale) @ self.weight + self.shift
        return phi.reshape(z.shape[0], *self.shape)


class EigenGenerator(nn.Module):
    """EigenGAN-style generator of ``(B, out_channels, 28, 28)`` images in [0, 1].

    A learned constant ``(2w, 7, 7)`` map; stage ``i`` (of ``layers``, at 7, 7·2, ... pixels,
    the last ones at 28) adds ``subspaces[i](z_i)`` and applies conv–BN–LeakyReLU, then
    upsamples while below 28. ``z = cat(z_1, ..., z_layers)``, each ``z_i`` of ``dims`` entries.

    Args:
        layers (int): subspace layers, 1 to 3. Default 3.
        dims (int): latent dims per layer. Default 4 (latent_dim 12).
        width (int): channels at 28x28 (``2·width`` below). Default 16.
        out_channels (int): image channels. Default 1.

    Attributes:
        subspaces (nn.ModuleList[SubspaceLayer]): the marked layers.
        latent_dim (int): ``layers · dims``.

    Example:
        >>> g = EigenGenerator(layers=2, dims=4, width=8)
        >>> g(torch.randn(3, g.latent_dim)).shape
        torch.Size([3, 1, 28, 28])
        >>> len(pre_svd_parameters(g))
        2
    """

    def __init__(
        self, layers: int = 3, dims: int = 4, width: int = 16, out_channels: int = 1
    ) -> None:
        super().__init__()
        check_int(layers, "layers")
        if layers > 3:
            raise ValueError(f"layers must be 1, 2 or 3 (28x28 images), got {layers}")
        check_int(dims, "dims")
        check_int(width, "width")
        check_int(out_channels, "out_channels")
        self.layers = layers
        self.dims = dims
        self.latent_dim = layers * dims
        # stage sizes: 3 layers -> 7, 14, 28; 2 -> 14, 28 (one upsampling first); 1 -> 28.
        sizes = [IMAGE_SIZE // 2 ** (layers - 1 - i) for i in range(layers)]
        c = 2 * width
        self.const = nn.Parameter(torch.randn(1, c, _BASE, _BASE) * 0.1)
        self.pre = nn.ModuleList()
        size = _BASE
        while size < sizes[0]:
            self.pre.append(nn.Sequential(_upsample(c, c), nn.BatchNorm2d(c), nn.LeakyReLU(0.2)))
            size *= 2
        self.subspaces = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for i, s in enumerate(sizes):
            cout = width if s == IMAGE_SIZE else c
            self.subspaces.append(SubspaceLayer(dims, (c, s, s)))
            block: list[nn.Module] = [
                nn.Conv2d(c, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.LeakyReLU(0.2),
            ]
            if i + 1 < layers:
                block += [_upsample(cout, c), nn.BatchNorm2d(c), nn.LeakyReLU(0.2)]
            else:
                block += [nn.Conv2d(cout, out_channels, 3, padding=1)]
            self.blocks.append(nn.Sequential(*block))
            c = c if i + 1 < layers else cout

    def forward(self, z: Tensor) -> Tensor:
        z = _check_latent(z, self.latent_dim)
        h = self.const.expand(z.shape[0], -1, -1, -1).to(z.dtype)
        for layer in self.pre:
            h = layer(h)
        for i, (subspace, block) in enumerate(zip(self.subspaces, self.blocks)):
            h = block(h + subspace(z[:, i * self.dims : (i + 1) * self.dims]))
        return torch.sigmoid(h)


class Discriminator(nn.Module):
    """DCGAN discriminator: ``(B, C, S, S)`` images → one logit per image ``(B,)``.

    Stride-2 ``Conv2d(4, 2, 1)`` stages from ``S`` down to the generator's base size (7 for
    28-pixel digits, 4 for powers of two), channels ``width, 2·width, ...``, LeakyReLU(0.2),
    BN on all but the first, then ``Linear(·, 1)``. For 28x28: 14x14x``width`` →
    7x7x``2·width`` → logit.

    Args:
        width (int): channels of the first conv. Default 32.
        in_channels (int): image channels. Default 1.
        image_size (int): 28 (default) or 16, 32, 64, 128, 256.

    Example:
        >>> Discriminator(width=8)(torch.rand(5, 1, 28, 28)).shape
        torch.Size([5])
    """

    def __init__(self, width: int = 32, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        check_int(width, "width")
        check_int(in_channels, "in_channels")
        base, stages = _ladder(image_size)
        self.in_channels = in_channels
        self.image_size = image_size
        layers: list[nn.Module] = []
        cin = in_channels
        for i in range(stages):
            cout = width * 2**i
            layers.append(nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2))
            cin = cout
        layers += [nn.Flatten(), nn.Linear(cin * base * base, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, "Discriminator", (4,), self.in_channels, "(B, C, S, S)")
        size = self.image_size
        if tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"x must be (B, C, {size}, {size}) images, got {tuple(x.shape)}")
        return self.net(x).squeeze(1)
