"""The run summary: ``summary.json`` and the markdown shown in the Prefect UI."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cifar_lit.config import TrainConfig
from cifar_lit.files.atomic import write_json_atomic
from cifar_lit.run.provenance import code_version, git_commit
from cifar_lit.training.quality import small_test_split


def build_summary(
    config: TrainConfig,
    fit: dict,
    test: dict,
    data_fingerprint: str,
    wandb: dict,
    data: dict | None = None,
    recipe: dict | None = None,
    export: dict | None = None,
    promotion: dict | None = None,
) -> dict[str, Any]:
    """Everything a run found. ``export``/``promotion`` are None until those stages have run
    (the summary is first written right after testing)."""
    return {
        "skipped": False,
        "test_acc": test["metrics"].get("test_acc"),
        "test_loss": test["metrics"].get("test_loss"),
        "val_acc": fit["metrics"].get("val_acc"),
        "best_val_acc": fit["metrics"].get("best_val_acc"),
        "val_loss": fit["metrics"].get("val_loss"),
        "epochs_completed": fit["epochs_completed"],
        "fit_seconds": fit["fit_seconds"],
        "test_seconds": test.get("test_seconds"),
        "resumed_from": fit.get("resumed_from"),
        "best_checkpoint": fit["best_checkpoint"],
        "last_checkpoint": fit["last_checkpoint"],
        "data_fingerprint": data_fingerprint,
        "code_version": code_version(),
        "git_commit": git_commit(),
        "skipped_images": (data or {}).get("skipped", 0),
        "skipped_files": (data or {}).get("skipped_files", []),  # [path, reason] of each image file left out
        # Image counts: train/val/test, per class and split (image folders), skipped files.
        "data": data,
        # The recipe, and the batch size and epochs it chose for a small dataset (cifar_lit.recipes).
        "recipe": recipe,
        # Under --time-budget: what the budget chose (steps, epochs, measured speed; cifar_lit.training.budget).
        "budget": fit.get("budget"),
        # What the recipe left to the machine, as timed on it (cifar_lit.machine.probe).
        "probe": fit.get("probe"),
        # What two runs of the same command may decide differently, in one place.
        "decisions": decisions(config, fit),
        "per_class": test["per_class"],
        # A model that collapsed onto one class, or does no better than guessing the largest
        # one: the run still completes (its numbers are true), but says so everywhere it reports.
        "warnings": list(test.get("warnings") or []),
        # A test split too small to tell models apart, and what one image is worth.
        "test_split_warning": small_test_split({r["class"]: r["support"] for r in test["per_class"]}),
        # Which metrics saw test-time augmentation: the test step's, never validation's.
        "tta": {"test_acc": tta_words(config.tta), "val_acc": "none"},
        "wandb": wandb,
        "model_files": export["files"] if export else None,
        "model_artifact": {k: v for k, v in export.items() if k not in ("metadata", "files")} if export else None,
        "promotion": {k: promotion.get(k) for k in PROMOTION_KEYS} if promotion else None,
        "config": config.as_dict(),
    }


def decisions(config: TrainConfig, fit: dict) -> dict[str, Any]:
    """What this run decided at run time, which the same command on another machine, or on this
    one under load, may decide otherwise: the precision and memory format it trained in (the
    probe's choice, or the config's), the steps and epochs a time budget planned from the speed
    it measured, and the load the probe measured under. Fixed epochs and ``--deterministic``
    (fixed choices, no clock) make runs on one machine repeat bit for bit."""
    probe, budget = fit.get("probe") or {}, fit.get("budget") or {}
    return {
        "precision": probe.get("precision", config.precision),
        "channels_last": probe.get("channels_last", config.channels_last),
        "threads": probe.get("threads"),
        "decided_by": probe.get("decided_by", "config"),
        "probe_load": probe.get("load"),
        "probe_noisy": probe.get("noisy"),
        "time_budget_s": budget.get("seconds"),
        "steps": budget.get("steps"),
        "images_per_second": budget.get("images_per_second"),
        "epochs_completed": fit.get("epochs_completed"),
        "deterministic": config.deterministic,
        # The network, and, where the time budget sized it, what it chose from (cifar_lit.recipes.scaling).
        "network": (fit.get("decided") or {}).get("model") or config.model,
        "network_choice": fit.get("scaling"),
    }


def tta_words(tta: int | None) -> str:
    """The test-time augmentation a ``tta`` level averages over, in words."""
    return {None: "none", 0: "none", 1: "flip", 2: "flip and 1px shifts"}.get(tta, f"level {tta}")


PROMOTION_KEYS = ("promoted", "version", "champion_version", "champion_test_acc", "challenger_test_acc", "reason", "wandb")


def skipped_summary(config: TrainConfig, match, data_fingerprint: str) -> dict[str, Any]:
    """A run that did not train: production (``match``, a registry Version) already came from the
    same data, code and effective config. Its numbers are production's, labelled as such."""
    return {
        "skipped": True,
        "reason": f"production {match.name} {match.version} was made from the same data, code and config; --force retrains",
        "matched": {"name": match.name, "version": match.version, "path": str(match.path),
                    "test_acc": match.card.get("metrics", {}).get("test_acc"), "run_name": match.card.get("run_name")},
        "test_acc": None,
        "data_fingerprint": data_fingerprint,
        "code_version": code_version(),
        "git_commit": git_commit(),
        "config": config.as_dict(),
    }


def write_summary(path: Path, summary: dict[str, Any]) -> Path:
    return write_json_atomic(Path(path), json_safe(summary))


def json_safe(obj: Any) -> Any:
    """NaN (a class with no test images) becomes null, so every JSON reader accepts the file."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def _fmt(v: Any) -> str:
    if v is None:  # e.g. val_acc of a run without a validation split
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _recipe_note(summary: dict[str, Any]) -> str | None:
    """What the recipe chose for this data and this time budget, or None."""
    recipe = summary.get("recipe") or {}
    return "; ".join(n for n in (recipe.get("budget_note"), recipe.get("note")) if n) or None


def budget_line(budget: dict[str, Any] | None) -> str | None:
    """One line: what a time budget chose.

    >>> budget_line({"seconds": 180.0, "steps": 1400, "epochs": 8.0, "images_per_second": 710.3, "replans": 3})
    '**Time budget**: 180 s: 1400 steps (8.0 epochs) at 710 images/s measured, re-planned 3 times'
    >>> budget_line({"seconds": 60.0, "max_steps": 88, "ended_by": "epochs", "steps": 88, "epochs": 4.0,
    ...              "images_per_second": 90.0, "replans": 0})
    '**Time budget**: 60 s, at most 88 steps: 88 steps (4.0 epochs) at 90 images/s measured, re-planned 0 times; the cap ended it'
    """
    if not budget:
        return None
    if budget.get("replayed"):
        return (f"**Time budget**: {budget['seconds']:g} s, replayed from its recorded plan (no clock): "
                f"{budget['steps']} steps ({budget['epochs']} epochs)")
    cap = f", at most {budget['max_steps']} steps" if budget.get("max_steps") else ""
    speed = f" at {budget['images_per_second']:.0f} images/s measured" if budget.get("images_per_second") else ""
    ended = "; the cap ended it" if budget.get("ended_by") == "epochs" else ""
    return (f"**Time budget**: {budget['seconds']:g} s{cap}: {budget['steps']} steps ({budget['epochs']} epochs){speed}, "
            f"re-planned {budget['replans']} times{ended}")


def probe_line(probe: dict[str, Any] | None) -> str | None:
    """One line: what the machine probe chose.

    >>> probe_line({"precision": "32-true", "channels_last": True, "threads": 2, "seconds": 3.14, "cached": False})
    '**Machine**: 32-true, channels_last, 2 threads (timed on this machine in 3.1 s)'
    """
    if not probe:
        return None
    how = "cached for this machine" if probe["cached"] else f"timed on this machine in {probe['seconds']:.1f} s"
    layout = "channels_last" if probe["channels_last"] else "contiguous"
    return f"**Machine**: {probe['precision']}, {layout}, {probe['threads']} threads ({how})"


def summary_markdown(summary: dict[str, Any]) -> str:
    if summary.get("skipped"):
        m = summary["matched"]
        return "\n".join([
            f"# Skipped: {m['name']} {m['version']} is current",
            "",
            summary["reason"],
            "",
            f"Production test_acc: {_fmt(m['test_acc'])} (run `{m['run_name']}`), at `{m['path']}`",
            "",
            f"**Data fingerprint**: `{summary['data_fingerprint']}`; **code version**: `{summary['code_version']}`",
        ])
    wb = summary["wandb"]
    if wb["mode"] == "online":
        where = f"[{wb['path']}]({wb['url']})"
    elif wb["mode"] == "offline":
        where = f"offline at `{wb['path']}`; upload with `wandb sync {wb['path']}`"
    else:
        where = "disabled"
    tta = summary.get("tta") or {}
    label = {k: f"{k} ({'TTA: ' + v if v != 'none' else 'no TTA'})" for k, v in tta.items()}
    rows = ["| metric | value |", "|---|---|"] + [
        f"| {label.get(k, k)} | {_fmt(summary[k])} |"
        for k in ("test_acc", "test_loss", "val_acc", "best_val_acc", "epochs_completed", "fit_seconds", "skipped_images")
    ]
    promo = summary.get("promotion")
    verdict = (f"**Promotion**: {'promoted to ' + promo['version'] if promo['promoted'] else 'not promoted'}: {promo['reason']}"
               if promo else "**Promotion**: not reached")
    cfg = ["| field | value |", "|---|---|"] + [f"| {k} | `{v}` |" for k, v in summary["config"].items()]
    warnings = [f"- **Warning**: {w}" for w in [*(summary.get("warnings") or []), summary.get("test_split_warning")] if w]
    return "\n".join(
        [
            f"# Run summary: {summary['config']['dataset']} / {summary['config']['model']}",
            "",
            *([*warnings, ""] if warnings else []),
            *rows,
            "",
            verdict,
            "",
            f"**Recipe**: {summary['config']['recipe']}" + (f"; {note}" if (note := _recipe_note(summary)) else ""),
            "",
            *([line, ""] if (line := budget_line(summary.get("budget"))) else []),
            *([line, ""] if (line := probe_line(summary.get("probe"))) else []),
            f"**W&B**: {where}",
            "",
            f"**Best checkpoint**: `{summary['best_checkpoint']}`",
            "",
            f"**Data fingerprint**: `{summary['data_fingerprint']}`; **code version**: `{summary['code_version']}`",
            "",
            "## Config",
            "",
            *cfg,
        ]
    )
