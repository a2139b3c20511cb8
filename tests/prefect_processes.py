"""Real Prefect processes for the deployment tests: a server on a free 127.0.0.1 port with its
database in a temporary folder, CLI commands and workers against it, and a webhook receiver
that records what automations send. Every process runs in its own process group, and the
context managers end that group whatever happens."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# Beside the session's own Prefect home (tests/conftest.py), so it goes when the session ends.
_TEMPLATE = Path(os.environ["PREFECT_HOME"]).parent / "prefect-db-template"


def seeded_home(home: Path) -> Path:
    """``home``, a PREFECT_HOME, holding a copy of a Prefect database created and migrated once
    per session. On an empty home every temporary server first runs Prefect's migrations: about
    12 s to answer here instead of 4, in each of a dozen commands. A user's second run finds its
    database as these do; a first run's (an empty home) is what tests/e2e/test_startup.py runs."""
    if not (_TEMPLATE / "prefect.db").is_file():
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(_TEMPLATE)}
        subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], env=env, check=True,
                       capture_output=True, timeout=300)
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_TEMPLATE / "prefect.db", home / "prefect.db")
    return home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(api_url: str, home: Path, **extra: str) -> dict[str, str]:
    """This process's environment pointed at ``api_url``, with this venv's scripts on PATH."""
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PREFECT_API_URL=api_url,
        PREFECT_HOME=str(home),
        PREFECT_LOGGING_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _started(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot), or None once it is gone: with the pid,
    an identity that a reused pid does not share."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every process below ``pid``, read from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if (started := _started(child)) is not None:
                found.append((child, started))
                todo.append(child)
    return found


def stop(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after ``grace`` seconds.
    Descendants in sessions of their own (a worker starts each flow run in one) go too."""
    below = descendants(proc.pid) if proc.poll() is None else []
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever the group's leader left behind
    except ProcessLookupError:
        pass
    for pid, started in below:
        if _started(pid) == started:  # still that process, not a reused pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@contextmanager
def background(args: list[str], log: Path, **popen) -> Iterator[subprocess.Popen]:
    """``args`` running in a new process group, output to ``log``; stopped on exit."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen)
    try:
        yield proc
    finally:
        stop(proc)


def tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


@contextmanager
def prefect_server(home: Path, startup_timeout: float = 180) -> Iterator[str]:
    """``prefect server start`` with its database under ``home``; yields the API URL."""
    with prefect_server_process(home, startup_timeout) as (api_url, _proc):
        yield api_url


@contextmanager
def prefect_server_process(home: Path, startup_timeout: float = 180) -> Iterator[tuple[str, subprocess.Popen]]:
    """``prefect_server``, yielding the server's process too (to kill it mid-run)."""
    seeded_home(home)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = cli_env(
        api_url,
        home,
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_API_URL=api_url,  # else the UI calls the default port, 4200
    )
    log = home / "server.log"
    args = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with background(args, log, env=env, cwd=home) as proc:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode}:\n{tail(log)}")
            try:
                with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prefect server not healthy after {startup_timeout}s:\n{tail(log)}")
            time.sleep(0.5)
        yield api_url, proc


def run_cli(args: list[str], env: dict[str, str], timeout: float = 300, cwd: Path = REPO) -> str:
    """Run a command to completion; its output, or an AssertionError that shows it."""
    done = subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, start_new_session=True
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{output[-6000:]}"
    return output


def worker_args(pool: str, *, run_once: bool = False) -> list[str]:
    """A process worker for ``pool``; with ``run_once`` it exits when the runs it took are done."""
    args = ["prefect", "worker", "start", "--pool", pool, "--type", "process"]
    return [*args, "--run-once"] if run_once else args


class WebhookReceiver:
    """Records the JSON bodies POSTed to it (what a Custom Webhook notification block sends)."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.bodies.append(json.loads(data or b"{}"))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def processes_of(home: Path) -> list[int]:
    """Every live process whose environment holds ``PREFECT_HOME=home``: the command, its API
    server and anything either started. (A zombie's environment reads empty.)"""
    mark = f"PREFECT_HOME={home}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:  # gone, or not ours to read
            pass
    return found
