"""Weights & Biases tracking that can never fail or lose a training run.

One W&B run spans the whole pipeline (fit, test, export log into it). Mode ``auto`` goes online
when an API key is available and offline otherwise, printing the ``wandb sync`` command. If W&B
cannot start (unreachable server, bad key...), the run falls back to offline, then to no W&B at
all, with a warning: training goes on either way, and a CSV log is always written.
"""

from __future__ import annotations

import logging
import netrc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from cifar_lit.config import TrainConfig
from cifar_lit.run.redact import public_args

log = logging.getLogger(__name__)


def api_key_available() -> bool:
    """True when W&B would find credentials for its server: ``WANDB_API_KEY``, an identity
    token file, or a key that ``wandb login`` stored in the netrc file (``NETRC``, else
    ``~/.netrc`` or ``~/_netrc``) for its configured base URL, which is not api.wandb.ai in
    wandb >= 0.31. Read with the standard library: wandb's own reader is in a private module."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    import wandb

    url = urlparse(wandb.Settings().base_url)
    path = os.environ.get("NETRC") or next(
        (p for p in (os.path.expanduser("~/.netrc"), os.path.expanduser("~/_netrc")) if os.path.exists(p)), None)
    if path is None:
        return False
    try:
        entries = netrc.netrc(os.path.expanduser(path))
    except (OSError, netrc.NetrcParseError):  # missing or malformed: W&B could not log in either
        return False
    # wandb >= 0.31 keys the entry by the URL's host and port, older versions by the host name.
    creds = entries.authenticators(url.netloc) or entries.authenticators(url.hostname or "")
    return bool(creds and creds[2])


# An online start that cannot reach the server falls back to offline after this many seconds
# (wandb's own default is 90); WANDB_INIT_TIMEOUT overrides it.
INIT_TIMEOUT = 15.0


def _unreachable(base_url: str, timeout: float = 3.0) -> str | None:
    """Why the W&B server at ``base_url`` cannot be reached (refused, no route, no answer in
    ``timeout`` s), or None: any HTTP answer counts as reachable. A server that is not there
    costs these seconds, not the online start's whole timeout."""
    import requests

    try:
        requests.head(base_url, timeout=timeout, allow_redirects=False)
    except requests.RequestException as e:
        return f"{base_url} unreachable ({type(e).__name__})"
    return None


def resolve_mode(requested: str) -> str:
    if requested == "auto":
        return "online" if api_key_available() else "offline"
    return requested


def _active_run():
    import wandb

    return wandb.run


def update_config(config: TrainConfig) -> None:
    """The active run's config becomes ``config``: a run started before the recipe was resolved
    for the data (library use) shows what trained, not the ``None`` it was started with."""
    wandb = sys.modules.get("wandb")  # no run without wandb imported: no import just to check
    if wandb is not None and wandb.run is not None:
        wandb.run.config.update(config.as_dict(), allow_val_change=True)


def start_run(config: TrainConfig, name: str | None = None, job_type: str = "pipeline", group: str | None = None):
    """Start (or reuse) the pipeline's W&B run; None when W&B is disabled or unavailable.

    Runs of one pipeline run (the flow's, and a distributed fit's) share the W&B group named
    after the output dir; a sweep's trials share the group named after their study (``group``)."""
    mode = resolve_mode(config.wandb_mode)
    if mode == "disabled":
        return None
    import wandb

    if wandb.run is not None:
        return wandb.run
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    # W&B reads its environment once per process; read the timeout per run so it always applies.
    timeout = float(os.environ.get("WANDB_INIT_TIMEOUT") or INIT_TIMEOUT)
    settings: dict[str, Any] = {"console": "off", "quiet": True, "init_timeout": timeout}
    unreachable = _unreachable(wandb.Settings().base_url) if mode == "online" else None
    if unreachable:
        log.warning("W&B: %s; logging offline", unreachable)
    for attempt in ([mode] if not unreachable else []) + (["offline"] if mode == "online" else []):
        try:
            with _public_argv():
                run = wandb.init(
                    project=config.wandb_project,
                    entity=config.wandb_entity,
                    name=name or out.name,
                    group=group or out.name,
                    job_type=job_type,
                    dir=str(out),
                    config=config.as_dict(),
                    mode=attempt,
                    settings=wandb.Settings(**settings),
                )
        except Exception as e:  # noqa: BLE001 - any W&B failure must not stop training
            log.warning("W&B %s run could not start (%s: %s)", attempt, type(e).__name__, e)
            continue
        if attempt == "offline":
            print(f"W&B: logging offline to {offline_dir(run)}; upload later with: wandb sync {offline_dir(run)}")
        return run
    log.warning("W&B: tracking disabled for this run; metrics go to the CSV log in %s", out)
    return None


@contextmanager
def _public_argv() -> Iterator[None]:
    """W&B records the command line (``sys.argv``) in the run's metadata, in its binary run file
    and on the server: while it starts, the arguments it sees have their URLs' credentials and
    query strings removed (a mirror token in --download-url)."""
    saved = sys.argv
    sys.argv = public_args(saved)
    try:
        yield
    finally:
        sys.argv = saved


def offline_dir(run) -> Path:
    return Path(run.dir).parent


def run_info() -> dict[str, Any]:
    """Where the active run lives: ``{"mode", "path", "url"}`` (path: entity/project/id, or the
    offline folder to pass to ``wandb sync``)."""
    run = _active_run()
    if run is None:
        return {"mode": "disabled", "path": None, "url": None}
    if run.settings.mode == "offline" or run.offline:
        return {"mode": "offline", "path": str(offline_dir(run)), "url": None, "dir": str(offline_dir(run))}
    # dir: the run's local files, which `wandb sync` uploads again if an upload failed.
    return {"mode": "online", "path": run.path, "url": run.url, "dir": str(offline_dir(run))}


def finish_run() -> None:
    try:
        run = _active_run()
        if run is not None:
            run.finish()
    except Exception as e:  # noqa: BLE001
        log.warning("W&B: finishing the run failed (%s); local files are kept", e)


def make_loggers(config: TrainConfig, stage: str) -> list[Logger]:
    """A CSV log always (``<output_dir>/csv/<stage>/metrics.csv``); W&B when a run is active."""
    loggers: list[Logger] = [CSVLogger(config.out, name="csv", version=stage)]
    run = _active_run() if config.wandb_mode != "disabled" else None
    if run is not None:
        loggers.append(WandbLogger(experiment=run, log_model=False))
    return loggers


def per_class_table(confusion: torch.Tensor, classes: list[str]) -> pd.DataFrame:
    """Per-class accuracy from a confusion matrix (rows: true class, columns: predicted)."""
    cm = confusion.to(torch.float64)
    support = cm.sum(dim=1)
    correct = cm.diagonal()
    acc = torch.where(support > 0, correct / support.clamp(min=1), torch.nan)
    return pd.DataFrame(
        {"class": classes, "support": support.long().tolist(), "correct": correct.long().tolist(), "accuracy": acc.tolist()}
    )


def log_test_results(metrics: dict[str, float], per_class: pd.DataFrame, confusion: torch.Tensor, classes: list[str]):
    """Confusion matrix, per-class accuracy table and test metrics into the active W&B run."""
    run = _active_run()
    if run is None:
        return
    try:
        import wandb

        rows = [
            [classes[i], classes[j], int(confusion[i, j])]
            for i in range(len(classes))
            for j in range(len(classes))
        ]
        table = wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=rows)
        # The same preset wandb.plot.confusion_matrix renders, built from the torchmetrics matrix.
        plot = wandb.plot.plot_table(
            vega_spec_name="wandb/confusion_matrix/v1",
            data_table=table,
            fields={"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
            string_fields={"title": "Test confusion matrix"},
        )
        run.log({"test/confusion_matrix": plot, "test/per_class_accuracy": wandb.Table(dataframe=per_class)})
        run.summary.update({k: v for k, v in metrics.items()})
    except Exception as e:  # noqa: BLE001
        log.warning("W&B: logging test results failed (%s); they are in summary.json", e)
