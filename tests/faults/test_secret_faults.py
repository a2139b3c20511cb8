"""Fault matrix, the secrets row: a token in --download-url and WANDB_API_KEY never appear in any
file a run writes (output dir, data dir, registry, W&B files), in the Prefect flow-run record
or in the run's logs; the download itself still uses the credentials."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

from flows.train_flow import train_flow

TOKEN, PASSWORD, API_KEY = "tok3n-PLANTED-4f2a", "passw0rd-PLANTED-9c1d", "k" * 20 + "PLANTED" + "k" * 13


def _files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


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
    with get_client(sync_client=True) as client:
        record = client.read_flow_run(run_id).model_dump_json()
        tasks = [t.model_dump_json() for t in client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))]
        logs = [log.message for log in client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))]
    console = capfd.readouterr()
    assert "Trainable params" in console.out  # what the run printed is here
    for secret in (TOKEN, PASSWORD, API_KEY):
        assert secret not in record and not any(secret in t for t in tasks) and not any(secret in m for m in logs)
        assert secret not in console.out and secret not in console.err
