"""Export: the best checkpoint as a W&B model artifact (aliases ``latest`` and ``best``).

Offline, the artifact is recorded in the offline run and references the checkpoint in place
(``policy="immutable"``), so ``wandb sync`` uploads it later. Online, the call waits for the
upload so that a network failure raises (and the Prefect task retries it).
"""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path
from typing import Any

from cifar_lit.config import TrainConfig

log = logging.getLogger(__name__)


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def artifact_name(config: TrainConfig) -> str:
    # W&B artifact names allow letters, digits, '-', '_' and '.'.
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{config.dataset}-{config.model}")


def export_model(
    config: TrainConfig, checkpoint: Path, test_metrics: dict[str, float], data_fingerprint: str
) -> dict[str, Any]:
    """Log ``checkpoint`` to the active W&B run; return what was logged (no W&B: ``logged=False``)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"best_checkpoint: {checkpoint} does not exist")
    metadata = {
        "test_metrics": test_metrics,
        "config": config.as_dict(),
        "data_fingerprint": data_fingerprint,
        "git_commit": git_commit(Path(__file__).parent),
        "checkpoint_file": checkpoint.name,
    }
    import wandb

    run = wandb.run
    name = artifact_name(config)
    if run is None:
        return {"logged": False, "name": name, "metadata": metadata}
    artifact = wandb.Artifact(name, type="model", metadata=metadata)
    artifact.add_file(str(checkpoint), name="model.ckpt", policy="immutable")
    logged = run.log_artifact(artifact, aliases=["latest", "best"])
    if not run.offline:
        logged.wait()  # surface upload errors here, where the task can retry
    return {"logged": True, "name": name, "aliases": ["latest", "best"], "offline": run.offline, "metadata": metadata}
