"""A sweep's search space: which ``TrainConfig`` fields a study varies, and over what.

A space is a small YAML or JSON mapping of field name to range, the same names as the flags:

    lr: {low: 0.3, high: 5.0, log: true}     # a float, log-uniform
    label_smoothing: {low: 0.0, high: 0.3}   # a float, uniform
    batch_size: [256, 512, 1024]             # a choice (categorical)
    image_size: {low: 24, high: 40, step: 8} # an int (both ends ints)

It is checked whole before any training: every name must be a field that changes the model,
and every end and choice must be a value the config accepts for that field, so a bad space is
one line naming the field. The split's fields (data, seed, validation and test sizes) are fixed
for a study: trials are compared on the same validation images, and the best one goes through
the gate on the same test split.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from cifar_lit.config import NOT_EFFECTIVE, TrainConfig
from cifar_lit.errors import UserError

if TYPE_CHECKING:
    import optuna

# What a trial may not vary: where the data comes from and how it is split (the trials and the
# gate compare on one split), and what only says how to run (see NOT_EFFECTIVE).
FIXED = frozenset({"dataset", "data_dir", "download_url", "download_md5", "val_size", "test_size", "seed",
                   "bad_images", "val_dir", "test_dir", "min_per_class", "budget_plan", "resume", "deterministic",
                   "accelerator", "devices", "strategy", "num_nodes"}) | NOT_EFFECTIVE


class SpaceError(UserError, ValueError):
    """A search space the sweep cannot use; the message names the field."""


@dataclass(frozen=True)
class Dimension:
    """One field's range: ``choices`` (categorical) or ``low``..``high`` (``log``, ``step``)."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def is_int(self) -> bool:
        return self.choices is None and all(isinstance(v, int) for v in (self.low, self.high)) and (
            self.step is None or isinstance(self.step, int))

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.is_int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.name} in {list(self.choices)}"
        return f"{self.name} in [{self.low:g}, {self.high:g}]" + (" (log)" if self.log else "") + (
            f" step {self.step:g}" if self.step else "")


@dataclass(frozen=True)
class Space:
    dimensions: tuple[Dimension, ...]

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's values for every field of the space (Optuna's sampler picks them)."""
        return {d.name: d.suggest(trial) for d in self.dimensions}

    def describe(self) -> str:
        return "; ".join(d.describe() for d in self.dimensions)


def read_space(path: Path) -> dict[str, Any]:
    """The mapping in a YAML (``.yaml``/``.yml``) or JSON file."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SpaceError(f"space: {path}: {e.strerror or e}") from None
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        import yaml  # a dependency of Prefect's

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SpaceError(f"space: {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    else:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise SpaceError(f"space: {path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not data:
        raise SpaceError(f"space: {path}: expected a mapping of config fields to ranges, e.g. lr: {{low: 0.1, high: 1}}")
    return data


def build_space(spec: dict[str, Any], base: TrainConfig) -> Space:
    """``spec`` checked against ``base``: each field exists, may vary, and accepts every end
    and choice of its range (``SpaceError`` names the first field that does not)."""
    dims = []
    for name, value in spec.items():
        if name not in TrainConfig.model_fields:
            raise SpaceError(f"space: {name}: not a config field (see --help for the names)")
        if name in FIXED:
            raise SpaceError(f"space: {name}: fixed for a study (the trials share one split and one way of "
                             "running); give it as a flag instead")
        dims.append(_dimension(name, value))
    for d in dims:
        for v in d.choices if d.choices is not None else (d.low, d.high):
            try:
                TrainConfig(**{**base.model_dump(), d.name: v})
            except ValidationError as e:
                message = str(e.errors()[0]["msg"]).removeprefix("Value error, ")
                raise SpaceError(f"space: {d.name}: {v!r}: {message}") from None
    return Space(tuple(dims))


def _dimension(name: str, value: Any) -> Dimension:
    if isinstance(value, list):
        if not value:
            raise SpaceError(f"space: {name}: an empty list of choices")
        if not all(v is None or isinstance(v, str | int | float | bool) for v in value):
            raise SpaceError(f"space: {name}: choices must be numbers, strings, booleans or null")
        return Dimension(name, choices=tuple(value))
    if not isinstance(value, dict):
        raise SpaceError(f"space: {name}: expected a list of choices or {{low, high}} (log, step optional)")
    unknown = set(value) - {"low", "high", "log", "step"}
    if unknown:
        raise SpaceError(f"space: {name}: unknown key {sorted(unknown)[0]!r} (low, high, log, step)")
    low, high, log, step = value.get("low"), value.get("high"), value.get("log", False), value.get("step")
    numbers = [v for v in (low, high, step) if v is not None]
    if low is None or high is None or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                              and math.isfinite(v) for v in numbers):
        raise SpaceError(f"space: {name}: low and high must be finite numbers")
    if not low <= high:
        raise SpaceError(f"space: {name}: low {low} is above high {high}")
    if not isinstance(log, bool):
        raise SpaceError(f"space: {name}: log must be true or false")
    if log and (low <= 0 or step is not None):
        raise SpaceError(f"space: {name}: a log range needs low > 0 and no step")
    if step is not None and step <= 0:
        raise SpaceError(f"space: {name}: step must be positive")
    return Dimension(name, low=low, high=high, log=log, step=step)


def default_space(base: TrainConfig) -> Space:
    """What a sweep varies when no ``--space`` is given, around ``base``'s resolved recipe (so
    around what suits its dataset and machine): the learning rate (log, a factor of 3 either
    way), label smoothing, and weight decay when the recipe uses it."""
    spec: dict[str, Any] = {"lr": {"low": base.lr / 3, "high": base.lr * 3, "log": True},
                            "label_smoothing": {"low": 0.0, "high": 0.3}}
    if base.weight_decay:
        spec["weight_decay"] = {"low": base.weight_decay / 4, "high": base.weight_decay * 4, "log": True}
    return build_space(spec, base)
