"""Fault matrix, what a machine or a dataset cannot train: an image size the network cannot take
and a step whose activations do not fit in free memory are each one line before the probe or the
first step (a 315-line traceback, or a kill for memory without a word); a batch larger than the
training images trains (each step takes them all) with a warning, and so does an image size far
above the photos'. Real flows on a tiny image folder, real networks measured."""

from __future__ import annotations

import math
import time

import fakes
import pytest

from cifar_lit.config import TrainConfig
from cifar_lit.machine import probe
from cifar_lit.machine.checks import activation_bytes, check_training_step, free_memory
from cifar_lit.models import build_model
from flows.train_flow import train_flow

pytestmark = pytest.mark.usefixtures("prefect_api")


def _failed_with(make_config, tmp_path, monkeypatch, per_class: int = 9, **overrides) -> str:
    monkeypatch.setattr(probe, "measure", lambda *a: pytest.fail("the probe ran before the check"))
    root = fakes.image_folder(tmp_path / "photos", per_class=per_class)  # 27 images by default
    cfg = make_config(recipe="cpu-fast", dataset="imagefolder", data_dir=root, val_size=0, wandb_mode="disabled",
                      prediction_samples=0, max_epochs=1, output_dir=tmp_path / "run", **overrides)
    t0 = time.monotonic()
    state = train_flow(cfg, return_state=True)
    assert state.is_failed() and time.monotonic() - t0 < 120
    with pytest.raises(ValueError) as caught:
        state.result()
    assert not (tmp_path / "run" / "checkpoints").exists()  # no step was taken
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_a_batch_larger_than_the_data_trains_in_seconds_with_a_warning(make_config, tmp_path, caplog):
    # The probe timed a batch of --batch-size random images: 100,000 of them were a kill for
    # memory after a minute. Now every step (and the probe's) takes the 27 there are.
    root = fakes.image_folder(tmp_path / "photos", per_class=9)
    cfg = make_config(recipe="cpu-fast", dataset="imagefolder", data_dir=root, val_size=0, wandb_mode="disabled",
                      prediction_samples=0, max_epochs=1, batch_size=100_000, output_dir=tmp_path / "run",
                      tta=0)
    t0 = time.monotonic()
    summary = train_flow(cfg)
    assert summary["test_acc"] is not None and time.monotonic() - t0 < 120
    n = summary["data"]["train"]
    assert f"batch_size: 100000 is more than the {n} training images: every step takes all {n}" in caplog.text
    assert all(rate > 0 for rate in summary["probe"]["images_per_second"].values())


def test_an_image_size_the_network_cannot_take_is_one_line(make_config, tmp_path, monkeypatch):
    message = _failed_with(make_config, tmp_path, monkeypatch, image_size=8)
    assert message.startswith("image_size: 8 px is too small for model airnet_s")


def test_a_step_that_does_not_fit_in_memory_is_one_line(make_config, tmp_path, monkeypatch):
    # As many images as need twice this machine's free memory for one step at 1024 px, one batch.
    per_image = activation_bytes(build_model("airnet_s", 3), 1024)
    n = 3 * math.ceil(2 * free_memory(TrainConfig(accelerator="cpu")) / per_image / 3)
    # Photos for n training images once a test split is held out.
    message = _failed_with(make_config, tmp_path, monkeypatch, per_class=math.ceil(n / 3 / 0.7), image_size=1024,
                           batch_size=n)
    assert message.startswith(f"batch_size: {n} images of 1024x1024 px need about ")
    assert "for one training step of airnet_s, more than the " in message and "give at most --batch-size " in message


def test_an_image_size_far_above_the_photos_is_a_warning():
    config = TrainConfig(recipe="cpu-fast", model="airnet_s", batch_size=8, image_size=128, precision="32-true")
    (line,) = check_training_step(config, num_classes=3, n_train=27, median_side=32)
    assert line.startswith("image_size: 128 px is 4x the photos' median side (32 px)")
    assert check_training_step(config.model_copy(update={"image_size": 64}), 3, 27, median_side=32) == []
