"""How ``python flows/train_flow.py`` starts and ends: Prefect's temporary API server is the
command's own child process, started before Prefect is imported (Prefect's server module is never
imported by the command), and a finished run ends without the interpreter's teardown. Nothing is
lost on the way out (the flow run, its task runs, its last log lines and artifacts are in the API's
database; summary.json and the W&B run file are whole), and no process outlives the command,
whether it finishes, fails or is killed. (SIGTERM and Ctrl-C: tests/faults/test_signal_faults.py.)
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import fakes
import pytest
from prefect_processes import processes_of, seeded_home
from wandb_files import offline_run_dirs, records

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="reads processes from /proc (Linux)")


def _env(home: Path, **extra: str) -> dict[str, str]:
    """A user's shell without a configured Prefect server, Prefect's state in ``home``."""
    drop = ("PREFECT_API_URL", "PREFECT_LOGGING_LEVEL", "PREFECT_SERVER_ANALYTICS_ENABLED")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PREFECT_HOME=str(home), PYTHONPATH=str(REPO), **extra)
    return env


def _gone(home: Path, within: float) -> list[int]:
    deadline = time.monotonic() + within
    while (left := processes_of(home)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _flow_args(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["flows/train_flow.py", "--recipe", "seed", "--dataset", "imagefolder", "--data-dir", str(root),
            "--val-size", "0.2", "--batch-size", "4", "--num-workers", "0", "--accelerator", "cpu", "--devices", "1",
            "--prediction-samples", "4", "--runs-dir", str(tmp_path / "runs"), "--output-dir", str(tmp_path / "run"),
            *extra]


def test_a_finished_run_is_whole_in_the_api_and_on_disk_and_leaves_no_process(tmp_path):
    root = fakes.image_folder(tmp_path / "photos", per_class=10)
    home, out = tmp_path / "prefect-home", tmp_path / "run"
    proc = subprocess.run([sys.executable, "-X", "importtime",
                           *_flow_args(root, tmp_path, "--max-epochs", "1", "--wandb-mode", "offline")],
                          cwd=REPO, env=_env(home), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert processes_of(home) == []  # the command stopped its server before it ended
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "prefect.flows" in imported and "prefect.server.api.server" not in imported

    with sqlite3.connect(home / "prefect.db") as db:
        ((run_id, state),) = db.execute("select id, state_type from flow_run").fetchall()
        tasks = db.execute("select name, state_type from task_run where flow_run_id = ?", (run_id,)).fetchall()
        logs = [m for (m,) in db.execute("select message from log where flow_run_id = ? and task_run_id is null "
                                         "order by timestamp", (run_id,))]
        artifacts = {k for (k,) in db.execute("select key from artifact where flow_run_id = ?", (run_id,))}
        events = [e for (e,) in db.execute("select event from events")]
    assert state == "COMPLETED"
    # No flow-run heartbeats to a server that ends with the run (flows.temporary_api: serving),
    # while the run's other events were sent and stored.
    assert "prefect.flow-run.Completed" in events and "prefect.flow-run.heartbeat" not in events, set(events)
    # Task runs reach the database through events the server records in the background: all
    # seven are there (registered: it was promoted), finished, so the command's last events were sent and stored before it ended.
    assert sorted((n.rsplit("-", 1)[0], s) for n, s in tasks) == [
        (name, "COMPLETED") for name in ("download", "export", "fit", "promote", "registered", "split", "test")]
    assert logs[-1] == "Finished in state Completed()" and any(m.startswith("test_acc ") for m in logs), logs
    assert {"photos-seed-cnn-summary", "photos-seed-cnn-per-class"} <= artifacts, artifacts

    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_acc"] is not None and summary["promotion"]["version"]
    (run_dir,) = offline_run_dirs(out)
    (run_file,) = run_dir.glob("run-*.wandb")
    assert records(run_file)[-1].WhichOneof("record_type") == "exit"  # W&B's run file is complete


def test_a_killed_command_takes_its_server_with_it(tmp_path):
    # SIGKILL runs no exit handler at all: the server learns of it from the kernel (Linux).
    root = fakes.image_folder(tmp_path / "photos", per_class=60)
    home = seeded_home(tmp_path / "prefect-home")  # an empty home's first start: the test above
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, *_flow_args(root, tmp_path, "--max-epochs", "50",
                                                             "--wandb-mode", "disabled")],
                                cwd=REPO, env=_env(home, PREFECT_LOGGING_LEVEL="INFO"), stdout=f,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while "Beginning flow run" not in log.read_text():  # the server is up and in use
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        server = [p for p in processes_of(home) if p != proc.pid]
        assert server, "no temporary API server found"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert _gone(home, within=20) == [], log.read_text()[-3000:]
    finally:
        proc.kill()
        proc.wait(30)


CHECK = """
import json, os, sys
import flows.temporary_api as command

command._temporary_api_expected = lambda: sys.argv[1] == "expected"
spawned = []
spawn = command.TemporaryAPI._spawn
command.TemporaryAPI._spawn = lambda self: (spawn(self), spawned.append(self.process.pid))
api = command.TemporaryAPI()
alive = [p for p in spawned if os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z"]
print(json.dumps({"spawned": len(spawned), "alive": alive, "process": api.process is not None,
                  "url": os.environ.get("PREFECT_API_URL")}))
"""


def _check(home: Path, expected: bool, **env: str) -> dict:
    """TemporaryAPI() in a fresh process, as a command makes it, with the cheap look at the
    settings files answering ``expected``."""
    proc = subprocess.run([sys.executable, "-c", CHECK, "expected" if expected else "not"], cwd=REPO,
                          env=_env(home, **env), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_a_configured_server_is_used_and_nothing_is_started(tmp_path):
    home = tmp_path / "prefect-home"
    home.mkdir()
    url = "http://127.0.0.1:9/api"
    none = {"spawned": 0, "alive": [], "process": False}
    assert _check(home, True, PREFECT_API_URL=url) == {**none, "url": url}
    (home / "profiles.toml").write_text(
        f'active = "mine"\n[profiles.mine]\nPREFECT_API_URL = "{url}"\nPREFECT_SERVER_EPHEMERAL_ENABLED = "true"\n')
    # Named by a profile: Prefect's settings decide before anything starts ...
    assert _check(home, False) == {**none, "url": None}
    # ... and had the cheap look missed it, the server started early is stopped as soon as
    # Prefect's settings name another one.
    assert _check(home, True) == {**none, "spawned": 1, "url": None}
    (home / "profiles.toml").write_text('active = "mine"\n[profiles.mine]\nPREFECT_LOGGING_LEVEL = "INFO"\n')
    assert _check(home, True) == {**none, "spawned": 1, "url": None}  # ephemeral mode off: none either
    (home / "profiles.toml").write_text('active = "mine"\n[profiles.mine]\nPREFECT_SERVER_EPHEMERAL_ENABLED = "1"\n')
    for expected in (True, False):  # started before or after Prefect's import
        started = _check(home, expected)
        assert started["spawned"] == 1 and started["process"] and started["url"].startswith("http://127.0.0.1:")
        assert len(started["alive"]) == 1 and processes_of(home) == []  # stopped when that process exited


def test_the_cheap_look_at_prefect_settings_files(tmp_path, monkeypatch):
    from flows.temporary_api import _temporary_api_expected as expected

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFECT_HOME", str(home))
    for var in ("PREFECT_PROFILES_PATH", "PREFECT_PROFILE", "PREFECT_API_URL", "PREFECT_SERVER_EPHEMERAL_ENABLED",
                "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"):
        monkeypatch.delenv(var, raising=False)
    assert expected()  # no profiles file: Prefect's default profile, ephemeral mode
    profiles = home / "profiles.toml"
    # Prefect's template, as `prefect config set` leaves it
    profiles.write_text('active = "ephemeral"\n[profiles.ephemeral]\nPREFECT_SERVER_EPHEMERAL_ENABLED = "true"\n'
                        '[profiles.local]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n')
    assert expected()
    monkeypatch.setenv("PREFECT_PROFILE", "local")
    assert not expected()
    monkeypatch.delenv("PREFECT_PROFILE")
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_ENABLED", "false")
    assert not expected()
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_ENABLED")
    profiles.write_text('active = "mine"\n[profiles.mine]\nPREFECT_LOGGING_LEVEL = "INFO"\n')
    assert not expected()  # a profile of its own: ephemeral mode is off unless it says so
    profiles.write_text("not toml [")
    assert not expected()  # unreadable: Prefect decides
    profiles.unlink()
    for name, text in ((".env", "PREFECT_API_URL=http://x/api\n"), ("prefect.toml", "[api]\nurl = 'http://x/api'\n"),
                       ("pyproject.toml", "[tool.prefect.api]\nurl = 'http://x/api'\n")):
        (tmp_path / name).write_text(text)
        assert not expected(), name
        (tmp_path / name).unlink()
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["prefect>=3"]\n')
    assert expected()


def test_a_port_taken_before_the_server_binds_it_gets_another(tmp_path):
    """Prefect's temporary server exits when another process took its port in between: a new
    port is tried. (An exit for another reason is not retried: test_command_line's dying server.)"""
    script = """
import socket, sys
import flows.temporary_api as t
held = socket.socket(); held.bind(("127.0.0.1", 0)); held.listen()
ports = [held.getsockname()[1]]
real = t._free_port
t._free_port = lambda: ports.pop(0) if ports else real()
api = t.TemporaryAPI()
api.wait()
print("attempts", api.attempts, "answered", api.url != f"http://127.0.0.1:{held.getsockname()[1]}/api")
api.stop()
"""
    home = seeded_home(tmp_path / "prefect-home")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_env(home), capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.split() == ["attempts", "2", "answered", "True"], proc.stdout + proc.stderr[-2000:]
    assert processes_of(home) == []
