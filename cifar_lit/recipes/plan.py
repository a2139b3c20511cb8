"""A recipe applied to a config, the data and the machine: ``plan`` and ``resolve`` fill in what
the user left to the recipe (the table and its rules: ``cifar_lit.recipes.presets``)."""


from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cifar_lit.config import TrainConfig
    from cifar_lit.data.split import Split


from cifar_lit.recipes.presets import (
    AT_FIT,
    BUDGET_EPOCHS,
    BUDGET_SPEED,
    DATA_FIELDS,
    DEFAULT_BUDGET,
    MAX_SCALED_EPOCHS,
    MIN_STEPS,
    MIN_STEPS_PER_EPOCH,
    RECIPES,
    SHORT_BUDGET_BATCH,
    SHORT_BUDGET_STEPS,
    SMALLEST_BATCH,
    TORCHVISION_NETS,
    Hardware,
)

log = logging.getLogger(__name__)


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


def default_val_size(dataset: str) -> int | float:
    """Validation images when a recipe leaves them to the dataset: a tenth of a folder's photos,
    5000 of CIFAR's training images."""
    return 0.1 if dataset == "imagefolder" else 5000


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
        if value in AT_FIT:
            continue  # left to the machine when the fit starts (cifar_lit.machine.probe, .scaling)
        values[name] = value
    if config.val_size is None and "val_size" not in values:
        values["val_size"] = default_val_size(config.dataset)
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
            continue  # a budget given in seconds decides the length alone (cifar_lit.training.budget)
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
    from cifar_lit.data.images import default_image_size  # PIL and numpy: only for image folders

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
