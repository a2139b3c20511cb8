"""The predict flow: classify image files and folders with a registered model, into a CSV.

    python flows/predict_flow.py --registry-dir runs/registry --input photos/ --output preds.csv
    python flows/predict_flow.py --model runs/<run>/model/model.pt --input a.png b.jpg
    python flows/predict_flow.py --help

Columns: path, prediction, confidence, top1..top3 with their probabilities, error (an unreadable
file is a row with its reason). A missing registry, alias or model file exits 2 with one line.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flows.command import check_install, check_prefect, prefect_defaults, program, refuse_early, run_or_exit

PROG = program("predict_flow.py")
if __name__ == "__main__":  # --help and flag errors answer here, before the heavy imports below
    from cifar_lit.cli import parse_config
    from cifar_lit.config import PredictConfig
    from cifar_lit.run.rundir import check_output
    from flows.temporary_api import TemporaryAPI

    CLI_CONFIG = parse_config(sys.argv[1:], prog=PROG, model=PredictConfig)
    refuse_early(PROG, lambda: check_output(Path(CLI_CONFIG.output)))  # before a server starts
    check_prefect(PROG)  # a dead or wrong PREFECT_API_URL, an unwritable PREFECT_HOME: one line
    API = TemporaryAPI()  # boots while torch is imported below; the flow waits for it
    check_install(PROG)  # a broken torch/torchvision pair is one line, not a traceback

prefect_defaults()
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from cifar_lit.config import PredictConfig
from cifar_lit.lifecycle.predict import predict_to_csv


@task(name="predict", cache_policy=NO_CACHE)
def predict_files(config: PredictConfig) -> dict:
    """Classify every image under config.input and write config.output."""
    return predict_to_csv(config)


@flow(name="predict", log_prints=True)
def predict_flow(config: PredictConfig) -> dict:
    """Classify images with a registry model (or a model file); returns what was written."""
    from cifar_lit.lifecycle.predict import resolve_model
    from tasks.lineage import materializing, model_asset, predictions_asset

    # Resolved once, so the alias cannot move between the lineage and the predictions: the CSV is
    # an asset made from the model version it used (... -> model vN -> predictions).
    config = config.model_copy(update={"model": resolve_model(config)})
    result = materializing(predict_files, predictions_asset(config.output), [model_asset(config.model)])(config)
    create_table_artifact(result["counts"], key="predicted-class-counts", description=f"predictions of {result['model']}")
    get_run_logger().info("%d images (%d unreadable) -> %s", result["images"], result["errors"], result["output"])
    return result


def main(argv: list[str] | None = None, config: PredictConfig | None = None) -> dict:
    from cifar_lit.cli import fail, parse_config
    from cifar_lit.lifecycle.model_file import ModelFileError, read_model
    from cifar_lit.lifecycle.predict import resolve_model
    from cifar_lit.lifecycle.registry import RegistryError
    from cifar_lit.run.rundir import OutputDirError, check_output

    config = config or parse_config(argv, prog=PROG, model=PredictConfig)
    try:  # before any flow run exists: a wrong name, path or file is the user's one-line error
        check_output(Path(config.output))
        read_model(resolve_model(config))
    except (RegistryError, ModelFileError) as e:
        fail(PROG, str(e))
    except OutputDirError as e:
        fail(PROG, f"--{str(e)}")
    return run_or_exit(PROG, lambda: predict_flow(config))


if __name__ == "__main__":
    from cifar_lit.run.signals import exit_cleanly_on_signals

    exit_cleanly_on_signals()
    main(config=CLI_CONFIG)
