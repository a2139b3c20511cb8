"""The command line, generated from TrainConfig: one ``--flag`` per field, no second config system.

A bad value exits with code 2 and one line naming the flag, e.g.
``train_flow.py: error: --max-epochs: Input should be greater than or equal to 1``.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ValidationError

from cifar_lit.config import EXAMPLES, FLAG_GROUPS, TrainConfig
from cifar_lit.recipes.plan import resolve
from cifar_lit.recipes.presets import RECIPE_FIELDS


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _registered(name: str) -> list[str] | None:
    """The names a registry allows for ``name``: networks for --model, dataset formats for
    --dataset (the names only: neither registry imports torch to list them)."""
    if name == "model":
        from cifar_lit.models import known_models

        return known_models()
    if name == "dataset":
        from cifar_lit.data.formats import known_formats

        return known_formats()
    return None


def _choices(name: str, annotation) -> list[str] | None:
    """The allowed values of a Literal (or Optional Literal) field, or of a registry's field."""
    if annotation in (str, str | None) and (names := _registered(name)) is not None:
        return names
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return [str(a) for a in args]
    literals = [arg for arg in args if arg is not type(None)]
    if literals and all(typing.get_origin(arg) is typing.Literal for arg in literals):  # not a number or "auto"
        return [str(a) for arg in literals for a in typing.get_args(arg)]
    return None


def _default_text(model: type[BaseModel], name: str, default) -> str | None:
    if model is TrainConfig and name == "val_size":
        return "0 in the fast recipes, else 5000 for CIFAR, 0.1 for image folders"
    if model is TrainConfig and name in ("batch_size", "max_epochs"):
        return "from --recipe; smaller batches and more epochs on small datasets"
    if model is TrainConfig and name == "time_budget":
        return "auto with --recipe auto and no --max-epochs, else none"
    if model is TrainConfig and name in RECIPE_FIELDS:
        return "from --recipe"
    if default is None or isinstance(default, bool):  # a switch off by default needs no note
        return None
    return str(default)


def build_parser(prog: str | None = None, model: type[BaseModel] = TrainConfig, description: str | None = None):
    """One flag per field of ``model``, in the groups of ``FLAG_GROUPS`` for TrainConfig. Each
    default is said once; choices are listed as the flag's value; booleans are ``--x/--no-x``."""
    train = model is TrainConfig
    parser = _OneLineParser(
        prog=prog,
        usage="%(prog)s [-h] [--FLAG VALUE ...]",
        description=description or "Train, test and export an image classifier (Lightning + Prefect + W&B).",
        epilog=EXAMPLES if train else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if train:
        parser.add_argument("--config", metavar="PATH", dest="config_file",
                            help="start from a config a run wrote (<output_dir>/config.json: replays that run, in a new "
                            "output dir); flags given with it win")
    groups = FLAG_GROUPS if train else {"options": tuple(model.model_fields)}
    for title, names in groups.items():
        section = parser.add_argument_group(title) if train else parser
        for name in names:
            _add_flag(section, model, name)
    return parser


def _add_flag(section, model: type[BaseModel], name: str) -> None:
    info = model.model_fields[name]
    choices = _choices(name, info.annotation)
    help_text = info.description or ""
    kwargs: dict = {"dest": name, "metavar": "{" + ",".join(choices) + "}" if choices else name.upper()}
    switch = info.annotation in (bool, bool | None)
    if switch:  # --force / --no-force
        kwargs = {"dest": name, "action": argparse.BooleanOptionalAction, "default": None}
    elif typing.get_origin(info.annotation) is list:
        kwargs["nargs"] = "+"
    default = _default_text(model, name, info.default)
    if info.is_required():
        help_text += " (required)"
    elif switch and info.default:
        help_text += " (default: on)"
    elif default is not None and "(default" not in help_text:  # each default said once
        help_text += f" (default: {default})"
    # Values stay strings here; the pydantic model converts and validates them in one place.
    section.add_argument(flag(name), help=help_text, **kwargs)


def parse_config(argv: Sequence[str] | None = None, prog: str | None = None, model: type[BaseModel] = TrainConfig,
                 extra: tuple[str, type[BaseModel], str, str] | None = None):
    """Flags to a validated config; exits 2 with one line on any bad flag or value. ``extra``:
    (title, model, description, examples) of a second model whose flags join the first's (the sweep's
    settings beside the training flags): the result is then the pair of configs."""
    parser = build_parser(prog, model, (model.__doc__ or "").strip().splitlines()[0] if model is not TrainConfig else None)
    if extra is not None:
        parser.description, parser.epilog = extra[2], extra[3]
        section = parser.add_argument_group(extra[0])
        for name in extra[1].model_fields:
            _add_flag(section, extra[1], name)
    ns = parser.parse_args(argv)
    given = {k: v for k, v in vars(ns).items() if v is not None}
    extra_given = {k: given.pop(k) for k in list(given) if extra is not None and k in extra[1].model_fields}
    if "config_file" in given:
        given = {**replay_base(given.pop("config_file"), parser), **given}
    try:
        config = model(**given)
    except ValidationError as e:
        parser.error(describe_error(e, model))
    if model is TrainConfig:
        try:  # what only the recipe's values can show (e.g. --patience with a recipe without validation)
            resolve(config)
        except ValueError as e:
            field, sep, rest = str(e).partition(": ")
            parser.error(f"{flag(field)}: {rest}" if sep and field in model.model_fields else str(e))
        # At the command line the data is on this machine, so a wrong folder is caught now; a
        # flow parameter is not checked against the disk (it may be submitted from elsewhere).
        if config.dataset == "imagefolder" and not (config.data_dir / "train").is_dir():
            parser.error(f"--data-dir: {config.data_dir} has no train/ folder (expected DIR/train/<class>/*)")
    if extra is not None:
        try:
            return config, extra[1](**extra_given)
        except ValidationError as e:
            parser.error(describe_error(e, extra[1]))
    return config


def replay_base(path: str, parser: argparse.ArgumentParser) -> dict:
    """The fields of a config file a run wrote, for a new run: its output dir, ``--resume`` and
    ``--force`` are the old run's, not the replay's."""
    try:
        fields = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        parser.error(f"--config: {path}: {getattr(e, 'strerror', None) or e}")
    if not isinstance(fields, dict):
        parser.error(f"--config: {path}: not a config (a JSON object of flags, as a run's config.json)")
    return {k: v for k, v in fields.items() if k not in ("output_dir", "resume", "force") and v is not None}


def fail(prog: str, message: str) -> typing.NoReturn:
    """The one-line exit 2 of a bad flag, for what is checked after parsing (the machine, the
    registry): the same shape as the parser's own errors."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def describe_error(e: ValidationError, model: type[BaseModel] = TrainConfig) -> str:
    """The first validation error as ``--flag: message``."""
    err = e.errors()[0]
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["loc"]:
        return f"{flag(str(err['loc'][0]))}: {msg}"
    # Model-level checks start their message with the field name: "data_dir: ...".
    field, sep, rest = msg.partition(": ")
    if sep and field in model.model_fields:
        return f"{flag(field)}: {rest}"
    return msg


if __name__ == "__main__":  # pragma: no cover
    print(parse_config(sys.argv[1:]).model_dump_json(indent=2))
