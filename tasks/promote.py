"""promote: the champion/challenger gate, recorded as a Prefect artifact and a Prefect event."""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from cifar_lit.config import TrainConfig
from cifar_lit.lifecycle.promote import decision_markdown, gate
from cifar_lit.lifecycle.registry import Registry
from cifar_lit.lifecycle.wandb_aliases import describe, record, reference

log = logging.getLogger(__name__)


@task(name="promote", cache_policy=NO_CACHE)
def promote_model(config: TrainConfig, model_files: dict, split_file: Path, card: dict, artifact_key: str,
                  wandb_artifact: str | None = None) -> dict:
    """Register the model as production iff it beats production on the same test split
    (``wandb_artifact``: this run's W&B model version, given the same alias on W&B: at once when
    the run is online, else queued beside the registry; see ``cifar_lit.lifecycle.wandb_aliases``)."""
    ref = reference(config.model_name(), wandb_artifact)
    if ref is not None:  # the card says which W&B model this version is, for every later alias change
        card = {**card, "wandb": ref}
    decision = gate(config, {k: Path(v) for k, v in model_files.items()}, split_file, card)
    create_markdown_artifact(decision_markdown(decision), key=artifact_key, description="champion vs challenger")
    # Automations act on these: prefect.yaml's batch-predict deployments run on every new
    # production model (their parameters come from this payload), and a notification can too.
    registry = str(Path(config.registry).resolve())
    resource = {"prefect.resource.id": f"cifar_lit.model.{decision.name}", "prefect.resource.name": decision.name,
                "cifar_lit.registry": registry}
    if decision.version:
        resource["cifar_lit.version"] = decision.version
    emit_event(
        event=f"cifar_lit.model.{'promoted' if decision.promoted else 'rejected'}",
        resource=resource,
        payload={k: v for k, v in decision.to_dict().items() if k != "per_class"} | {"registry": registry},
    )
    result = decision.to_dict()
    if decision.promoted and ref is not None:
        try:
            result["wandb"] = record(Registry(config.registry), decision.name, "production", decision.version,
                                     offline="the run is offline" if ref["offline"] else None)
        except Exception as e:  # noqa: BLE001 - the file registry is the record; W&B mirrors it
            result["wandb"] = {"applied": {}, "waiting": {"production": f"{type(e).__name__}: {str(e)[:200]}"}}
        line = describe(result["wandb"])
        if line:
            (log.info if not result["wandb"]["waiting"] else log.warning)("%s", line)
    return result
