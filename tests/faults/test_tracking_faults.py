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

import flows.train_flow as train_flow_module
from cifar_lit.run import tracking
from flows.train_flow import train_flow


@pytest.mark.usefixtures("prefect_api")
def test_a_failed_wandb_upload_keeps_everything_local(make_config, monkeypatch, wandb_run_cleanup):
    def upload_fails(self, *args, **kwargs):
        raise ConnectionError("W&B storage unreachable")

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log_artifact", upload_fails)
    # The export task as the flow has it, its three retries without the 2-8 s waits between them
    # (what is checked is that they happen and what is kept, not how long they wait).
    monkeypatch.setattr(train_flow_module, "export_checkpoint",
                        train_flow_module.export_checkpoint.with_options(retry_delay_seconds=0, retry_jitter_factor=None))
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


class StandInApi:
    """W&B's public API as far as the alias sync uses it, recording what it is asked (no W&B
    server can be reached here). ``runs``: run path -> the model artifacts it logged (a run
    missing from it has not been uploaded)."""

    def __init__(self, runs: dict[str, list] | None = None) -> None:
        self.runs, self.asked, self.linked, self.saved = runs or {}, [], [], []
        self.default_entity = "team"
        api = self

        class Artifact:
            type = "model"

            def __init__(self, path):
                self.qualified_name, self.name = path, path.rsplit("/", 1)[-1]
                self.aliases, self.metadata = ["latest"], {}

            def save(self):
                api.saved.append((self.qualified_name, list(self.aliases), dict(self.metadata)))

            def link(self, target, aliases):
                api.linked.append((self.qualified_name, target, aliases))

        self.Artifact = Artifact

    def artifact(self, path, type):
        self.asked.append(path)
        return self.Artifact(path)

    def run(self, path):
        if path not in self.runs:
            raise ValueError(f"Could not find run {path}")
        artifacts = [self.Artifact(p) for p in self.runs[path]]

        class Run:
            def logged_artifacts(self):
                return artifacts

        return Run()


def _registry_with(tmp_path, refs: dict[str, dict | None]):
    """A registry whose versions v1, v2... have the given W&B references on their cards."""
    from cifar_lit.lifecycle.registry import Registry

    tmp_path.mkdir(parents=True, exist_ok=True)
    reg = Registry(tmp_path / "registry")
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    for ref in refs.values():
        reg.add("cifar10-seed_cnn", {"model": model}, {"wandb": ref} if ref else {})
    return reg


def _ref(artifact=None, run_id="r1"):
    return {"artifact": artifact, "name": "cifar10-seed_cnn", "project": "cifar-lit", "entity": None,
            "run_id": run_id, "offline": artifact is None}


def test_a_promotion_names_its_own_artifact_version_and_only_the_newest_change_is_applied(tmp_path):
    """With ``:latest`` the W&B model was whichever run exported last (two runs exporting at
    once): the alias goes to the version the card names, by its own path. A rollback queued
    after a promotion supersedes it: W&B ends where the file registry ends."""
    from cifar_lit.lifecycle import wandb_aliases

    reg = _registry_with(tmp_path, {"v1": _ref("team/cifar-lit/cifar10-seed_cnn:v7"), "v2": _ref(run_id="r2")})
    folder = reg.root / "cifar10-seed_cnn"
    with reg.locked("cifar10-seed_cnn"):
        for version in ("v2", "v1"):  # promoted v2 (offline), then rolled back to v1
            wandb_aliases.queue(folder, "production", version, reg.get("cifar10-seed_cnn", version=version).card["wandb"])
    api = StandInApi()
    result = wandb_aliases.sync(reg, "cifar10-seed_cnn", api=api)
    assert result == {"applied": {"production": "team/cifar-lit/cifar10-seed_cnn:v7"}, "waiting": {}}
    assert api.asked == ["team/cifar-lit/cifar10-seed_cnn:v7"]  # its own version; v2's run never asked
    assert api.saved == [("team/cifar-lit/cifar10-seed_cnn:v7", ["latest", "production"], {"registry_version": "v1"})]
    assert api.linked == [("team/cifar-lit/cifar10-seed_cnn:v7", "wandb-registry-model/cifar10-seed_cnn",
                           ["production", "registry-v1"])]
    assert wandb_aliases.read_pending(folder) == [] and not (folder / wandb_aliases.PENDING).exists()


def test_an_offline_runs_model_is_found_by_its_run_once_synced_and_waits_until_then(tmp_path):
    from cifar_lit.lifecycle import wandb_aliases

    reg = _registry_with(tmp_path, {"v1": _ref(run_id="r1")})
    folder = reg.root / "cifar10-seed_cnn"
    with reg.locked("cifar10-seed_cnn"):
        wandb_aliases.queue(folder, "production", "v1", _ref(run_id="r1"))
    waiting = wandb_aliases.sync(reg, "cifar10-seed_cnn", api=StandInApi())  # `wandb sync` not run yet
    assert list(waiting["waiting"]) == ["production"]
    assert "team/cifar-lit/r1 is not on W&B yet" in waiting["waiting"]["production"]
    assert len(wandb_aliases.read_pending(folder)) == 1  # kept for the next try
    api = StandInApi({"team/cifar-lit/r1": ["team/cifar-lit/cifar10-seed_cnn:v3"]})
    assert wandb_aliases.sync(reg, "cifar10-seed_cnn", api=api)["applied"] == {"production": "team/cifar-lit/cifar10-seed_cnn:v3"}
    assert api.linked[0][2] == ["production", "registry-v1"] and wandb_aliases.read_pending(folder) == []


def test_set_alias_offline_queues_for_wandb_and_sync_says_why_it_waits(tmp_path, monkeypatch, capsys):
    """A rollback with set-alias reached the file registry only: now it is queued for W&B, listed,
    and sync-wandb without a key exits 1 with one line per waiting alias, keeping the queue. A
    model W&B never saw (no reference on its card) queues nothing."""
    from cifar_lit.lifecycle import wandb_aliases
    from cifar_lit.lifecycle.registry import main

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    reg = _registry_with(tmp_path, {"v1": _ref("team/cifar-lit/cifar10-seed_cnn:v7"), "v2": _ref(run_id="r2")})
    args = ["--registry-dir", str(reg.root)]
    assert main([*args, "set-alias", "cifar10-seed_cnn", "production", "v1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "cifar10-seed_cnn: production -> v1"
    assert out[1].startswith("W&B: production queued in ") and "no W&B API key" in out[1] and "sync-wandb" in out[1]
    (entry,) = wandb_aliases.read_pending(reg.root / "cifar10-seed_cnn")
    assert (entry["alias"], entry["version"]) == ("production", "v1")
    assert entry["wandb"]["artifact"] == "team/cifar-lit/cifar10-seed_cnn:v7"
    assert main([*args, "list"]) == 0
    assert "cifar10-seed_cnn: 1 alias change(s) queued for W&B; apply with sync-wandb" in capsys.readouterr().out
    assert main([*args, "sync-wandb"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cifar10-seed_cnn: W&B production still queued: no W&B API key")
    assert len(wandb_aliases.read_pending(reg.root / "cifar10-seed_cnn")) == 1

    plain = _registry_with(tmp_path / "plain", {"v1": None})
    assert main(["--registry-dir", str(plain.root), "set-alias", "cifar10-seed_cnn", "production", "v1"]) == 0
    assert capsys.readouterr().out.strip() == "cifar10-seed_cnn: production -> v1"
    assert not (plain.root / "cifar10-seed_cnn" / wandb_aliases.PENDING).exists()
