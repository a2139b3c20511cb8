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
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
# (cifar_lit.machine.probe); until then the field stays unset.
PROBE = "probe"
# A recipe's model: the time budget chooses the network's size from what the probe measured for
# each (cifar_lit.recipes.scaling); until the fit starts the field stays unset.
BY_BUDGET = "by-budget"
# Values a recipe leaves to the fit's start: plan() never fills them in.
AT_FIT = (PROBE, BY_BUDGET)

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
    # the machine (cifar_lit.machine.probe): bf16 only pays with AMX (without it, this project's 2-core
    # Xeon ran bf16 convolutions and matrix products slower than float32; see bench/README.md,
    # Performance). Flip + 1px-shift TTA (3x the test passes of flips alone): +0.36 and +0.39
    # points held out on airnet_s checkpoints of 2.7 and 10 epochs (the 2-core EPYC), more than
    # the noise of two checkpoints; an earlier, single 4-epoch comparison had seen none.
    "cpu-fast": {
        **_FAST,
        "tta": 2,
        # Sized to the time budget (cifar_lit.recipes.scaling): airnet_s for short budgets and
        # slow CPUs, wider AirNets where the machine gets through enough of their epochs. Without
        # a budget, airnet_s (the epochs below were tuned for it).
        "model": BY_BUDGET,
        # Batch 256 beat 512 on this 2-core CPU in both speed and accuracy (4 epochs, held-out
        # JPEG test: 88 s and 82.3% against about 100 s and 80.3%, plain loop). lr 2.4 per 1024
        # examples (0.6 at batch 256) gave 83.4% against 82.8% (1.6) and 83.0% (3.2): a flat
        # optimum, within run-to-run noise.
        "batch_size": 256,
        "max_epochs": 4,
        # Muon on the conv filters (cifar_lit.training.optim): 84.7% held out at its lr 0.11 and momentum
        # 0.6, 83.7-84.8% across lr 0.07-0.16 and momentum 0.4-0.8, against 82.9% with Nesterov
        # SGD on every weight (plain loop, same 4 epochs).
        "optimizer": "muon",
        "lr": 2.4,
        "weight_decay": 5e-4,
        "precision": PROBE,
        "channels_last": PROBE,
        "threads": PROBE,
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
        "threads": PROBE,
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
# images/s, 3 minutes were 3.5 epochs and 83.7% held out on CIFAR-10 (docs/recipes-and-budgets.md, Time budgets); a
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
# batch 256/128/64 (docs/recipes-and-budgets.md, Time budgets): 30 s 70.8/72.9/73.1% (97/198/364 steps); 60 s
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
# is (gpu-fast takes the fewest: 48 x 10 = 480). docs/own-images.md has the table.
MIN_STEPS_PER_EPOCH = 16
MIN_STEPS = 400
SMALLEST_BATCH = 16
MAX_SCALED_EPOCHS = 200


@dataclass(frozen=True)
class Hardware:
    """What a recipe is chosen for: a CUDA GPU or not. (Precision and memory format are timed on
    the machine when a fit starts: ``cifar_lit.machine.probe``.)"""

    gpu: bool

    @classmethod
    def detect(cls, accelerator: str = "auto") -> Hardware:
        return cls(gpu=wants_gpu(accelerator))




def recipe_for(recipe: str, accelerator: str = "auto") -> str:
    """The recipe ``auto`` stands for on this machine (a CUDA GPU: gpu-fast; else cpu-fast)."""
    if recipe != "auto":
        return recipe
    return "gpu-fast" if Hardware.detect(accelerator).gpu else "cpu-fast"
