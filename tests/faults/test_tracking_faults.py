"""Fault matrix, the tracking rows: a W&B upload that fails after fit and test keeps every result
local (summary, model files, registry) and ends the run Failed with the command that uploads
later; `wandb login` credentials are found the way wandb finds them; an unreachable W&B server
costs seconds, not wandb's 90 s default, before the offline fallback."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import wandb
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from cifar_lit import tracking
from flows.train_flow import train_flow


@pytest.mark.usefixtures("prefect_api")
def test_a_failed_wandb_upload_keeps_everything_local(make_config, monkeypatch, wandb_run_cleanup):
    def upload_fails(self, *args, **kwargs):
        raise ConnectionError("W&B storage unreachable")

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log_artifact", upload_fails)
    cfg = make_config(max_epochs=1, wandb_mode="offline", prediction_samples=0)
    state = train_flow(cfg, return_state=True)
    assert state.is_failed()
    assert state.message.startswith("export: W&B upload failed (ConnectionError: W&B storage unreachable)")
    assert "upload later with: wandb sync " + str(cfg.out / "wandb") in state.message
    summary = json.loads((cfg.out / "summary.json").read_text())  # the whole summary, not the first draft
    assert summary["test_acc"] is not None and summary["model_artifact"]["logged"] is False
    assert summary["promotion"]["promoted"] and summary["promotion"]["version"] == "v1"
    assert Path(summary["model_files"]["model"]).is_file() and (cfg.registry / "cifar10-seed_cnn" / "v1" / "model.pt").is_file()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    by_name = {r.name.rsplit("-", 1)[0]: r for r in runs}
    assert by_name["export"].state.is_failed() and by_name["export"].run_count == 4  # 3 retries on a network error
    assert by_name["promote"].state.is_completed()


def test_wandb_login_credentials_are_found_where_wandb_looks(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert tracking.resolve_mode("auto") == "offline"
    # What `wandb login` writes: an entry for the host of wandb's own default base URL.
    host = wandb.Settings().base_url.split("://", 1)[1]
    netrc.write_text(f"machine {host}\n  login user\n  password {'k' * 40}\n")
    netrc.chmod(0o600)
    assert tracking.resolve_mode("auto") == "online"


def test_an_unreachable_wandb_server_falls_back_in_seconds(make_config, monkeypatch, wandb_run_cleanup):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    cfg = make_config(wandb_mode="auto")
    t0 = time.monotonic()
    tracking.start_run(cfg)
    took = time.monotonic() - t0
    assert tracking.run_info()["mode"] == "offline"
    assert took < 60, f"{took:.0f} s before the offline fallback"  # generous; wandb's own default waits 90 s


def test_the_promotion_names_this_runs_own_artifact_version_not_latest(monkeypatch):
    """W&B's server cannot be reached here, so its run and API are stand-ins that record what
    they are asked: the promotion must fetch, alias and link the version this run's export
    logged. With ``:latest`` it was whichever run exported last (two runs exporting at once)."""
    import wandb

    from cifar_lit.config import TrainConfig
    from cifar_lit.export import mirror_promotion

    asked, linked = [], []

    class Artifact:
        aliases, metadata = ["latest"], {}

        def save(self):
            pass

        def link(self, target, aliases):
            linked.append((target, aliases))

    class Api:
        def artifact(self, path, type):
            asked.append(path)
            return Artifact()

    class Run:
        entity, project, offline = "team", "cifar-lit", False

    monkeypatch.setattr(wandb, "run", Run())
    monkeypatch.setattr(wandb, "Api", Api)
    config = TrainConfig(recipe="seed")
    done = mirror_promotion(config, "v4", "team/cifar-lit/cifar10-seed_cnn:v7")
    assert asked == ["team/cifar-lit/cifar10-seed_cnn:v7"] and done["artifact"] == asked[0]
    assert linked == [("wandb-registry-model/cifar10-seed_cnn", ["production", "v4"])]
    assert mirror_promotion(config, "v4", None) == {"mirrored": False}  # nothing logged online: nothing to alias
