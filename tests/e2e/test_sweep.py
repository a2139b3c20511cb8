"""Sweeps (flows/sweep_flow.py) on tiny data against a real Prefect API: an Optuna study whose
trials are real train runs, resumed, pruned, crashed and bounded, and whose best model goes
through the gate."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fakes
import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterName
from prefect.concurrency.sync import concurrency
from prefect_processes import seeded_home
from wandb_files import OfflineRun, offline_run_dirs

from cifar_lit.config import TrainConfig
from cifar_lit.lifecycle.registry import Registry
from cifar_lit.tuning.study import TRIAL_LIMIT, SweepConfig
from flows.sweep_flow import sweep_flow

pytestmark = pytest.mark.usefixtures("prefect_api")
REPO = Path(__file__).resolve().parents[2]


def _study(tmp_path, name="s"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'study.db'}")


def _sweep(make_config, tmp_path, space: dict, wandb_mode="disabled", **settings):
    (tmp_path / "space.json").write_text(json.dumps(space))
    config = make_config(output_dir=tmp_path / "sweep", wandb_mode=wandb_mode)
    sweep = SweepConfig(study="s", storage=f"sqlite:///{tmp_path / 'study.db'}", space=tmp_path / "space.json",
                        sampler="random", **settings)
    return sweep_flow(config, sweep, return_state=True)


def test_a_sweep_runs_its_trials_then_only_the_missing_ones_and_gates_the_best(make_config, tmp_path):
    space = {"lr": {"low": 0.005, "high": 0.05, "log": True}, "label_smoothing": [0.0, 0.1]}
    state = _sweep(make_config, tmp_path, space, trials=3, pruner="none", wandb_mode="offline")
    assert state.is_completed(), state.message
    study = _study(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    sweep_dir = tmp_path / "sweep"
    rows = list(csv.DictReader((sweep_dir / "trials.csv").open()))
    assert [int(r["trial"]) for r in rows] == [0, 1, 2]
    for row, trial in zip(rows, study.trials, strict=True):  # each row is its own trial's run
        summary = json.loads((sweep_dir / "trials" / f"trial-{trial.number:04d}" / "summary.json").read_text())
        assert float(row["val_acc"]) == pytest.approx(trial.value) == pytest.approx(summary["best_val_acc"])
        assert float(row["test_acc"]) == pytest.approx(summary["test_acc"])
        assert float(row["lr"]) == pytest.approx(trial.params["lr"]) == pytest.approx(summary["config"]["lr"])
        assert summary["pruned"] is False and summary["trial"]["number"] == trial.number
        assert "sends its best trial" in summary["promotion"]["reason"]  # no trial promotes itself
        (run_dir,) = offline_run_dirs(sweep_dir / "trials" / f"trial-{trial.number:04d}")
        wandb_run = OfflineRun.load(run_dir)  # one W&B run per trial, grouped by study
        assert wandb_run.group == "s" and wandb_run.config["lr"] == pytest.approx(trial.params["lr"])
    assert (sweep_dir / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The best trial: its values replay from the sweep's config.json, and its model went through
    # the gate into the registry (the first model of its name: promoted).
    best = study.best_trial
    replay = TrainConfig(**json.loads((sweep_dir / "config.json").read_text()))
    assert replay.lr == pytest.approx(best.params["lr"]) and replay.label_smoothing == best.params["label_smoothing"]
    prod = Registry(tmp_path / "runs" / "registry").find(replay.model_name(), "production")
    assert prod is not None and prod.card["run_name"] == f"trial-{best.number:04d}"
    # Trials write model.pt only; the registered one also got model.pt2 and model.onnx, checked.
    assert {"model.pt", "model.pt2", "model.onnx"} <= {p.name for p in prod.path.iterdir()}
    others = [t.number for t in study.trials if t.number != best.number]
    assert all(sorted(p.name for p in (sweep_dir / "trials" / f"trial-{n:04d}" / "model").iterdir()) == ["model.pt"]
               for n in others)
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    assert sweep["best"]["trial"] == best.number and sweep["promotion"]["promoted"] is True
    with get_client(sync_client=True) as client:
        names = {r.name for r in client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(like_="s-trial-")))}
        artifacts = {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["s-trials", "s-history", "s-best"])))}
    assert names == {"s-trial-0000", "s-trial-0001", "s-trial-0002"}
    table = artifacts["s-trials"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert [row["trial"] for row in table] == [0, 1, 2] and artifacts["s-history"].type == "image"
    assert artifacts["s-history"].data == (sweep_dir / "history.png").resolve().as_uri()
    assert f"trial {best.number}" in artifacts["s-best"].data

    # Again with 5: exactly the two missing trials run.
    state = _sweep(make_config, tmp_path, space, trials=5, pruner="none")
    assert state.is_completed(), state.message
    assert [t.number for t in _study(tmp_path).trials if t.state == TrialState.COMPLETE] == [0, 1, 2, 3, 4]
    assert len(list(csv.DictReader((sweep_dir / "trials.csv").open()))) == 5


def test_a_crashing_trial_is_recorded_as_failed_and_the_sweep_goes_on(make_config, tmp_path):
    # The first trial's learning rate makes the loss overflow: its run fails (FiniteLossCheck).
    optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}",
                        direction="maximize").enqueue_trial({"lr": 1e12})
    state = _sweep(make_config, tmp_path, {"lr": [1e12, 0.02]}, trials=2, pruner="none")
    assert state.is_completed(), state.message
    first, second = _study(tmp_path).trials
    assert first.state == TrialState.FAIL and first.params == {"lr": 1e12}
    assert "loss" in first.user_attrs["error"].lower()
    assert second.state in (TrialState.COMPLETE, TrialState.FAIL)
    rows = list(csv.DictReader((tmp_path / "sweep" / "trials.csv").open()))
    assert rows[0]["state"] == "fail" and rows[0]["error"]


def test_the_pruner_stops_a_poor_trial_early_and_its_run_completes(make_config, tmp_path):
    # Three earlier trials that reached 0.9 at every epoch: a trial that learns nothing (a tiny
    # learning rate) is below their median after its second epoch and stops there.
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}", direction="maximize")
    dist = {"lr": optuna.distributions.CategoricalDistribution([1e-9, 0.02])}
    for _ in range(3):
        study.add_trial(optuna.trial.create_trial(params={"lr": 0.02}, distributions=dist, value=0.9,
                                                  intermediate_values={e: 0.9 for e in range(6)}))
    study.enqueue_trial({"lr": 1e-9})
    (tmp_path / "space.json").write_text(json.dumps({"lr": [1e-9, 0.02]}))
    config = make_config(output_dir=tmp_path / "sweep", wandb_mode="disabled", max_epochs=6)
    sweep = SweepConfig(study="s", storage=f"sqlite:///{tmp_path / 'study.db'}", space=tmp_path / "space.json",
                        trials=4)
    state = sweep_flow(config, sweep, return_state=True)
    assert state.is_completed(), state.message
    pruned = _study(tmp_path).trials[3]
    assert pruned.state == TrialState.PRUNED
    summary = json.loads((tmp_path / "sweep" / "trials" / "trial-0003" / "summary.json").read_text())
    assert summary["pruned"] is True and summary["trial"]["pruned_at_epoch"] == 1
    assert summary["epochs_completed"] == 2 < 6  # stopped early, then tested and recorded
    assert summary["test_acc"] is not None


def test_trials_wait_for_the_shared_concurrency_limit(make_config, tmp_path):
    # Every slot of the limit all sweeps share is taken (say, by another sweep's trial): this
    # sweep's trial starts only once it is released.
    with get_client(sync_client=True) as client:  # the limit exists once any sweep has run
        try:
            client.read_global_concurrency_limit_by_name(TRIAL_LIMIT)
        except Exception:  # noqa: BLE001
            from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=TRIAL_LIMIT, limit=1))
        limit = client.read_global_concurrency_limit_by_name(TRIAL_LIMIT).limit
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with concurrency(TRIAL_LIMIT, occupy=limit):
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(30)
    result = {}
    sweeper = threading.Thread(target=lambda: result.update(state=_sweep(make_config, tmp_path, {"lr": [0.02]},
                                                                         trials=1, pruner="none")))
    sweeper.start()
    time.sleep(4)
    assert not (tmp_path / "sweep" / "trials").exists()  # asked for its trial, waiting for a slot
    released = time.time()
    release.set()
    holder.join()
    sweeper.join(120)
    assert result["state"].is_completed()
    (trial,) = _study(tmp_path).trials
    assert trial.state == TrialState.COMPLETE
    assert (tmp_path / "sweep" / "trials" / "trial-0000" / "split.json").stat().st_mtime > released


def test_a_killed_sweep_resumes_without_losing_or_repeating_a_trial(tmp_path, monkeypatch):
    root = fakes.image_folder(tmp_path / "photos", per_class=12)
    (tmp_path / "space.json").write_text(json.dumps({"lr": {"low": 0.005, "high": 0.05, "log": True}}))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    seeded_home(tmp_path / "prefect-home")
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL",)}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONPATH=str(REPO), CIFAR_LIT_SWEEP_HEARTBEAT="1")

    def command(epochs: int) -> list[str]:
        return [sys.executable, "flows/sweep_flow.py", "--trials", "2", "--study", "k", "--storage", storage,
                "--space", str(tmp_path / "space.json"), "--pruner", "none", "--sampler", "random",
                "--dataset", "imagefolder", "--data-dir", str(root), "--recipe", "seed", "--val-size", "0.25",
                "--batch-size", "8", "--max-epochs", str(epochs), "--num-workers", "0", "--accelerator", "cpu",
                "--wandb-mode", "disabled", "--output-dir", str(tmp_path / "sweep"), "--runs-dir",
                str(tmp_path / "runs")]

    # A first trial long enough to be killed in: SIGKILL to the whole sweep once it has reported.
    proc = subprocess.Popen(command(400), cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                trials = _study(tmp_path, "k").trials
            except KeyError:  # the database file is there before the study is
                trials = []
            if trials and trials[0].intermediate_values:
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the sweep ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (killed,) = _study(tmp_path, "k").trials
    assert killed.state == TrialState.RUNNING  # as the kill left it

    # The same sweep again (with short trials, so the test is quick; in this process, on the
    # tests' server: the killed sweep's slot of the trials' concurrency limit stays held on its
    # own server until its lease ends a minute later, and the study lives in its storage): the
    # killed trial is failed once stale, runs again with the same values, and one new trial
    # makes the two.
    monkeypatch.setenv("CIFAR_LIT_SWEEP_HEARTBEAT", "1")
    config = TrainConfig(dataset="imagefolder", data_dir=root, recipe="seed", val_size=0.25, batch_size=8, max_epochs=2,
                         num_workers=0, accelerator="cpu", wandb_mode="disabled", output_dir=tmp_path / "sweep",
                         runs_dir=tmp_path / "runs")
    sweep = SweepConfig(trials=2, study="k", storage=storage, space=tmp_path / "space.json", pruner="none",
                        sampler="random")
    state = sweep_flow(config, sweep, return_state=True)
    assert state.is_completed(), state.message
    first, *others = _study(tmp_path, "k").trials
    assert first.state == TrialState.FAIL and [t.state for t in others] == [TrialState.COMPLETE] * 2
    # Which of the two ran first depends on when the killed trial turned stale.
    retry, new = sorted(others, key=lambda t: RetryHeartbeatStaleTrialCallback.retried_trial_number(t) is None)
    assert retry.params == first.params and RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0
    assert new.params != first.params and RetryHeartbeatStaleTrialCallback.retried_trial_number(new) is None
    assert len(list(csv.DictReader((tmp_path / "sweep" / "trials.csv").open()))) == 3
