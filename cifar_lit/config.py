"""TrainConfig: the one typed config.

The same object is the Prefect flow's parameters (validated, rendered as a form in the UI), the
CLI's flags (see ``cifar_lit.cli``), the W&B run config and the checkpoint's hyperparameters.

Recipes are named presets (``cifar_lit.recipes``). Fields a recipe controls default to ``None``
("the recipe decides"): this object holds what the user gave, and ``cifar_lit.recipes.resolve``
fills in the rest at the start of a run, for the machine and the data it finds. An explicit value
always wins over the recipe, and a UI form that leaves a field empty still gets the recipe's value.

This module imports neither torch nor Lightning, so the CLI can validate flags in milliseconds.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_serializer, field_validator, model_validator

from cifar_lit.models import family, known_models  # the names only: no torch
from cifar_lit.recipes.presets import BUDGET_EPOCHS, BY_BUDGET, DEFAULT_BUDGET, RECIPES, recipe_for
from cifar_lit.recipes.scaling import BASE
from cifar_lit.run.redact import public_url

CIFAR_TRAIN_SIZE = 50_000

# Fields that name or place things, or only change what is shown; the data's content is compared
# through its fingerprint, not its path or mirror URL.
NOT_EFFECTIVE = frozenset({
    "output_dir", "runs_dir", "registry_dir", "data_dir", "download_url", "num_workers", "prediction_samples",
    "cache_max_gb",
    "wandb_mode", "wandb_project", "wandb_entity", "promote_margin", "force_promote", "force", "resume", "node_timeout",
    "reprobe",
    "threads",  # speed: the same model up to the order of float sums (config.json still records it)
})

_UNITS = {"s": 1, "m": 60, "h": 3600}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smh])")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``90s``, ``3m``, ``1h30m``, ``2.5m``, or a plain number of seconds.

    >>> parse_duration("90s"), parse_duration("3m"), parse_duration("1h30m"), parse_duration("45")
    (90.0, 180.0, 5400.0, 45.0)
    """
    s = text.strip().lower()
    try:
        return float(s)
    except ValueError:
        parts = _DURATION.findall(s)
        if not parts or _DURATION.sub("", s).strip():
            raise ValueError(f"must be a duration like 90s, 3m or 1h30m, got {text!r}") from None
        return sum(float(n) * _UNITS[unit] for n, unit in parts)


# How --help groups the flags; every field is in exactly one group (a test checks).
FLAG_GROUPS: dict[str, tuple[str, ...]] = {
    "data": ("dataset", "data_dir", "download_url", "download_md5", "val_size", "test_size", "seed", "bad_images",
             "val_dir", "test_dir", "min_per_class", "image_size", "cache_max_gb"),
    "model": ("recipe", "model", "pretrained", "weights_file", "head_epochs", "tta"),
    "optimisation": ("batch_size", "max_epochs", "lr", "lr_batch", "optimizer", "muon_lr", "weight_decay", "patience",
                     "label_smoothing", "lr_schedule", "warmup", "time_budget", "max_time", "budget_plan"),
    "hardware": ("precision", "accelerator", "devices", "strategy", "num_nodes", "node_timeout", "num_workers",
                 "data_path", "channels_last", "threads", "compile", "deterministic", "reprobe"),
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
    dataset: str = Field("cifar10", description="dataset format from the format registry (cifar_lit.data.formats)")
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
    # "auto": the device class's default (cifar_lit.recipes.DEFAULT_BUDGET), filled in with the
    # data's size; the auto recipe's default when neither this nor max_epochs is given.
    time_budget: Annotated[float, Field(gt=0)] | Literal["auto"] | None = Field(
        None,
        description="fit within this wall time, e.g. 90s, 3m or 1h30m, ending the learning-rate schedule on time "
        "(the steps are planned from the measured speed); with --max-epochs, at most that many epochs; "
        f"auto: {DEFAULT_BUDGET['cpu']:g} s on a CPU, {DEFAULT_BUDGET['gpu']:g} s on a GPU, at most "
        f"{BUDGET_EPOCHS}x the recipe's epochs (the auto recipe's default)",
    )
    max_time: str | None = Field(None, description="stop fitting after DD:HH:MM:SS (Lightning's max_time)")
    # What a budgeted run planned, written to its config.json: a replay follows it step for step
    # instead of timing the machine again (cifar_lit.training.budget.ReplayedBudget).
    budget_plan: list[tuple[int, int]] | None = Field(
        None, description="replay a time budget's plan instead of timing: STEP:TOTAL changes of the planned total "
        "steps, as a run's config.json records them")
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
    threads: int | None = Field(None, ge=1, description="CPU threads torch trains with (default: the probe's "
                                "choice where the recipe probes, else torch's own)")
    compile: bool | None = Field(None, description="torch.compile the model before fitting")
    deterministic: bool = Field(
        False, description="bit-identical results on this machine: fixed epochs (no time budget), float32, "
        "contiguous memory and Lightning's deterministic algorithms instead of what the probe measures fastest",
    )
    reprobe: bool = Field(False, description="time the machine again instead of using the probe's cached choice")
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
        0.0, ge=0, le=1, allow_inf_nan=False,
        description="promote only when challenger test_acc beats the champion's by at least this much "
                    "(and always by at least one test image: a tie never promotes)",
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

    @field_validator("budget_plan", mode="before")
    @classmethod
    def _plan_pairs(cls, value: Any) -> Any:
        """``STEP:TOTAL`` strings (the flag's form) as pairs; pairs (config.json's) as they are."""
        if isinstance(value, list | tuple):
            return [tuple(int(x) for x in v.split(":")) if isinstance(v, str) else v for v in value]
        return value

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        if isinstance(v, str):
            if v.strip().lower() == "auto":
                return "auto"
            try:
                return parse_duration(v)
            except ValueError as e:
                raise ValueError(f"{e} (or auto)") from None
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

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from cifar_lit.data.formats import known_formats  # the names only: no torch

        if v not in known_formats():
            raise ValueError(f"unknown dataset {v!r}; known: {', '.join(known_formats())}")
        return v

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str | None) -> str | None:
        if v is not None and v not in known_models():
            raise ValueError(f"unknown model {v!r}; known: {', '.join(known_models())}")
        return v

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        """Checks between fields that need neither the recipe's values (``cifar_lit.recipes``
        checks those when it fills them in) nor the disk: a flow parameter is validated where
        the run is submitted, which may not be where its data is."""
        if self.dataset != "imagefolder" and isinstance(self.val_size, int) and self.val_size >= CIFAR_TRAIN_SIZE:
            raise ValueError(f"val_size: {self.val_size} must be smaller than the {CIFAR_TRAIN_SIZE} training images")
        if self.resume and self.output_dir is None:
            raise ValueError("resume: name the run to continue with --output-dir")
        if self.budget_plan is not None and not self.time_budget:
            raise ValueError("budget_plan: replays a time budget's plan; give the --time-budget it was made for too")
        if self.budget_plan is not None and (not self.budget_plan or self.budget_plan[0][0] != 0
                                             or any(t < 1 or s < 0 for s, t in self.budget_plan)):
            raise ValueError("budget_plan: starts with 0:TOTAL, then STEP:TOTAL changes (steps from 0, totals from 1)")
        if self.deterministic and self.budget_plan is None and (
                self.time_budget not in (None, "auto") or self.max_time is not None):
            flag = "--time-budget" if self.time_budget not in (None, "auto") else "--max-time"
            raise ValueError(f"deterministic: {flag} ends the fit by the clock, which no two runs share; "
                             "give --max-epochs instead")
        if (self.download_url is None) != (self.download_md5 is None) and self.dataset != "imagefolder":
            raise ValueError("download_md5: a mirror needs both --download-url and --download-md5")
        if self.weights_file is not None and not self.weights_file.is_file():
            raise ValueError(f"weights_file: {self.weights_file} is not a file")
        return self

    # ---- derived values ------------------------------------------------------------------
    def run_name(self, when: datetime | None = None) -> str:
        """A readable, unique run name, e.g. ``cifar10-seed_cnn-20261127-163000-3f2a9c41``: the
        random suffix keeps two runs started in the same second out of each other's output dir
        (32 bits: with 16, twenty names in one second collided about once in 350 test runs).
        (No epoch count: on a small dataset it is chosen after the split, see ``cifar_lit.recipes``.)"""
        stamp = (when or datetime.now()).strftime("%Y%m%d-%H%M%S")
        return f"{self.dataset_name()}-{family(self.network())}-{stamp}-{secrets.token_hex(4)}"

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
        """The model's name in the registry and in W&B: ``<dataset name>-<network family>``
        (``cifar_lit.models.family``: every width of a network meets the others at the gate).

        >>> TrainConfig(recipe="seed").model_name()
        'cifar10-seed_cnn'
        """
        # W&B artifact names allow letters, digits, '-', '_' and '.'.
        return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{self.dataset_name()}-{family(self.network())}")

    def network(self) -> str:
        """``model``, or the network its recipe would choose on this machine (where the time budget
        sizes it, the smallest of the family until the fit chooses: ``cifar_lit.recipes.scaling``)."""
        model = self.model or RECIPES[recipe_for(self.recipe, self.accelerator)]["model"]
        return BASE if model == BY_BUDGET else model

    @property
    def is_resolved(self) -> bool:
        """True once ``cifar_lit.recipes.resolve`` has filled in every recipe field, the data's included."""
        from cifar_lit.recipes.presets import AT_FIT, DATA_FIELDS, RECIPE_FIELDS

        # max_epochs stays open under a budget (it plans the steps), and AT_FIT fields until the fit.
        preset = RECIPES.get(self.recipe, {})
        fields = [n for n in (*RECIPE_FIELDS, *DATA_FIELDS)
                  if not (n == "max_epochs" and self.time_budget) and preset.get(n) not in AT_FIT]
        return self.recipe != "auto" and self.time_budget != "auto" and self.val_size is not None and all(
            getattr(self, name) is not None for name in fields)

    def effective(self, by_content: bool = True) -> dict[str, Any]:
        """What decides the trained model: the config without names, places and switches that
        do not change the result (so a re-run into a new output dir is still "the same").
        A weights file counts by its content, not its path: the same weights copied elsewhere are
        the same start, new weights saved over the old file are not (``by_content=False``: the
        path, as a checkpoint's saved config records it)."""
        kept = {k: v for k, v in self.as_dict().items() if k not in NOT_EFFECTIVE}
        if by_content and self.weights_file is not None and self.weights_file.is_file():
            kept["weights_file"] = file_digest(self.weights_file)
        return kept

    @property
    def step_lr(self) -> float:
        """The learning rate the optimizer uses: ``lr``, scaled to the batch when ``lr_batch`` is set
        (of a resolved config: ``cifar_lit.recipes.resolve``).

        >>> TrainConfig(recipe="cpu-fast", batch_size=256, lr=2.4, lr_batch=1024).step_lr
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


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes, computed once per (path, size, modification time)."""
    st = Path(path).stat()
    return _digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


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
