"""TrainConfig: the one typed config.

The same object is the Prefect flow's parameters (validated, rendered as a form in the UI), the
CLI's flags (see ``cifar_lit.cli``), the W&B run config and the checkpoint's hyperparameters.

Recipes are named presets. Fields a recipe controls default to ``None`` ("the recipe decides") and
are filled in by validation, so an explicit value always wins over the recipe and a UI form that
leaves a field empty still gets the recipe's value.

This module imports neither torch nor Lightning, so the CLI can validate flags in milliseconds.
"""

from __future__ import annotations

import re
import secrets
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_serializer, field_validator, model_validator

from cifar_lit.models import CATALOGUE
from cifar_lit.redact import public_url

TORCHVISION_NETS = "cifar_lit.models.torchvision_nets"  # the networks with published weights

CIFAR_TRAIN_SIZE = 50_000

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
# A recipe value, not a Lightning precision: "bf16-mixed" on a CPU with AMX tiles, else "32-true".
BF16_WITH_AMX = "bf16-mixed if AMX else 32-true"

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
    # The fastest CPU recipe measured here (bench/). channels_last; bf16 autocast only where
    # the CPU has AMX: without it (this project's 2-core Xeon) bf16 convolutions and matrix
    # products ran slower than float32 (see README, Performance). Flip-only TTA: adding 1px
    # shifts costs 3x the test passes for no gain beyond noise on CPU-sized networks.
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
        "precision": BF16_WITH_AMX,
        "channels_last": True,
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
        "precision": BF16_WITH_AMX,
        "channels_last": True,
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
    },
}
RECIPE_NAMES = ("auto", *RECIPES)

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

def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU reports AMX bf16 tiles (Linux; False where that cannot be read)."""
    try:
        return "amx_bf16" in cpuinfo.read_text().split()
    except OSError:
        return False


# Fields that name or place things, or only change what is shown; the data's content is compared
# through its fingerprint, not its path or mirror URL.
NOT_EFFECTIVE = frozenset({
    "output_dir", "runs_dir", "registry_dir", "data_dir", "download_url", "num_workers", "prediction_samples",
    "cache_max_gb",
    "wandb_mode", "wandb_project", "wandb_entity", "promote_margin", "force_promote", "force", "resume", "node_timeout",
})

# How --help groups the flags; every field is in exactly one group (a test checks).
FLAG_GROUPS: dict[str, tuple[str, ...]] = {
    "data": ("dataset", "data_dir", "download_url", "download_md5", "val_size", "test_size", "seed", "bad_images",
             "val_dir", "test_dir", "min_per_class", "image_size", "cache_max_gb"),
    "model": ("recipe", "model", "pretrained", "weights_file", "head_epochs", "tta"),
    "optimisation": ("batch_size", "max_epochs", "lr", "lr_batch", "optimizer", "muon_lr", "weight_decay", "patience",
                     "label_smoothing", "lr_schedule", "warmup", "max_time"),
    "hardware": ("precision", "accelerator", "devices", "strategy", "num_nodes", "node_timeout", "num_workers",
                 "data_path", "channels_last", "compile"),
    "tracking": ("prediction_samples", "wandb_mode", "wandb_project", "wandb_entity"),
    "output and registry": ("output_dir", "runs_dir", "registry_dir", "promote_margin", "force_promote", "force",
                            "resume"),
}
EXAMPLES = """examples:
  python flows/train_flow.py                               # CIFAR-10 with the recipe for this machine
  python flows/train_flow.py --dataset imagefolder --data-dir photos/ --max-epochs 20
  python flows/train_flow.py --recipe seed --wandb-mode offline --output-dir runs/tutorial"""

Precision = Literal["32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true", "64-true"]


class TrainConfig(BaseModel):
    """Every knob of a training run. Field descriptions become the CLI's ``--help``."""

    # No inf or NaN in any float field: --lr inf would train NaNs and export them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)

    recipe: Literal["auto", "seed", "cpu-fast", "cpu-long", "gpu-fast", "transfer"] = Field(
        "auto", description="preset filling every field left unset; auto: gpu-fast on a GPU, else cpu-fast"
    )
    # data
    dataset: Literal["cifar10", "cifar100", "imagefolder"] = Field("cifar10", description="which dataset")
    data_dir: Path = Field(Path("data"), description="CIFAR download root, or the image folder (DIR/train/<class>/*)")
    download_url: str | None = Field(
        None, description="mirror of the CIFAR archive, http(s):// or file:// (default: the official URL)"
    )
    download_md5: str | None = Field(None, description="expected md5 of the archive at --download-url")
    val_size: int | float | None = Field(
        None,
        description="validation images: a count or a fraction of train; 0: none",
    )
    test_size: int | float = Field(0.1, description="image folders without test/: held-out test count or fraction")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="seed for the split, initialisation and shuffling")
    bad_images: Literal["skip", "error"] = Field(
        "skip", description="image folders: skip unreadable files with a warning, or stop with an error"
    )
    val_dir: Path | None = Field(
        None, description="image folders: the validation folder (default: DIR/val, DIR/valid or DIR/validation if present)"
    )
    test_dir: Path | None = Field(None, description="image folders: the test folder (default: DIR/test if present)")
    min_per_class: int | None = Field(
        None, ge=1,
        description="image folders: leave out, with a warning, classes with fewer images "
        "(default: a class too small for every split is an error)",
    )
    image_size: int | None = Field(
        None, ge=8, le=1024,
        description="side in pixels of the square images the network sees (default: 32 for CIFAR; image folders: "
        "from the photos' size)",
    )
    cache_max_gb: float | None = Field(
        None, gt=0,
        description="largest decoded-image cache held in memory; bigger datasets stream from disk "
        "(default: a share of this machine's memory)",
    )
    # model and optimisation (None: the recipe's value)
    model: str | None = Field(None, description="network from the model registry")
    pretrained: bool | None = Field(
        None, description="start from the network's published ImageNet weights (torchvision's weights API)"
    )
    weights_file: Path | None = Field(
        None, description="start from these weights (a state dict saved with torch.save), e.g. offline; implies pretrained"
    )
    head_epochs: int | None = Field(
        None, ge=0, description="epochs that train only the network's head before the whole network trains"
    )
    batch_size: int | None = Field(None, ge=1, description="images per step")
    max_epochs: int | None = Field(None, ge=1, description="upper bound on epochs (EarlyStopping may stop sooner)")
    lr: float | None = Field(None, gt=0, description="learning rate, per lr_batch examples when lr_batch is set")
    lr_batch: int | None = Field(
        None, ge=0, description="the batch size lr is quoted for: lr scales by batch_size / lr_batch; 0: lr as given"
    )
    optimizer: Literal["adam", "adamw", "sgd", "muon"] | None = Field(
        None, description="optimizer; muon: Muon for conv filters, Nesterov SGD for the rest"
    )
    muon_lr: float = Field(0.11, gt=0, description="muon: lr of the conv filters' orthogonalised steps (per step)")
    weight_decay: float | None = Field(None, ge=0, description="weight decay")
    patience: int | None = Field(None, ge=0, description="EarlyStopping patience in epochs on val_loss; 0: off")
    label_smoothing: float | None = Field(None, ge=0, lt=1, description="label smoothing of the loss")
    lr_schedule: Literal["constant", "triangular"] | None = Field(
        None, description="triangular: linear warm-up then linear decay to 0, per step"
    )
    warmup: float | None = Field(None, ge=0, lt=1, description="fraction of steps spent warming up")
    tta: int | None = Field(None, ge=0, le=2, description="test-time augmentation: 0 none, 1 flip, 2 flip + 1px shifts")
    max_time: str | None = Field(None, description="stop fitting after DD:HH:MM:SS (Lightning's max_time)")
    # hardware
    precision: Precision | None = Field(None, description="Lightning precision, e.g. 32-true or bf16-mixed")
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = Field("auto", description="Lightning accelerator")
    devices: int | str = Field("auto", description="Lightning devices: a count, 'auto' or a list like '0,1'")
    strategy: Literal["auto", "ddp", "ddp_find_unused_parameters_true", "fsdp"] = Field(
        "auto", description="Lightning strategy; ddp runs fit as one process per device"
    )
    num_nodes: int = Field(1, ge=1, description="machines taking part in a distributed fit (Lightning num_nodes)")
    node_timeout: int = Field(
        600, ge=5, description="seconds a distributed fit waits for every process to join before it fails"
    )
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes (PIL data path)")
    data_path: Literal["pil", "tensor"] | None = Field(
        None, description="pil: the tutorial's per-sample DataLoader; tensor: decoded once, batched on the device"
    )
    channels_last: bool | None = Field(None, description="NHWC memory format for the network and batches")
    compile: bool | None = Field(None, description="torch.compile the model before fitting")
    # tracking and outputs
    prediction_samples: int = Field(16, ge=0, description="validation images logged to W&B with predictions")
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="auto: online with an API key, else offline"
    )
    wandb_project: str = Field("cifar-lit", min_length=1, description="W&B project")
    wandb_entity: str | None = Field(None, description="W&B entity (team or user)")
    output_dir: Path | None = Field(None, description="where the run writes everything (default RUNS_DIR/<run name>)")
    runs_dir: Path = Field(Path("runs"), description="parent of the default output dirs (on the GPU pools, a mounted volume)")
    # model registry and the champion/challenger gate
    registry_dir: Path | None = Field(None, description="the model registry (default RUNS_DIR/registry)")
    promote_margin: float = Field(
        0.0, ge=-1, le=1, allow_inf_nan=False,
        description="promote when challenger test_acc >= champion test_acc + this margin",
    )
    force_promote: bool = Field(False, description="promote even when the class lists differ from the champion's")
    force: bool = Field(False, description="train even when production was made from the same data, code and config")
    resume: bool = Field(False, description="continue the killed run in --output-dir from its last.ckpt")

    @field_validator("val_size", "test_size")
    @classmethod
    def _count_or_fraction(cls, v: int | float | None, info: ValidationInfo) -> int | float | None:
        if v is None:
            return v
        least = 0 if info.field_name == "val_size" else 1  # no validation is fine; no test set is not
        if isinstance(v, float) and v.is_integer() and (v >= 1 or v == least):
            v = int(v)
        if isinstance(v, float) and not 0 < v < 1:
            raise ValueError(f"a fraction must be between 0 and 1 exclusive, got {v}")
        if isinstance(v, int) and v < least:
            raise ValueError(f"a count must be at least {least}, got {v}")
        return v

    @field_validator("download_md5")
    @classmethod
    def _md5(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-fA-F]{32}", v):
            raise ValueError("must be 32 hexadecimal characters")
        return v.lower() if v else v

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: int | str) -> int | str:
        if isinstance(v, str) and v != "auto":
            if re.fullmatch(r"-?\d+", v.strip()):
                v = int(v)
            elif not re.fullmatch(r"\d+(,\d+)*,?", v.replace(" ", "")):
                raise ValueError(f"must be a count, 'auto' or a list like '0,1', got {v!r}")
        if isinstance(v, int) and (v == 0 or v < -1):
            raise ValueError(f"must be -1 (all) or a positive count, got {v}")
        return v

    @field_validator("max_time")
    @classmethod
    def _max_time(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"\d{2}:\d{2}:\d{2}:\d{2}", v):
            raise ValueError(f"must look like DD:HH:MM:SS, got {v!r}")
        if v is not None and not any(int(part) for part in v.split(":")):
            raise ValueError("must be longer than 00:00:00:00")
        return v

    @field_serializer("download_url")
    def _without_credentials(self, v: str | None) -> str | None:
        # Every record of the config (summary.json, checkpoint hyperparameters, hparams.yaml, the
        # W&B config, the Prefect flow-run parameters) goes through this: a token in the mirror
        # URL stays in memory, where the download uses it, and is never written anywhere.
        return public_url(v) if v else v

    @field_validator("output_dir")
    @classmethod
    def _not_cwd(cls, v: Path | None) -> Path | None:
        if v is not None and str(v).strip() in ("", "."):
            raise ValueError("must name a folder for this run, not the current directory")
        return v

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from cifar_lit.models import known_models  # the names only: no torch

        if v not in known_models():
            raise ValueError(f"unknown model {v!r}; known: {', '.join(known_models())}")
        return v

    @model_validator(mode="after")
    def _fill_and_check(self) -> TrainConfig:
        if self.recipe == "auto":
            object.__setattr__(self, "recipe", "gpu-fast" if wants_gpu(self.accelerator) else "cpu-fast")
        # object.__setattr__: filling defaults must not re-trigger validate_assignment recursively.
        for name, value in RECIPES[self.recipe].items():
            if getattr(self, name) is None:
                if value == BF16_WITH_AMX:
                    value = "bf16-mixed" if cpu_has_amx() else "32-true"
                object.__setattr__(self, name, value)
        if self.val_size is None:
            object.__setattr__(self, "val_size", 0.1 if self.dataset == "imagefolder" else 5000)
        if self.patience and self.val_size == 0:
            raise ValueError("patience: EarlyStopping watches val_loss, so it needs --val-size above 0 (or --patience 0)")
        if self.dataset == "imagefolder":
            if not (self.data_dir / "train").is_dir():
                raise ValueError(f"data_dir: {self.data_dir} has no train/ folder (expected DIR/train/<class>/*)")
        elif isinstance(self.val_size, int) and self.val_size >= CIFAR_TRAIN_SIZE:
            raise ValueError(f"val_size: {self.val_size} must be smaller than the {CIFAR_TRAIN_SIZE} training images")
        if self.resume and self.output_dir is None:
            raise ValueError("resume: name the run to continue with --output-dir")
        if (self.download_url is None) != (self.download_md5 is None) and self.dataset != "imagefolder":
            raise ValueError("download_md5: a mirror needs both --download-url and --download-md5")
        return self

    @model_validator(mode="after")
    def _check_start_weights(self) -> TrainConfig:
        """After the recipe is filled in (the validator above): the starting weights exist."""
        if self.pretrained and CATALOGUE.get(self.model) != TORCHVISION_NETS:
            published = ", ".join(n for n, m in CATALOGUE.items() if m == TORCHVISION_NETS)
            raise ValueError(f"pretrained: published weights exist for {published}; not for {self.model}")
        if self.weights_file is not None and not self.weights_file.is_file():
            raise ValueError(f"weights_file: {self.weights_file} is not a file")
        return self

    # ---- derived values ------------------------------------------------------------------
    def run_name(self, when: datetime | None = None) -> str:
        """A readable, unique run name, e.g. ``cifar10-seed_cnn-e2-20261127-163000-3f2a``: the
        random suffix keeps two runs started in the same second out of each other's output dir."""
        stamp = (when or datetime.now()).strftime("%Y%m%d-%H%M%S")
        return f"{self.dataset_name()}-{self.model}-e{self.max_epochs}-{stamp}-{secrets.token_hex(2)}"

    def with_output_dir(self, run_name: str | None = None) -> TrainConfig:
        """This config with ``output_dir`` resolved (``runs/<run name>`` when unset)."""
        if self.output_dir is not None:
            return self
        return self.model_copy(update={"output_dir": self.runs_dir / (run_name or self.run_name())})

    @property
    def registry(self) -> Path:
        return self.registry_dir if self.registry_dir is not None else self.runs_dir / "registry"

    def dataset_name(self) -> str:
        """``cifar10``/``cifar100``, or an image folder's own name: what a model was trained on."""
        return self.data_dir.resolve().name if self.dataset == "imagefolder" else self.dataset

    def model_name(self) -> str:
        """The model's name in the registry and in W&B: ``<dataset name>-<network>``.

        >>> TrainConfig(recipe="seed").model_name()
        'cifar10-seed_cnn'
        """
        # W&B artifact names allow letters, digits, '-', '_' and '.'.
        return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{self.dataset_name()}-{self.model}")

    def effective(self) -> dict[str, Any]:
        """What decides the trained model: the config without names, places and switches that
        do not change the result (so a re-run into a new output dir is still "the same")."""
        return {k: v for k, v in self.as_dict().items() if k not in NOT_EFFECTIVE}

    @property
    def step_lr(self) -> float:
        """The learning rate the optimizer uses: ``lr``, scaled to the batch when ``lr_batch`` is set.

        >>> TrainConfig(recipe="cpu-fast", batch_size=256, lr=2.4).step_lr
        0.6
        """
        return self.lr * self.batch_size / self.lr_batch if self.lr_batch else self.lr

    @property
    def out(self) -> Path:
        if self.output_dir is None:
            raise ValueError("output_dir: not resolved; call config.with_output_dir() first")
        return self.output_dir

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe dict: the W&B run config and the checkpoint's hyperparameters."""
        return self.model_dump(mode="json")


class PredictConfig(BaseModel):
    """What to classify and with which model: the predict flow's parameters and its CLI."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    input: list[Path] = Field(..., min_length=1, description="image files and folders (searched recursively)")
    output: Path = Field(Path("predictions.csv"), description="the CSV to write")
    registry_dir: Path = Field(Path("runs/registry"), description="the model registry")
    name: str | None = Field(None, description="model name in the registry (default: its only model)")
    alias: Literal["production", "latest"] = Field("production", description="which registry version to use")
    version: str | None = Field(None, pattern=r"^v[1-9]\d*$", description="a registry version (vN) instead of the alias")
    model: Path | None = Field(None, description="a model file (model.pt or a checkpoint) instead of the registry")
    batch_size: int = Field(256, ge=1, description="images per forward pass")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to run the model")

    @model_validator(mode="after")
    def _one_source(self) -> PredictConfig:
        if self.model is not None and self.version is not None:
            raise ValueError("version: give a registry version or a --model file, not both")
        return self
