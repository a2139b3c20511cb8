"""Fault matrix, the training rows: a killed run continues with --resume at the cost of at most
one epoch (validation on, val_acc not improving); a truncated last.ckpt falls back to its
last-good copy; a failed save keeps the previous checkpoint; a run never uses another run's
output dir or resumes another run's checkpoint; deterministic errors are not retried; a crafted
checkpoint runs nothing."""

from __future__ import annotations

import csv
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fakes
import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL
from prefect_processes import REPO

from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.training.module import LitClassifier
from cifar_lit.training.train import fit
from flows.train_flow import train_flow

pytestmark = pytest.mark.usefixtures("prefect_api")


def _epoch_of(path: Path) -> int | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["epoch"]
    except Exception:  # noqa: BLE001 - not there yet, or being replaced
        return None


def _wait_for_epoch(ckpt: Path, epoch: int, proc: subprocess.Popen, timeout: float = 300) -> float:
    """When ``ckpt`` first holds ``epoch`` or a later one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:] if proc.stdout else "training exited early"
        if (_epoch_of(ckpt) or -1) >= epoch:
            return time.monotonic()
        time.sleep(0.05)
    raise TimeoutError(f"{ckpt} never reached epoch {epoch}")


def test_a_killed_run_resumes_and_loses_at_most_one_epoch(make_config, tmp_path):
    # Validation on, and an lr so small that val_acc never improves: last.ckpt must still be
    # written after every epoch, not only when the best checkpoint is.
    root = fakes.image_folder(tmp_path / "ds", per_class=40)
    out, epochs = tmp_path / "run", 10
    args = ["--recipe", "seed", "--dataset", "imagefolder", "--data-dir", str(root), "--val-size", "0.2",
            "--lr", "1e-12", "--patience", "0", "--max-epochs", str(epochs), "--batch-size", "4", "--num-workers", "0",
            "--accelerator", "cpu", "--devices", "1", "--wandb-mode", "disabled", "--prediction-samples", "0",
            "--output-dir", str(out), "--runs-dir", str(tmp_path / "runs")]
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.Popen([sys.executable, "flows/train_flow.py", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    last = out / "checkpoints" / "last.ckpt"
    try:
        t0 = _wait_for_epoch(last, 0, proc)
        t1 = _wait_for_epoch(last, 1, proc)
        time.sleep(min((t1 - t0) / 2, 2.0))  # into the next epoch
        os.killpg(proc.pid, signal.SIGSTOP)  # frozen: the checkpoint read next is the one it died with
        saved = _epoch_of(last)
        os.killpg(proc.pid, signal.SIGKILL)  # what OOM or a preempted node does: no cleanup at all
    finally:
        proc.kill()
        proc.wait(30)
    assert saved is not None and 1 <= saved < epochs - 1

    cfg = make_config(recipe="seed", dataset="imagefolder", data_dir=root, val_size=0.2, lr=1e-12, patience=0,
                      max_epochs=epochs, batch_size=4, wandb_mode="disabled", prediction_samples=0, output_dir=out,
                      resume=True)
    state = train_flow(cfg, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["resumed_from"] == str(last) and summary["epochs_completed"] == epochs
    # Every epoch finished before the kill was kept; only the one it died in is done again.
    (resumed,) = (out / "csv").glob("fit-resumed-*")
    with open(resumed / "metrics.csv") as f:
        redone = {int(r["epoch"]) for r in csv.DictReader(f) if r.get("train_loss_epoch")}
    assert redone == set(range(saved + 1, epochs))


def test_truncated_last_checkpoint_falls_back_to_the_last_good_copy(make_config):
    cfg = make_config(max_epochs=2, wandb_mode="disabled", prediction_samples=0)
    ImageDataModule.from_config(cfg).setup("fit")
    fit(cfg, cfg.out / "split.json")
    last = cfg.out / "checkpoints" / "last.ckpt"
    prev = cfg.out / "checkpoints" / "last.prev.ckpt"
    assert _epoch_of(last) == 1 and _epoch_of(prev) == 0  # the epoch before, kept by a hard link
    last.write_bytes(last.read_bytes()[:1000])  # what a crash mid-write used to leave
    more = cfg.model_copy(update={"max_epochs": 3})
    result = fit(more, cfg.out / "split.json", resume=True)
    assert result.resumed_from == str(prev) and result.epochs_completed == 3 and result.epochs_this_run == 2

    last.write_bytes(b"garbage")
    prev.write_bytes(b"garbage")
    from cifar_lit.lifecycle.model_file import ModelFileError

    with pytest.raises(ModelFileError, match=f"^{last}: not a readable checkpoint .*and its last-good copy"):
        fit(more.model_copy(update={"max_epochs": 4}), cfg.out / "split.json", resume=True)


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    from cifar_lit.training.checkpointing import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def disk_full(obj, f, *args, **kwargs):  # half a file written, then the disk is full
        Path(f).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert _epoch_of(path) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_another_runs_checkpoint_is_never_resumed(make_config):
    cfg = make_config(max_epochs=1, wandb_mode="disabled", prediction_samples=0)
    ImageDataModule.from_config(cfg).setup("fit")
    fit(cfg, cfg.out / "split.json")
    other = cfg.model_copy(update={"lr": 5e-4})  # same dir, another config: not this run's checkpoint
    from cifar_lit.run.rundir import OutputDirError

    with pytest.raises(OutputDirError, match="written by a run with another config"):
        fit(other, cfg.out / "split.json", resume=True)


def test_an_output_dir_in_use_or_already_used_is_refused(make_config, tmp_path):
    cfg = make_config(max_epochs=1, wandb_mode="disabled", prediction_samples=0, output_dir=tmp_path / "shared")
    cfg.out.mkdir(parents=True)
    with open(cfg.out / ".lock", "a") as held:  # another run holding the dir
        fcntl.flock(held, fcntl.LOCK_EX)
        state = train_flow(cfg, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match=f"^output_dir: {cfg.out} is in use by another run"):
        state.result()
    assert not (cfg.out / "checkpoints").exists()

    assert train_flow(cfg, return_state=True).is_completed()
    again = train_flow(cfg.model_copy(update={"lr": 1e-3}), return_state=True)
    assert again.is_failed()
    with pytest.raises(ValueError, match="holds an earlier run; use a new --output-dir, or --resume"):
        again.result()


def test_a_deterministic_fit_error_is_not_retried(make_config, monkeypatch):
    def bad_value(self):
        raise ValueError("a bug, not a crash")

    monkeypatch.setattr(LitClassifier, "on_train_epoch_start", bad_value)
    state = train_flow(make_config(max_epochs=1, wandb_mode="disabled"), return_state=True)
    assert state.is_failed()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    (fit_run,) = [r for r in runs if r.name.startswith("fit")]
    assert fit_run.run_count == 1 and fit_run.state.is_failed()


class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/nonexistent")


def test_a_crafted_checkpoint_runs_nothing(tmp_path):
    global MARKER
    MARKER = tmp_path / "pwned"
    crafted = tmp_path / "best.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": _Boom()}, crafted)
    from cifar_lit.lifecycle.model_file import ModelFileError
    from cifar_lit.training.train import load_classifier

    with pytest.raises(ModelFileError, match=f"^{crafted}: refused to load"):
        load_classifier(crafted)
    assert not MARKER.exists()
