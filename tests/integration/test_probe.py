"""The machine probe (cifar_lit.machine.probe): what a recipe leaves to the machine is timed on it with
the real network, the fastest candidate is used, the result is cached per machine and invalidated
by another CPU or torch version, and what the user gave is never probed over.
``CIFAR_LIT_PROBE_PRECISION`` forces its precision (CI forces bf16 over the fault and lifecycle
tests): these tests clear it, except those about it."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from cifar_lit.config import TrainConfig
from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.machine import probe
from cifar_lit.machine.checks import PRECISION_ENV, MachineError, check_machine
from cifar_lit.recipes.plan import resolve
from cifar_lit.training import train


@pytest.fixture(autouse=True)
def _unforced(monkeypatch):
    monkeypatch.delenv(PRECISION_ENV, raising=False)


def _config(**extra) -> TrainConfig:
    # The CPU recipe (precision and memory format left to the machine), shrunk: a small batch.
    return resolve(TrainConfig(**{"recipe": "cpu-fast", "accelerator": "cpu", "batch_size": 16, "image_size": 32,
                                  "max_epochs": 1, **extra}))


def test_the_fastest_candidate_is_chosen_and_cached_per_machine(monkeypatch, tmp_path):
    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path))
    timed = []
    real = probe.images_per_second

    def timing(step, choice, batch, device):
        timed.append(choice)
        real(step, choice, batch, device)  # the real network, optimizer and batch steps ...
        # ... on a machine where channels_last is 10x faster, and steady (a real 16-image step is
        # a few ms, whose rounds a busy machine puts far apart: then nothing would be cached).
        return 100.0 * (10 if choice.channels_last else 1)

    monkeypatch.setattr(probe, "images_per_second", timing)
    _quiet(monkeypatch)  # ... and quiet: the suite's other worker must not make it "beside other work"
    config = _config()
    assert probe.wants_probe(config) == ["precision", "channels_last", "threads"]
    found = probe.probe(config, num_classes=10)
    assert not found.cached and found.seconds > 0 and found.choice.channels_last
    assert {c.channels_last for c in timed} == {False, True} and probe.ROUNDS * len(found.images_per_second) == len(timed)
    entries = json.loads((tmp_path / "probe.json").read_text())
    assert [e["choice"] for e in entries.values()] == [{"precision": found.choice.precision, "channels_last": True,
                                                      "threads": found.choice.threads}]

    timed.clear()
    again = probe.probe(config, num_classes=10)  # the same machine: the cache answers, nothing is timed
    assert again.cached and again.seconds == 0 and again.choice == found.choice and timed == []

    machine = probe.machine
    for other in ({"cpu": "Another CPU"}, {"torch": "9.9.9"}):  # another CPU, or another torch: timed again
        monkeypatch.setattr(probe, "machine", lambda device, other=other: {**machine(device), **other})
        assert not probe.probe(config, num_classes=10).cached and timed
        timed.clear()
    monkeypatch.setattr(probe, "machine", machine)
    assert probe.probe(_config(batch_size=32), num_classes=10).cached is False  # another batch size too


def test_values_the_user_gave_are_kept(monkeypatch, tmp_path):
    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path))
    config = _config(precision="32-true")
    assert probe.wants_probe(config) == ["channels_last", "threads"]
    assert {c.precision for c in probe.candidates("cpu", probe.given(config))} == {"32-true"}
    assert {c.threads for c in probe.candidates("cpu", probe.given(_config(threads=1)))} == {1}
    probed, found = probe.apply(config, num_classes=10)
    assert probed.precision == "32-true" and probed.channels_last == found.choice.channels_last
    assert probe.apply(_config(precision="32-true", channels_last=False, threads=2), num_classes=10)[1] is None  # nothing left
    assert probe.apply(resolve(TrainConfig(recipe="seed")), num_classes=10)[1] is None  # a recipe that fixes both


def test_half_the_threads_are_a_candidate_only_on_four_cpus_or_more(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(probe, "cpus", lambda: 8)
    assert {c.threads for c in probe.candidates("cpu", {})} == {8, 4}
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's thread count is kept
    assert {c.threads for c in probe.candidates("cpu", {})} == {torch.get_num_threads()}
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(probe, "cpus", lambda: 2)
    assert {c.threads for c in probe.candidates("cpu", {})} == {torch.get_num_threads()}


def test_amx_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n")
    assert probe.cpu_has_amx(info)
    info.write_text("flags\t\t: fpu avx512f avx512_bf16\n")  # bf16 vector instructions alone are not enough
    assert not probe.cpu_has_amx(info)
    assert not probe.cpu_has_amx(tmp_path / "missing")


def test_bf16_is_a_candidate_only_where_the_cpu_computes_it(monkeypatch):
    monkeypatch.setattr(probe, "cpu_flags", lambda: ("AMD EPYC", {"avx2", "fma"}))
    monkeypatch.setattr(probe, "cpu_has_amx", lambda: False)
    assert {c.precision for c in probe.candidates("cpu", {})} == {"32-true"}
    monkeypatch.setattr(probe, "cpu_flags", lambda: ("Xeon", {"avx512f", "avx512_bf16"}))
    assert {c.precision for c in probe.candidates("cpu", {})} == {"32-true", "bf16-mixed"}


def test_a_distributed_fit_takes_the_fixed_rule_instead(monkeypatch, tmp_path):
    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(probe, "measure", lambda *a: pytest.fail("a distributed fit must not probe"))
    config, found = probe.apply(_config(strategy="ddp", devices=2), num_classes=10)
    assert found is None and config.channels_last is True and config.precision in ("32-true", "bf16-mixed")


def test_a_fit_uses_and_records_the_probe_and_its_test_reuses_it(make_config, monkeypatch, tmp_path):
    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path / "probe-cache"))
    cfg = make_config(recipe="cpu-fast", batch_size=32, max_epochs=1, val_size=0, tta=0)
    assert cfg.precision is None and cfg.channels_last is None
    ImageDataModule.from_config(cfg).setup("fit")
    fitted = train.fit(cfg, cfg.out / "split.json")
    # The fastest candidate measured is the one used (a fresh cache: timed in this fit).
    rates = fitted.probe["images_per_second"]
    assert not fitted.probe["cached"] and len(rates) == len(probe.candidates("cpu", {}))
    assert max(rates, key=rates.get) == probe.words(probe.Choice(fitted.probe["precision"],
                                                                  fitted.probe["channels_last"], fitted.probe["threads"]))
    saved = torch.load(fitted.last_checkpoint, weights_only=False, map_location="cpu")["hyper_parameters"]["config"]
    assert (saved["precision"], saved["channels_last"], saved["threads"]) == (
        fitted.probe["precision"], fitted.probe["channels_last"], fitted.probe["threads"])
    monkeypatch.setattr(probe, "measure", lambda *a: pytest.fail("the test step probed again"))
    tested = train.evaluate(cfg, cfg.out / "split.json", fitted.last_checkpoint)
    assert tested.metrics["test_acc"] > 0


def test_the_environment_forces_the_probes_precision(monkeypatch, tmp_path):
    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(probe, "cpu_flags", lambda: ("AMD EPYC", {"avx2", "fma"}))  # no bf16 arithmetic ...
    monkeypatch.setattr(probe, "cpu_has_amx", lambda: False)
    monkeypatch.setenv(PRECISION_ENV, "bf16-mixed")  # ... and yet bf16 is what is timed and used
    assert {c.precision for c in probe.candidates("cpu", {})} == {"bf16-mixed"}
    assert {c.channels_last for c in probe.candidates("cpu", {})} == {False, True}  # the layout is still timed
    timed = []
    monkeypatch.setattr(probe, "images_per_second", lambda step, choice, batch, device: timed.append(choice) or 100.0)
    config, found = probe.apply(_config(), num_classes=10)
    assert config.precision == "bf16-mixed" and found.to_dict()["forced_precision"] == "bf16-mixed"
    assert {c.precision for c in timed} == {"bf16-mixed"}
    # A distributed fit's fixed rule follows it too.
    assert probe.apply(_config(strategy="ddp", devices=2), num_classes=10)[0].precision == "bf16-mixed"
    # What the user gave still wins, and is not reported as forced.
    config, found = probe.apply(_config(precision="32-true"), num_classes=10)
    assert config.precision == "32-true" and found.forced_precision is None
    # Forced and unforced results are cached apart: unsetting it times both precisions again.
    monkeypatch.setenv(PRECISION_ENV, "32-true")
    timed.clear()
    config, found = probe.apply(_config(), num_classes=10)
    assert not found.cached and {c.precision for c in timed} == {"32-true"} and config.precision == "32-true"


def test_a_bad_forced_precision_is_one_line_naming_the_variable(monkeypatch):
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    with pytest.raises(MachineError, match=f"^{PRECISION_ENV}: 'bf16' is not a precision") as e:
        check_machine(_config())  # before any data work
    assert "\n" not in str(e.value) and "32-true, bf16-mixed" in str(e.value)


def test_a_fit_forced_to_bf16_trains_and_tests_in_bf16(make_config, monkeypatch, tmp_path):
    # For real: bf16 autocast on this CPU (emulated where it has no bf16 arithmetic), recorded in
    # the checkpoint and reused by the test step.
    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path / "probe-cache"))
    monkeypatch.setenv(PRECISION_ENV, "bf16-mixed")
    cfg = make_config(recipe="cpu-fast", batch_size=32, max_epochs=2, val_size=0, tta=0)
    ImageDataModule.from_config(cfg).setup("fit")
    fitted = train.fit(cfg, cfg.out / "split.json")
    assert fitted.probe["precision"] == "bf16-mixed" and fitted.probe["forced_precision"] == "bf16-mixed"
    saved = torch.load(fitted.last_checkpoint, weights_only=False, map_location="cpu")["hyper_parameters"]["config"]
    assert saved["precision"] == "bf16-mixed"
    monkeypatch.setattr(probe, "measure", lambda *a: pytest.fail("the test step probed again"))
    tested = train.evaluate(cfg, cfg.out / "split.json", fitted.last_checkpoint)  # the checkpoint's precision
    assert tested.metrics["test_acc"] > 0.2


def _quiet(monkeypatch) -> None:
    """A machine that other processes leave alone, whatever else runs (the suite's other worker)."""
    class Quiet(probe.OthersLoad):
        def __exit__(self, *exc) -> None:
            self.share = 0.0

    monkeypatch.setattr(probe, "OthersLoad", Quiet)


def _steady(monkeypatch, rates=lambda choice, n: 100.0, seconds: float = 0.0, quiet: bool = True) -> list:
    """Fake timings (``rates(choice, n)`` for the n-th timing) that take ``seconds`` each; with
    ``quiet``, on a machine that other processes leave alone (with fake timings of no duration,
    any other process's CPU in that instant, a server an earlier test left winding down,
    would read as a busy machine and keep the choice out of the cache)."""
    timed = []
    if quiet:
        _quiet(monkeypatch)

    def timing(step, choice, batch, device):
        timed.append(choice)
        time.sleep(seconds)
        return rates(choice, len(timed))

    monkeypatch.setattr(probe, "images_per_second", timing)
    return timed


def test_rounds_far_apart_are_used_but_not_cached(monkeypatch, tmp_path):
    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path))
    n_candidates = len(probe.candidates("cpu", {}))
    # The second round of every candidate runs at half the speed of the first: something else ran.
    _steady(monkeypatch, lambda choice, n: 100.0 if n <= n_candidates else 50.0)
    found = probe.probe(_config(), num_classes=10)
    assert found.noisy and not found.cached and not (tmp_path / "probe.json").exists()
    _steady(monkeypatch)  # quiet: cached, and the next fit reads it
    assert not probe.probe(_config(), num_classes=10).noisy
    again = probe.probe(_config(), num_classes=10)
    assert again.cached and again.decided_by == "cache" and not again.noisy


def test_a_probe_beside_other_work_is_used_but_not_cached(monkeypatch, tmp_path):
    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path))
    _steady(monkeypatch, seconds=0.1, quiet=False)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(probe.cpus())]
    try:
        time.sleep(0.3)
        found = probe.probe(_config(), num_classes=10)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert found.load is not None and found.load > probe.BUSY, found.load  # every CPU had another process
    assert found.noisy and not (tmp_path / "probe.json").exists()


def test_reprobe_times_again_and_replaces_the_cached_choice(monkeypatch, tmp_path):
    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path))
    _steady(monkeypatch, lambda choice, n: 100.0 * (2 if choice.channels_last else 1))
    assert probe.probe(_config(), num_classes=10).choice.channels_last
    timed = _steady(monkeypatch, lambda choice, n: 100.0 * (1 if choice.channels_last else 2))  # the machine changed
    assert probe.probe(_config(), num_classes=10).cached and timed == []  # the cache still says channels_last
    found = probe.probe(_config(reprobe=True), num_classes=10)
    assert not found.cached and timed and not found.choice.channels_last
    assert not probe.probe(_config(), num_classes=10).choice.channels_last  # what reprobe measured is cached now


def test_deterministic_takes_fixed_choices_without_timing(monkeypatch, tmp_path):
    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(probe, "measure", lambda *a: pytest.fail("a deterministic fit must not probe"))
    config, found = probe.apply(_config(deterministic=True), num_classes=10)
    assert (config.precision, config.channels_last) == ("32-true", False) and found.decided_by == "deterministic"
    # The auto recipe keeps its fixed epochs instead of a time budget.
    assert resolve(TrainConfig(deterministic=True)).time_budget is None
    assert resolve(TrainConfig()).time_budget == "auto"


def test_a_resumed_fit_keeps_what_the_interrupted_one_chose(make_config, crashed_fit, monkeypatch, tmp_path):
    """The probe is not asked again on resume: a machine that now times otherwise (busy, or
    re-probed) would choose another memory format, and the checkpoint would no longer fit."""
    monkeypatch.setenv(probe.CACHE_ENV, str(tmp_path / "cache"))
    cfg = make_config(recipe="cpu-fast", batch_size=32, max_epochs=2, val_size=0, tta=0)
    ImageDataModule.from_config(cfg).setup("fit")
    _steady(monkeypatch, lambda choice, n: 100.0 * (10 if choice.channels_last else 1))
    crashed_fit(cfg, cfg.out / "split.json")
    timed = _steady(monkeypatch, lambda choice, n: 100.0 * (1 if choice.channels_last else 10))  # the machine changed
    resumed = train.fit(cfg.model_copy(update={"reprobe": True}), cfg.out / "split.json", resume=True)
    assert (resumed.epochs_completed, resumed.epochs_this_run) == (2, 1) and timed == []
    assert resumed.decided["channels_last"] is True
