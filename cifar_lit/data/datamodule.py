"""The LightningDataModule: the tutorial's CIFAR10DataModule, generalised to every dataset format
(``cifar_lit.data.formats``), reading its train/val/test indices from a split file.

    dm = ImageDataModule(data_dir="data", split_file="data/.cifar_lit/split-....json", batch_size=64)
    L.Trainer(max_epochs=1).fit(model, datamodule=dm)

    dm = ImageDataModule.from_config(TrainConfig(...))   # prepares the data and splits it first

Image size: the network sees ``image_size`` x ``image_size`` images (CIFAR only ever its 32).
Image folders are evaluated (validation, test, the W&B panels and the tensor cache) at their
centre square, the shorter side resized to the size (``imagefolder.square``); on the per-sample
path they train on random crops of the whole photo (``pools.train_transform``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import lightning as L
import torch

from cifar_lit.data.common import SIZE, DataError
from cifar_lit.data.formats import get_format
from cifar_lit.data.panels import panel_indices
from cifar_lit.data.pools import MEAN, STD
from cifar_lit.data.serving import PilPath, TensorPath
from cifar_lit.data.split import Split
from cifar_lit.data.tensors import fits_in_cache

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from cifar_lit.config import TrainConfig

log = logging.getLogger(__name__)


class ImageDataModule(L.LightningDataModule):
    """The images of one split file, served one of two ways (``cifar_lit.data.serving``), chosen
    once in ``setup``: ``data_path="pil"`` (the tutorial's per-sample transforms in a
    DataLoader) or ``"tensor"`` (decoded once, batched on the device, normalised with the
    training images' own per-channel statistics). An image folder whose tensor cache would not
    fit ``cache_max_gb`` (GB; None: a quarter of this machine's memory) streams from disk
    instead (``streaming``): the per-sample path, normalised as the cache would have been.

    ``normalisation`` (per-channel mean, std) replaces both paths' own: pretrained weights expect
    the statistics they were trained with. ``dataset``: when given, the split must be of it.
    """

    def __init__(
        self,
        *,
        data_dir: str | Path,
        split_file: str | Path,
        batch_size: int = 32,
        image_size: int | None = None,
        data_path: Literal["pil", "tensor"] = "pil",
        num_workers: int = 0,
        seed: int = 0,
        cache_max_gb: float | None = None,
        channels_last: bool = False,
        normalisation: tuple[list[float], list[float]] | None = None,
        dataset: str | None = None,
    ) -> None:
        super().__init__()
        if data_path not in ("pil", "tensor"):
            raise ValueError(f"data_path: {data_path!r} is neither 'pil' nor 'tensor'")
        self.data_dir, self.split_file = Path(data_dir), Path(split_file)
        self.batch_size = batch_size  # the name Lightning's batch-size tuner looks for
        self._image_size, self.data_path, self.num_workers, self.seed = image_size, data_path, num_workers, seed
        self.cache_max_gb, self.channels_last, self.dataset = cache_max_gb, channels_last, dataset
        self.normalisation = None if normalisation is None else tuple([float(v) for v in x] for x in normalisation)
        self._split: Split | None = None
        self.serving: PilPath | TensorPath | None = None  # chosen in setup

    @classmethod
    def from_config(cls, config: TrainConfig, split_file: Path | None = None, normalisation=None) -> ImageDataModule:
        """The data module a run's config describes, its recipe resolved for this machine and
        the split's data (``cifar_lit.recipes.resolve``). Without ``split_file`` the data is
        prepared (downloaded or scanned) and split first, the split copied into the run's
        output dir (``split.json``), as the flow's stages would."""
        from cifar_lit.data.prepare import prepare_data
        from cifar_lit.data.split import make_split, stage_split
        from cifar_lit.recipes.plan import DataSize, resolve

        c = resolve(config)
        if split_file is None:
            ref = prepare_data(c.dataset, c.data_dir, c.download_url, c.download_md5, c.bad_images,
                               val_dir=c.val_dir, test_dir=c.test_dir)
            split_file = stage_split(make_split(ref, c.val_size, c.test_size, c.seed, c.data_dir, c.min_per_class), c.out)
        split = Split.read(split_file)
        c = resolve(c, data=DataSize.of_split(split))  # the recipe's batch size and image size for this data
        dm = cls(data_dir=c.data_dir, split_file=split_file, batch_size=c.batch_size, image_size=c.image_size,
                 data_path=c.data_path or "pil", num_workers=c.num_workers, seed=c.seed, cache_max_gb=c.cache_max_gb,
                 channels_last=bool(c.channels_last), normalisation=normalisation, dataset=c.dataset)
        dm._split = split
        return dm

    # ---- what the split holds --------------------------------------------------------------

    @property
    def split(self) -> Split:
        if self._split is None:
            self._split = Split.read(self.split_file)
        return self._split

    @property
    def classes(self) -> list[str]:
        return list(self.split.classes)

    @property
    def num_classes(self) -> int:
        return len(self.split.classes)

    @property
    def has_val(self) -> bool:
        """False for a split without validation images (``val_size`` 0): fit then skips validation."""
        return len(self.split.val) > 0

    @property
    def image_size(self) -> int:
        """The side of the square images this data module serves (32 while unset)."""
        return self._image_size or SIZE

    @property
    def mean(self) -> list[float]:
        """The per-channel mean inputs are normalised with (known once ``setup`` ran)."""
        return self.serving.mean if self.serving else list((self.normalisation or (MEAN, STD))[0])

    @property
    def std(self) -> list[float]:
        return self.serving.std if self.serving else list((self.normalisation or (MEAN, STD))[1])

    @property
    def streaming(self) -> bool:
        """The tensor path was asked for, its cache too big: per-sample from disk."""
        return bool(self.serving and self.serving.streaming)

    # ---- Lightning's hooks ------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        split = self.split
        if self.dataset is not None and split.dataset != self.dataset:
            raise ValueError(f"{self.split_file}: is a {split.dataset} split, not {self.dataset}")
        fmt, size = get_format(split.dataset), self.image_size
        if fmt.fixed_side is not None and size != fmt.fixed_side:
            raise DataError(f"image_size: {split.dataset} images are {fmt.fixed_side}x{fmt.fixed_side}; use "
                            f"image_size {fmt.fixed_side} (or leave it unset), not {size}")
        if self.serving is None:
            root = self.data_dir.resolve()
            if self.data_path == "tensor" and self._cache_fits(fmt, split, size):
                self.serving = TensorPath(split, root, size, seed=self.seed, channels_last=self.channels_last,
                                          normalisation=self.normalisation)
            else:
                self.serving = PilPath(fmt, split, root, size, seed=self.seed, num_workers=self.num_workers,
                                       normalisation=self.normalisation, streaming=self.data_path == "tensor")
        self.serving.setup(stage)

    def _cache_fits(self, fmt, split: Split, size: int) -> bool:
        """True unless the format streams and its tensor cache at ``size`` would exceed
        ``cache_max_gb`` (estimated before decoding anything); then, one log line and streaming."""
        if not fmt.streams:
            return True
        fits, words = fits_in_cache(split, size, self.cache_max_gb)
        if not fits:
            log.warning("data_path tensor: its cache would not fit (%s); streaming the images from disk through "
                        "the per-sample path instead (--cache-max-gb raises the limit)", words)
        return fits

    def train_dataloader(self):
        return self.serving.loader("train", self.batch_size, self.trainer)

    def val_dataloader(self):
        return self.serving.loader("val", self.batch_size, self.trainer)

    def test_dataloader(self):
        return self.serving.loader("test", self.batch_size, self.trainer)

    # ---- the images, for callbacks, initialisation and tests -------------------------------

    def num_images(self, part: str) -> int:
        """How many images ``part`` ("train", "val", "test") holds."""
        return self.serving.num_images(part)

    def images_of(self, part: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the (first ``n``) uint8 images (N x 3 x S x S) and labels of ``part``, as
        evaluation sees them (training images unaugmented), on either data path."""
        return self.serving.images_of(part, n)

    def labels_of(self, part: str) -> list[int]:
        """The labels of ``part`` in order, without decoding any image."""
        return self.serving.labels_of(part)

    def eval_set(self, part: str) -> Dataset:
        """Per-sample path: the dataset of ``part`` as evaluation sees it; for "train", the
        training images without their augmentation."""
        return self.serving.eval_set(part)

    def samples(self, part: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images (normalised) and labels of ``part`` ("val" or "test") for the W&B panels:
        ``panel_indices``, a sample seeded by the run's seed and round-robin over the classes (a
        split of an image folder is class-sorted, its first images one class). The same on both
        data paths, and across epochs and runs of the same split, so panels compare like with like."""
        return self.serving.samples(part, panel_indices(self.labels_of(part), n, self.seed))

    def whitening_sample(self, n: int = 5000) -> torch.Tensor:
        """Normalised training images for data-dependent initialisation (patch whitening)."""
        return self.serving.whitening_sample(n)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Back to [0, 1] pixels, for showing images."""
        mean = torch.tensor(self.mean, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(-1, 1, 1)
        return (x * std + mean).clamp(0, 1)
