"""The whole flow on tiny data, against a real (temporary) Prefect API: artifacts, caching,
retries (HTTP 503s, a crash inside fit), image folders and bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import fakes
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from wandb_files import OfflineRun, offline_run_dirs

from cifar_lit.lifecycle import wandb_aliases
from cifar_lit.lifecycle.registry import Registry
from cifar_lit.training.module import LitClassifier
from flows.train_flow import train_flow

pytestmark = pytest.mark.usefixtures("prefect_api")


def _run(config):
    state = train_flow(config, return_state=True)
    return state, state.state_details.flow_run_id


def _task_runs(flow_run_id) -> dict:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r for r in runs}


def _artifacts(flow_run_id) -> dict:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    # By type; the two markdown artifacts by what they hold: "markdown" (the run summary), "promotion".
    return {"promotion" if (a.key or "").endswith("-promotion") else a.type: a for a in found}


def test_end_to_end_then_cached_rerun(make_config, server, tmp_path):
    cfg = make_config(max_epochs=2, output_dir=tmp_path / "run1")
    state, run_id = _run(cfg)
    assert state.is_completed(), state.message
    summary = json.loads((tmp_path / "run1" / "summary.json").read_text())
    assert summary == state.result() | {"per_class": summary["per_class"]}
    for key in ("test_acc", "test_loss", "val_acc", "epochs_completed", "fit_seconds", "best_checkpoint",
                "data_fingerprint", "wandb", "config"):
        assert summary[key] is not None, key
    assert summary["epochs_completed"] == 2 and 0 <= summary["test_acc"] <= 1
    assert Path(summary["best_checkpoint"]).is_file() and summary["best_checkpoint"].startswith(str(tmp_path / "run1"))
    assert summary["config"]["max_epochs"] == 2 and summary["wandb"]["mode"] == "offline"
    assert (tmp_path / "run1" / "split.json").is_file()

    tasks = _task_runs(run_id)
    assert set(tasks) == {"download", "split", "fit", "test", "export", "promote", "registered"}  # promoted: v1
    assert all(t.state.is_completed() for t in tasks.values())
    assert summary["promotion"]["promoted"] and summary["promotion"]["version"] == "v1"
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run_id).name.startswith("cifar10-seed_cnn-")

    arts = _artifacts(run_id)
    assert f"{summary['test_acc']:.4f}" in arts["markdown"].data and "wandb sync" in arts["markdown"].data
    rows = json.loads(arts["table"].data) if isinstance(arts["table"].data, str) else arts["table"].data
    assert [r["class"] for r in rows] == fakes.CIFAR10_CLASSES
    assert arts["progress"].data == pytest.approx(100.0)

    # The offline W&B run holds the metrics, the test results and the model artifact.
    (run_dir,) = offline_run_dirs(tmp_path / "run1")
    wb = OfflineRun.load(run_dir)
    assert len(wb.values("val_acc")) == 2 and wb.summary["test_acc"] == pytest.approx(summary["test_acc"])
    model = wb.artifact("model")
    assert sorted(model.aliases) == ["latest"]
    meta = json.loads(model.metadata)
    assert meta["data_fingerprint"] == summary["data_fingerprint"]
    assert meta["test_metrics"]["test_acc"] == pytest.approx(summary["test_acc"])
    assert meta["config"]["output_dir"] == str(tmp_path / "run1")

    # An offline run cannot change W&B aliases: the promotion is queued beside the registry, naming
    # this run (its model is numbered by `wandb sync`), and the version's card says the same.
    name = cfg.model_name()
    ref = Registry(cfg.registry).get(name, version="v1").card["wandb"]
    assert ref == {"artifact": None, "name": name, "project": cfg.wandb_project, "entity": None,
                   "run_id": run_dir.name.rsplit("-", 1)[1], "offline": True}
    (queued,) = wandb_aliases.read_pending(cfg.registry / name)
    assert (queued["alias"], queued["version"], queued["wandb"]) == ("production", "v1", ref)
    assert summary["promotion"]["wandb"]["waiting"] == {"production": "the run is offline"}

    # Same config, new output dir, --force (else the run is skipped: production came from the
    # same data, code and config): download and split come from the cache, no HTTP request.
    before = len(server.requests)
    state2, run_id2 = _run(cfg.model_copy(update={"output_dir": tmp_path / "run2", "force": True}))
    assert state2.is_completed()
    tasks2 = _task_runs(run_id2)
    assert tasks2["download"].state.name == "Cached" and tasks2["split"].state.name == "Cached"
    assert tasks2["fit"].state.name == "Completed"
    assert len(server.requests) == before
    summary2 = state2.result()
    assert summary2["data_fingerprint"] == summary["data_fingerprint"]
    assert summary2["test_acc"] == pytest.approx(summary["test_acc"])  # same seed, same data: same model


def test_deleted_data_is_fetched_again_despite_the_cache(make_config, server, tmp_path):
    cfg = make_config(max_epochs=1, prediction_samples=0, output_dir=tmp_path / "a")
    assert _run(cfg)[0].is_completed()
    import shutil

    shutil.rmtree(cfg.data_dir)
    before = len(server.requests)
    state, run_id = _run(cfg.model_copy(update={"output_dir": tmp_path / "b"}))
    assert state.is_completed()
    assert _task_runs(run_id)["download"].state.name == "Completed"
    assert len(server.requests) > before


def test_download_survives_two_503s(make_config, server):
    server.fail_next = 2
    state, run_id = _run(make_config(max_epochs=1, wandb_mode="disabled"))
    assert state.is_completed()
    assert [s for _, _, s in server.requests[:2]] == [503, 503]
    assert _task_runs(run_id)["download"].run_count == 3


@pytest.mark.parametrize("val_size", [40, 0], ids=["with-val", "no-val"])
def test_fit_crash_resumes_from_last_checkpoint(make_config, monkeypatch, val_size):
    started: list[int] = []

    def crash_once_in_second_epoch(self):
        started.append(self.current_epoch)
        if started == [0, 1]:
            raise RuntimeError("injected crash at the start of epoch 2")

    monkeypatch.setattr(LitClassifier, "on_train_epoch_start", crash_once_in_second_epoch)
    cfg = make_config(max_epochs=3, wandb_mode="disabled", val_size=val_size, patience=0)
    state, run_id = _run(cfg)
    assert state.is_completed()
    assert started == [0, 1, 1, 2]  # the retry ran only epochs 2 and 3
    summary = state.result()
    assert summary["epochs_completed"] == 3 and summary["resumed_from"].endswith("last.ckpt")
    assert _task_runs(run_id)["fit"].run_count == 2
    (resumed,) = (cfg.out / "csv").glob("fit-resumed-*")
    with open(resumed / "metrics.csv") as f:
        epochs = {int(r["epoch"]) for r in csv.DictReader(f) if r.get("train_loss_epoch")}
    assert epochs == {1, 2}


def test_image_folder_flow_with_a_broken_file(make_config, tmp_path):
    root = fakes.image_folder(tmp_path / "ds", per_class=12, test_per_class=3)
    (root / "train" / "dog" / "broken.png").write_bytes(b"not a png")
    cfg = make_config(dataset="imagefolder", data_dir=root, val_size=0.2, wandb_mode="disabled", max_epochs=1)
    state, run_id = _run(cfg)
    assert state.is_completed()
    summary = state.result()
    assert summary["skipped_images"] == 1
    ((path, reason),) = summary["skipped_files"]  # which file, and why
    assert path == "train/dog/broken.png" and reason, summary["skipped_files"]
    assert [r["class"] for r in summary["per_class"]] == ["cat", "dog", "frog"]
    assert sum(r["support"] for r in summary["per_class"]) == 9  # the test/ folder
    assert summary["wandb"]["mode"] == "disabled" and summary["model_artifact"]["logged"] is False
    # The data block: what each split used, per class (val: a stratified 20% of train/).
    data = summary["data"]
    assert (data["train"] + data["val"], data["test"], data["skipped"]) == (36, 9, 1)
    for name in ("cat", "dog", "frog"):
        n = data["per_class"][name]
        assert n["train"] + n["val"] == 12 and n["test"] == 3 and n["val"] >= 1, (name, n)
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    (table,) = [a for a in found if (a.key or "").endswith("-data")]
    assert json.loads(table.data) == [{"class": c, **data["per_class"][c]} for c in ("cat", "dog", "frog")]


def test_wrong_checksum_fails_fast_and_clearly(make_config, server):
    cfg = make_config(download_md5="0" * 32, wandb_mode="disabled")
    state, run_id = _run(cfg)
    assert state.is_failed()
    download = _task_runs(run_id)["download"]
    assert download.run_count == 1  # not retried: the same bytes would come back
    with pytest.raises(Exception, match="checksum mismatch"):
        state.result()
    assert not (cfg.data_dir / "cifar-10-batches-py").exists()


def test_default_recipe_end_to_end(make_config):
    # val_size=None: the recipe's own, 0 (no validation split; every non-test image trains).
    # batch_size=None: the recipe's 256, fitted to the 200 training images (16: the smallest).
    cfg = make_config(recipe="auto", accelerator="cpu", batch_size=None, max_epochs=2, prediction_samples=2,
                      val_size=None)
    state, run_id = _run(cfg)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["config"]["recipe"] == "cpu-fast" and summary["config"]["model"] == "airnet_s"
    assert summary["config"]["val_size"] == 0
    assert summary["epochs_completed"] == 2 and 0 <= summary["test_acc"] <= 1
    # What the recipe chose for the data, in the summary and at the top of the UI's run summary.
    note = "small dataset (200 training images): batch_size 256 -> 16 (12 steps per epoch, 24 in all)"
    assert summary["config"]["batch_size"] == 16 and summary["config"]["max_epochs"] == 2
    assert summary["recipe"] == {"name": "cpu-fast", "n_train": 200, "note": note, "budget_note": None,
                                 "adapted": {"batch_size": {"recipe": 256, "chosen": 16}}}
    assert summary["val_acc"] is None and summary["best_val_acc"] is None
    split = json.loads((cfg.out / "split.json").read_text())
    assert split["val"] == [] and len(split["train"]) == 200  # all of the tiny CIFAR-10 train set
    # Nothing to rank by: the last epoch's checkpoint is the one tested and exported.
    # (and the epoch before it as last.prev.ckpt, a hard link kept in case last.ckpt is ever damaged)
    assert sorted(p.name for p in (cfg.out / "checkpoints").iterdir()) == ["last.ckpt", "last.prev.ckpt"]
    assert summary["best_checkpoint"] == str((cfg.out / "checkpoints" / "last.ckpt").resolve())
    assert set(_task_runs(run_id)) == {"download", "split", "fit", "test", "export", "promote", "registered"}
    arts = _artifacts(run_id)
    assert "| val_acc (no TTA) | n/a |" in arts["markdown"].data
    assert f"**Recipe**: cpu-fast; {note}" in arts["markdown"].data
    assert "epoch 2/2: train_loss_epoch=" in arts["progress"].description
    # W&B: no validation panels, but the captioned test images are there to inspect.
    (wb,) = [OfflineRun.load(d) for d in offline_run_dirs(cfg.out)]
    assert not wb.values("val_acc") and not wb.values("examples") and wb.values("train_loss_step")
    (panel,) = wb.values("test/examples")
    assert len(panel["captions"]) == 2 and wb.values("test/predictions")


def test_ddp_on_two_cpu_processes_end_to_end(make_config, tmp_path):
    cfg = make_config(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, wandb_mode="offline")
    state, run_id = _run(cfg)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["epochs_completed"] == 2 and summary["model_artifact"]["logged"] is True
    out = cfg.out
    assert list(out.glob("summary.json")) == [out / "summary.json"]
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    # One best, one last and its last-good copy: rank 1 wrote none.
    assert len(ckpts) == 3 and {"last.ckpt", "last.prev.ckpt"} <= set(ckpts)
    # W&B: the flow's run holds the one model artifact; rank 0's fit run, in the same group,
    # holds the training curves.
    runs = [OfflineRun.load(d) for d in offline_run_dirs(out)]
    models = [a for r in runs for a in r.artifacts if a.type == "model"]
    assert len(models) == 1
    fit_runs = [r for r in runs if r.values("val_acc")]
    assert len(fit_runs) == 1 and len(fit_runs[0].values("val_acc")) == 2
    # Each rank trained on its own half of the data: 160 images / 2 ranks / batch 16 = 5 steps.
    import csv

    with open(out / "csv" / "fit" / "metrics.csv") as f:
        steps = max(int(r["step"]) for r in csv.DictReader(f))
    assert steps == 2 * 5 - 1
    assert _task_runs(run_id)["export"].state.is_completed()


def test_a_collapsed_model_completes_with_its_warnings_in_the_summary_and_the_ui(make_config, tmp_path):
    """The numbers are true, so the run completes; the collapse is said in summary.json and at
    the top of the run summary artifact, not only in a log line."""
    import torch

    from cifar_lit.models import MODELS, register
    from cifar_lit.models.seed_cnn import SeedCNN

    def answers_cat(num_classes: int) -> SeedCNN:  # class 3 ('cat') for every image
        net = SeedCNN(num_classes)
        with torch.no_grad():
            net.fc3.bias.zero_()
            net.fc3.bias[3] = 100.0
        return net

    register("answers_cat")(answers_cat)
    try:
        cfg = make_config(model="answers_cat", max_epochs=1, lr=1e-6, wandb_mode="disabled", prediction_samples=0,
                          output_dir=tmp_path / "run")
        state, run_id = _run(cfg)
    finally:
        MODELS.pop("answers_cat")
    assert state.is_completed(), state.message
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [w.split(" (")[0] for w in summary["warnings"]] == [
        "predicts 'cat' for 100% of the test images",
        "test accuracy 10.0%",
    ]
    shown = _artifacts(run_id)["markdown"].data
    assert all(f"**Warning**: {w}" in shown for w in summary["warnings"])
    # 60 test images, 6 a class: too few to rank models, and the summary says what one is worth.
    small = summary["test_split_warning"]
    assert small.startswith("the test split has 60 images (fewer than 500), ") and "only 6 and 9 more" in small
    assert "one image is worth 1.67 points of test_acc" in small and f"**Warning**: {small}" in shown
    # Every accuracy says whether test-time augmentation made it (the seed recipe uses none).
    assert summary["tta"] == {"test_acc": "none", "val_acc": "none"} and "| test_acc (no TTA) |" in shown
