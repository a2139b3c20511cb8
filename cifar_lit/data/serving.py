"""The two ways ``ImageDataModule`` serves a split's images, one class each, chosen once in its
``setup``. Both serve the same images to the same methods (``loader``, ``images_of``,
``labels_of``, ``samples``, ``whitening_sample``), so the data module delegates and never asks
which one it holds.

``PilPath``: the tutorial's per-sample transforms in a DataLoader, from the format's pools
(``cifar_lit.data.pools``). With ``streaming`` (an image folder whose tensor cache would not fit
in memory) it is normalised with the training images' own statistics, computed from disk as the
cache would have given them, so validation and test see the same inputs either way.

``TensorPath``: ``cifar_lit.data.tensors``: decoded once into a uint8 pool, batched on the
device, normalised with the training images' own per-channel statistics.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from cifar_lit.data.formats import DataFormat
from cifar_lit.data.pools import MEAN, STD, Pool
from cifar_lit.data.split import Split
from cifar_lit.data.tensors import DeviceBatches, channel_stats, chunk_stats, split_views, translate_pad

PARTS = ("train", "val", "test")
# The parts each Lightning stage reads (None: every part).
STAGE_PARTS = {None: PARTS, "fit": ("train", "val"), "validate": ("train", "val"), "test": ("test",),
               "predict": ("test",)}
# Training images the streaming path computes its normalisation from: all up to this many, else a
# seeded sample of this many (decoding every image once more only for 6 numbers is an epoch's work).
STATS_IMAGES = 10_000


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 images (N x 3 x H x W) as the network sees them."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (images.float() / 255 - m) / s


class PilPath:
    """Per-sample: a DataLoader over each part's pool, through PIL and torchvision transforms."""

    def __init__(self, fmt: DataFormat, split: Split, root: Path, size: int, *, seed: int = 0,
                 num_workers: int = 0, normalisation=None, streaming: bool = False) -> None:
        self.fmt, self.split, self.root, self.size = fmt, split, Path(root), size
        self.seed, self.num_workers, self.streaming = seed, num_workers, streaming
        self.normalisation = normalisation
        self.mean, self.std = normalisation or (list(MEAN), list(STD))
        self.pools: dict[str, Pool] = {}
        self.sets: dict[str, Dataset] = {}  # part -> (image, label) as training (train) or evaluation sees them
        self._stats_done = False

    def setup(self, stage: str | None) -> None:
        wanted = STAGE_PARTS[stage]
        if self.streaming and self.normalisation is None and not self._stats_done:
            wanted = tuple(dict.fromkeys(("train", *wanted)))  # the statistics come from the training images
        missing = tuple(p for p in wanted if p not in self.pools)
        if missing:
            self.pools.update(self.fmt.pools(self.split, self.root, missing))
        if self.streaming and self.normalisation is None and not self._stats_done:
            self.mean, self.std = self._streamed_stats(self.pools["train"])
            self._stats_done = True
        for part in missing:
            pool = self.pools[part]
            self.sets[part] = (pool.train_set if part == "train" else pool.eval_set)(self.size, self.mean, self.std)

    def _streamed_stats(self, train: Pool) -> tuple[list[float], list[float]]:
        """``channel_stats`` of the training images, decoded from disk in chunks of the same 256
        images in the same order as the tensor path's: the same numbers, to the last bit. Above
        ``STATS_IMAGES`` images, of a seeded sample of that many."""
        if len(train) > STATS_IMAGES:
            keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed))
            train = train.subset(sorted(keep[:STATS_IMAGES].tolist()))
        return chunk_stats(DataLoader(train.pixels(self.size), batch_size=256, num_workers=self.num_workers))

    @property
    def train_set(self) -> Dataset:
        return self.sets["train"]

    @property
    def val_set(self) -> Dataset:
        return self.sets["val"]

    @property
    def test_set(self) -> Dataset:
        return self.sets["test"]

    def num_images(self, part: str) -> int:
        return len(self.pools[part])

    def eval_set(self, part: str) -> Dataset:
        """The dataset of ``part`` as evaluation sees it; for "train", the training images
        without their augmentation."""
        return self.pools[part].eval_set(self.size, self.mean, self.std) if part == "train" else self.sets[part]

    def loader(self, part: str, batch_size: int, trainer=None) -> DataLoader:
        dataset, shuffle = self.sets[part], part == "train"
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            # Seeded shuffling: the same seed replays the same batches.
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            # A last training batch of one image stops BatchNorm networks ("Expected more than 1
            # value per channel"); only then is it dropped, so the tutorial's batches stay as they were.
            drop_last=shuffle and len(dataset) % batch_size == 1,
        )

    def images_of(self, part: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pools[part].uint8(n, self.size)

    def labels_of(self, part: str) -> list[int]:
        return self.pools[part].labels()

    def samples(self, part: str, chosen: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self.sets[part][i] for i in chosen]
        if not items:
            return torch.empty(0, 3, self.size, self.size), torch.empty(0, dtype=torch.long)
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

    def whitening_sample(self, n: int) -> torch.Tensor:
        train = self.eval_set("train")  # unaugmented: the images as they are, not random crops
        return torch.stack([train[i][0] for i in range(min(n, len(train)))])


class TensorPath:
    """Decoded once (the size-keyed tensor cache), batched and augmented on the device."""

    def __init__(self, split: Split, root: Path, size: int, *, seed: int = 0, channels_last: bool = False,
                 normalisation=None) -> None:
        self.split, self.root, self.size = split, Path(root), size
        self.seed, self.channels_last, self.normalisation = seed, channels_last, normalisation
        self.mean, self.std = normalisation or (list(MEAN), list(STD))
        self.streaming = False
        # part -> (pool images, labels, indices): one uint8 pool (memory-mapped from the cache)
        # that every part indexes into.
        self.views: dict[str, tuple] | None = None

    def setup(self, stage: str | None) -> None:
        if self.views is not None:
            return
        self.views = split_views(self.split, self.root, self.size)
        if self.normalisation is None:
            images, _, idx = self.views["train"]
            self.mean, self.std = channel_stats(images, idx)

    def _indices(self, part: str) -> torch.Tensor:
        images, _, idx = self.views[part]
        return torch.arange(len(images)) if idx is None else idx

    def num_images(self, part: str) -> int:
        return len(self._indices(part))

    def loader(self, part: str, batch_size: int, trainer=None) -> DeviceBatches:
        train = part == "train"
        images, labels, idx = self.views[part]
        return DeviceBatches(
            images,
            labels,
            batch_size if train else 2 * batch_size,  # no gradients to keep: twice the batch
            self.mean,
            self.std,
            indices=idx,
            train=train,
            pad=translate_pad(self.size),
            seed=self.seed,
            device=trainer.strategy.root_device if trainer else "cpu",
            channels_last=self.channels_last,
            rank=trainer.global_rank if trainer and train else 0,
            world_size=trainer.world_size if trainer and train else 1,
            epoch_of=(lambda: trainer.current_epoch) if trainer and train else None,
        )

    def images_of(self, part: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels, _ = self.views[part]
        idx = self._indices(part)[:n]
        return images[idx], labels[idx]

    def labels_of(self, part: str) -> list[int]:
        _, labels, _ = self.views[part]
        return labels[self._indices(part)].tolist()

    def samples(self, part: str, chosen: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels, _ = self.views[part]
        idx = self._indices(part)[chosen]
        return normalise(images[idx], self.mean, self.std), labels[idx]

    def whitening_sample(self, n: int) -> torch.Tensor:
        return normalise(self.images_of("train", n)[0], self.mean, self.std)
