"""The fast data path: the dataset decoded once into a uint8 tensor cache, kept in memory (on
the GPU when training there), normalised and augmented in whole batches on that device.

No PIL and no per-sample Python in the training loop: a batch is one index gather, one
normalisation, one flip and one translate, each a handful of tensor ops.

Image folders are decoded at the run's image size (``imagefolder.square``: shorter side resized,
centre cropped), and the cache file is named by the data's fingerprint and that size, so caches
of different sizes never mix. A cache that would not fit ``cache_budget`` is not built: the data
module streams from disk instead (``fits_in_cache``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch

from cifar_lit.data.common import SIZE, DataError
from cifar_lit.data.formats import get_format
from cifar_lit.data.prepare import cache_dir
from cifar_lit.data.split import Split
from cifar_lit.files.atomic import save_atomic

log = logging.getLogger(__name__)


def tensor_cache_path(data_dir: Path, content_fingerprint: str, size: int = SIZE) -> Path:
    """The cache of the data with this fingerprint decoded at ``size`` x ``size``. Caches made
    before image sizes existed (``tensors-<fingerprint>.pt``, 32x32 squashed) have no size in
    their name, so they are never read as one of these."""
    return cache_dir(data_dir) / f"tensors-{content_fingerprint[:16]}-{size}px.pt"


# ---- how much memory a cache may take -----------------------------------------------------------

GB = 10**9
CACHE_SHARE = 4  # by default a cache may take 1/CACHE_SHARE of this machine's (or container's) memory


def memory_bytes() -> int | None:
    """This machine's physical memory, or the container's limit when that is lower (cgroup v2
    ``memory.max``, v1 ``memory.limit_in_bytes``); None where neither can be read."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        total = None
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = int(Path(limit).read_text().split()[0])  # "max" (no limit) is not an int
        except (OSError, ValueError, IndexError):
            continue
        total = value if total is None else min(total, value)
    return total


def cache_budget(cache_max_gb: float | None) -> int:
    """The largest tensor cache, in bytes, a run may hold in memory: ``cache_max_gb`` GB (10^9
    bytes) when given, else a quarter of ``memory_bytes()`` (4 GB where that is unknown). A
    quarter: the cache is built in memory in one piece, then memory-mapped and, on a GPU, copied
    to the device, beside the DataLoader workers, the model and whatever else shares the machine.

    >>> cache_budget(0.5)
    500000000
    """
    if cache_max_gb is not None:
        return int(cache_max_gb * GB)
    total = memory_bytes()
    return total // CACHE_SHARE if total else 4 * GB


def cache_bytes(images: int, size: int) -> int:
    """The bytes of a uint8 cache of ``images`` RGB images of ``size`` x ``size``.

    >>> cache_bytes(50_000, 32) / 1e6, cache_bytes(1000, 96) / 1e6
    (153.6, 27.648)
    """
    return images * 3 * size * size


def fits_in_cache(split: Split, size: int, cache_max_gb: float | None) -> tuple[bool, str]:
    """Whether the tensor cache of ``split`` at ``size`` fits ``cache_budget(cache_max_gb)``,
    estimated before decoding anything (the format says how many images it holds), and the
    sizes in words for a log line."""
    images = get_format(split.dataset).cache_images(split)
    need, budget = cache_bytes(images, size), cache_budget(cache_max_gb)
    limit = (f"cache_max_gb {cache_max_gb:g}" if cache_max_gb is not None
             else f"{budget / GB:.1f} GB, a quarter of this machine's memory")
    return need <= budget, f"{images} images at {size}x{size} take {need / GB:.3g} GB, over {limit}"


def translate_pad(size: int) -> int:
    """The training translate of the tensor path, in pixels each way: 1/16 of the side, so the
    same share of the image at any size (2 px at 32, the CIFAR setting measured best here; 4 at
    64, 6 at 96). Reflect padding, so every pixel still comes from the image.

    >>> [translate_pad(s) for s in (8, 32, 48, 64, 96, 224)]
    [1, 2, 3, 4, 6, 14]
    """
    return max(1, round(size / 16))


# ---- the cache ----------------------------------------------------------------------------------


def _cached(path: Path, split: Split, size: int = SIZE) -> dict[str, torch.Tensor] | None:
    """The tensor cache at ``path`` if it is whole and holds this split's data, else None.

    A cache is only derived data: a truncated or garbled file (a crash while another process
    copied it, a full disk) or one that holds other images is rebuilt, never a failed run."""
    try:
        # Memory-mapped: the images stay in the page cache (shared, reclaimable) instead of a
        # second private copy; batches gather from them directly.
        t = torch.load(path, weights_only=True, mmap=True)
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError, OSError...
        log.warning("tensor cache %s is unreadable (%s): rebuilding it", path, " ".join(str(e).split())[:200])
        return None
    problem = _mismatch(t, split, size)
    if problem:
        log.warning("tensor cache %s %s: rebuilding it", path, problem)
        return None
    return t


def _mismatch(t, split: Split, size: int = SIZE) -> str | None:
    keys = ("train", "train_labels", "test", "test_labels")
    if not isinstance(t, dict) or set(t) != set(keys) or not all(isinstance(t[k], torch.Tensor) for k in keys):
        return "is not a tensor cache"
    for name in ("train", "test"):
        images, labels = t[name], t[f"{name}_labels"]
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1:] != (3, size, size):
            return f"holds {name} images of shape {tuple(images.shape)} ({images.dtype})"
        if labels.dtype != torch.int64 or labels.shape != (len(images),):
            return f"holds {len(labels)} {name} labels for {len(images)} images"
    return get_format(split.dataset).cache_mismatch(t, split)


def load_tensors(split: Split, data_dir: Path, size: int = SIZE) -> dict[str, torch.Tensor]:
    """``{"train": uint8 N x 3 x size x size, "train_labels", "test", "test_labels"}`` for the
    split's data. "train" holds every pool image (train and val indices point into it); "test"
    holds the format's own test set (CIFAR's test batch), or is empty when the split's test
    indices point into "train" as well (image folders). Decoded once by the format (image
    folders: ``imagefolder.square`` at ``size``; CIFAR only at its own 32) and cached beside the
    data, keyed by the data's content fingerprint and ``size``; a missing, corrupt or mismatched
    cache file is rebuilt."""
    fmt = get_format(split.dataset)
    if fmt.fixed_side is not None and size != fmt.fixed_side:
        raise DataError(f"image_size: {split.dataset} images are {fmt.fixed_side}x{fmt.fixed_side}, not {size}x{size}")
    path = tensor_cache_path(data_dir, split.content_fingerprint, size)
    cached = _cached(path, split, size)
    if cached is not None:
        return cached
    tensors = fmt.decode_cache(split, Path(data_dir).resolve(), size)
    # Whole or not at all: a crash mid-write never leaves half a cache under the real name (the
    # rebuild above still covers caches damaged some other way).
    save_atomic(path, lambda tmp: torch.save(tensors, tmp))
    return tensors


def channel_stats(
    images: torch.Tensor, indices: torch.Tensor | None = None, chunk: int = 256
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (those at ``indices``, else all), in [0, 1]
    units, a chunk at a time: never a float copy of the whole set (4x its bytes).

    >>> x = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    >>> ref = x.float().div(255)
    >>> m, s = channel_stats(x, chunk=3)
    >>> torch.allclose(torch.tensor(m), ref.mean((0, 2, 3))) and torch.allclose(torch.tensor(s), ref.std((0, 2, 3)))
    True
    """
    idx = torch.arange(len(images)) if indices is None else indices
    return chunk_stats(images.index_select(0, idx[i : i + chunk]) for i in range(0, len(idx), chunk))


def chunk_stats(chunks) -> tuple[list[float], list[float]]:
    """``channel_stats`` of the uint8 images in ``chunks`` (N x 3 x H x W tensors, one after
    another): the same numbers, to the last bit, for the same chunks in the same order, however
    they were decoded (the streaming path feeds them from disk)."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    n = 0
    for x in chunks:
        x = x.to(torch.float64).div_(255)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / max(1, n)
    var = (squares - n * mean.square()) / max(1, n - 1)
    return mean.tolist(), var.clamp(min=0).sqrt().tolist()


def reflect_pad(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflect-pad N x C x H x W images of any dtype, as ``F.pad(..., mode="reflect")`` does, by
    gathering rows and columns: no float round trip, so a uint8 batch stays uint8 (and cheap).

    >>> import torch.nn.functional as F
    >>> x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    >>> torch.equal(reflect_pad(x, 2), F.pad(x, (2, 2, 2, 2), mode="reflect"))
    True
    """
    if pad == 0:
        return images

    def index(n: int) -> torch.Tensor:
        i = torch.arange(-pad, n + pad, device=images.device).abs()
        return torch.where(i >= n, 2 * (n - 1) - i, i)

    return images.index_select(-2, index(images.shape[-2])).index_select(-1, index(images.shape[-1]))


def crop_and_flip(padded: torch.Tensor, idx: torch.Tensor, generator: torch.Generator, pad: int) -> torch.Tensor:
    """Images ``idx`` of a reflect-padded stack, each shifted by up to ``pad`` pixels and
    mirrored with probability 1/2. Images sharing a row shift (then a column shift and flip)
    are copied together as plain slices, which is several times faster than gathering every
    pixel through per-image indices: 2 * pad + 1 + 2 * (2 * pad + 1) slice copies a batch."""
    b = len(idx)
    h, w = padded.shape[-2] - 2 * pad, padded.shape[-1] - 2 * pad
    flip = (torch.rand(b, generator=generator) < 0.5).to(padded.device)
    shifts = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(padded.device)
    picked = padded.index_select(0, idx)
    rows = picked.new_empty(b, picked.shape[1], h, picked.shape[3])
    for dy in range(2 * pad + 1):
        m = (shifts[0] == dy).nonzero().squeeze(1)
        rows.index_copy_(0, m, picked.index_select(0, m)[:, :, dy : dy + h])
    out = picked.new_empty(b, picked.shape[1], h, w)
    key = shifts[1] * 2 + flip
    for k in range(2 * (2 * pad + 1)):
        m = (key == k).nonzero().squeeze(1)
        part = rows.index_select(0, m)[..., k // 2 : k // 2 + w]
        out.index_copy_(0, m, part.flip(3) if k % 2 else part)
    return out


def flip_and_translate(x: torch.Tensor, generator: torch.Generator, pad: int) -> torch.Tensor:
    """Random horizontal flip and a translation of up to ``pad`` pixels (reflect padding, so
    every output pixel comes from the image itself), for a whole batch at once."""
    return crop_and_flip(reflect_pad(x, pad), torch.arange(len(x), device=x.device), generator, pad)


class DeviceBatches:
    """An iterable of ``(images, labels)`` batches from tensors kept on ``device``.

    Lightning accepts it wherever it accepts a DataLoader. Shuffling and augmentation draw from
    a generator seeded with (seed, epoch), so a seed replays the same run; under DDP each rank
    takes its own slice of the same permutation.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: list[float],
        std: list[float],
        *,
        indices: torch.Tensor | None = None,
        train: bool = False,
        pad: int = 2,
        seed: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        epoch_of: Callable[[], int] | None = None,
    ) -> None:
        # indices: the images this loader serves, as positions in ``images`` (None: all). Train,
        # val and test share one pool and gather their batches from it: no per-part copies.
        self.images, self.labels = images, labels
        self.indices = torch.arange(len(images)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        self.batch_size, self.train, self.pad, self.seed = batch_size, train, pad, seed
        self.device, self.channels_last = torch.device(device), channels_last
        self.rank, self.world_size = rank, world_size
        # The trainer's epoch when given: a resumed fit then replays the same epochs' batches.
        self.epoch_of = epoch_of
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
        self.inv_std = 1 / (torch.tensor(std).view(1, 3, 1, 1) * 255)
        self.epoch = 0
        self._on_device = False

    def _move(self) -> None:
        if not self._on_device:
            self.images, self.labels = self.images.to(self.device), self.labels.to(self.device)
            self.indices = self.indices.to(self.device)
            self.mean, self.inv_std = self.mean.to(self.device), self.inv_std.to(self.device)
            self._on_device = True

    def __len__(self) -> int:
        n = math.ceil(len(self.indices) / self.world_size)
        # Training drops the last partial batch: a tiny final batch adds noise to BatchNorm.
        return max(1, n // self.batch_size) if self.train else math.ceil(n / self.batch_size)

    def __iter__(self):
        self._move()
        epoch = self.epoch_of() if self.epoch_of else self.epoch
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        self.epoch += 1
        n = len(self.indices)
        order = torch.randperm(n, generator=generator) if self.train else torch.arange(n)
        order = self.indices[order[self.rank :: self.world_size].to(self.device)]
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.images.index_select(0, idx)
            if self.train:
                # Augment the uint8 pixels, then convert: a quarter of the bytes to move. The batch
                # is padded on its own, not the whole set up front (that was 1.3x its memory).
                x = crop_and_flip(reflect_pad(x, self.pad), torch.arange(len(x), device=x.device), generator, self.pad)
            x = x.float().sub_(self.mean).mul_(self.inv_std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]


def split_views(split: Split, data_dir: Path,
                size: int = SIZE) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """``part -> (images, labels, indices)`` for "train", "val" and "test": the shared uint8
    pool of the cache at ``size`` and the positions of the part in it (None: all of ``images``)."""
    t = load_tensors(split, data_dir, size)
    views = {}
    for part in ("train", "val", "test"):
        if part == "test" and split.test is None:  # the format's own test set (CIFAR's test batch)
            views[part] = (t["test"], t["test_labels"], None)
        else:
            views[part] = (t["train"], t["train_labels"], torch.as_tensor(getattr(split, part), dtype=torch.long))
    return views


def split_parts(split: Split, data_dir: Path, parts=("train", "val", "test"),
                size: int = SIZE) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """uint8 images (N x 3 x size x size) and labels of parts ("train", "val", "test") of a split:
    exactly the pixels the test step sees on either data path (copies of just those images)."""
    views = split_views(split, data_dir, size)
    out = {}
    for part in parts:
        images, labels, idx = views[part]
        out[part] = (images.clone(), labels.clone()) if idx is None else (images[idx], labels[idx])
    return out
