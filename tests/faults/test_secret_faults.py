"""Fault matrix, the secrets row: a token in --download-url and WANDB_API_KEY never appear in any
byte a run writes (output dir, data dir, registry, W&B files binary included, the Prefect home
and its database), in the Prefect flow-run record or in the run's logs; the download itself
still uses the credentials. One run goes through the real command line: W&B records the command
line's arguments in its binary run file, and only there is the token in ``sys.argv``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fakes
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
from prefect_processes import seeded_home

from flows.train_flow import train_flow

TOKEN, PASSWORD, API_KEY = "tok3n-PLANTED-4f2a", "passw0rd-PLANTED-9c1d", "k" * 20 + "PLANTED" + "k" * 13


def _files_containing(root: Path, needle: bytes) -> list[str]:
    """Every file below ``root`` whose bytes hold ``needle``: text or binary, whatever its name."""
    return [str(p) for p in root.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


def test_no_secret_in_any_byte_of_a_command_line_run(server, archives, tmp_path):
    url = server.url("/cifar10.tar.gz").replace("http://", f"http://reader:{PASSWORD}@") + f"?token={TOKEN}"
    state = {var: str(tmp_path / var.lower()) for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR",
                                                           "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR")}
    drop = ("PREFECT_API_URL",)  # its own temporary server, with its database in the Prefect home below
    env = {k: v for k, v in os.environ.items() if k not in drop} | state | {
        "PREFECT_HOME": str(seeded_home(tmp_path / "prefect-home")), "WANDB_API_KEY": API_KEY, "PREFECT_LOGGING_LEVEL": "INFO",
        "CIFAR_LIT_CACHE": str(tmp_path / "cache")}
    args = ["--data-dir", str(tmp_path / "data"), "--download-url", url, "--download-md5", fakes.md5(archives["cifar10"]),
            "--recipe", "seed", "--max-epochs", "1", "--val-size", "40", "--batch-size", "16", "--num-workers", "0",
            "--accelerator", "cpu", "--prediction-samples", "2", "--wandb-mode", "offline",
            "--runs-dir", str(tmp_path / "runs"), "--output-dir", str(tmp_path / "runs" / "r1")]
    proc = subprocess.run([sys.executable, "flows/train_flow.py", *args], cwd=Path(__file__).resolve().parents[2],
                          env=env, capture_output=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:].decode(errors="replace")
    wandb_files = list((tmp_path / "runs" / "r1").glob("wandb/offline-run-*/run-*.wandb"))
    assert wandb_files and b"--download-url" in wandb_files[0].read_bytes()  # W&B did record the arguments ...
    assert (tmp_path / "prefect-home").is_dir() and (tmp_path / "runs" / "registry").is_dir()
    for secret in (TOKEN, PASSWORD, API_KEY):  # ... and no byte of any file, nor the logs, holds a secret
        assert _files_containing(tmp_path, secret.encode()) == [], secret
        assert secret.encode() not in proc.stdout + proc.stderr, secret


@pytest.mark.usefixtures("prefect_api")
def test_no_secret_is_written_anywhere(make_config, server, tmp_path, monkeypatch, capfd, wandb_run_cleanup):
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    url = server.url("/cifar10.tar.gz").replace("http://", f"http://reader:{PASSWORD}@") + f"?token={TOKEN}"
    cfg = make_config(download_url=url, max_epochs=1, wandb_mode="offline", prediction_samples=2)
    assert cfg.download_url == url  # in memory, for the download
    state = train_flow(cfg, return_state=True)
    assert state.is_completed(), state.message
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert summary["config"]["download_url"] == server.url("/cifar10.tar.gz")  # recorded without them
    assert (cfg.out / "csv" / "fit" / "hparams.yaml").is_file() and list(cfg.out.glob("wandb/offline-run-*"))

    for secret in (TOKEN, PASSWORD, API_KEY):
        assert _files_containing(tmp_path, secret.encode()) == [], secret
    run_id = state.state_details.flow_run_id
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # the run's logs reach the API in the background: all of them, now
    with get_client(sync_client=True) as client:
        record = client.read_flow_run(run_id).model_dump_json()
        tasks = [t.model_dump_json() for t in client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))]
        logs = [log.message for log in client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))]
    console = capfd.readouterr()
    assert logs  # the run's own log lines are here (the console
    # of an in-process run holds little now that no progress bar or summary table is drawn)
    for secret in (TOKEN, PASSWORD, API_KEY):
        assert secret not in record and not any(secret in t for t in tasks) and not any(secret in m for m in logs)
        assert secret not in console.out and secret not in console.err
