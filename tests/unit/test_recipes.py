"""Recipes: resolved once per run, for the hardware and the data it finds (cifar_lit.recipes)."""

from __future__ import annotations

import json

import pytest
import torch

from cifar_lit.cli import parse_config
from cifar_lit.config import TrainConfig
from cifar_lit.recipes import plan as plan_module
from cifar_lit.recipes import presets
from cifar_lit.recipes.plan import DataSize, fit_to_data, plan, resolve
from cifar_lit.recipes.presets import AT_FIT, RECIPES, Hardware

CPU, GPU = Hardware(gpu=False), Hardware(gpu=True)
CIFAR = DataSize(45_000)


def test_a_config_holds_what_the_user_gave_until_resolved():
    c = TrainConfig(batch_size=64)
    assert (c.recipe, c.model, c.max_epochs, c.batch_size) == ("auto", None, None, 64)
    assert not c.is_resolved
    r = resolve(c, CPU, CIFAR)
    assert r.is_resolved and (r.recipe, r.model, r.batch_size) == ("cpu-fast", None, 64)  # the network: at the fit
    assert r.network() == "airnet_s" and r.model_name() == "cifar10-airnet"
    assert resolve(r, GPU, DataSize(10)) == r  # idempotent: nothing left to decide


def test_seed_recipe_is_the_tutorial():
    c = resolve(TrainConfig(recipe="seed"), CPU, CIFAR)
    assert (c.model, c.batch_size, c.max_epochs, c.lr, c.optimizer) == ("seed_cnn", 32, 2, 2e-4, "adam")
    assert c.val_size == 5000 and c.patience == 3 and c.precision == "32-true" and c.image_size == 32
    assert (c.data_path, c.tta, c.label_smoothing, c.lr_schedule) == ("pil", 0, 0.0, "constant")


def test_auto_recipe_follows_the_hardware():
    assert resolve(TrainConfig(), CPU).recipe == "cpu-fast"
    assert resolve(TrainConfig(), GPU).recipe == "gpu-fast"
    assert resolve(TrainConfig(accelerator="cpu")).recipe == "cpu-fast"
    assert resolve(TrainConfig(accelerator="gpu")).recipe == "gpu-fast"
    assert resolve(TrainConfig()).recipe == ("gpu-fast" if torch.cuda.is_available() else "cpu-fast")


def test_without_a_gpu_driver_the_recipe_is_chosen_without_asking_torch(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # what torch would say on a GPU machine
    monkeypatch.setattr(presets, "GPU_DRIVER_PATHS", (str(tmp_path / "nvidiactl"),))
    assert not presets.gpu_driver_loaded() and resolve(TrainConfig()).recipe == "cpu-fast"  # torch not asked
    (tmp_path / "nvidiactl").touch()
    assert presets.gpu_driver_loaded() and resolve(TrainConfig()).recipe == "gpu-fast"  # a driver: torch decides


def test_validation_probes_no_hardware_and_no_disk(monkeypatch, tmp_path):
    """A flow parameter validates anywhere (a UI form, another machine): no GPU or CPU probe, no
    look at the data folder; those happen when the run resolves its recipe or reads its data."""
    def probe(*_):
        raise AssertionError("validation probed the hardware")

    monkeypatch.setattr(presets, "wants_gpu", probe)
    c = TrainConfig(dataset="imagefolder", data_dir=tmp_path / "not-here", recipe="cpu-fast")
    assert TrainConfig(**c.as_dict()) == c


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_resolves_every_field_and_round_trips(name):
    c = resolve(TrainConfig(recipe=name), CPU, CIFAR)
    assert c.is_resolved
    assert all(getattr(c, f) is not None for f in RECIPES["seed"] if RECIPES[name][f] not in AT_FIT)
    assert TrainConfig(**c.as_dict()) == c


def test_explicit_values_beat_the_recipe():
    c = resolve(TrainConfig(recipe="seed", batch_size=64, lr=0.01), CPU, CIFAR)
    assert (c.batch_size, c.lr, c.max_epochs) == (64, 0.01, RECIPES["seed"]["max_epochs"])


def test_val_size_defaults_depend_on_recipe_and_dataset(tmp_path):
    assert resolve(TrainConfig(recipe="seed", dataset="cifar100")).val_size == 5000
    assert resolve(TrainConfig(recipe="seed", dataset="imagefolder", data_dir=tmp_path)).val_size == 0.1
    # The fast recipes stop by schedule, not EarlyStopping: no images are set aside to validate.
    for recipe in ("cpu-fast", "cpu-long", "gpu-fast"):
        assert resolve(TrainConfig(recipe=recipe, dataset="cifar100")).val_size == 0
    assert resolve(TrainConfig(recipe="cpu-fast", val_size=5000)).val_size == 5000
    assert resolve(TrainConfig(recipe="seed", val_size=0.0, patience=0)).val_size == 0


def test_what_needs_the_recipe_is_checked_when_it_is_resolved(capsys):
    with pytest.raises(ValueError, match="patience.*--val-size"):
        resolve(TrainConfig(recipe="seed", val_size=0))
    with pytest.raises(ValueError, match="pretrained: published weights exist for .*not for seed_cnn"):
        resolve(TrainConfig(recipe="seed", pretrained=True))
    with pytest.raises(ValueError, match="image_size: cifar10 images are 32x32"):
        resolve(TrainConfig(image_size=64))
    # At the command line: one line naming the flag, exit 2.
    with pytest.raises(SystemExit) as e:
        parse_config(["--recipe", "seed", "--val-size", "0"], prog="train_flow.py")
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "train_flow.py: error: --patience: EarlyStopping watches val_loss, so it needs --val-size above 0 "
        "(or --patience 0)"]


def test_cpu_recipes_leave_precision_and_memory_format_to_the_machine(tmp_path):
    # Timed on the machine when the fit starts (tests/integration/test_probe.py); a value given is kept.
    for recipe in ("cpu-fast", "cpu-long"):
        c = resolve(TrainConfig(recipe=recipe), CPU, CIFAR)
        assert (c.precision, c.channels_last) == (None, None) and c.is_resolved
    given = resolve(TrainConfig(recipe="cpu-fast", precision="32-true", channels_last=False), CPU, CIFAR)
    assert (given.precision, given.channels_last) == ("32-true", False)
    assert resolve(TrainConfig(recipe="gpu-fast"), GPU, CIFAR).precision == "bf16-mixed"


def test_fast_recipes_quote_lr_per_1024_examples():
    c = resolve(TrainConfig(recipe="cpu-fast"), CPU, CIFAR)
    assert (c.lr, c.lr_batch, c.batch_size, c.step_lr) == (2.4, 1024, 256, 0.6)
    # A different batch keeps the per-example step: the optimizer's lr scales with it.
    assert resolve(TrainConfig(recipe="cpu-fast", batch_size=512), CPU, CIFAR).step_lr == 1.2
    # lr_batch 0: the lr as given, whatever the batch (the tutorial recipe's Adam).
    assert resolve(TrainConfig(recipe="seed", batch_size=64), CPU, CIFAR).step_lr == 2e-4
    assert resolve(TrainConfig(recipe="cpu-fast", lr=0.1, lr_batch=0), CPU, CIFAR).step_lr == 0.1


# ---- small data ---------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_cifar_sized_data_trains_as_the_recipe_says(recipe):
    p = plan(TrainConfig(recipe=recipe), CPU, DataSize(50_000))
    assert (p.config.batch_size, p.config.max_epochs) == (RECIPES[recipe]["batch_size"], RECIPES[recipe]["max_epochs"])
    assert p.adapted == {} and p.describe() is None


@pytest.mark.parametrize("n", [20, 100, 245, 650, 2_000, 5_000])
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_small_data_gets_enough_steps_per_epoch_and_in_all(recipe, n):
    c = resolve(TrainConfig(recipe=recipe), CPU, DataSize(n))
    steps = n // c.batch_size
    assert c.batch_size <= RECIPES[recipe]["batch_size"]
    assert steps >= presets.MIN_STEPS_PER_EPOCH or c.batch_size == presets.SMALLEST_BATCH
    assert c.batch_size == RECIPES[recipe]["batch_size"] or n // (2 * c.batch_size) < presets.MIN_STEPS_PER_EPOCH
    assert steps * c.max_epochs >= presets.MIN_STEPS or c.max_epochs == presets.MAX_SCALED_EPOCHS
    assert c.max_epochs >= RECIPES[recipe]["max_epochs"]


def test_what_the_user_gave_is_never_adapted():
    small = DataSize(650)
    assert fit_to_data(256, 4, 650, batch_given=False, epochs_given=False) == (32, 20)
    c = resolve(TrainConfig(recipe="cpu-fast", batch_size=256, max_epochs=4), CPU, small)
    assert (c.batch_size, c.max_epochs) == (256, 4)
    c = resolve(TrainConfig(recipe="cpu-fast", max_epochs=4), CPU, small)
    assert (c.batch_size, c.max_epochs) == (32, 4)
    c = resolve(TrainConfig(recipe="cpu-fast", batch_size=64), CPU, small)  # 10 steps an epoch: 40 epochs
    assert (c.batch_size, c.max_epochs) == (64, 40)


def test_the_adaptation_is_said_in_one_line_and_in_the_summary_block():
    p = plan(TrainConfig(recipe="cpu-fast"), CPU, DataSize(650))
    assert p.adapted == {"batch_size": (256, 32), "max_epochs": (4, 20)}
    assert p.describe() == ("small dataset (650 training images): batch_size 256 -> 32, max_epochs 4 -> 20 "
                            "(20 steps per epoch, 400 in all)")
    block = plan_module.recipe_summary(p)
    assert json.loads(json.dumps(block)) == {
        "name": "cpu-fast", "n_train": 650, "note": p.describe(), "budget_note": None,
        "adapted": {"batch_size": {"recipe": 256, "chosen": 32}, "max_epochs": {"recipe": 4, "chosen": 20}}}


# ---- auto's time budget -------------------------------------------------------------------

def test_auto_trains_to_its_device_class_budget_and_at_most_4x_the_recipes_epochs():
    c = resolve(TrainConfig(), CPU)
    assert c.time_budget == "auto" and not c.is_resolved  # seconds and cap once the data is known
    c = resolve(c, CPU, CIFAR)
    assert (c.recipe, c.time_budget, c.max_epochs) == ("cpu-fast", 180.0, 16) and c.is_resolved
    assert presets.DEFAULT_BUDGET == {"cpu": 180.0, "gpu": 60.0} and presets.BUDGET_EPOCHS == 4  # as the README says
    g = plan(resolve(TrainConfig(), GPU), GPU, CIFAR)
    assert (g.config.recipe, g.config.time_budget, g.config.max_epochs) == ("gpu-fast", 60.0, 40)
    assert g.budget_note() == ("time budget: 60 s (auto, on a GPU), at most 40 epochs; "
                               "--time-budget or --max-epochs to choose")
    assert plan(TrainConfig(time_budget="3m"), CPU, CIFAR).budget_note() is None  # the user's own: nothing to say
    # A few hundred photos: the cap is fitted to the data like any epoch count, so the fit ends
    # after its ~400 steps (seconds) instead of training the whole budget.
    p = plan(resolve(TrainConfig(), CPU), CPU, DataSize(723))
    assert (p.config.batch_size, p.config.max_epochs, p.config.time_budget) == (32, 19, 180.0)
    assert p.describe().endswith("(22 steps per epoch, at most 418 in all)")


def test_an_epoch_count_or_a_budget_given_replaces_autos_budget():
    assert resolve(TrainConfig(max_epochs=4), CPU, CIFAR).time_budget is None  # a fixed, reproducible length
    assert resolve(TrainConfig(recipe="cpu-fast"), CPU, CIFAR).time_budget is None  # a named recipe: its epochs
    c = resolve(TrainConfig(time_budget="10m"), CPU, CIFAR)
    assert (c.time_budget, c.max_epochs) == (600.0, None)  # a budget in seconds: all of it, no cap
    c = resolve(TrainConfig(time_budget="10m", max_epochs=6), CPU, CIFAR)
    assert (c.time_budget, c.max_epochs) == (600.0, 6)  # both: at most 6 epochs within 10 minutes
    c = resolve(TrainConfig(recipe="seed", time_budget="auto"), CPU, CIFAR)
    assert (c.time_budget, c.max_epochs) == (180.0, 8)


def test_a_short_budget_on_a_cpu_trains_smaller_batches_for_enough_steps():
    # At 700 images/s (recipes.BUDGET_SPEED) 30 s are 82 steps of 256: halved until 200 steps or 64.
    batches = {s: plan(TrainConfig(time_budget=s), CPU, CIFAR).config.batch_size for s in (30, 36, 37, 73, 74, 180)}
    assert batches == {30: 64, 36: 64, 37: 128, 73: 128, 74: 256, 180: 256}  # as the README says
    p = plan(TrainConfig(time_budget=30), CPU, CIFAR)
    assert p.short_budget == (256, 64) and "batch_size 256 -> 64" in p.budget_note()
    assert p.config.step_lr == pytest.approx(2.4 * 64 / 1024)  # the lr follows the batch (per 1024 examples)
    assert plan(TrainConfig(time_budget=30, batch_size=256), CPU, CIFAR).config.batch_size == 256  # given: kept
    assert plan(TrainConfig(time_budget=30), GPU, CIFAR).config.batch_size == 1024  # not on a GPU
    assert plan(TrainConfig(time_budget=30), CPU, DataSize(723)).config.batch_size == 32  # already small
    assert plan(TrainConfig(recipe="cpu-fast", max_epochs=1), CPU, CIFAR).config.batch_size == 256  # no budget


def test_the_default_run_on_a_small_folder_ends_at_its_cap_not_its_budget(tmp_path, monkeypatch):
    """Recipe and budget left to auto on 64 training photos: the small-data rule's steps, then
    the fit ends, minutes before the budget would. (The rule's 400 steps shrunk to 80, and the
    tutorial's small CNN, keep the test quick.)"""
    monkeypatch.setattr(plan_module, "MIN_STEPS", 80)
    from cifar_lit.data.datamodule import ImageDataModule
    from cifar_lit.training.train import fit
    from tests import fakes

    root = fakes.image_folder(tmp_path / "photos", classes=("a", "b"), per_class=40)
    cfg = TrainConfig(dataset="imagefolder", data_dir=root, test_size=16, model="seed_cnn", accelerator="cpu",
                      devices=1, num_workers=0, wandb_mode="disabled", prediction_samples=0, output_dir=tmp_path / "out")
    dm = ImageDataModule.from_config(cfg)
    dm.prepare_data()
    dm.setup("fit")
    result = fit(cfg, dm.split_file)
    ckpt = torch.load(result.last_checkpoint, weights_only=True)
    saved = ckpt["hyper_parameters"]["config"]
    # 4 steps an epoch: the cap, 4 x 4 = 16 epochs, is raised to the rule's 80 steps, 20 epochs.
    assert (saved["recipe"], saved["time_budget"], saved["batch_size"], saved["max_epochs"]) == ("cpu-fast", 180.0, 16, 20)
    assert ckpt["global_step"] == result.budget["steps"] == 80 and result.budget["ended_by"] == "epochs"
    assert ckpt["lr_schedulers"][0]["_last_lr"][0] == 0.0 and result.fit_seconds < 120


def test_a_standalone_fit_on_a_small_folder_takes_the_adapted_batch(tmp_path):
    """cifar_lit.training.train.fit with an unresolved config resolves it for its split: 64 training
    images under cpu-fast train in batches of 16 (4 steps an epoch), not one batch of 256."""
    from cifar_lit.data.datamodule import ImageDataModule
    from cifar_lit.training.train import fit
    from tests import fakes

    root = fakes.image_folder(tmp_path / "photos", classes=("a", "b"), per_class=40)
    cfg = TrainConfig(recipe="cpu-fast", dataset="imagefolder", data_dir=root, max_epochs=1, test_size=16,
                      accelerator="cpu", devices=1, num_workers=0, wandb_mode="disabled", prediction_samples=0,
                      output_dir=tmp_path / "out")
    dm = ImageDataModule.from_config(cfg)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.split.train) == 64
    result = fit(cfg, dm.split_file)
    ckpt = torch.load(result.last_checkpoint, weights_only=True)
    saved = ckpt["hyper_parameters"]["config"]
    assert (saved["batch_size"], saved["max_epochs"], saved["recipe"]) == (16, 1, "cpu-fast")
    assert ckpt["global_step"] == 4


def test_the_transfer_recipe_trains_image_folders_at_a_size_its_backbone_suits(tmp_path):
    folder = dict(recipe="transfer", dataset="imagefolder", data_dir=tmp_path, weights_file=None, pretrained=False)
    photos = resolve(TrainConfig(**folder), CPU, DataSize(700, median_side=480))
    assert photos.image_size == 128  # MobileNetV3's last feature map 4x4, not 1x1
    assert resolve(TrainConfig(**folder), CPU, DataSize(700, median_side=90)).image_size == 90  # not enlarged
    assert resolve(TrainConfig(**folder, image_size=64), CPU, DataSize(700, median_side=480)).image_size == 64
    assert resolve(TrainConfig(recipe="transfer", pretrained=False), CPU, CIFAR).image_size == 32  # CIFAR: its own
    assert resolve(TrainConfig(recipe="cpu-fast", dataset="imagefolder", data_dir=tmp_path), CPU,
                   DataSize(700, median_side=480)).image_size == 32
