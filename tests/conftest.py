"""Shared fixtures: isolated Prefect/W&B state, tiny CIFAR archives served on 127.0.0.1, tiny
image folders, and a shrunken real TrainConfig (CPU, no workers, few images)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Before Prefect or W&B are imported anywhere: keep their state out of the user's home, in a
# folder removed when the session ends (atexit: after the Prefect test server has stopped).
_STATE = Path(tempfile.mkdtemp(prefix="cifar-lit-tests-"))
atexit.register(shutil.rmtree, _STATE, ignore_errors=True)
os.environ["PREFECT_HOME"] = str(_STATE / "prefect")
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_STATE / "prefect" / "storage")
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
    os.environ[var] = str(_STATE / var.lower())
os.environ.pop("WANDB_API_KEY", None)
os.environ.pop("WANDB_MODE", None)
os.environ["WANDB_SILENT"] = "true"
os.environ["NETRC"] = str(_STATE / "netrc")  # no stored W&B login
os.environ["CIFAR_LIT_CACHE"] = str(_STATE / "cifar_lit")  # the machine probe's cache (cifar_lit.machine.probe)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One worker per core: torch's default of a thread per core in every worker (and in every
    # process a test starts) would put two spinning thread pools on each core, which took the
    # suite's CPU time up by half instead of its wall time down.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import fakes  # noqa: E402

from cifar_lit.config import TrainConfig  # noqa: E402


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (pyproject.toml): a worker per core this process may use, at most 4. Each
    worker starts its own Prefect test server and trains its own tiny model; past four workers
    those fixed costs and the longest file (the deployment tests) outweigh the split."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


@pytest.fixture(scope="session")
def archives() -> dict[str, bytes]:
    return {
        "cifar10": fakes.cifar_archive("cifar10", n_train=200, n_test=60),
        "cifar100": fakes.cifar_archive("cifar100", n_train=300, n_test=100),
    }


@pytest.fixture
def server(archives):
    srv = fakes.FileServer({f"/{name}.tar.gz": data for name, data in archives.items()}).start()
    yield srv
    srv.stop()


@pytest.fixture
def make_config(tmp_path, server, archives):
    """A real TrainConfig, shrunk: tiny CIFAR from the local server, CPU, W&B offline."""

    def make(**overrides) -> TrainConfig:
        dataset = overrides.get("dataset", "cifar10")
        base = dict(
            recipe="seed",
            dataset=dataset,
            data_dir=tmp_path / "data",
            val_size=40,
            batch_size=16,
            max_epochs=2,
            num_workers=0,
            accelerator="cpu",
            devices=1,
            prediction_samples=4,
            wandb_mode="offline",
            output_dir=tmp_path / "out",
            runs_dir=tmp_path / "runs",  # and so the model registry, runs/registry, stays in tmp
        )
        if dataset != "imagefolder":
            base.update(download_url=server.url(f"/{dataset}.tar.gz"), download_md5=fakes.md5(archives[dataset]))
        base.update(overrides)
        return TrainConfig(**base)

    return make


@pytest.fixture
def crashed_fit(monkeypatch):
    """``crashed_fit(config, split_file)``: a real fit that crashes at the start of its second
    epoch (a RuntimeError), leaving its first epoch's last.ckpt for a resume."""
    from cifar_lit.training.module import LitClassifier
    from cifar_lit.training.train import fit

    def crash_in_second_epoch(self):
        if self.current_epoch == 1:
            raise RuntimeError("injected crash")

    def run(config: TrainConfig, split_file: Path) -> None:
        with monkeypatch.context() as patched:
            patched.setattr(LitClassifier, "on_train_epoch_start", crash_in_second_epoch)
            with pytest.raises(RuntimeError, match="injected crash"):
                fit(config, split_file)

    return run


@pytest.fixture
def wandb_run_cleanup():
    yield
    from cifar_lit.run.tracking import finish_run

    finish_run()


@pytest.fixture(scope="session")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_model(archives, tmp_path_factory) -> Path:
    """One small trained model (``model.pt``, the tutorial's CNN, 1 epoch on the tiny CIFAR-10),
    trained once per session for the tests that only need a model to use."""
    from cifar_lit.data.datamodule import ImageDataModule
    from cifar_lit.lifecycle.model_file import package
    from cifar_lit.training.train import fit

    root = tmp_path_factory.mktemp("tiny-model")
    srv = fakes.FileServer({"/cifar10.tar.gz": archives["cifar10"]}).start()
    try:
        cfg = TrainConfig(recipe="seed", data_dir=root / "data", download_url=srv.url("/cifar10.tar.gz"),
                          download_md5=fakes.md5(archives["cifar10"]), val_size=40, batch_size=16, max_epochs=1,
                          num_workers=0, accelerator="cpu", devices=1, prediction_samples=0, wandb_mode="disabled",
                          output_dir=root / "out")
        ImageDataModule.from_config(cfg).setup("fit")
    finally:
        srv.stop()
    fitted = fit(cfg, cfg.out / "split.json")
    return package(Path(fitted.best_checkpoint), root / "model")["model"]
