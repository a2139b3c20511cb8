"""Prefect's temporary API server, run as the command's own child process, started before Prefect
is imported, and stopped with everything it started when the command ends.

Imports nothing heavy at import time: the flows import it before Prefect, torch or W&B.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    import subprocess
    import threading


STARTUP_TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
# How Prefect's RuntimeError starts when its temporary server does not answer in time.
EPHEMERAL_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API server"


def prefect_defaults() -> None:
    """Defaults for settings the user has not set (call before importing Prefect)."""
    # Without PREFECT_API_URL, Prefect starts a temporary API server; on a busy 2-core machine it
    # can take longer than Prefect's default 20 s to answer, which would crash the run before it
    # starts.
    os.environ.setdefault(STARTUP_TIMEOUT, "120")
    # The temporary server's usage telemetry fails with an ERROR line on every run without
    # internet (GPU pools, air-gapped clusters) and tells the user nothing about their run.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


class TemporaryAPI:
    """Prefect's temporary API server, started as this command's child process before Prefect is
    imported.

    Without ``PREFECT_API_URL``, Prefect's first flow call starts a local API server (a second
    process, about 5 s to answer on a 2-core machine) and waits for it. Starting it from Prefect
    meant importing Prefect's server module in this process first (about 1.5 s, of no use here);
    this starts Prefect's public ``prefect server start`` (no UI, no scheduling services; the same
    database under ``PREFECT_HOME``) right after
    the flags parse, so it boots on the other core while this process imports Prefect, torch and
    Lightning, and points ``PREFECT_API_URL`` at it. ``wait()`` before the first flow call: it
    raises Prefect's own timeout error when the server does not answer in
    ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``. A thread sends the server its first API
    request as soon as it answers (the server prepares its API then, about 0.3 s), and ``wait()``
    imports what the run imports next (Prefect's flow engine, and W&B when asked) instead of
    idling meanwhile: about 0.8 s less before the flow starts on the 2-core machine.

    A configured server (``PREFECT_API_URL`` in the environment, a profile or a settings file) or
    ephemeral mode turned off: nothing is started, as before. The server is stopped, with anything
    it started, when this process exits (normally, by an exception, SIGTERM or Ctrl-C; by a hard
    kill on Linux too), after Prefect has sent its last logs and events.
    """

    # Its port can be taken between our check and its bind: `prefect server start` then exits 1
    # ("already in use"), or 3 (uvicorn's own exit), and another port is tried.
    ATTEMPTS = 3
    # Imported by the first flow call anyway: wait() imports it while the server is not ready.
    PRELOAD = ("prefect.flow_engine",)

    def __init__(self, preload: tuple[str, ...] = ()) -> None:
        """``preload``: modules the run imports later in any case (the command knows which),
        imported by ``wait()`` in time it would otherwise spend waiting for the server."""
        self.preload = [*self.PRELOAD, *preload]
        self.process: subprocess.Popen | None = None
        self.answering: threading.Event | None = None
        self.warmed: threading.Event | None = None
        self.env: dict[str, str] = {}
        self.url: str | None = None
        self.started = 0.0
        self.attempts = 0
        prefect_defaults()
        if os.environ.get("PREFECT_API_URL") or _false(os.environ.get("PREFECT_SERVER_EPHEMERAL_ENABLED")):
            return  # a configured server (or none allowed): nothing to start
        import atexit

        atexit.register(self.stop)  # before Prefect's import: runs after every exit hook of Prefect's
        early = _temporary_api_expected()
        if early:  # before Prefect's own import, which takes about 1.3 s
            self._spawn()
        # Prefect reads its settings (environment, profile, settings files) when imported: the
        # authority on whether a server is configured. Imported here, the next import anyway.
        from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

        if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
            self.stop()  # configured after all (a profile or a settings file): not needed
            return
        if not early:
            self._spawn()
        self._use()
        global _STARTED
        _STARTED = self  # run_or_exit waits for it before the flow runs

    def _spawn(self) -> None:
        import http.client  # noqa: F401 - imported here, not by the watcher thread (see _watch)
        import subprocess
        import threading
        import time

        if self.attempts == 0:
            self.env = dict(os.environ)
            self.started = time.monotonic()  # the startup timeout counts from here, as Prefect's does
        self.attempts += 1
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}/api"
        # Prefect's public command: no UI, and none of the services that schedule runs (there is
        # nothing to schedule); the ones that record events and task runs stay, as in Prefect's
        # own temporary server. The database is under PREFECT_HOME. Its banner is of no use here.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
             "--no-ui", "--no-scheduler", "--no-late-runs", "--log-level", "ERROR", "--analytics-off"],
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            # Its own process group: Ctrl-C reaches this process only, which marks the run Crashed
            # through the server before stopping it; stop() ends the whole group.
            start_new_session=True, preexec_fn=_die_with_parent())
        self.answering, self.warmed = threading.Event(), threading.Event()
        threading.Thread(target=_watch, args=(self.process, port, self.answering, self.warmed), daemon=True,
                         name="prefect-temporary-api").start()

    def _use(self) -> None:
        """Point this process's Prefect settings (and its child processes) at the server."""
        from prefect.context import refresh_global_settings_context

        os.environ["PREFECT_API_URL"] = self.url
        # No "View at <url>" line for a UI that is not served and is gone once the run ends
        # (Prefect's own temporary server prints none either).
        os.environ.setdefault("PREFECT_UI_URL", "")
        refresh_global_settings_context()

    def wait(self) -> None:
        """Return once the server answers; raise Prefect's timeout error if it does not in time.
        Until then, and while the server prepares its API, import the modules to preload."""
        import importlib
        import time

        from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

        timeout = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        while self.process is not None:
            left = timeout - (time.monotonic() - self.started)
            if left <= 0:
                self._failed()
            if self.preload and not self.warmed.is_set():  # time otherwise spent waiting
                try:
                    importlib.import_module(self.preload.pop(0))
                except ImportError:  # not installed, or moved in another version: imported later or never
                    pass
                continue
            if not self.answering.wait(left):
                self._failed()
            code = self.process.poll()
            if code is None:
                return
            taken = code in (1, 3) and _port_in_use(int(self.url.rsplit(":", 1)[1].split("/")[0]))
            if taken and self.attempts < self.ATTEMPTS:  # another process took its port: another one
                self._spawn()
                self._use()
                continue
            self._failed(f"Ephemeral server process exited with code {code}{_signal_name(code)}.")

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Wait for the server (``wait``), then run the command's flows against it without flow-run
        heartbeats. A heartbeat tells a long-lived server that a run is still alive, so that an
        automation can mark it Crashed when they stop; this server lives exactly as long as the
        run, so nothing is there to read them (a killed run is marked by the command's own signal
        handling or not at all). Prefect 3.9 also makes the end of every flow wait for the
        heartbeat thread's 1 s sleep: about 0.5 s per run. A configured server keeps them."""
        self.wait()
        from prefect.settings import temporary_settings

        with temporary_settings(updates={"flows.heartbeat_frequency": None}):
            yield

    def _failed(self, why: str = "") -> NoReturn:
        self.stop()
        raise RuntimeError(f"{EPHEMERAL_TIMEOUT}. {why}".strip())

    def stop(self, timeout: float = 10) -> None:
        """Stop the server and everything in its process group: SIGTERM, so that it writes what
        it has received (Prefect persists events, and task runs from them, in the background),
        then SIGKILL after ``timeout`` seconds. A server that never answered has received nothing
        to write: SIGKILL at once (while it starts up it would ignore SIGTERM for the whole wait,
        and a command refused at start-up took 10 s longer to end)."""
        import signal
        import subprocess

        process, self.process = self.process, None
        if process is None:
            return
        kill = getattr(signal, "SIGKILL", signal.SIGTERM)  # Windows has no SIGKILL
        _signal_group(process.pid, signal.SIGTERM if self.answering.is_set() else kill)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, kill)
            process.wait()
        _signal_group(process.pid, kill)  # anything it started that outlived it


def _watch(process: subprocess.Popen, port: int, answering: threading.Event, warmed: threading.Event) -> None:
    """Sets ``answering`` once the server answers its health check, or has exited; then sends it
    one API request and sets ``warmed``. The server prepares its API on the first request it gets
    (about 0.3 s on a 2-core machine): the flow's own first request no longer waits for that,
    and the main thread can import in the meantime. Runs in a thread while the main thread
    imports torch: it imports nothing (that could deadlock with the main thread's imports), and
    wakes 20 times a second at most."""
    import http.client
    import time

    def get(path: str, timeout: float) -> int | None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            connection.request("GET", path)
            return connection.getresponse().status
        except OSError:
            return None
        finally:
            connection.close()

    while process.poll() is None:
        if get("/api/health", timeout=2) == 200:
            answering.set()
            get("/api/admin/version", timeout=30)
            break
        time.sleep(0.05)
    answering.set()
    warmed.set()


_STARTED: TemporaryAPI | None = None


def started() -> TemporaryAPI | None:
    """The server this command started, if it started one."""
    return _STARTED


def _false(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("0", "false", "no", "off", "f", "n")


def _temporary_api_expected() -> bool:
    """Whether Prefect's settings, read cheaply without importing Prefect, leave ephemeral mode on
    and name no API URL: the environment, then the active profile (Prefect's default profile turns
    ephemeral mode on), and no other settings file (``.env``, ``prefect.toml``, ``[tool.prefect]``
    in ``pyproject.toml``), which would need Prefect to read. True starts the server before
    Prefect's import; False leaves the decision to Prefect's settings (the server then starts
    about 1.3 s later). Either way Prefect's settings have the last word."""
    import tomllib

    if os.environ.get("PREFECT_API_URL"):
        return False
    for name in ("PREFECT_SERVER_EPHEMERAL_ENABLED", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"):
        if name in os.environ:
            return not _false(os.environ[name])
    for name, marker in ((".env", "PREFECT_"), ("prefect.toml", ""), ("pyproject.toml", "tool.prefect")):
        try:
            if marker in Path(name).read_text():
                return False
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            return False
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        data = tomllib.loads(profiles.read_text()) if profiles.is_file() else {}
        profile = data.get("profiles", {}).get(os.environ.get("PREFECT_PROFILE") or data.get("active"))
        if profile is None:  # Prefect's default profile: ephemeral mode, no API URL
            return True
        enabled = profile.get("PREFECT_SERVER_EPHEMERAL_ENABLED", profile.get("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"))
        return "PREFECT_API_URL" not in profile and enabled is not None and not _false(str(enabled))
    except (OSError, ValueError, AttributeError, TypeError):  # unreadable: Prefect decides
        return False


def _signal_name(code: int) -> str:
    """`` (killed by SIGXFSZ)`` for a process a signal ended (a negative exit code), else empty."""
    import signal

    try:
        return f" (killed by {signal.Signals(-code).name})" if code < 0 else ""
    except ValueError:
        return ""


def _port_in_use(port: int) -> bool:
    """Whether something listens on ``port`` (after our server exited: someone else took it).
    Otherwise the exit had another cause (the disk, PREFECT_HOME), which a new port won't fix."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, a child made by the returned function gets SIGTERM when this process dies, even
    by SIGKILL (no exit hooks run then)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def set_death_signal() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)

    return set_death_signal


def _signal_group(pid: int, sig: int) -> None:
    try:
        if hasattr(os, "killpg"):
            os.killpg(pid, sig)
        else:  # Windows: no process groups to signal
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
