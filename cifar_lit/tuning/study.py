"""An Optuna study as a sweep uses it: its settings, where it lives, how far it is, its table
and its picture.

A study counts as done when it holds ``trials`` ended trials: complete, pruned or failed (a
crashed trial is recorded and the sweep goes on). A trial whose sweep was killed stops sending
heartbeats; the next sweep on the study marks it failed and Optuna's ``RetryHeartbeatStaleTrialCallback``
queues a copy with the same parameters, which that sweep runs first: nothing is lost and no
ended trial runs twice.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator

from cifar_lit.config import TrainConfig
from cifar_lit.errors import UserError
from cifar_lit.files.atomic import save_atomic
from cifar_lit.files.locks import env_seconds
from cifar_lit.tuning.trial import Pruner, make_pruner, without_password

if TYPE_CHECKING:
    import optuna

# Seconds between a running trial's heartbeats; three missed ones make it stale (tests shorten it).
HEARTBEAT_ENV = "CIFAR_LIT_SWEEP_HEARTBEAT"
# The Prefect global concurrency limit every trial takes a slot of, whichever sweep started it:
# an operator bounds all sweeps together (`prefect gcl update cifar-lit-sweep-trials --limit 2`)
# so that they cannot starve the nightly retrain of workers.
TRIAL_LIMIT = "cifar-lit-sweep-trials"


class SweepError(UserError, ValueError):
    """A sweep setting that cannot work; the message names the flag."""


class SweepConfig(BaseModel):
    """How a sweep searches; the training flags (TrainConfig) fix everything it does not vary."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    trials: int = Field(10, ge=1, le=10_000, description="trials the study holds when the sweep ends (complete, "
                        "pruned or failed); again with a larger number, only the missing ones run")
    study: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
                              description="study name (default: sweep-<model name>, e.g. sweep-cifar10-airnet_s)")
    storage: str | None = Field(None, description="the study's database, an SQLAlchemy URL, e.g. "
                                "postgresql://user@host/db (default: sqlite:///<output dir>/study.db)")
    space: Path | None = Field(None, description="search space, YAML or JSON: field: [choices] or "
                               "{low, high, log, step} (default: lr, label smoothing and weight decay around the "
                               "recipe's)")
    concurrency: int = Field(1, ge=1, le=64, description="trials running at once (more than 1 needs --deployment)")
    sampler: Literal["tpe", "random"] = Field("tpe", description="how the next trial's values are chosen")
    pruner: Pruner = Field("median", description="median: stop a trial whose validation accuracy is below the "
                           "median of earlier trials at the same epoch")
    deployment: str | None = Field(None, pattern=r"^[^/]+/[^/]+$", description="run each trial as a run of "
                                   "this train deployment (FLOW/DEPLOYMENT) on its work pool, instead of in this "
                                   "process")

    @field_serializer("storage")
    def _public(self, v: str | None) -> str | None:
        return without_password(v) if v else v

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        if self.concurrency > 1 and self.deployment is None:
            raise ValueError("concurrency: trials in this process run one at a time (they share its W&B run and "
                             "cores); give --deployment to fan them out over a work pool's workers")
        return self


def study_name(config: TrainConfig, sweep: SweepConfig) -> str:
    return sweep.study or f"sweep-{config.model_name()}"


def sweep_dir(config: TrainConfig, sweep: SweepConfig) -> Path:
    """The sweep's folder (the same for every sweep of one study, so a re-run resumes it)."""
    return config.output_dir or config.runs_dir / study_name(config, sweep)


def storage_url(sweep: SweepConfig, out: Path) -> str:
    return sweep.storage or f"sqlite:///{(out / 'study.db').resolve()}"


def open_study(url: str, name: str, sampler: str, pruner: Pruner, seed: int) -> optuna.Study:
    """Create the study, or load it to go on. The sampler's seed moves on with the trials already
    there, so a resumed random search does not propose its first trials again."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    heartbeat = max(1, int(env_seconds(HEARTBEAT_ENV, 10.0)))
    try:
        storage = RDBStorage(url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
        done = len(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)) \
            if name in optuna.get_all_study_names(storage) else 0
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's and Optuna's errors, as one line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SweepError(f"storage: {without_password(url)}: {first}") from None
    chosen = optuna.samplers.TPESampler(seed=seed + done) if sampler == "tpe" else \
        optuna.samplers.RandomSampler(seed=seed + done)
    try:
        return optuna.create_study(study_name=name, storage=storage, sampler=chosen, pruner=make_pruner(pruner),
                                   direction="maximize", load_if_exists=True)
    except ValueError as e:  # an existing study of the same name that minimises
        raise SweepError(f"study: {name}: {e}") from None


@contextmanager
def quiet_experimental() -> Iterator[None]:
    """Optuna calls its heartbeat API (stale trials, their retries) experimental and warns at every
    call; it is the library's own way to resume a killed study, used as documented."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state; ``ended``: complete, pruned and failed, less failed ones a retry replaced."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    with quiet_experimental():
        retried = {RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials}
    by_state = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    ended = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) or
                (t.state == TrialState.FAIL and t.number not in retried) for t in trials)
    return by_state | {"ended": ended}


def table(study: optuna.Study):
    """One row per trial (a pandas DataFrame): trial, state, each parameter, val_acc (for a pruned
    trial, its last report), test_acc, fit_seconds, its run's folder and error."""
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        rows.append({"trial": t.number, "state": t.state.name.lower(), **t.params,
                     "val_acc": t.value if t.value is not None else last,
                     **{k: t.user_attrs.get(k) for k in ("test_acc", "fit_seconds", "epochs", "output_dir", "error")}})
    return pd.DataFrame(rows)


def write_csv(frame, path: Path) -> Path:
    return save_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def plot(study: optuna.Study, path: Path) -> Path:
    """``path`` (PNG): validation accuracy per trial with the best so far, and how much each
    parameter mattered (Optuna's importance; it needs two complete trials)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a worker
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState

    frame = table(study)
    fig, (history, importance) = plt.subplots(1, 2, figsize=(11, 4))
    for state, marker in (("complete", "o"), ("pruned", "x"), ("fail", "v")):
        part = frame[frame.state == state] if len(frame) else frame
        if len(part):
            history.scatter(part.trial, part.val_acc.fillna(0.0), marker=marker, label=state)
    done = frame[frame.state == "complete"] if len(frame) else frame
    if len(done):
        history.step(done.trial, done.val_acc.cummax(), where="post", label="best so far")
    history.set(title=f"{study.study_name}: optimization history", xlabel="trial", ylabel="validation accuracy")
    history.legend(loc="lower right")
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    try:
        scores = optuna.importance.get_param_importances(study) if len(complete) >= 2 else {}
    except (RuntimeError, ValueError):  # e.g. every complete trial had the same values
        scores = {}
    if scores:
        names = list(scores)[::-1]
        importance.barh(names, [scores[n] for n in names])
    else:
        importance.text(0.5, 0.5, "needs two complete trials\nwith different values", ha="center", va="center")
    importance.set(title="parameter importance", xlabel="importance")
    fig.tight_layout()
    save_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return path


def trial_folder(out: Path, number: int) -> Path:
    return out / "trials" / f"trial-{number:04d}"

