"""W&B's copy of the registry's aliases: every change the file registry makes to an alias
(a promotion, a rollback with ``set-alias``) is queued for W&B and applied when W&B can be
reached.

The file registry is the record; W&B mirrors it. A change is first written to the model's queue,
``<registry>/<name>/wandb-pending.jsonl`` (one JSON line each: alias, registry version, and the
W&B model that version is: an artifact path, or the run that logged it when the run was offline
and its version is not numbered yet). Applying it gives that artifact the alias in its project
and links it into the W&B Registry (``wandb-registry-model/<name>``) with the alias and
``registry-vN``. Only the newest change of each alias matters: an older one it supersedes is
dropped with it. A change that cannot be applied yet (offline, no API key, the run not uploaded
by ``wandb sync`` yet, the network down) stays queued and is retried by the next promotion or
``python -m cifar_lit.lifecycle.registry sync-wandb``.

W&B cannot change aliases from an offline run (``link_artifact`` is not implemented offline in
wandb 0.31), hence this queue beside the registry rather than in the run's own file.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cifar_lit.files.atomic import save_atomic

log = logging.getLogger(__name__)

PENDING = "wandb-pending.jsonl"
API_TIMEOUT = 30  # seconds per W&B API call


class NotYetError(RuntimeError):
    """A queued change that cannot be applied yet; the message says what it waits for."""


def reference(model_name: str, artifact_path: str | None) -> dict[str, Any] | None:
    """What W&B calls this run's model, for the registry card: the artifact path when the run is
    online (``entity/project/name:vN``, the version its export logged), else the run that will
    log it on ``wandb sync``. None without an active W&B run."""
    wandb = sys.modules.get("wandb")
    run = wandb.run if wandb is not None else None
    if run is None:
        return None
    return {"artifact": artifact_path, "name": model_name, "project": run.project, "entity": run.entity or None,
            "run_id": run.id, "offline": bool(run.offline)}


def pending_file(folder: Path) -> Path:
    return Path(folder) / PENDING


def read_pending(folder: Path) -> list[dict[str, Any]]:
    """The queued changes of a model folder, oldest first (a line that is not a change is skipped
    with a warning: a half-written line of a killed process must not block the rest)."""
    path = pending_file(folder)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for n, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
            if isinstance(entry, dict) and {"alias", "version", "wandb"} <= entry.keys():
                out.append(entry)
                continue
        except json.JSONDecodeError:
            pass
        if line.strip():
            log.warning("%s:%d: not a queued W&B change, skipped", path, n)
    return out


def queue(folder: Path, alias: str, version: str, wandb_ref: dict[str, Any]) -> dict[str, Any]:
    """Append a change to the model folder's queue (call under the registry's lock)."""
    entry = {"id": secrets.token_hex(6), "alias": alias, "version": version, "wandb": wandb_ref,
             "queued": datetime.now(UTC).isoformat(timespec="seconds")}
    with pending_file(folder).open("a") as f:  # one short line per write: appended whole
        f.write(json.dumps(entry, sort_keys=True) + "\n")
    return entry


def drop(folder: Path, ids: set[str]) -> None:
    """Remove the changes ``ids`` from the queue (under the registry's lock); the file goes when empty."""
    left = [e for e in read_pending(folder) if e.get("id") not in ids]
    path = pending_file(folder)
    if left:
        write_json_lines(path, left)
    else:
        path.unlink(missing_ok=True)


def write_json_lines(path: Path, entries: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
    save_atomic(path, lambda tmp: tmp.write_text(text))


def can_reach() -> str | None:
    """None when W&B's API may be used from here; else why not (one phrase)."""
    from cifar_lit.run.tracking import api_key_available

    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("offline", "disabled", "dryrun"):
        return f"WANDB_MODE={mode}"
    if not api_key_available():
        return "no W&B API key (wandb login, or WANDB_API_KEY)"
    return None


def newest_per_alias(entries: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], set[str]]]:
    """alias -> (its newest change, the ids of every change of it that the newest supersedes or is)."""
    out: dict[str, tuple[dict[str, Any], set[str]]] = {}
    for e in entries:
        ids = out.get(e["alias"], (None, set()))[1]
        out[e["alias"]] = (e, ids | {e["id"]})
    return out


def apply(entry: dict[str, Any], api=None) -> str:
    """Give the W&B model of ``entry`` its alias, in its project and in the W&B Registry; returns
    the artifact path. ``NotYetError`` when its run has not been uploaded yet."""
    import wandb

    api = api or wandb.Api(timeout=API_TIMEOUT)
    ref = entry["wandb"]
    artifact = resolve(api, ref)
    alias, version = entry["alias"], entry["version"]
    if alias not in artifact.aliases:
        artifact.aliases.append(alias)  # an alias names one version of a collection: W&B moves it here
    artifact.metadata["registry_version"] = version
    artifact.save()
    # registry-vN, not vN: W&B numbers the registry's versions itself.
    artifact.link(f"wandb-registry-model/{ref['name']}", aliases=[alias, f"registry-{version}"])
    return artifact.qualified_name


def resolve(api, ref: dict[str, Any]):
    """The W&B artifact a card's reference names: by its path, else the model its run logged."""
    if ref.get("artifact"):
        return api.artifact(ref["artifact"], type="model")
    entity = ref.get("entity") or api.default_entity
    run_path = f"{entity}/{ref['project']}/{ref['run_id']}"
    try:
        run = api.run(run_path)
        logged = [a for a in run.logged_artifacts() if a.type == "model" and a.name.split(":")[0] == ref["name"]]
    except Exception as e:  # noqa: BLE001 - W&B's "not found" errors differ between versions
        raise NotYetError(f"run {run_path} is not on W&B yet (upload it with wandb sync): {str(e)[:120]}") from None
    if not logged:
        raise NotYetError(f"run {run_path} has no {ref['name']} model on W&B yet (upload it with wandb sync)")
    return logged[-1]


def sync(registry, name: str, api=None, offline: str | None = None) -> dict[str, Any]:
    """Apply the queued changes of ``name`` (the newest of each alias); returns ``{"applied":
    {alias: artifact}, "waiting": {alias: why}}``. What fails stays queued. ``offline``: why W&B
    must not be called now (a run the user asked to be offline), checked before the API key."""
    folder = registry.root / name
    entries = read_pending(folder)
    result: dict[str, Any] = {"applied": {}, "waiting": {}}
    if not entries:
        return result
    why = offline or (can_reach() if api is None else None)
    if why:
        result["waiting"] = {e["alias"]: why for e in entries}
        return result
    done: set[str] = set()
    for alias, (entry, ids) in newest_per_alias(entries).items():
        try:
            result["applied"][alias] = apply(entry, api)
            done |= ids
        except NotYetError as e:
            result["waiting"][alias] = str(e)
        except Exception as e:  # noqa: BLE001 - the network, W&B's answer: retried next time
            result["waiting"][alias] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    if done:
        with registry.locked(name):
            drop(folder, done)  # changes queued meanwhile stay
    return result


def record(registry, name: str, alias: str, version: str, offline: str | None = None) -> dict[str, Any] | None:
    """Queue ``alias -> version`` for W&B when that version is a W&B model (its card has a
    ``wandb`` reference), then try to apply the queue. None for a model W&B never saw."""
    ref = registry.get(name, version=version).card.get("wandb")
    if not ref:
        return None
    with registry.locked(name) as folder:
        queue(folder, alias, version, ref)
    result = sync(registry, name, offline=offline)
    result["queue"] = str(pending_file(registry.root / name)) if result["waiting"] else None
    return result


def describe(result: dict[str, Any] | None) -> str | None:
    """One line for the console, or None when W&B has nothing to do with this model."""
    if result is None:
        return None
    parts = [f"W&B: {alias} -> {path}" for alias, path in result["applied"].items()]
    parts += [f"W&B: {alias} queued in {result.get('queue')} ({why}); apply later with "
              "python -m cifar_lit.lifecycle.registry sync-wandb" for alias, why in result["waiting"].items()]
    return "; ".join(parts) or None
