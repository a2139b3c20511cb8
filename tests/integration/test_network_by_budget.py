"""A budgeted fit sizes its network (cifar_lit.recipes.scaling) from the speeds it measured: the
real probe, cache, fit, checkpoint and replay, on a machine whose speeds the test chooses."""

from __future__ import annotations

import torch

from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.machine import probe
from cifar_lit.recipes import scaling
from cifar_lit.recipes.plan import resolve
from cifar_lit.recipes.scaling import Net
from cifar_lit.run.summary import decisions
from cifar_lit.training import train

# A family of two with curves of our own, so the choice follows from the speeds below alone.
TOY = (Net("airnet_s", ((1.0, 0.70), (4.0, 0.85), (16.0, 0.87))), Net("airnet_m", ((2.0, 0.80), (8.0, 0.92))))


def _machine(monkeypatch, speeds: dict[str, float]) -> list[str]:
    """Every probe measures ``speeds[network]`` images/s for each candidate; returns the networks timed."""
    timed = []

    def measure(config, num_classes, device):
        timed.append(config.model)
        return {c: speeds[config.model] for c in probe.candidates(device, probe.given(config))}, 0.0

    class Quiet(probe.OthersLoad):  # the suite's other worker must not make the timings "beside other work"
        def __exit__(self, *exc) -> None:
            self.share = 0.0

    monkeypatch.setattr(probe, "measure", measure)
    monkeypatch.setattr(probe, "OthersLoad", Quiet)
    monkeypatch.setattr(scaling, "FAMILY", TOY)
    return timed


def test_a_budgeted_fit_trains_records_and_replays_the_network_its_machine_affords(make_config, monkeypatch, tmp_path):
    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path / "probe-cache"))
    monkeypatch.setattr(scaling, "MIN_TRAIN", 0)  # the tiny data stands in for CIFAR's 40,000 images
    # 8 s on the tiny data's 200 training images: airnet_s 136 epochs (flat at 0.87), airnet_m 6.8 (0.906).
    timed = _machine(monkeypatch, {"airnet_s": 4000.0, "airnet_m": 200.0})
    cfg = make_config(recipe="cpu-fast", time_budget=8, max_epochs=None, val_size=0, batch_size=16, tta=0,
                      prediction_samples=0, wandb_mode="disabled")
    assert cfg.model is None and cfg.model_name() == "cifar10-airnet"  # one registry name for every width
    ImageDataModule.from_config(cfg).setup("fit")
    fitted = train.fit(cfg, cfg.out / "split.json")

    assert timed == ["airnet_s", "airnet_m"]  # the recipe's network for the probe's choices, then the wider one
    chose = fitted.scaling
    n_train = chose["n_train"]
    assert chose["network"] == fitted.decided["model"] == "airnet_m" and chose["budget_s"] == 8
    assert [(c["network"], c["images_per_second"]) for c in chose["candidates"]] == [("airnet_s", 4000.0),
                                                                                     ("airnet_m", 200.0)]
    assert chose["candidates"][1]["epochs"] == round(8 * 200.0 * scaling.EFFICIENCY / n_train, 2)
    # What trained is the chosen network: its checkpoint, and the head's width (airnet_m: 256).
    ckpt = torch.load(fitted.last_checkpoint, weights_only=False, map_location="cpu")
    assert ckpt["hyper_parameters"]["config"]["model"] == "airnet_m"
    assert ckpt["state_dict"]["net.head.weight"].shape == (10, 256)
    assert decisions(cfg, fitted.to_dict())["network"] == "airnet_m"
    assert train.replayable(cfg, fitted.to_dict()).model == "airnet_m"  # config.json trains the same network

    # The next fit on this machine: the cache answers, nothing is timed again.
    timed.clear()
    again = train.fit(cfg.model_copy(update={"output_dir": tmp_path / "again"}), cfg.out / "split.json")
    assert timed == [] and again.scaling["network"] == "airnet_m" and again.scaling["timing_seconds"] == 0


def test_a_slow_machine_keeps_the_small_network_and_does_not_time_the_wide_one(make_config, monkeypatch, tmp_path):
    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path / "probe-cache"))
    monkeypatch.setattr(scaling, "MIN_TRAIN", 0)
    timed = _machine(monkeypatch, {"airnet_s": 30.0, "airnet_m": 10.0})  # airnet_s: 1.3 epochs in 8 s
    cfg = resolve(make_config(recipe="cpu-fast", time_budget=8, max_epochs=None, val_size=0, batch_size=16))
    probed_cfg, probed = probe.apply(cfg.model_copy(update={"model": scaling.BASE}), 10)
    chose, _ = train.size_network(cfg, probed_cfg, probed, 200, 10)
    assert chose["network"] == "airnet_s" and timed == ["airnet_s"]
    assert chose["candidates"][1] == {"network": "airnet_m", "images_per_second": None, "epochs": None,
                                      "expected_acc": None}
