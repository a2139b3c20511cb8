"""The images of one part of a split, for the per-sample path: decoded arrays in memory (CIFAR's
batches) or files on disk (image folders). A dataset format gives the data module one ``Pool`` per
part (``DataFormat.pools``); the data module never asks which kind it holds.

Every pool shows its images two ways: as training sees them (``train_set``) and as evaluation
sees them (``eval_set``: validation, test, the W&B panels; an image folder's centre square at the
run's size, ``imagefolder.square``), both normalised; and as uint8 pixels of the evaluation view
(``pixels``), for statistics and ``ImageDataModule.images_of``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from cifar_lit.data.common import SIZE

# The tutorial's normalisation: mean 0.5 and std 0.5 per channel, so inputs lie in [-1, 1].
from cifar_lit.data.images import load_rgb

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
# RandomResizedCrop's share of the photo's area. torchvision's default, (0.08, 1), was made for
# ImageNet's 1.3M images and 90 epochs; on a few hundred photos trained for tens of epochs, a crop
# of 8% of a photo often loses the thing its label names (a hat in a portrait), and the network
# learns from noise. At least 35% keeps the subject in nearly every crop while still varying its
# scale and place. Aspect ratio: torchvision's 3/4 to 4/3.
TRAIN_CROP_SCALE = (0.35, 1.0)


def _normalised(mean, std) -> list:
    """A PIL image to a plain float tensor in [0, 1], then normalised (plain: batches are tensors,
    not torchvision's ``Image`` type)."""
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std), v2.ToPureTensor()]


def tutorial_transform(mean=MEAN, std=STD) -> v2.Compose:
    return v2.Compose(_normalised(mean, std))


def train_transform(size: int, mean=MEAN, std=STD) -> v2.Compose:
    """Per-sample training augmentation of an image folder: a random crop of the whole photo
    (``TRAIN_CROP_SCALE`` of its area) resized to ``size`` x ``size``, mirrored half the time.
    On the PIL image, before it becomes a tensor: PIL's resampling, as evaluation's ``load_rgb``."""
    return v2.Compose([v2.RandomResizedCrop(size, scale=TRAIN_CROP_SCALE), v2.RandomHorizontalFlip(), *_normalised(mean, std)])


class ArrayImages(Dataset):
    """CIFAR images held as one uint8 array, served through PIL like torchvision's CIFAR10."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: list[int], transform) -> None:
        self.images, self.labels, self.indices, self.transform = images, labels, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = self.indices[i]
        return self.transform(Image.fromarray(self.images[j])), int(self.labels[j])


class FileImages(Dataset):
    """Image-folder samples, decoded from disk on every access (the per-sample path): with
    ``size``, as evaluation sees them (``load_rgb``: the centre square at ``size``); with None, at
    their own size, for a ``transform`` that crops and resizes (``train_transform``)."""

    def __init__(self, root: Path, samples, indices, transform, size: int | None = SIZE) -> None:
        self.root, self.samples, self.indices, self.transform = Path(root), samples, indices, transform
        self.size = size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rel, label = self.samples[self.indices[i]]
        return self.transform(load_rgb(self.root / rel, self.size)), int(label)


class FilePixels(Dataset):
    """uint8 images (3 x size x size) of image-folder samples, as evaluation sees them."""

    def __init__(self, root: Path, samples, indices, size: int) -> None:
        self.root, self.samples, self.indices, self.size = Path(root), samples, indices, size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        rel, _ = self.samples[self.indices[i]]
        return torch.from_numpy(np.array(load_rgb(self.root / rel, self.size))).permute(2, 0, 1)


class ArrayPixels(Dataset):
    """uint8 images (3 x H x W) of an array pool."""

    def __init__(self, images: np.ndarray, indices) -> None:
        self.images, self.indices = images, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.images[self.indices[i]]).permute(2, 0, 1)


class Pool:
    """The images of one part of a split (``indices`` into a pool of images)."""

    indices: list[int]

    def __len__(self) -> int:
        return len(self.indices)

    def labels(self) -> list[int]:
        """The labels in order, without decoding any image."""
        raise NotImplementedError

    def train_set(self, size: int, mean, std) -> Dataset:
        """(normalised image, label) pairs as training sees them."""
        raise NotImplementedError

    def eval_set(self, size: int, mean, std) -> Dataset:
        """(normalised image, label) pairs as evaluation sees them."""
        raise NotImplementedError

    def pixels(self, size: int) -> Dataset:
        """uint8 images (3 x size x size) of the evaluation view, in order."""
        raise NotImplementedError

    def subset(self, positions: list[int]) -> Pool:
        """The pool of the images at ``positions`` (in this pool's order)."""
        raise NotImplementedError

    def uint8(self, n: int | None, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the first ``n`` (all: None) uint8 images (N x 3 x size x size) and labels."""
        pixels, chosen = self.pixels(size), range(len(self))[:n]
        images = (torch.stack([pixels[i] for i in chosen]) if chosen
                  else torch.empty(0, 3, size, size, dtype=torch.uint8))
        return images, torch.tensor(self.labels()[:n], dtype=torch.long)


class ArrayPool(Pool):
    """Decoded images in memory (N x H x W x 3 uint8, CIFAR's batches) and their labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices) -> None:
        self.images, self.label_array, self.indices = images, labels, list(indices)

    def labels(self) -> list[int]:
        return [int(self.label_array[j]) for j in self.indices]

    def train_set(self, size: int, mean, std) -> Dataset:
        # The tutorial trains CIFAR on this path without augmentation: the batches it always had.
        return self.eval_set(size, mean, std)

    def eval_set(self, size: int, mean, std) -> Dataset:
        return ArrayImages(self.images, self.label_array, self.indices, tutorial_transform(mean, std))

    def pixels(self, size: int) -> Dataset:
        return ArrayPixels(self.images, self.indices)

    def subset(self, positions: list[int]) -> ArrayPool:
        return ArrayPool(self.images, self.label_array, [self.indices[i] for i in positions])

    def uint8(self, n: int | None, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.indices[:n]  # one gather, not an image at a time
        images = torch.from_numpy(self.images[rows]).permute(0, 3, 1, 2).contiguous()
        return images, torch.as_tensor(self.label_array[rows], dtype=torch.long)


class FilePool(Pool):
    """Image files under ``root``: ``samples`` is (path relative to root, or absolute, label)."""

    def __init__(self, root: Path, samples, indices) -> None:
        self.root, self.samples, self.indices = Path(root), samples, list(indices)

    def labels(self) -> list[int]:
        return [int(self.samples[j][1]) for j in self.indices]

    def train_set(self, size: int, mean, std) -> Dataset:
        return FileImages(self.root, self.samples, self.indices, train_transform(size, mean, std), None)

    def eval_set(self, size: int, mean, std) -> Dataset:
        return FileImages(self.root, self.samples, self.indices, tutorial_transform(mean, std), size)

    def pixels(self, size: int) -> Dataset:
        return FilePixels(self.root, self.samples, self.indices, size)

    def subset(self, positions: list[int]) -> FilePool:
        return FilePool(self.root, self.samples, [self.indices[i] for i in positions])
