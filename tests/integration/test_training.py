"""The network, the LightningModule in a real Trainer, callbacks and W&B tracking (offline run
files read back), fit/test/resume and export."""

from __future__ import annotations

import csv
import importlib
import re
from pathlib import Path

import pytest
import torch
from wandb_files import OfflineRun, offline_run_dirs

from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.lifecycle.export import export_model
from cifar_lit.models import CATALOGUE, MODELS, build_model, register
from cifar_lit.models.seed_cnn import SeedCNN
from cifar_lit.recipes.plan import DataSize, resolve
from cifar_lit.run import tracking
from cifar_lit.training.module import LitClassifier
from cifar_lit.training.train import OutputDirError, evaluate, fit, load_classifier


def test_seed_cnn_is_the_tutorial_network():
    net = SeedCNN(10)
    convs = [(m.in_channels, m.out_channels, m.kernel_size) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [(3, 32, (3, 3)), (32, 32, (3, 3)), (32, 64, (3, 3)), (64, 64, (3, 3))]
    fcs = [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert fcs == [(1600, 512), (512, 128), (128, 10)]
    assert sum(p.numel() for p in net.parameters()) == 952_234
    out = net(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10) and torch.allclose(out.exp().sum(1), torch.ones(4), atol=1e-5)  # log_softmax


def test_registry():
    assert build_model("seed_cnn", 7).fc3.out_features == 7 and "seed_cnn" in MODELS
    # The catalogue (what --help lists without importing torch) names exactly what its modules register.
    for module in set(CATALOGUE.values()):
        importlib.import_module(module)
    assert set(CATALOGUE) == {name for name, b in MODELS.items() if b.__module__.startswith("cifar_lit.models")}
    with pytest.raises(ValueError, match="registered twice"):
        register("seed_cnn")(lambda n: SeedCNN(n))
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nope", 10)


def _epoch_losses(path):
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train_loss_epoch")]
    return [float(r["train_loss_epoch"]) for r in rows]


def test_fit_learns_checkpoints_and_tests(make_config):
    cfg = make_config(max_epochs=4, lr=2e-3, wandb_mode="disabled")
    dm = ImageDataModule.from_config(cfg)
    dm.prepare_data()
    dm.setup("fit")
    result = fit(cfg, cfg.out / "split.json")
    losses = _epoch_losses(cfg.out / "csv" / "fit" / "metrics.csv")
    assert len(losses) == result.epochs_completed == result.epochs_this_run == 4
    assert losses[-1] < losses[0]
    assert result.metrics["best_val_acc"] > 0.2 and result.fit_seconds > 0
    ckpt = torch.load(result.best_checkpoint, weights_only=False)
    # The config, as resolved for this machine and data, is the hyperparameters.
    resolved = resolve(cfg, data=DataSize.of_split(dm.split))
    # ... with the thread count it trained with (a replay runs with it).
    assert ckpt["hyper_parameters"]["config"] == {**resolved.as_dict(), "threads": torch.get_num_threads()}
    assert resolved.is_resolved
    assert {k: v for k, v in cfg.as_dict().items() if v is not None}.items() <= resolved.as_dict().items()
    assert (dm.batch_size, dm.image_size) == (resolved.batch_size, resolved.image_size)
    assert (cfg.out / "checkpoints" / "last.ckpt").is_file()

    model = load_classifier(result.best_checkpoint)
    assert isinstance(model, LitClassifier) and model.hparams.class_names[0] == "airplane"
    tested = evaluate(cfg, cfg.out / "split.json", result.best_checkpoint)
    assert set(tested.metrics) == {"test_loss", "test_acc"}
    assert sum(r["support"] for r in tested.per_class) == 60 == sum(map(sum, tested.confusion))
    correct = sum(r["correct"] for r in tested.per_class)
    assert tested.metrics["test_acc"] == pytest.approx(correct / 60, abs=1e-6)

    with pytest.raises(OutputDirError, match="already holds checkpoints"):
        fit(cfg, cfg.out / "split.json")  # a fresh fit never overwrites a run's checkpoints


def test_resume_runs_only_the_remaining_epochs(make_config):
    first = make_config(max_epochs=1, wandb_mode="disabled")
    ImageDataModule.from_config(first).setup("fit")
    fit(first, first.out / "split.json")
    more = first.model_copy(update={"max_epochs": 3})
    result = fit(more, first.out / "split.json", resume=True)
    assert result.resumed_from.endswith("last.ckpt")
    assert (result.epochs_completed, result.epochs_this_run) == (3, 2)


def test_wandb_offline_run_holds_metrics_predictions_and_test_results(make_config, wandb_run_cleanup):
    cfg = make_config(max_epochs=2, prediction_samples=4)
    run = tracking.start_run(cfg)
    assert run is not None and tracking.run_info()["mode"] == "offline"
    ImageDataModule.from_config(cfg).setup("fit")
    fitted = fit(cfg, cfg.out / "split.json")
    tested = evaluate(cfg, cfg.out / "split.json", fitted.best_checkpoint)
    exported = export_model(cfg, fitted.best_checkpoint, tested.metrics, "fp123")
    tracking.finish_run()

    (run_dir,) = offline_run_dirs(cfg.out)
    wb = OfflineRun.load(run_dir)
    assert wb.config["max_epochs"] == 2 and wb.config["model"] == "seed_cnn"
    assert len(wb.values("val_acc")) == 2 and wb.values("train_loss_step")
    assert any(k.startswith("lr-Adam") for row in wb.history for k in row)  # LearningRateMonitor
    # The image-prediction logger: one panel per validation epoch, captions with class names.
    panels = wb.values("examples")
    assert len(panels) == 2 and all(len(p["captions"]) == 4 for p in panels)
    names = "|".join(tested.classes)
    assert all(re.fullmatch(f"Pred: ({names}), Label: ({names})", c) for c in panels[0]["captions"])
    assert len(wb.values("predictions")) == 2  # the W&B Table of the same predictions
    # After testing: 4 test images picked across the classes (seeded), captioned, once.
    (test_panel,) = wb.values("test/examples")
    assert len(test_panel["captions"]) == 4 and len(wb.values("test/predictions")) == 1
    assert all(re.fullmatch(f"Pred: ({names}), Label: ({names})", c) for c in test_panel["captions"])
    # The pictures themselves: the logged files decode to the test images' own pixels (they were
    # black when [0, 1] floats reached wandb, which reads floats as 0-255).
    import numpy as np
    from PIL import Image

    from cifar_lit.data.cifar import load_cifar
    from cifar_lit.data.panels import panel_indices

    images, labels = load_cifar(cfg.data_dir / "cifar-10-batches-py", "cifar10", train=False)
    originals = images[panel_indices(labels, 4, cfg.seed)]
    logged = np.stack([np.asarray(Image.open(run_dir / "files" / f).convert("RGB")) for f in test_panel["filenames"]])
    assert logged.shape == originals.shape and np.abs(logged.astype(int) - originals.astype(int)).max() <= 1
    assert wb.summary["test_acc"] == pytest.approx(tested.metrics["test_acc"])
    assert wb.values("test/confusion_matrix_table") and wb.values("test/per_class_accuracy")
    model = wb.artifact("model")
    # Only "latest": production is the promote stage's decision, and there is no blind "best".
    assert exported["logged"] and model.name == "cifar10-seed_cnn" and sorted(model.aliases) == ["latest"]
    files = {e.path: e.local_path for e in model.manifest.contents}
    assert files == {"model.pt": str(cfg.out / "model" / "model.pt"),
                     "model.pt2": str(cfg.out / "model" / "model.pt2"),
                     "model.onnx": str(cfg.out / "model" / "model.onnx"),
                     "model.ckpt": fitted.best_checkpoint}
    assert '"data_fingerprint":"fp123"' in model.metadata.replace(" ", "")


def test_unreachable_wandb_falls_back_to_offline_and_training_goes_on(make_config, monkeypatch, wandb_run_cleanup):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "3")
    cfg = make_config(wandb_mode="auto", max_epochs=1)
    assert tracking.resolve_mode("auto") == "online"
    tracking.start_run(cfg)
    assert tracking.run_info()["mode"] == "offline"
    ImageDataModule.from_config(cfg).setup("fit")
    assert fit(cfg, cfg.out / "split.json").epochs_completed == 1


def test_mode_resolution(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert tracking.resolve_mode("auto") == "offline"
    assert tracking.resolve_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert tracking.resolve_mode("auto") == "online"


def test_export_without_wandb_reports_not_logged(make_config):
    cfg = make_config(wandb_mode="disabled")
    ImageDataModule.from_config(cfg).setup("fit")
    ckpt = fit(cfg.model_copy(update={"max_epochs": 1}), cfg.out / "split.json").best_checkpoint
    exported = export_model(cfg, ckpt, {"test_acc": 0.5}, "fp")
    assert exported["logged"] is False and Path(exported["files"]["model"]).is_file()
    with pytest.raises(FileNotFoundError, match="best_checkpoint"):
        export_model(cfg, cfg.out / "missing.ckpt", {}, "fp")
