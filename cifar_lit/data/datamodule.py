"""The LightningDataModule: the tutorial's CIFAR10DataModule, generalised to CIFAR-100 and image
folders, reading its train/val/test indices from a split file.

Image size: the network sees ``image_size`` x ``image_size`` images (``image_size(config)``;
CIFAR only ever at its 32). Image folders are evaluated (validation, test, the W&B panels and the
tensor cache) at their centre square, the shorter side resized to the size (``imagefolder.square``);
on the per-sample path they train on random crops of the whole photo (``train_transform``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cifar_lit.config import TrainConfig
from cifar_lit.data.cifar import SOURCES, load_cifar
from cifar_lit.data.imagefolder import SIZE, DataError, load_rgb
from cifar_lit.data.panels import panel_indices
from cifar_lit.data.prepare import DataRef, prepare_data
from cifar_lit.data.split import make_split, read_split, stage_split
from cifar_lit.data.tensors import DeviceBatches, channel_stats, chunk_stats, fits_in_cache, split_views, translate_pad
from cifar_lit.recipes import DataSize, resolve

log = logging.getLogger(__name__)

# The tutorial's normalisation: mean 0.5 and std 0.5 per channel, so inputs lie in [-1, 1].
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
# RandomResizedCrop's share of the photo's area. torchvision's default, (0.08, 1), was made for
# ImageNet's 1.3M images and 90 epochs; on a few hundred photos trained for tens of epochs, a crop
# of 8% of a photo often loses the thing its label names (a hat in a portrait), and the network
# learns from noise. At least 35% keeps the subject in nearly every crop while still varying its
# scale and place. Aspect ratio: torchvision's 3/4 to 4/3.
TRAIN_CROP_SCALE = (0.35, 1.0)
# Training images the streaming path computes its normalisation from: all up to this many, else a
# seeded sample of this many (decoding every image once more only for 6 numbers is an epoch's work).
STATS_IMAGES = 10_000


def image_size(config: TrainConfig) -> int:
    """The side of the square images the network sees: ``config.image_size``, or 32 while unset."""
    return config.image_size or SIZE


def tutorial_transform(mean=MEAN, std=STD) -> transforms.Compose:
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])


def train_transform(size: int, mean=MEAN, std=STD) -> transforms.Compose:
    """Per-sample training augmentation of an image folder: a random crop of the whole photo
    (``TRAIN_CROP_SCALE`` of its area) resized to ``size`` x ``size``, mirrored half the time."""
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=TRAIN_CROP_SCALE),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


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

    def __init__(self, root: Path, samples: list, indices: list[int], transform, size: int | None = SIZE) -> None:
        self.root, self.samples, self.indices, self.transform = Path(root), samples, indices, transform
        self.size = size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rel, label = self.samples[self.indices[i]]
        return self.transform(load_rgb(self.root / rel, self.size)), int(label)


class _Pixels(Dataset):
    """uint8 images (3 x size x size) of a ``FileImages``, as evaluation sees them, for statistics."""

    def __init__(self, files: FileImages, size: int) -> None:
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        rel, _ = self.files.samples[self.files.indices[i]]
        return torch.from_numpy(np.array(load_rgb(self.files.root / rel, self.size))).permute(2, 0, 1)


class ImageDataModule(L.LightningDataModule):
    """``prepare_data`` downloads or scans; ``setup`` reads the split file (making one in the
    output dir when none is given, for standalone use).

    Two data paths serve the same images: ``pil`` (the tutorial's per-sample transforms in a
    DataLoader) and ``tensor`` (``cifar_lit.data.tensors``: decoded once, batched on the device,
    normalised with the training images' own per-channel statistics). An image folder whose
    tensor cache would not fit ``config.cache_max_gb`` streams from disk instead (``streaming``):
    the per-sample path, normalised with the training images' statistics as the cache would be,
    so validation and test see the same inputs either way.

    ``normalisation`` (per-channel mean, std) replaces both paths' own: pretrained weights expect
    the statistics they were trained with.
    """

    def __init__(self, config: TrainConfig, split_file: Path | None = None, normalisation=None) -> None:
        super().__init__()
        self.config = resolve(config)  # the recipe's values; the data's once the split is read
        self.split_file = Path(split_file) if split_file else None
        self.normalisation = None if normalisation is None else tuple([float(v) for v in x] for x in normalisation)
        self.mean, self.std = self.normalisation or (list(MEAN), list(STD))
        self.transform = tutorial_transform(self.mean, self.std)
        self.split: dict | None = None
        self.train_set = self.val_set = self.test_set = None
        self.tensors: dict[str, tuple] | None = None  # tensor path: part -> (pool images, labels, indices)
        self.streaming = False  # the tensor path asked for, its cache too big: per-sample from disk

    def prepare_data(self) -> None:
        # With a split file the flow's download stage already prepared the data: skip the work.
        if self.split_file is None:
            self._prepare()

    def _prepare(self) -> DataRef:
        c = self.config
        return prepare_data(c.dataset, c.data_dir, c.download_url, c.download_md5, c.bad_images,
                            val_dir=c.val_dir, test_dir=c.test_dir)

    def _read_split(self) -> dict:
        if self.split is None:
            if self.split_file is None:
                c = self.config
                made = make_split(self._prepare(), c.val_size, c.test_size, c.seed, c.data_dir, c.min_per_class)
                self.split_file = stage_split(made, c.out)
            self.split = read_split(self.split_file)
            # Standalone use (no flow to resolve it): the recipe's values for this split's data.
            self.config = resolve(self.config, data=DataSize.of_split(self.split))
        return self.split

    @property
    def classes(self) -> list[str]:
        return self._read_split()["classes"]

    @property
    def has_val(self) -> bool:
        """False for a split without validation images (``val_size`` 0): fit then skips validation."""
        return len(self._read_split()["val"]) > 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        """The side of the square images this data module serves (``image_size(config)``)."""
        return image_size(self.config)

    def setup(self, stage: str | None = None) -> None:
        split, c = self._read_split(), self.config
        if split["dataset"] != c.dataset:
            raise ValueError(f"{self.split_file}: is a {split['dataset']} split, not {c.dataset}")
        size = self.image_size
        if split["samples"] is None and size != SIZE:
            raise DataError(f"image_size: {c.dataset} images are {SIZE}x{SIZE}; use image_size {SIZE} "
                            f"(or leave it unset), not {size}")
        root = Path(c.data_dir).resolve()
        if c.data_path == "tensor" and self._cache_fits(split, size):
            self._setup_tensors(split, root)
        elif split["samples"] is None:  # CIFAR: arrays from the extracted pickles
            folder = root / SOURCES[c.dataset].base_folder
            if stage in (None, "fit", "validate") and self.train_set is None:
                images, labels = load_cifar(folder, c.dataset, train=True)
                self.train_set = ArrayImages(images, labels, split["train"], self.transform)
                self.val_set = ArrayImages(images, labels, split["val"], self.transform)
            if stage in (None, "test", "predict") and self.test_set is None:
                images, labels = load_cifar(folder, c.dataset, train=False)
                self.test_set = ArrayImages(images, labels, list(range(len(labels))), self.transform)
        elif self.train_set is None:
            self._setup_files(split, root, size)

    def _cache_fits(self, split: dict, size: int) -> bool:
        """True unless this is an image folder whose tensor cache at ``size`` would exceed
        ``cache_max_gb`` (estimated before decoding anything); then, one log line and streaming.
        CIFAR always fits: its 184 MB are read whole from the pickles on either path."""
        if split["samples"] is None or self.tensors is not None:
            return True
        fits, words = fits_in_cache(split, size, self.config.cache_max_gb)
        if not fits and not self.streaming:
            log.warning("data_path tensor: its cache would not fit (%s); streaming the images from disk through "
                        "the per-sample path instead (--cache-max-gb raises the limit)", words)
        self.streaming = not fits
        return fits

    def _setup_files(self, split: dict, root: Path, size: int) -> None:
        samples = split["samples"]
        if self.streaming and self.normalisation is None:  # the statistics the cache would have given
            self.mean, self.std = self._streamed_stats(FileImages(root, samples, split["train"], None, size), size)
        evaluated = tutorial_transform(self.mean, self.std)
        self.train_set = FileImages(root, samples, split["train"], train_transform(size, self.mean, self.std), None)
        self.val_set = FileImages(root, samples, split["val"], evaluated, size)
        self.test_set = FileImages(root, samples, split["test"], evaluated, size)

    def _streamed_stats(self, train: FileImages, size: int) -> tuple[list[float], list[float]]:
        """``channel_stats`` of the training images, decoded from disk in chunks of the same 256
        images in the same order as the tensor path's: the same numbers, to the last bit. Above
        ``STATS_IMAGES`` images, of a seeded sample of that many."""
        if len(train) > STATS_IMAGES:
            keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.config.seed))
            train = FileImages(train.root, train.samples, [train.indices[i] for i in sorted(keep[:STATS_IMAGES].tolist())],
                               None, size)
        c = self.config
        chunks = DataLoader(_Pixels(train, size), batch_size=256, num_workers=c.num_workers)
        return chunk_stats(chunks)

    def _setup_tensors(self, split: dict, root: Path) -> None:
        if self.tensors is not None:
            return
        # One uint8 pool (memory-mapped from the cache) that every part indexes into.
        self.tensors = split_views(split, root, self.image_size)
        if self.normalisation is None:
            images, _, idx = self.tensors["train"]
            self.mean, self.std = channel_stats(images, idx)
        self.train_set, self.val_set, self.test_set = (self._indices(k) for k in ("train", "val", "test"))

    def _indices(self, part: str) -> torch.Tensor:
        images, _, idx = self.tensors[part]
        return torch.arange(len(images)) if idx is None else idx

    def images_of(self, part: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the (first ``n``) uint8 images (N x 3 x S x S) and labels of ``part``, as
        evaluation sees them (training images unaugmented), on either data path."""
        if self.tensors is not None:
            images, labels, _ = self.tensors[part]
            idx = self._indices(part)[:n]
            return images[idx], labels[idx]
        dataset = self.eval_set(part)
        chosen = range(len(dataset))[:n]
        if isinstance(dataset, ArrayImages):
            rows = [dataset.indices[i] for i in chosen]
            images = torch.from_numpy(dataset.images[rows]).permute(0, 3, 1, 2).contiguous()
            return images, torch.as_tensor(dataset.labels[rows], dtype=torch.long)
        pixels = _Pixels(dataset, self.image_size)
        images = torch.stack([pixels[i] for i in chosen]) if chosen else torch.empty(0, 3, self.image_size,
                                                                                      self.image_size, dtype=torch.uint8)
        return images, torch.tensor([int(dataset.samples[dataset.indices[i]][1]) for i in chosen], dtype=torch.long)

    def eval_set(self, part: str) -> Dataset:
        """Per-sample path: the dataset of ``part`` as evaluation sees it; for "train", the
        training images without their augmentation."""
        dataset = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[part]
        if isinstance(dataset, FileImages) and dataset.size is None:
            return FileImages(dataset.root, dataset.samples, dataset.indices, tutorial_transform(self.mean, self.std),
                              self.image_size)
        return dataset

    def _batches(self, part: str, train: bool, batch_size: int) -> DeviceBatches:
        trainer, c = self.trainer, self.config
        images, labels, idx = self.tensors[part]
        return DeviceBatches(
            images,
            labels,
            batch_size,
            self.mean,
            self.std,
            indices=idx,
            train=train,
            pad=translate_pad(self.image_size),
            seed=c.seed,
            device=trainer.strategy.root_device if trainer else "cpu",
            channels_last=c.channels_last,
            rank=trainer.global_rank if trainer and train else 0,
            world_size=trainer.world_size if trainer and train else 1,
            epoch_of=(lambda: trainer.current_epoch) if trainer and train else None,
        )

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        c = self.config
        return DataLoader(
            dataset,
            batch_size=c.batch_size,
            shuffle=shuffle,
            num_workers=c.num_workers,
            persistent_workers=c.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            # Seeded shuffling: the same seed replays the same batches.
            generator=torch.Generator().manual_seed(c.seed) if shuffle else None,
            # A last training batch of one image stops BatchNorm networks ("Expected more than 1
            # value per channel"); only then is it dropped, so the tutorial's batches stay as they were.
            drop_last=shuffle and len(dataset) % c.batch_size == 1,
        )

    def train_dataloader(self):
        if self.tensors is not None:
            return self._batches("train", train=True, batch_size=self.config.batch_size)
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        if self.tensors is not None:
            return self._batches("val", train=False, batch_size=2 * self.config.batch_size)
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self):
        if self.tensors is not None:
            return self._batches("test", train=False, batch_size=2 * self.config.batch_size)
        return self._loader(self.test_set, shuffle=False)

    def samples(self, part: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images (normalised) and labels of ``part`` ("val" or "test") for the W&B panels:
        ``panel_indices``, a sample seeded by the run's seed and round-robin over the classes (a
        split of an image folder is class-sorted, its first images one class). The same on both
        data paths, and across epochs and runs of the same split, so panels compare like with like."""
        chosen = panel_indices(self.labels_of(part), n, self.config.seed)
        if self.tensors is not None:
            images, labels, _ = self.tensors[part]
            idx = self._indices(part)[chosen]
            return self._normalise(images[idx]), labels[idx]
        dataset = self.val_set if part == "val" else self.test_set
        items = [dataset[i] for i in chosen]
        if not items:
            return torch.empty(0, 3, self.image_size, self.image_size), torch.empty(0, dtype=torch.long)
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

    def labels_of(self, part: str) -> list[int]:
        """The labels of ``part`` in order, without decoding any image."""
        if self.tensors is not None:
            _, labels, _ = self.tensors[part]
            return labels[self._indices(part)].tolist()
        dataset = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[part]
        if isinstance(dataset, ArrayImages):
            return [int(dataset.labels[j]) for j in dataset.indices]
        return [int(dataset.samples[j][1]) for j in dataset.indices]

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (tensor path) as the network sees them."""
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (images.float() / 255 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Back to [0, 1] pixels, for showing images."""
        mean = torch.tensor(self.mean, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(-1, 1, 1)
        return (x * std + mean).clamp(0, 1)

    def whitening_sample(self, n: int = 5000) -> torch.Tensor:
        """Normalised training images for data-dependent initialisation (patch whitening)."""
        if self.tensors is not None:
            return self._normalise(self.images_of("train", n)[0])
        train = self.eval_set("train")  # unaugmented: the images as they are, not random crops
        return torch.stack([train[i][0] for i in range(min(n, len(train)))])
