"""The training flow: download -> split -> fit -> test -> export -> promote, with caching and retries.

A run whose data, code and config made the current production model is skipped (``--force``
retrains); a trained model becomes production only if it beats production on the same test split.

    python flows/train_flow.py                      # CIFAR-10, the default recipe
    python flows/train_flow.py --recipe seed --max-epochs 5 --wandb-mode offline
    python flows/train_flow.py --help               # every flag, from TrainConfig

Runs on Prefect's ephemeral API when no server is configured; with PREFECT_API_URL set, the run
shows up in that server's UI.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from flows.command import check_install, check_prefect, prefect_defaults, program, refuse_early, run_or_exit
from flows.temporary_api import TemporaryAPI

PROG = program("train_flow.py")
prefect_defaults()
if __name__ == "__main__":  # --help and flag errors answer here, before the heavy imports below
    from cifar_lit.cli import parse_config
    from cifar_lit.run.rundir import check_places

    CLI_CONFIG = parse_config(sys.argv[1:], prog=PROG)
    refuse_early(PROG, lambda: check_places(CLI_CONFIG))  # before a server starts
    # The API server boots while torch and Lightning are imported below; any wait left for it
    # goes to importing W&B, which the run imports next.
    check_prefect(PROG)  # a dead or wrong PREFECT_API_URL, an unwritable PREFECT_HOME: one line
    API = TemporaryAPI(preload=("wandb", "wandb.apis.public") if CLI_CONFIG.wandb_mode != "disabled" else ())
    check_install(PROG)  # a broken torch/torchvision pair is one line, not a traceback
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact
from prefect.assets import Asset, add_asset_metadata
from prefect.runtime import flow_run
from prefect.states import Failed

from cifar_lit.config import TrainConfig
from cifar_lit.data.formats import on_disk
from cifar_lit.data.split import Split, data_counts, split_file_path, stage_split
from cifar_lit.files.atomic import write_json_atomic
from cifar_lit.lifecycle.export import model_dir
from cifar_lit.lifecycle.model_file import MODEL_FILE, ONNX_FILE, PROGRAM_FILE, contract, read_model
from cifar_lit.lifecycle.promote import card, unchanged
from cifar_lit.lifecycle.registry import Registry
from cifar_lit.machine.checks import MachineError, check_machine
from cifar_lit.recipes.plan import DataSize, plan, recipe_summary, resolve
from cifar_lit.run import tracking
from cifar_lit.run.rundir import OutputDirError, check_places, check_writable, own_output_dir
from cifar_lit.run.summary import build_summary, json_safe, skipped_summary, summary_markdown, write_summary
from cifar_lit.training.train import replayable
from cifar_lit.tuning.trial import TRIAL_CARD, TrialRef
from tasks import download_data, evaluate_model, export_checkpoint, fit_model, promote_model, split_data
from tasks.lineage import data_asset, materializing, model_asset, record, split_asset


def _run_name() -> str:
    trial = flow_run.parameters.get("trial")
    if trial:  # a sweep's trial, in its process or as a deployment's run: named in the study
        return (TrialRef(**trial) if isinstance(trial, dict) else trial).run_name
    config = flow_run.parameters.get("config") or TrainConfig()
    if isinstance(config, dict):
        config = TrainConfig(**config)
    return resolve(config).run_name()


def _artifact_key(config: TrainConfig, what: str) -> str:
    # Artifact keys allow lowercase letters, digits and dashes; one key per model name (dataset
    # name + network) keeps a history of versions in the UI.
    return re.sub(r"[^a-z0-9-]", "-", f"{config.model_name()}-{what}".lower())


DEFAULT_CONFIG = TrainConfig()


@flow(name="train", flow_run_name=_run_name, log_prints=True)
def train_flow(config: TrainConfig = DEFAULT_CONFIG, trial: TrialRef | None = None) -> dict:
    """Train, test, export and promote an image classifier; returns the run summary.
    ``trial``: the run is that trial of a sweep (flows/sweep_flow.py): it reports to the study,
    may be pruned, and leaves the gate to the sweep, which sends only its best trial."""
    # The recipe for this machine, once (cifar_lit.recipes); the data's share after the split.
    config = resolve(config).with_output_dir(flow_run.get_name())
    with own_output_dir(config.out, resume=config.resume):
        return _train(config, trial)


def _train(config: TrainConfig, trial: TrialRef | None = None) -> dict:
    logger = get_run_logger()
    check_machine(config)  # before any data work
    check_writable(config.registry, "registry_dir")  # not only after fit, test and export
    out = config.out
    logger.info("output dir: %s", out.resolve())
    # Cached stages re-run on their own when their output is gone from disk.
    fresh_data = on_disk(config.dataset, config.data_dir, config.download_md5, config.val_dir, config.test_dir) is None
    ref = download_data.with_options(refresh_cache=fresh_data)(
        config.dataset, config.data_dir, config.download_url, config.download_md5, config.bad_images,
        exclude=(config.out, config.registry), val_dir=config.val_dir, test_dir=config.test_dir,
    )
    split_path = split_file_path(ref, config.val_size, config.test_size, config.seed, config.data_dir, config.min_per_class)
    lineage = [data_asset(config.data_dir, config.dataset), split_asset(split_path)]  # data -> split -> model
    split_file = materializing(split_data, lineage[1], lineage[:1]).with_options(refresh_cache=not split_path.is_file())(
        ref, config.val_size, config.test_size, config.seed, config.data_dir, config.min_per_class
    )
    fingerprint = split_path.stem.removeprefix("split-")
    staged = stage_split(split_file, out)
    # Batch size, epochs and image size for this data: a few hundred photos get smaller batches
    # and more epochs than CIFAR's 50,000 images (what the user gave is kept).
    recipe = plan(config, data=DataSize.of_split(Split.read(staged)))
    config = recipe.config
    write_json_atomic(out / "config.json", config.as_dict(), indent=2)  # as resolved; the fit's decisions follow
    for note in (recipe.budget_note(), recipe.describe()):
        if note:
            logger.info("%s", note)

    match = None if config.force or trial else unchanged(config, fingerprint)
    if match is not None:  # the nightly case: nothing to learn that production does not know
        summary = skipped_summary(config, match, fingerprint)
        write_summary(out / "summary.json", summary)
        create_markdown_artifact(summary_markdown(summary), key=_artifact_key(config, "summary"), description="run summary")
        logger.info("skipped: %s %s was made from the same data, code and config (--force retrains)",
                    match.name, match.version)
        return summary

    progress = create_progress_artifact(
        0.0, key=_artifact_key(config, "progress"), description=f"fit progress of {out.name}"
    )
    tracking.start_run(config, name=out.name, group=trial.study if trial else None)
    try:
        fitted = fit_model(config, staged, progress, trial)
        # What replays this run: --config runs/<run>/config.json
        write_json_atomic(out / "config.json", replayable(config, fitted).as_dict(), indent=2)
        tested = evaluate_model(config, staged, Path(fitted["best_checkpoint"]))
        data = data_counts(Split.read(staged), tested["classes"], ref.skipped_reasons)
        if data["test"] is None:  # CIFAR's test batch is not in the split: count what was tested
            data["test"] = sum(map(sum, tested["confusion"]))
        parts = dict(config=replayable(config, fitted), fit=fitted, test=tested, data_fingerprint=fingerprint, data=data,
                     recipe=recipe_summary(recipe))
        model_card = card(config, tested, fingerprint, out.name, fitted)
        # Written before anything talks to W&B or the registry: a later failure loses nothing.
        write_summary(out / "summary.json", build_summary(**parts, wandb=tracking.run_info()))
        export_state = export_checkpoint(
            # A trial leaves model.pt2 and model.onnx to the sweep: only its best one is registered.
            config, Path(fitted["best_checkpoint"]), tested["metrics"], fingerprint, staged, portable=trial is None,
            return_state=True,
        )
        exported, export_error = _exported(config, export_state, portable=trial is None)
        # What a caller of model.pt2 / model.onnx (or of the server) sends and gets back.
        model_card["contract"] = contract(read_model(Path(exported["files"]["model"])))
        if trial is None:
            promotion = promote_model(config, exported["files"], staged, model_card, _artifact_key(config, "promotion"),
                                      exported.get("path"))
            if promotion.get("promoted"):
                _record_version(config, promotion, lineage[1])
        else:  # what the sweep's gate needs of this trial, should it be the best
            write_json_atomic(out / TRIAL_CARD, {"card": model_card, "files": exported["files"],
                                                 "wandb_artifact": exported.get("path")})
            promotion = {"promoted": False, "reason": f"trial {trial.number} of sweep {trial.study}: the sweep sends "
                         "its best trial through the gate"}
        summary = build_summary(**parts, wandb=tracking.run_info(), export=exported, promotion=promotion)
        if trial is not None:
            summary |= {"pruned": fitted["trial"]["pruned"], "trial": fitted["trial"]}
    finally:
        tracking.finish_run()
    write_summary(out / "summary.json", summary)
    create_markdown_artifact(summary_markdown(summary), key=_artifact_key(config, "summary"), description="run summary")
    create_table_artifact(
        json_safe(tested["per_class"]), key=_artifact_key(config, "per-class"), description="per-class test accuracy"
    )
    if data["per_class"]:  # image folders: how many images of each class each split used
        rows = [{"class": name, **n} for name, n in data["per_class"].items()]
        create_table_artifact(rows, key=_artifact_key(config, "data"),
                              description=f"images per class and split ({data['skipped']} files skipped)")
    for warning in summary["warnings"]:
        logger.warning("the model may not have learned: %s", warning)
    if summary["test_split_warning"]:
        logger.warning("%s", summary["test_split_warning"])
    logger.info("test_acc %.4f (test-time augmentation: %s); %s; summary: %s", summary["test_acc"],
                summary["tta"]["test_acc"], promotion["reason"], out / "summary.json")
    if export_error:  # everything else is done and on disk; the run must still not look Completed
        return Failed(message=export_error, data=summary)
    return summary


def _record_version(config: TrainConfig, promotion: dict, split: Asset) -> None:
    """The new registry version as an asset made from the split (and so from the data)."""
    version = Registry(config.registry).get(promotion["name"], version=promotion["version"])
    asset = model_asset(version.file("model"))

    def registered() -> None:
        add_asset_metadata(asset, {"version": version.version, "test_acc": version.card.get("metrics", {}).get("test_acc"),
                                   "run": version.card.get("run_name")})

    record(registered, asset, [split], name="registered")()


def _exported(config: TrainConfig, state, portable: bool = True) -> tuple[dict, str | None]:
    """The export result, or, when only the W&B upload failed (the model files were written
    first), a local-only result and a one-line message with the command that uploads later."""
    if not state.is_failed():
        return state.result(), None
    files = {"model": model_dir(config) / MODEL_FILE}
    if portable:
        files |= {"program": model_dir(config) / PROGRAM_FILE, "onnx": model_dir(config) / ONNX_FILE}
    error = state.message or "failed"
    try:
        state.result()
    except Exception as e:  # noqa: BLE001 - the export task's own failure, reported below
        error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    if not all(f.is_file() for f in files.values()):
        raise RuntimeError(f"export: {error}")
    sync = tracking.run_info().get("dir")
    message = f"export: W&B upload failed ({error}); the model and results are in {config.out}" + (
        f"; upload later with: wandb sync {sync}" if sync else "")
    local = {"logged": False, "error": message, "name": config.model_name(), "files": {k: str(v) for k, v in files.items()}}
    return local, message


def main(argv: list[str] | None = None, config: TrainConfig | None = None, api: TemporaryAPI | None = None) -> dict:
    """The command line: flags (or an already parsed ``config``) to a finished run. A failure
    the user can act on (no network, a bad folder, a diverged fit) ends with one line, exit 1."""
    from cifar_lit.cli import fail, flag, parse_config

    config = config or parse_config(argv, prog=PROG)
    try:  # the user's one-line error, before any flow run exists (the flow checks again)
        check_machine(config)
        check_places(config)
    except (MachineError, OutputDirError) as e:
        field, _, message = str(e).partition(": ")
        fail(PROG, f"{flag(field)}: {message}")

    def run() -> dict:
        if api is not None:
            api.wait()
        return train_flow(config)

    return run_or_exit(PROG, run)


if __name__ == "__main__":
    from cifar_lit.run.signals import exit_cleanly_on_signals

    exit_cleanly_on_signals()
    main(config=CLI_CONFIG, api=API)
