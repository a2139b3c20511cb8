"""The training flow: download -> split -> fit -> test -> export, with caching and retries.

    python flows/train_flow.py                      # CIFAR-10, the default recipe
    python flows/train_flow.py --recipe seed --max-epochs 5 --wandb-mode offline
    python flows/train_flow.py --help               # every flag, from TrainConfig

Runs on Prefect's ephemeral API when no server is configured; with PREFECT_API_URL set, the run
shows up in that server's UI.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact
from prefect.runtime import flow_run

from cifar_lit import tracking
from cifar_lit.config import TrainConfig
from cifar_lit.data.split import split_file_path, stage_split
from cifar_lit.summary import build_summary, json_safe, summary_markdown, write_summary
from tasks import download_data, evaluate_model, export_checkpoint, fit_model, split_data
from tasks.download import data_state


def _run_name() -> str:
    config = flow_run.parameters.get("config") or TrainConfig()
    if isinstance(config, dict):
        config = TrainConfig(**config)
    return config.run_name()


def _artifact_key(config: TrainConfig, what: str) -> str:
    # Artifact keys allow lowercase letters, digits and dashes; one key per dataset/model keeps
    # a history of versions in the UI.
    return f"{config.dataset}-{config.model}-{what}".lower().replace("_", "-")


DEFAULT_CONFIG = TrainConfig()


@flow(name="train", flow_run_name=_run_name, log_prints=True)
def train_flow(config: TrainConfig = DEFAULT_CONFIG) -> dict:
    """Train, test and export an image classifier; returns the run summary."""
    logger = get_run_logger()
    config = config.with_output_dir(flow_run.get_name())
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    logger.info("output dir: %s", out.resolve())
    progress = create_progress_artifact(
        0.0, key=_artifact_key(config, "progress"), description=f"fit progress of {out.name}"
    )
    tracking.start_run(config, name=out.name)
    try:
        # Cached stages re-run on their own when their output is gone from disk.
        fresh_data = data_state(config.dataset, config.data_dir, config.download_md5) is None
        ref = download_data.with_options(refresh_cache=fresh_data)(
            config.dataset, config.data_dir, config.download_url, config.download_md5, config.bad_images
        )
        split_path = split_file_path(ref, config.val_size, config.test_size, config.seed, config.data_dir)
        split_file = split_data.with_options(refresh_cache=not split_path.is_file())(
            ref, config.val_size, config.test_size, config.seed, config.data_dir
        )
        staged = stage_split(split_file, out)
        fitted = fit_model(config, staged, progress)
        tested = evaluate_model(config, staged, Path(fitted["best_checkpoint"]))
        fingerprint = split_path.stem.removeprefix("split-")
        exported = export_checkpoint(config, Path(fitted["best_checkpoint"]), tested["metrics"], fingerprint)
        summary = build_summary(config, fitted, tested, exported, fingerprint, tracking.run_info(), len(ref.skipped))
    finally:
        tracking.finish_run()
    write_summary(out / "summary.json", summary)
    create_markdown_artifact(summary_markdown(summary), key=_artifact_key(config, "summary"), description="run summary")
    create_table_artifact(
        json_safe(tested["per_class"]), key=_artifact_key(config, "per-class"), description="per-class test accuracy"
    )
    logger.info("test_acc %.4f; summary: %s", summary["test_acc"], out / "summary.json")
    return summary


def main(argv: list[str] | None = None) -> dict:
    from cifar_lit.cli import parse_config

    config = parse_config(argv, prog="train_flow.py")
    return train_flow(config)


if __name__ == "__main__":
    main(sys.argv[1:])
