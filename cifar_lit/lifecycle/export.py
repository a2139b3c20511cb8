"""Export: the tested checkpoint as a self-contained model (``cifar_lit.lifecycle.model_file``) in the run's
``model/`` folder, logged to W&B as a ``model`` artifact with the alias ``latest``.

``production`` is not given here: the promote stage (``cifar_lit.lifecycle.promote``) decides it. Online,
the run first uses a ``dataset`` artifact (a reference to the data with its fingerprint, not a
copy), so W&B's lineage graph reads dataset -> run -> model, and the call waits for the upload so
that a network failure raises where the task can retry. Offline (W&B cannot use artifacts
then) the artifact references the files in place and ``wandb sync`` uploads it later; its
metadata still holds the data fingerprint and the split.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cifar_lit.config import TrainConfig
from cifar_lit.lifecycle.model_file import contract, package, read_model
from cifar_lit.run.provenance import code_version, git_commit

log = logging.getLogger(__name__)


def model_dir(config: TrainConfig) -> Path:
    return config.out / "model"


def package_model(config: TrainConfig, checkpoint: Path, portable: bool = True) -> dict[str, str]:
    """``model.pt``, ``model.pt2`` and ``model.onnx`` for ``checkpoint`` under ``<output_dir>/model``,
    at the image size the checkpoint was trained at (the exported programs are checked against
    the network on an example batch of that size)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"best_checkpoint: {checkpoint} does not exist")
    return {k: str(v) for k, v in package(checkpoint, model_dir(config), portable).items()}


def export_model(
    config: TrainConfig,
    checkpoint: Path,
    test_metrics: dict[str, float],
    data_fingerprint: str,
    split_file: Path | None = None,
    portable: bool = True,
) -> dict[str, Any]:
    """Package ``checkpoint`` and log it to the active W&B run (no W&B: ``logged=False``);
    ``portable=False``: ``model.pt`` only (a sweep's trial)."""
    files = package_model(config, checkpoint, portable)
    doc = read_model(Path(files["model"]))
    metadata = {
        "image_size": doc["image_size"],  # the side of the images it takes
        "contract": contract(doc),  # what model.pt2 and model.onnx take and give
        "test_metrics": test_metrics,
        "config": config.as_dict(),
        "data_fingerprint": data_fingerprint,
        "split_file": str(split_file) if split_file else None,
        "code_version": code_version(),
        "git_commit": git_commit(),
        "checkpoint_file": Path(checkpoint).name,
    }
    import wandb

    run = wandb.run
    name = config.model_name()
    result = {"logged": False, "name": name, "files": files, "metadata": metadata}
    if run is None:
        return result
    if not run.offline:
        run.use_artifact(dataset_artifact(config, data_fingerprint, split_file))
    artifact = wandb.Artifact(name, type="model", metadata=metadata)
    for path in files.values():
        artifact.add_file(path, policy="immutable")
    artifact.add_file(str(checkpoint), name="model.ckpt", policy="immutable")
    logged = run.log_artifact(artifact, aliases=["latest"])
    if run.offline:  # numbered by `wandb sync`, later
        return result | {"logged": True, "aliases": ["latest"], "offline": True, "version": None}
    logged.wait()  # surface upload errors here, where the task can retry
    # This run's own version: the one the gate judges. `latest` may be another run's by the time
    # the promotion is mirrored (two runs exporting at once).
    return result | {"logged": True, "aliases": ["latest"], "offline": False, "version": logged.version,
                     "path": f"{run.entity}/{run.project}/{name}:{logged.version}"}


def dataset_artifact(config: TrainConfig, fingerprint: str, split_file: Path | None):
    """The data as a W&B ``dataset`` artifact: a reference to the folder plus the split file."""
    import wandb

    artifact = wandb.Artifact(f"{config.dataset_name()}-data", type="dataset",
                              metadata={"fingerprint": fingerprint, "dataset": config.dataset})
    # A reference, not a copy: W&B records the location; the fingerprint says what was there.
    artifact.add_reference(Path(config.data_dir).resolve().as_uri(), name="data", checksum=False)
    if split_file is not None:
        artifact.add_file(str(split_file), name="split.json")
    return artifact
