"""Fault matrix, the registry rows: versions readable by a predict job or server running as
another user of the shared volume (modes follow the umask, not mkdtemp's 0700); a registry that
cannot be written is one line before any training (and from set-alias); a production alias that
points at a deleted version is shown by `list` and does not block the next run; a promotion
killed mid-copy leaves nothing behind for long. Permissions are checked for real, by running the
registry command as another user (root, who runs CI, is not held back by modes)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cifar_lit.lifecycle.registry import Registry
from flows.train_flow import train_flow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def shared(tmp_path):
    """A folder other users can reach (pytest's tmp_path is private to its owner): the volume."""
    folder = Path(tempfile.mkdtemp(prefix="cifar-lit-shared-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _as_another_user(code: str) -> subprocess.CompletedProcess:
    """``code`` run by another user (nobody), in a process that imports the registry first: the
    interpreter lives under root's private home here, so the process drops to that user only
    once it is loaded, as a server of another user's account would run."""
    drop = "os.setgroups([]); os.setgid(65534); os.setuid(65534); " if os.geteuid() == 0 else ""
    script = f"import locale, os, sys; import cifar_lit.lifecycle.registry as registry; {drop}{code}"
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def _registry_command(*args: str) -> str:
    return f"sys.exit(registry.main({list(args)!r}))"


def _model(folder: Path) -> Path:
    model = folder / "run" / "model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights")
    return model


def test_versions_follow_the_umask_so_another_user_can_read_them(shared):
    old = os.umask(0o022)
    try:
        version = Registry(shared / "registry").add("shapes", {"model": _model(shared)}, {"metrics": {"test_acc": 0.5}},
                                                     aliases=("latest", "production"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(version.path.stat().st_mode) == 0o755
    assert stat.S_IMODE(version.file("model").stat().st_mode) == 0o644
    shown = _as_another_user(_registry_command("--registry-dir", str(shared / "registry"), "show", "shapes"))
    assert shown.returncode == 0 and '"test_acc": 0.5' in shown.stdout, shown.stderr
    read = _as_another_user(f"print(len(open({str(version.file('model'))!r}, 'rb').read()))")
    assert read.returncode == 0 and read.stdout.strip() == "7", read.stderr


def test_set_alias_on_a_registry_it_cannot_write_is_one_line(shared):
    reg = Registry(shared / "registry")
    for _ in range(2):
        reg.add("shapes", {"model": _model(shared / f"m{len(reg.versions('shapes'))}")}, {"metrics": {}},
                aliases=("latest", "production"))
    done = _as_another_user(_registry_command("--registry-dir", str(shared / "registry"), "set-alias", "shapes",
                                              "production", "v1"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and "cannot be written (Permission denied)" in done.stderr
    assert reg.aliases("shapes")["production"] == "v2"


def test_a_registry_dir_that_is_a_file_fails_before_any_training(make_config, tmp_path):
    (tmp_path / "registry").write_text("not a folder")
    cfg = make_config(registry_dir=tmp_path / "registry", output_dir=tmp_path / "run", wandb_mode="disabled")
    state = train_flow(cfg, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match=f"^registry_dir: {tmp_path / 'registry'} cannot be created: .* is a file"):
        state.result()
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()  # nothing was fetched or trained


def test_a_deleted_production_version_is_listed_and_does_not_block_the_next_run(make_config, tmp_path, capsys):
    from cifar_lit.lifecycle.registry import main

    common = dict(max_epochs=1, prediction_samples=0, wandb_mode="disabled")
    first = train_flow(make_config(output_dir=tmp_path / "a", **common))
    name, registry = first["promotion"] and make_config().model_name(), tmp_path / "runs" / "registry"
    shutil.rmtree(registry / name / "v1")  # deleted by hand
    assert main(["--registry-dir", str(registry), "list"]) == 0
    assert f"{name} v1  MISSING: latest points at a version that is gone" in capsys.readouterr().out
    second = train_flow(make_config(output_dir=tmp_path / "b", **common))  # trains, is judged, and registers
    assert second["promotion"]["promoted"] and second["promotion"]["version"] == "v2"  # v1's number is not reused
    assert second["promotion"]["reason"] == "no production model: production pointed at v1, whose folder is gone"
    assert Registry(registry).aliases(name) == {"latest": "v2", "production": "v2"}


def test_a_promotion_killed_mid_copy_leaves_no_partial_version(tmp_path):
    reg = Registry(tmp_path / "registry")
    reg.add("shapes", {"model": _model(tmp_path / "a")}, {"metrics": {}})
    partial = tmp_path / "registry" / "shapes" / ".new-4242-deadbeef"  # a killed run's staging folder
    partial.mkdir()
    (partial / "model.pt").write_bytes(b"\0" * 1024)
    reg.add("shapes", {"model": _model(tmp_path / "b")}, {"metrics": {}})
    assert not partial.exists() and reg.versions("shapes") == ["v1", "v2"]
    assert [p.name for p in (tmp_path / "registry" / "shapes").iterdir() if p.name.startswith(".new-")] == []
