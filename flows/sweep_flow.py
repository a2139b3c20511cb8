"""The sweep flow: an Optuna study whose trials are train runs; the best one goes through the gate.

    python flows/sweep_flow.py --trials 20                       # CIFAR-10, lr/smoothing/decay around the recipe
    python flows/sweep_flow.py --trials 30 --space space.yaml --study lr-search --max-epochs 10
    python flows/sweep_flow.py --trials 40 --deployment train/cifar10-trials-k8s --concurrency 4
    python flows/sweep_flow.py --help                            # every training flag, then the sweep's

Each trial is a child flow run of the train flow (or a run of a train deployment on its work
pool) named ``<study>-trial-NNNN``, with its own output dir, summary and W&B run (grouped by
study). It reports validation accuracy each epoch; the pruner stops poor ones early (they end
Completed, ``pruned: true``). Running again with a larger ``--trials`` adds only the missing
trials; a killed sweep's cut-off trial runs again with the same values. At the end: the trials'
table (a Prefect artifact and ``trials.csv``), ``history.png``, the best trial's replayable
``config.json``, and that trial's model through the champion/challenger gate.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from flows.command import check_install, check_prefect, prefect_defaults, program, run_or_exit

PROG = program("sweep_flow.py")
# --help's first line and its examples: the docstring's.
ABOUT = (__doc__.splitlines()[0], "examples:\n" + "\n".join(line for line in __doc__.splitlines() if "python flows/" in line))
prefect_defaults()
if __name__ == "__main__":  # --help and flag errors answer here, before the heavy imports below
    from cifar_lit.cli import parse_config
    from cifar_lit.tuning.study import SweepConfig
    from flows.temporary_api import TemporaryAPI

    CLI_CONFIG, CLI_SWEEP = parse_config(sys.argv[1:], prog=PROG, extra=("sweep", SweepConfig, *ABOUT))
    check_prefect(PROG)
    API = TemporaryAPI(preload=("wandb",) if CLI_CONFIG.wandb_mode != "disabled" else ())
    check_install(PROG)
    try:
        import matplotlib  # noqa: F401
        import optuna  # noqa: F401
    except ImportError as e:
        sys.exit(f"{PROG}: error: a sweep needs {e.name}: pip install 'cifar-lit[sweep]'")
from optuna.trial import TrialState
from prefect import flow, get_client, get_run_logger
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.concurrency.sync import concurrency
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from cifar_lit.config import TrainConfig
from cifar_lit.files.atomic import write_json_atomic
from cifar_lit.files.locks import env_seconds
from cifar_lit.lifecycle.model_file import add_portable
from cifar_lit.recipes.plan import default_val_size, resolve
from cifar_lit.run.summary import json_safe
from cifar_lit.tuning.space import Space, build_space, default_space, read_space
from cifar_lit.tuning.study import (
    HEARTBEAT_ENV,
    TRIAL_LIMIT,
    SweepConfig,
    SweepError,
    counts,
    open_study,
    plot,
    quiet_experimental,
    storage_url,
    study_name,
    sweep_dir,
    table,
    trial_folder,
    write_csv,
)
from cifar_lit.tuning.trial import TRIAL_CARD, TrialRef, without_password
from flows.train_flow import train_flow
from tasks import promote_model

DEFAULT_SWEEP = SweepConfig()


class TrialFailed(RuntimeError):
    """A trial's train run did not complete; the study records the trial as failed."""


class Objective:
    """One trial: the base config with the trial's values, trained as a train run; its value is
    the run's best validation accuracy."""

    def __init__(self, base: TrainConfig, sweep: SweepConfig, space: Space, url: str, name: str, out: Path) -> None:
        self.base, self.sweep, self.space, self.url, self.name, self.out = base, sweep, space, url, name, out

    def __call__(self, trial) -> float:
        import optuna

        values = self.space.suggest(trial)
        out = trial_folder(self.out, trial.number)
        trial.set_user_attr("output_dir", str(out))
        config = self.base.model_copy(update={**values, "output_dir": out, "force": True, "resume": False})
        ref = TrialRef(storage=self.url, study=self.name, number=trial.number, pruner=self.sweep.pruner)
        run_name = ref.run_name
        # Held while the trial trains, wherever it runs; renewed while held, so a killed sweep's
        # slot is free again a minute later (the shortest lease Prefect's server grants).
        with concurrency(TRIAL_LIMIT, occupy=1, lease_duration=60):
            if self.sweep.deployment:
                run = run_deployment(self.sweep.deployment, parameters={"config": config.as_dict(), "trial": ref},
                                     flow_run_name=run_name, timeout=None)
                state = run.state
            else:
                state = train_flow(config, trial=ref, return_state=True)  # the flow names its run ref.run_name
        if state is None or not state.is_completed():
            message = (state.message if state else None) or "the run did not finish"
            trial.set_user_attr("error", message.splitlines()[0][:300])
            raise TrialFailed(f"trial {trial.number}: {run_name}: {message.splitlines()[0][:300]}")
        summary = json.loads((out / "summary.json").read_text())
        for key, field in (("test_acc", "test_acc"), ("fit_seconds", "fit_seconds"), ("epochs", "epochs_completed")):
            trial.set_user_attr(key, summary.get(field))
        if summary.get("pruned"):
            raise optuna.TrialPruned(f"pruned after epoch {summary['trial']['pruned_at_epoch']}")
        value = summary.get("best_val_acc") if summary.get("best_val_acc") is not None else summary.get("val_acc")
        if value is None:
            raise TrialFailed(f"trial {trial.number}: {run_name} recorded no validation accuracy")
        return float(value)


def prepare(config: TrainConfig, sweep: SweepConfig) -> tuple[TrainConfig, Space]:
    """The trials' base config (the recipe resolved, with validation images) and the checked
    search space: a bad one is a one-line error before any training."""
    if config.val_size == 0:
        raise SweepError("val_size: a sweep compares its trials on validation images; give --val-size above 0")
    if config.val_size is None:  # the fast recipes hold none back: a sweep needs them
        config = config.model_copy(update={"val_size": default_val_size(config.dataset)})
    base = resolve(config)
    base = base.model_copy(update={"output_dir": None})
    return base, build_space(read_space(sweep.space), base) if sweep.space else default_space(base)


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    config, sweep = params.get("config") or TrainConfig(), params.get("sweep") or DEFAULT_SWEEP
    config = TrainConfig(**config) if isinstance(config, dict) else config
    sweep = SweepConfig(**sweep) if isinstance(sweep, dict) else sweep
    return f"{study_name(config, sweep)}-{time.strftime('%Y%m%d-%H%M%S')}"


@flow(name="sweep", flow_run_name=_run_name, log_prints=True)
def sweep_flow(config: TrainConfig = TrainConfig(), sweep: SweepConfig = DEFAULT_SWEEP) -> dict:  # noqa: B008
    """Tune ``config`` over a search space with an Optuna study; returns the sweep's summary."""
    logger = get_run_logger()
    base, space = prepare(config, sweep)
    name, out = study_name(base, sweep), sweep_dir(config, sweep)
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url(sweep, out)
    study = open_study(url, name, sweep.sampler, sweep.pruner, base.seed)
    _ensure_limit(sweep.concurrency)
    logger.info("study %s in %s: %d of %d trials ended; space: %s", name, without_password(url),
                counts(study)["ended"], sweep.trials, space.describe())
    objective = Objective(base, sweep, space, url, name, out)
    heartbeat = env_seconds(HEARTBEAT_ENV, 10.0)

    def enough(study, trial) -> None:  # another sweep on the study may have run trials meanwhile
        if counts(study)["ended"] >= sweep.trials:
            study.stop()

    import optuna

    while True:
        with quiet_experimental():  # a killed sweep's trials: failed, and queued again
            optuna.storages.fail_stale_trials(study)
        c = counts(study)
        todo = sweep.trials - c["ended"] - c["running"]
        if todo > 0:
            study.optimize(objective, n_trials=todo, n_jobs=sweep.concurrency, catch=(Exception,), callbacks=[enough])
        elif c["running"]:  # another sweep's trials, or a killed one's that are not stale yet
            time.sleep(heartbeat)
        else:
            break
    return _report(study, base, out, name, url, logger)


def _report(study, base: TrainConfig, out: Path, name: str, url: str, logger) -> dict:
    frame = table(study)
    write_csv(frame, out / "trials.csv")
    plot(study, out / "history.png")
    key = "".join(ch if ch.isalnum() else "-" for ch in name.lower())
    create_table_artifact(json_safe(frame.to_dict("records")), key=f"{key}-trials", description=f"trials of {name}")
    create_image_artifact(image_url=(out / "history.png").resolve().as_uri(), key=f"{key}-history",
                          description=f"optimization history of {name}")
    summary = {"study": name, "storage": without_password(url), "output_dir": str(out), "trials": counts(study),
               "best": None, "promotion": None}
    # The best trial this sweep's runs made (a study may also hold trials added by hand).
    ours = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("output_dir") and (Path(t.user_attrs["output_dir"]) / TRIAL_CARD).is_file()]
    best = max(ours, key=lambda t: t.value, default=None)
    if best is None:
        logger.warning("no trial of %s completed: nothing goes through the gate", name)
        write_json_atomic(out / "sweep.json", summary, indent=2)
        return summary
    best_out = Path(best.user_attrs["output_dir"])
    best_config = TrainConfig(**json.loads((best_out / "config.json").read_text()))
    # The best trial's values replay with: python flows/train_flow.py --config <sweep dir>/config.json
    write_json_atomic(out / "config.json", best_config.model_copy(update={"output_dir": None}).as_dict(), indent=2)
    card = json.loads((best_out / TRIAL_CARD).read_text())
    # Trials write model.pt only: the portable files are made for the one that may be registered.
    files = card["files"] | {k: str(v) for k, v in add_portable(Path(card["files"]["model"])).items()}
    promotion = promote_model(best_config.model_copy(update={"registry_dir": base.registry}),
                              files, best_out / "split.json", card["card"],
                              f"{key}-promotion", card["wandb_artifact"])
    summary |= {"best": {"trial": best.number, "params": best.params, "val_acc": best.value,
                         "test_acc": best.user_attrs.get("test_acc"), "output_dir": str(best_out)},
                "promotion": promotion}
    write_json_atomic(out / "sweep.json", json_safe(summary), indent=2)
    create_markdown_artifact(
        f"# {name}\n\nbest: trial {best.number}, validation accuracy {best.value:.4f}, test accuracy "
        f"{best.user_attrs.get('test_acc')}\n\nvalues: `{best.params}`\n\ngate: {promotion['reason']}\n",
        key=f"{key}-best", description=f"best trial of {name}")
    logger.info("best: trial %d (val_acc %.4f) %s; %s; table: %s", best.number, best.value, best.params,
                promotion["reason"], out / "trials.csv")
    return summary


def _ensure_limit(slots: int) -> None:
    """The global concurrency limit every sweep's trials share, created on first use with this
    sweep's --concurrency (an existing limit is the operator's: it is left as it is)."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(TRIAL_LIMIT).limit
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=TRIAL_LIMIT, limit=slots))
            return
    if limit < slots:
        get_run_logger().warning("at most %d trials run at once on this server (--concurrency %d): raise the limit "
                                 "all sweeps share with: prefect gcl update %s --limit %d", limit, slots,
                                 TRIAL_LIMIT, slots)


def main(argv: list[str] | None = None, config: TrainConfig | None = None, sweep: SweepConfig | None = None,
         api=None) -> dict:
    from cifar_lit.cli import fail, flag, parse_config
    from cifar_lit.errors import UserError

    if config is None or sweep is None:
        config, sweep = parse_config(argv, prog=PROG, extra=("sweep", SweepConfig, *ABOUT))
    try:  # a bad space or --val-size 0: one line before any server or flow run
        prepare(config, sweep)
    except UserError as e:
        field, _, message = str(e).partition(": ")
        fail(PROG, f"{flag(field)}: {message}")

    def run() -> dict:
        if api is not None:
            api.wait()
        return sweep_flow(config, sweep)

    return run_or_exit(PROG, run)


if __name__ == "__main__":
    from cifar_lit.run.signals import exit_cleanly_on_signals

    exit_cleanly_on_signals()
    main(config=CLI_CONFIG, sweep=CLI_SWEEP, api=API)
