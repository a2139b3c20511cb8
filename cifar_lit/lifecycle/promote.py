"""The champion/challenger gate, and "nothing changed" for the nightly retrain.

``gate`` evaluates the current ``production`` model (the champion) on the challenger's own test
split, because a number measured on other data is not comparable (when the champion's own run
tested on that same split with the same code, its recorded numbers are used), then promotes the
challenger iff it classifies more test images correctly than the champion, by at least
``promote_margin`` of them (at least one: a tie keeps production, so an equal model never becomes
a new version). A challenger made from production's own data, code and effective config is a
clone of it (a ``--force`` re-run) and is never promoted. With no champion it promotes; when the
class lists differ it does not, unless forced. A promoted model becomes the next registry
version with the aliases ``latest`` and ``production``; a rejected one stays in its run's
output dir (and in W&B with ``latest``), so versions are the models that were in production.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from cifar_lit.config import TrainConfig
from cifar_lit.data.split import Split
from cifar_lit.data.tensors import split_parts
from cifar_lit.lifecycle.model_file import LoadedModel, load_model
from cifar_lit.lifecycle.registry import ProductionMoved, Registry, Version
from cifar_lit.run.provenance import code_version, git_commit
from cifar_lit.run.summary import decisions


@dataclass
class Decision:
    name: str
    promoted: bool
    version: str | None  # the challenger's registry version when promoted
    champion_version: str | None
    champion_test_acc: float | None
    challenger_test_acc: float
    reason: str
    per_class: list[dict] = field(default_factory=list)  # class, challenger, champion accuracy

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def outputs(model: LoadedModel, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The model's test-time outputs for uint8 images (N x 3 x H x W), batch by batch."""
    parts = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(model.device).float().div_(255)
        parts.append(model.module(x).float().cpu())
    return torch.cat(parts) if parts else torch.empty(0, len(model.classes))


def evaluate_file(model: LoadedModel, split_file: Path, data_dir: Path) -> tuple[float, list[float]]:
    """Accuracy and per-class accuracy of ``model`` on the test part of ``split_file``, at the
    model's own image size (a champion trained at 64 px is judged on 64 px images)."""
    split = Split.read(split_file)
    images, labels = split_parts(split, Path(data_dir).resolve(), parts=("test",), size=model.image_size)["test"]
    preds = outputs(model, images).argmax(1)
    correct = preds == labels
    per_class = [float(correct[labels == c].float().mean()) if (labels == c).any() else float("nan")
                 for c in range(len(model.classes))]
    return float(correct.float().mean()), per_class


def card(config: TrainConfig, tested: dict, fingerprint: str, run_name: str, fitted: dict | None = None) -> dict[str, Any]:
    """What the registry records about a model besides its files (``fitted``: the fit's result,
    for what it decided at run time)."""
    return {
        "metrics": tested["metrics"],
        "per_class": tested["per_class"],
        "classes": tested["classes"],
        "model": ((fitted or {}).get("decided") or {}).get("model") or config.network(),
        # As trained: precision, memory format and the budget's plan included (what config.json
        # replays). The effective config stays the one asked for: the nightly skip compares it.
        "config": config.model_copy(update=(fitted or {}).get("decided") or {}).as_dict(),
        "effective_config": config.effective(),
        "data_fingerprint": fingerprint,
        "code_version": code_version(),
        "git_commit": git_commit(),
        "run_name": run_name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "decisions": decisions(config, fitted or {}),
    }


def unchanged(config: TrainConfig, fingerprint: str) -> Version | None:
    """The production model when it was made from this data, this code and this effective
    config (so training again would only reproduce it); else None."""
    prod = Registry(config.registry).find(config.model_name(), "production")
    if prod is None:
        return None
    c = prod.card
    same = (c.get("data_fingerprint"), c.get("code_version"), c.get("effective_config"))
    return prod if same == (fingerprint, code_version(), config.effective()) else None


def gate(
    config: TrainConfig, model_files: dict[str, Path], split_file: Path, model_card: dict[str, Any], attempts: int = 3
) -> Decision:
    """Compare the challenger (``model_files`` with ``model_card``) with production and
    register it when it wins. If another run changes production meanwhile, compare again."""
    reg, name = Registry(config.registry), config.model_name()
    for _ in range(attempts):
        decision, champion = _decide(config, reg, name, split_file, model_card)
        if not decision.promoted:
            return decision
        files = {**model_files, "split": Path(split_file)}
        try:
            version = reg.add(name, files, {**model_card, "promotion": _brief(decision)},
                              aliases=("latest", "production"), expect_production=champion.version if champion else None)
        except ProductionMoved:
            continue
        decision.version = version.version
        return decision
    raise RuntimeError(f"registry {reg.root}: production of {name} kept changing during {attempts} comparisons")


def _brief(d: Decision) -> dict[str, Any]:
    return {k: v for k, v in d.to_dict().items() if k not in ("per_class", "version", "name")}


def _decide(config: TrainConfig, reg: Registry, name: str, split_file: Path, model_card: dict) -> tuple[Decision, Version | None]:
    acc = float(model_card["metrics"]["test_acc"])
    classes = list(model_card["classes"])
    champion = reg.find(name, "production")
    ours = [r["accuracy"] for r in model_card["per_class"]]
    if champion is None:
        gone = reg.dangling(name).get("production")
        reason = (f"no production model: production pointed at {gone}, whose folder is gone" if gone
                  else "no production model yet")
        return Decision(name, True, None, None, None, acc, reason, _per_class(classes, ours, None)), None
    base = dict(name=name, version=None, champion_version=champion.version, challenger_test_acc=acc)
    theirs_classes = list(champion.card.get("classes", []))
    if theirs_classes != classes and not config.force_promote:
        return Decision(promoted=False, champion_test_acc=None, per_class=_per_class(classes, ours, None), **base,
                        reason=f"class lists differ from production {champion.version} "
                               f"({len(theirs_classes)} vs {len(classes)} classes); --force-promote to replace it"), champion
    if theirs_classes != classes:
        return Decision(promoted=True, champion_test_acc=None, per_class=_per_class(classes, ours, None), **base,
                        reason=f"--force-promote: class lists differ from production {champion.version}"), champion
    c = champion.card
    if (c.get("data_fingerprint"), c.get("code_version"), c.get("effective_config")) == (
            model_card.get("data_fingerprint"), model_card.get("code_version"), model_card.get("effective_config")):
        return Decision(promoted=False, champion_test_acc=c.get("metrics", {}).get("test_acc"),
                        per_class=_per_class(classes, ours, None), **base,
                        reason=f"same data, code and config as production {champion.version}: "
                               "a re-run reproduces production, it does not replace it"), champion
    recorded = _recorded_on(champion, split_file, model_card)
    if recorded is not None:
        (theirs_acc, theirs), where = recorded, "as its own run tested it on this same split"
    else:
        theirs_acc, theirs = evaluate_file(load_model(champion.file("model")), split_file, config.data_dir)
        where = "on the challenger's test split"
    # Counted in test images, not compared as floats: accuracies are float32 means. The images
    # the challenger was tested on (a CIFAR split holds no test part: its test batch is official).
    n = sum(int(r.get("support") or 0) for r in model_card["per_class"]) or len(Split.read(split_file).test or [])
    ahead = round(acc * n) - round(theirs_acc * n)
    need = margin_images(config.promote_margin, n)
    promoted = ahead >= need
    reason = (f"challenger test_acc {acc:.4f} against champion {champion.version} {theirs_acc:.4f} {where}: "
              f"{ahead:+d} of {n} test images, {'at least' if promoted else 'fewer than'} the {need} needed "
              f"(margin {config.promote_margin:g}, and at least one image)")
    return Decision(promoted=promoted, champion_test_acc=theirs_acc, reason=reason,
                    per_class=_per_class(classes, ours, theirs), **base), champion


def margin_images(margin: float, n_test: int) -> int:
    """How many more test images the challenger must get right: ``margin`` of ``n_test``,
    rounded up, and at least one.

    >>> margin_images(0.0, 60), margin_images(0.01, 60), margin_images(0.05, 60), margin_images(0.05, 10_000)
    (1, 1, 3, 500)
    """
    return max(1, math.ceil(margin * n_test - 1e-9))


def _recorded_on(champion: Version, split_file: Path, model_card: dict) -> tuple[float, list[float]] | None:
    """The champion's test_acc and per-class accuracy as its own run measured them, when that run
    tested on this very split (the same split file and data fingerprint) with this code: testing
    it again would give the same numbers (a --force re-run, a new config on unchanged data). Else
    None: the champion is tested here."""
    c = champion.card
    split = c.get("files", {}).get("split")
    same = (split is not None and c.get("data_fingerprint") == model_card.get("data_fingerprint")
            and c.get("code_version") == model_card.get("code_version") and "test_acc" in c.get("metrics", {})
            and len(c.get("per_class", [])) == len(model_card["classes"]))
    if not same or champion.file("split").read_bytes() != Path(split_file).read_bytes():
        return None
    return float(c["metrics"]["test_acc"]), [float(r["accuracy"]) for r in c["per_class"]]


def _per_class(classes: list[str], ours: list[float], theirs: list[float] | None) -> list[dict]:
    return [{"class": c, "challenger": a, "champion": None if theirs is None else theirs[i]}
            for i, (c, a) in enumerate(zip(classes, ours))]


def decision_markdown(d: Decision) -> str:
    """The Prefect artifact: the verdict, then overall and per-class, champion vs challenger."""

    def pct(v: float | None) -> str:
        return "n/a" if v is None or v != v else f"{100 * v:.2f}%"

    head = f"# {'Promoted' if d.promoted else 'Not promoted'}: {d.name}" + (f" {d.version}" if d.version else "")
    rows = ["| | champion | challenger |", "|---|---|---|",
            f"| version | {d.champion_version or 'none'} | {d.version or 'not registered'} |",
            f"| test_acc | {pct(d.champion_test_acc)} | {pct(d.challenger_test_acc)} |"]
    rows += [f"| {r['class']} | {pct(r['champion'])} | {pct(r['challenger'])} |" for r in d.per_class]
    return "\n".join([head, "", d.reason, "", *rows])
