"""Reproducibility stated, not hoped for: a --deterministic run (fixed epochs, fixed precision and
memory format, Lightning's deterministic algorithms) repeats bit for bit on the same machine, and
every run's summary and model card say what was decided at run time (precision, memory format,
who decided it, the probe's load, a time budget's steps and measured speed)."""

from __future__ import annotations

import json

import pytest
import torch

from cifar_lit.lifecycle.promote import gate
from cifar_lit.lifecycle.registry import Registry
from flows.train_flow import train_flow

pytestmark = pytest.mark.usefixtures("prefect_api")


def _weights(out) -> dict:
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["state_dict"]


def test_a_deterministic_run_repeats_bit_for_bit_and_says_what_it_decided(make_config, tmp_path):
    common = dict(recipe="cpu-fast", deterministic=True, max_epochs=2, val_size=0, batch_size=32, tta=0,
                  prediction_samples=0, wandb_mode="disabled")
    first = train_flow(make_config(output_dir=tmp_path / "a", **common))
    again = train_flow(make_config(output_dir=tmp_path / "b", force=True, **common))  # --force: train it again
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again["test_acc"] == first["test_acc"]
    decided = first["decisions"]
    assert decided["precision"] == "32-true" and decided["channels_last"] is False
    assert decided["decided_by"] == "deterministic" and decided["deterministic"] is True
    assert decided["time_budget_s"] is None and decided["epochs_completed"] == 2
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["decisions"] == decided
    # The model card records the same; the replay is a clone of production, so it is not promoted.
    name = make_config(**common).model_name()
    assert Registry(tmp_path / "runs" / "registry").get(name, alias="production").card["decisions"] == decided
    assert not again["promotion"]["promoted"] and again["promotion"]["reason"].startswith("same data, code and config")
    # On CIFAR (whose test images are the official batch, not part of the split), a tie counts
    # the images tested too: production's numbers under another config are not enough.
    prod = Registry(tmp_path / "runs" / "registry").get(name, alias="production")
    other = {**prod.card, "effective_config": {**prod.card["effective_config"], "lr": 0.5}}
    tie = gate(make_config(**common), {"model": prod.file("model")}, prod.file("split"), other)
    assert not tie.promoted and "+0 of 60 test images, fewer than the 1 needed" in tie.reason


def test_a_budgeted_run_records_what_the_probe_and_the_budget_decided(make_config, tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_LIT_CACHE", str(tmp_path / "probe-cache"))
    summary = train_flow(make_config(recipe="cpu-fast", time_budget=6, val_size=0, batch_size=32, tta=0,
                                     prediction_samples=0, wandb_mode="disabled"))
    decided, probed, budget = summary["decisions"], summary["probe"], summary["budget"]
    assert decided["decided_by"] == "measured" and decided["precision"] == probed["precision"]
    assert decided["channels_last"] == probed["channels_last"] and decided["threads"] == probed["threads"]
    assert decided["probe_load"] == probed["load"] is not None and decided["probe_noisy"] == probed["noisy"]
    assert decided["time_budget_s"] == 6 and decided["steps"] == budget["steps"] > 0
    assert decided["images_per_second"] == budget["images_per_second"] > 0
    # The network the budget sized: on a few hundred images, the family's smallest, and why.
    chose = decided["network_choice"]
    assert decided["network"] == chose["network"] == summary["config"]["model"] == "airnet_s"
    assert chose["budget_s"] == 6 and "training images, fewer than the" in chose["reason"]
    assert [c["network"] for c in chose["candidates"]] == ["airnet_s", "airnet_m", "airnet94"]
    assert chose["candidates"][0]["images_per_second"] == max(probed["images_per_second"].values())
