"""Fault matrix, the config rows: what the machine cannot run, or values that would train
nonsense, are one line (exit 2) before any data work; a diverging fit fails, is not retried and
exports nothing."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.train_flow import main, train_flow


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--accelerator", "gpu"], "--accelerator: gpu asked for, but torch"),
        (["--accelerator", "cpu", "--devices", "0,1"], "--devices: '0,1' lists GPUs, but this run is on the CPU"),
        (["--accelerator", "cpu", "--num-nodes", "2", "--devices", "1"], "--num-nodes: 2 machines need MASTER_ADDR"),
        (["--max-time", "00:00:00:00"], "--max-time: must be longer than 00:00:00:00"),
        (["--output-dir", ""], "--output-dir: must name a folder for this run"),
        (["--resume"], "--resume: name the run to continue with --output-dir"),
        (["--output-dir", "a-file/run"], "--output-dir: a-file/run cannot be created:"),
        (["--runs-dir", "a-file"], "--runs-dir: a-file cannot be created:"),
    ],
)
def test_what_the_machine_cannot_run_is_one_line_before_any_work(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(SystemExit) as e:
        main(["--data-dir", str(tmp_path / "data"), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]  # nothing downloaded, no run dir made


@pytest.mark.usefixtures("prefect_api")
def test_a_diverging_fit_fails_once_and_exports_nothing(make_config):
    cfg = make_config(lr=1e30, max_epochs=3, wandb_mode="disabled", prediction_samples=0)
    state = train_flow(cfg, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match=r"^train_loss: nan in epoch 1; training diverged"):
        state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    assert {r.name.rsplit("-", 1)[0]: r.run_count for r in runs} == {"download": 1, "split": 1, "fit": 1}
    assert not (cfg.out / "model").exists() and not cfg.registry.exists()
