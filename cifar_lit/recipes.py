"""Recipes: named presets, and ``resolve``, which turns a config's "the recipe decides" (``None``)
fields into values for the hardware and the data a run has.

A ``TrainConfig`` holds what the user gave; ``None`` in a recipe field means "the recipe's
value", so an explicit value always wins and a UI form left empty still gets the recipe. The
values are filled in once per run, at its start, by ``resolve``, not inside validation: there a
value the recipe filled in could not be told apart from one the user gave, and the validation
of a flow parameter would probe the GPU and /proc/cpuinfo.

Two steps, because the data's size is known only after the split, and the split needs
``val_size`` (0 in the fast recipes):

1. ``resolve(config)``: the recipe for this hardware (``auto``: gpu-fast on a GPU, else
   cpu-fast) and every value that does not depend on the data.
2. ``resolve(config, data=DataSize(...))``: batch size, epochs and image size for the data.
   A recipe's batch size and epoch count were chosen for CIFAR's 50,000 images; on a few
   hundred photos they give a handful of optimizer steps and a model that predicts one class.
   ``fit_to_data`` keeps at least ``MIN_STEPS_PER_EPOCH`` steps per epoch (halving the batch,
   not below ``SMALLEST_BATCH``) and at least ``MIN_STEPS`` in total (more epochs, at most
   ``MAX_SCALED_EPOCHS``). A batch size or epoch count the user gave is never changed.

This module imports neither torch nor Lightning (the CLI resolves in milliseconds); torch is
asked about a GPU only where a GPU driver is loaded.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cifar_lit.config import TrainConfig
    from cifar_lit.data.split import Split

log = logging.getLogger(__name__)

TORCHVISION_NETS = "cifar_lit.models.torchvision_nets"  # the networks with published weights

_TUTORIAL_EXTRAS = {
    "label_smoothing": 0.0,
    "lr_schedule": "constant",
    "warmup": 0.0,
    "tta": 0,
    "data_path": "pil",
    "channels_last": False,
    "compile": False,
    "patience": 3,
    "pretrained": False,
    "head_epochs": 0,
}
# The fast recipes share the fast data path (tensors on the device, batched flip + translate),
# Nesterov SGD with label smoothing 0.2 and a triangular learning-rate schedule, and flip +
# translate test-time augmentation. EarlyStopping is off: the schedule decides the length.
_FAST = {
    "optimizer": "sgd",
    "label_smoothing": 0.2,
    "lr_schedule": "triangular",
    "warmup": 0.2,
    "tta": 2,
    "data_path": "tensor",
    "patience": 0,
    "pretrained": False,
    "head_epochs": 0,
    # No validation split: with no early stopping there is nothing to select, so the fast
    # recipes train on every image but the held-out test set, as airbench does (5,000 more
    # images were worth about 1 point in 4 epochs here). --val-size N brings val curves back.
    "val_size": 0,
    # lr is quoted per 1024 examples and scales linearly with the batch size, so --batch-size
    # alone keeps the optimisation comparable. With weight decay coupled to the lr (torch SGD),
    # the decay per example then stays constant too.
    "lr_batch": 1024,
}
# A recipe value: the machine decides, by timing the real network on it when a fit starts
# (cifar_lit.probe); until then the field stays unset.
PROBE = "probe"

RECIPES: dict[str, dict[str, Any]] = {
    # The tutorial this project grows from (W&B's "Image classification with PyTorch Lightning"):
    # its small CNN, batch 32, Adam at 2e-4, 2 epochs, EarlyStopping on val_loss, per-sample PIL
    # transforms.
    "seed": {
        "model": "seed_cnn",
        "batch_size": 32,
        "max_epochs": 2,
        "lr": 2e-4,
        "lr_batch": 0,
        "optimizer": "adam",
        "weight_decay": 0.0,
        "precision": "32-true",
        **_TUTORIAL_EXTRAS,
    },
    # The fastest CPU recipe measured here (bench/). Memory format and precision are timed on
    # the machine (cifar_lit.probe): bf16 only pays with AMX (without it, this project's 2-core
    # Xeon ran bf16 convolutions and matrix products slower than float32; see README,
    # Performance). Flip-only TTA: adding 1px shifts costs 3x the test passes for no gain
    # beyond noise on CPU-sized networks.
    "cpu-fast": {
        **_FAST,
        "tta": 1,
        # A wider second group (32/96/128) scored higher at 4 epochs but lost at equal time
        # (fewer epochs); see README, Performance.
        "model": "airnet_s",
        # Batch 256 beat 512 on this 2-core CPU in both speed and accuracy (4 epochs, held-out
        # JPEG test: 88 s and 82.3% against about 100 s and 80.3%, plain loop). lr 2.4 per 1024
        # examples (0.6 at batch 256) gave 83.4% against 82.8% (1.6) and 83.0% (3.2): a flat
        # optimum, within run-to-run noise.
        "batch_size": 256,
        "max_epochs": 4,
        # Muon on the conv filters (cifar_lit.optim): 84.7% held out at its lr 0.11 and momentum
        # 0.6, 83.7-84.8% across lr 0.07-0.16 and momentum 0.4-0.8, against 82.9% with Nesterov
        # SGD on every weight (plain loop, same 4 epochs).
        "optimizer": "muon",
        "lr": 2.4,
        "weight_decay": 5e-4,
        "precision": PROBE,
        "channels_last": PROBE,
        "compile": False,
    },
    # The same network trained about three times as long, for a better model when time allows.
    # Longer beat wider at equal time: airnet_s for 14 epochs reached 87.4%, airnet_m (64/128/256)
    # for 4.5 epochs 86.0% (40,000 JPEG images, plain loop).
    "cpu-long": {
        **_FAST,
        "model": "airnet_s",
        "batch_size": 256,
        "max_epochs": 13,
        "tta": 1,
        # Muon's gain fades with length: 87.2% at 13 epochs against SGD's 87.4% at 14 in about
        # the same time (its orthogonalisation adds about 7% per step here). SGD stays.
        "optimizer": "sgd",
        "lr": 2.4,
        "weight_decay": 5e-4,
        "precision": PROBE,
        "channels_last": PROBE,
        "compile": False,
    },
    # The airbench-sized network for one GPU: bf16 autocast, batch 1024, 10 epochs.
    "gpu-fast": {
        **_FAST,
        "model": "airnet94",
        "batch_size": 1024,
        "max_epochs": 10,
        # Not tuned on a GPU yet: between airbench's 1.5 per 1024 (which adds a 64x lr on
        # BatchNorm biases) and the CPU optimum of 2.4.
        "lr": 2.0,
        "weight_decay": 5e-4,
        "precision": "bf16-mixed",
        "channels_last": True,
        "compile": False,
    },
    # Fine-tuning ImageNet weights (torchvision's MobileNetV3-Small: the cheapest network with
    # published weights) on the 32 px images of this pipeline: the head alone for the first epoch,
    # then the whole network, AdamW with a triangular schedule. Not tuned yet: no published
    # weights can be downloaded where this was written (--weights-file loads a saved copy).
    "transfer": {
        **_TUTORIAL_EXTRAS,
        "model": "mobilenet_v3_small",
        "pretrained": True,
        "head_epochs": 1,
        "batch_size": 64,
        "max_epochs": 6,
        "lr": 1e-3,
        "lr_batch": 0,
        "optimizer": "adamw",
        "weight_decay": 1e-4,
        "label_smoothing": 0.1,
        "lr_schedule": "triangular",
        "warmup": 0.1,
        "tta": 1,
        "data_path": "tensor",
        "patience": 0,
        "precision": "32-true",
        # Image folders only (CIFAR is 32 px): MobileNetV3 and ResNet downsample 32x, so at 32 px
        # their last feature map is 1x1 and ImageNet filters see objects far smaller than they
        # were trained on (224 px). 128 px leaves 4x4 at 16x the pixels of 32; photos smaller
        # than that are not enlarged beyond their median side. Not measured: no published
        # weights could be downloaded where this was written.
        "image_size": 128,
    },
}

# Fields whose ``None`` means "take the recipe's value".
RECIPE_FIELDS = tuple(RECIPES["seed"])  # val_size too, though "seed" leaves it to the dataset default


def wants_gpu(accelerator: str) -> bool:
    """True when training will run on a CUDA GPU (``auto`` asks torch)."""
    if accelerator in ("gpu", "cuda"):
        return True
    if accelerator != "auto" or not gpu_driver_loaded():
        return False
    import torch  # lazy, and only where a GPU may exist: importing torch takes seconds

    return torch.cuda.is_available()


# What a loaded NVIDIA (or AMD ROCm) kernel driver exposes on Linux, containers included.
GPU_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd")


def gpu_driver_loaded() -> bool:
    """False when this Linux machine has no GPU driver, so torch cannot see a GPU either: the
    recipe is then decided without importing torch. Elsewhere, True (torch is asked)."""
    if not sys.platform.startswith("linux"):
        return True
    return any(Path(p).exists() for p in GPU_DRIVER_PATHS)


# Filled in only once the data's size is known (step 2 above).
DATA_FIELDS = ("batch_size", "max_epochs", "image_size")

# ``--time-budget auto``, the ``auto`` recipe's default when neither a budget nor an epoch count
# is given: the wall time of a fit per device class, and at most BUDGET_EPOCHS times the recipe's
# epochs (fitted to small data like any epoch count, so a few hundred photos still stop after
# their ~400 steps, in seconds). With no flags on a 2-core EPYC (AVX2) running cpu-fast at 743
# images/s, 3 minutes were 3.5 epochs and 83.7% held out on CIFAR-10 (README, Time budgets); a
# faster CPU trains more epochs in them, a slower one fewer, and every one ends on time. 4x
# cpu-fast's 4 epochs is as long as it was measured (87.4% at 16 epochs, 10 minutes there). The
# GPU's minute is not measured: gpu-fast's 10 epochs are expected to take seconds on a current
# GPU, so there its 40 epochs end it.
DEFAULT_BUDGET = {"cpu": 180.0, "gpu": 60.0}
BUDGET_EPOCHS = 4

# Short budgets on a CPU: a budget too short for the recipe's batch to take SHORT_BUDGET_STEPS
# steps trains smaller batches instead (halved, not below SHORT_BUDGET_BATCH), counting the
# steps at BUDGET_SPEED images/s, about the slowest cpu-fast ran at (a 2-core EPYC, AVX2, batch
# 256: 740-1,090 images/s across sessions). On the 40,000/10,000 JPEG CIFAR-10 split, that EPYC,
# batch 256/128/64 (README, Time budgets): 30 s 70.8/72.9/73.1% (97/198/364 steps); 60 s
# 77.2/77.9/78.0% (175/334/673 steps); 120 s 83.1 and 83.0/82.7 and 83.0% (417-483 steps at 256):
# below about 200 steps a smaller batch gained 0.6-2 points; above 400, nothing. Not on a GPU:
# its budgets are many epochs, and nothing there is measured yet.
BUDGET_SPEED = {"cpu": 700.0}
SHORT_BUDGET_STEPS = 200
SHORT_BUDGET_BATCH = 64

# Small-data rule (fit_to_data). On clothing5 (723 training photos, 5 classes, cpu-fast at
# 32 px), the recipe's 12 steps reached 49.0%. With the rule (batch 32, 418 steps): 92.3% for
# seeds 42 and 1; at 616 steps 91.8% and 93.3%. On dress vs t-shirt (300 photos): 414 steps
# 86.6% and 91.0%, 612 steps 89.6% and 91.0%. Past about 400 steps, more epochs bought less than
# the noise (one test image is 0.5 and 1.5 points). 400 also leaves every recipe on CIFAR-10 as it
# is (gpu-fast takes the fewest: 48 x 10 = 480). README, Your own images, has the table.
MIN_STEPS_PER_EPOCH = 16
MIN_STEPS = 400
SMALLEST_BATCH = 16
MAX_SCALED_EPOCHS = 200


@dataclass(frozen=True)
class Hardware:
    """What a recipe is chosen for: a CUDA GPU or not. (Precision and memory format are timed on
    the machine when a fit starts: ``cifar_lit.probe``.)"""

    gpu: bool

    @classmethod
    def detect(cls, accelerator: str = "auto") -> Hardware:
        return cls(gpu=wants_gpu(accelerator))


@dataclass(frozen=True)
class DataSize:
    """What the data-dependent values are chosen from: the training images of the split, and
    (image folders) the median shorter side of the photos."""

    n_train: int
    median_side: int | None = None

    @classmethod
    def of_split(cls, split: Split) -> DataSize:
        """From a split (``cifar_lit.data.split.Split``)."""
        return cls(len(split.train), split.median_side)


@dataclass
class Plan:
    """A resolved config, and what ``fit_to_data`` changed: field -> (recipe's value, chosen)."""

    config: TrainConfig
    adapted: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    n_train: int | None = None  # the training images it was fitted to, when the data was known
    auto_budget: str | None = None  # "CPU" or "GPU": the time budget is --time-budget auto's, chosen here
    short_budget: tuple[int, int] | None = None  # batch (before, after) halved for a short budget

    def budget_note(self) -> str | None:
        """One line for the log when the time budget, or the batch for it, was chosen here, else None.

        >>> from cifar_lit.config import TrainConfig
        >>> plan(plan(TrainConfig(), Hardware(gpu=False)).config, Hardware(gpu=False), DataSize(45_000)).budget_note()
        'time budget: 180 s (auto, on a CPU), at most 16 epochs; --time-budget or --max-epochs to choose'
        >>> plan(TrainConfig(time_budget=30), Hardware(gpu=False), DataSize(45_000)).budget_note()
        'a short time budget (30 s): batch_size 256 -> 64, for enough steps; --batch-size to choose'
        """
        c = self.config
        notes = []
        if self.auto_budget:
            notes.append(f"time budget: {c.time_budget:g} s (auto, on a {self.auto_budget}), "
                         f"at most {c.max_epochs} epochs; --time-budget or --max-epochs to choose")
        if self.short_budget:
            before, after = self.short_budget
            notes.append(f"a short time budget ({c.time_budget:g} s): batch_size {before} -> {after}, for enough steps; "
                         "--batch-size to choose")
        return "; ".join(notes) or None

    def describe(self) -> str | None:
        """One line for the log and the summary, or None when nothing was adapted.

        >>> from cifar_lit.config import TrainConfig
        >>> plan(TrainConfig(recipe="cpu-fast"), data=DataSize(723)).describe()
        'small dataset (723 training images): batch_size 256 -> 32, max_epochs 4 -> 19 (22 steps per epoch, 418 in all)'
        """
        if not self.adapted:
            return None
        c = self.config
        steps = max(1, self.n_train // c.batch_size)
        changes = ", ".join(f"{name} {old} -> {new}" for name, (old, new) in self.adapted.items())
        total = ("as many as the time budget allows" if not c.max_epochs else
                 f"at most {steps * c.max_epochs} in all" if c.time_budget else f"{steps * c.max_epochs} in all")
        return f"small dataset ({self.n_train} training images): {changes} ({steps} steps per epoch, {total})"


def fit_to_data(batch: int, epochs: int, n_train: int, batch_given: bool, epochs_given: bool) -> tuple[int, int]:
    """A recipe's batch size and epoch count for ``n_train`` training images (see the module
    docstring); a value the user gave is kept.

    >>> fit_to_data(256, 4, 45_000, False, False)   # CIFAR: as the recipe says
    (256, 4)
    >>> fit_to_data(256, 4, 723, False, False)      # a few hundred photos
    (32, 19)
    >>> fit_to_data(256, 4, 723, True, False)       # --batch-size 256: more epochs only
    (256, 200)
    """
    if not batch_given:
        while batch > SMALLEST_BATCH and n_train // batch < MIN_STEPS_PER_EPOCH:
            batch //= 2
    steps = max(1, n_train // batch)
    if not epochs_given and steps * epochs < MIN_STEPS:
        epochs = max(epochs, min(MAX_SCALED_EPOCHS, math.ceil(MIN_STEPS / steps)))
    return batch, epochs


def plan(config: TrainConfig, hardware: Hardware | None = None, data: DataSize | None = None) -> Plan:
    """``config`` with its recipe fields filled in (see the module docstring). Idempotent: a
    field already set, by the user or an earlier call, is kept."""
    values: dict[str, Any] = {}
    recipe = config.recipe
    if recipe == "auto":
        hardware = hardware or Hardware.detect(config.accelerator)
        recipe = values["recipe"] = "gpu-fast" if hardware.gpu else "cpu-fast"
        if config.time_budget is None and config.max_epochs is None and not config.deterministic:
            values["time_budget"] = "auto"  # its seconds and epoch cap once the data is known
    preset = RECIPES[recipe]
    for name, value in preset.items():
        if name in DATA_FIELDS or getattr(config, name) is not None:
            continue
        if value == PROBE:
            continue  # left to the machine when the fit starts (cifar_lit.probe)
        values[name] = value
    if config.val_size is None and "val_size" not in values:
        values["val_size"] = 0.1 if config.dataset == "imagefolder" else 5000
    _check(config, values)
    budget = values.get("time_budget", config.time_budget)
    device = None  # "CPU" or "GPU", where a time budget needs it
    if data is not None and budget is not None:
        hardware = hardware or Hardware.detect(config.accelerator)
        device = "GPU" if hardware.gpu else "CPU"
    adapted, short = _fit_to(config, preset, data, values, budget, device) if data is not None else ({}, None)
    resolved = config.model_copy(update=values) if values else config
    result = Plan(resolved, adapted, data.n_train if data else None, device if budget == "auto" else None, short)
    if adapted:
        log.info("%s", result.describe())
    return result


def _fit_to(config: TrainConfig, preset: dict[str, Any], data: DataSize, values: dict[str, Any],
            budget: float | str | None, device: str | None) -> tuple[dict[str, tuple], tuple[int, int] | None]:
    """Fills ``values`` with the data's batch size, epochs and image size, and the time
    ``budget``'s seconds (``auto``: for ``device``), epoch cap and batch size. Returns what
    ``fit_to_data`` changed from the recipe (field -> (recipe's value, chosen)), and the batch
    before and after ``short_budget_batch`` when it changed it."""
    adapted: dict[str, tuple[Any, Any]] = {}
    batch, epochs = config.batch_size, config.max_epochs
    if budget == "auto":
        values["time_budget"] = DEFAULT_BUDGET[device.lower()]
    recipe_epochs = preset["max_epochs"] * (BUDGET_EPOCHS if budget == "auto" else 1)
    chosen = fit_to_data(batch or preset["batch_size"], epochs or recipe_epochs, data.n_train,
                         batch_given=batch is not None, epochs_given=epochs is not None)
    for name, recipe_value, value, given in (("batch_size", preset["batch_size"], chosen[0], batch),
                                             ("max_epochs", recipe_epochs, chosen[1], epochs)):
        if name == "max_epochs" and budget not in (None, "auto"):
            continue  # a budget given in seconds decides the length alone (cifar_lit.budget)
        if given is None:
            values[name] = value
            if value != recipe_value:
                adapted[name] = (recipe_value, value)
    short = None
    if batch is None and budget is not None and device is not None:
        fitted = values["batch_size"]
        values["batch_size"] = short_budget_batch(fitted, values.get("time_budget", budget), device)
        short = (fitted, values["batch_size"]) if values["batch_size"] != fitted else None
    if config.image_size is None:
        values["image_size"] = _image_size(config.dataset, data.median_side, preset.get("image_size"))
    return adapted, short


def short_budget_batch(batch: int, seconds: float, device: str) -> int:
    """The batch size for a time budget of ``seconds``: halved (not below ``SHORT_BUDGET_BATCH``)
    while the budget would take fewer than ``SHORT_BUDGET_STEPS`` steps at ``BUDGET_SPEED`` (see
    there).

    >>> [short_budget_batch(256, s, "CPU") for s in (30, 45, 60, 120, 180)]
    [64, 128, 128, 256, 256]
    >>> short_budget_batch(256, 30, "GPU"), short_budget_batch(32, 30, "CPU")
    (256, 32)
    """
    speed = BUDGET_SPEED.get(device.lower())
    if speed is None:
        return batch
    while batch // 2 >= SHORT_BUDGET_BATCH and seconds * speed / batch < SHORT_BUDGET_STEPS:
        batch //= 2
    return batch


def recipe_summary(p: Plan) -> dict[str, Any]:
    """The summary's ``recipe`` block: the recipe, and what was fitted to the data.

    >>> from cifar_lit.config import TrainConfig
    >>> recipe_summary(plan(TrainConfig(recipe="seed"), data=DataSize(45_000)))
    {'name': 'seed', 'n_train': 45000, 'adapted': {}, 'note': None, 'budget_note': None}
    """
    return {"name": p.config.recipe, "n_train": p.n_train,
            "adapted": {name: {"recipe": old, "chosen": new} for name, (old, new) in p.adapted.items()},
            "note": p.describe(), "budget_note": p.budget_note()}


def resolve(config: TrainConfig, hardware: Hardware | None = None, data: DataSize | None = None) -> TrainConfig:
    """``plan(...).config``: the config with its recipe fields filled in."""
    return plan(config, hardware, data).config


def _image_size(dataset: str, median_side: int | None, recipe_size: int | None = None) -> int:
    """32 for CIFAR; for an image folder the recipe's size (at most the photos' median shorter
    side, at least 32), else ``default_image_size``.

    >>> _image_size("cifar10", None, 128), _image_size("imagefolder", 480, 128), _image_size("imagefolder", 90, 128)
    (32, 128, 90)
    """
    if dataset != "imagefolder" or median_side is None:
        return 32
    if recipe_size:
        return max(32, min(recipe_size, median_side))
    from cifar_lit.data.imagefolder import default_image_size  # PIL and numpy: only for image folders

    return default_image_size(median_side)


def _check(config: TrainConfig, values: dict[str, Any]) -> None:
    """What can be checked only with the recipe's values: one line naming the field."""
    def get(name: str) -> Any:
        return values[name] if name in values else getattr(config, name)

    if config.dataset != "imagefolder" and config.image_size not in (None, 32):
        raise ValueError(f"image_size: {config.dataset} images are 32x32; use image_size 32 (or leave it unset), "
                         f"not {config.image_size}")
    if get("patience") and get("val_size") == 0:
        raise ValueError("patience: EarlyStopping watches val_loss, so it needs --val-size above 0 (or --patience 0)")
    from cifar_lit.models import CATALOGUE

    if get("pretrained") and CATALOGUE.get(get("model")) != TORCHVISION_NETS:
        published = ", ".join(n for n, m in CATALOGUE.items() if m == TORCHVISION_NETS)
        raise ValueError(f"pretrained: published weights exist for {published}; not for {get('model')}")
