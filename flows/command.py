"""What the flows' command lines share: Prefect settings chosen before Prefect is imported,
Prefect's temporary API server run as the command's own child process, failures the user can act
on shown as one line without tracebacks, and a finished run's quick exit.

Imports nothing heavy: the flows import it first, so ``--help`` and flag errors answer before
Prefect, torch or W&B are loaded.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

if TYPE_CHECKING:
    import subprocess
    import threading

T = TypeVar("T")


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
    this starts the same command Prefect runs (uvicorn on ``prefect.server.api.server:create_app``
    with Prefect's ephemeral-mode variables, the same database under ``PREFECT_HOME``) right after
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

    ATTEMPTS = 3  # uvicorn exits 3 when its port was taken between our check and its bind
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
        import importlib.util
        import subprocess
        import threading
        import time

        if self.attempts == 0:
            # Prefect's SubprocessASGIServer runs the same command with the same variables.
            self.env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                        "PREFECT__SERVER_FINAL": "1"}
            self.started = time.monotonic()  # the startup timeout counts from here, as Prefect's does
        self.attempts += 1
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}/api"
        site = Path(importlib.util.find_spec("prefect").origin).parents[1]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(site), "--factory", "prefect.server.api.server:create_app",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"],
            env=self.env, stdin=subprocess.DEVNULL,
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
            if code == 3 and self.attempts < self.ATTEMPTS:  # its port was taken: another one
                self._spawn()
                self._use()
                continue
            self._failed(f"Ephemeral server process exited with code {code}.")

    def _failed(self, why: str = "") -> NoReturn:
        self.stop()
        raise RuntimeError(f"{EPHEMERAL_TIMEOUT}. {why}".strip())

    def stop(self, timeout: float = 10) -> None:
        """Stop the server and everything in its process group: SIGTERM, so that it writes what
        it has received (Prefect persists events, and task runs from them, in the background),
        then SIGKILL after ``timeout`` seconds."""
        import signal
        import subprocess

        process, self.process = self.process, None
        if process is None:
            return
        kill = getattr(signal, "SIGKILL", signal.SIGTERM)  # Windows has no SIGKILL
        _signal_group(process.pid, signal.SIGTERM)
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


def one_line_errors() -> tuple[type[BaseException], ...]:
    """Failures whose message already says what went wrong and what to do: a traceback adds
    nothing for the user (the Prefect UI still gets it)."""
    from cifar_lit.callbacks import NonFiniteLossError
    from cifar_lit.data.cifar import DownloadError, HTTPDownloadError
    from cifar_lit.data.imagefolder import DataError
    from cifar_lit.machine import MachineError
    from cifar_lit.model_file import ModelFileError
    from cifar_lit.registry import RegistryError
    from cifar_lit.rundir import OutputDirError

    return (DownloadError, HTTPDownloadError, DataError, MachineError, ModelFileError, RegistryError,
            OutputDirError, NonFiniteLossError)


class _WithoutTraceback(logging.Formatter):
    """Formats a record as ``inner`` does, leaving out the traceback of a one-line error. The
    record itself is restored, so other handlers (Prefect's API log) still get the traceback."""

    def __init__(self, inner: logging.Formatter | None, errors: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()
        self.errors = errors

    def format(self, record: logging.LogRecord) -> str:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, self.errors):
            return self.inner.format(record)
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


def quiet_console_tracebacks(errors: tuple[type[BaseException], ...]) -> None:
    """Prefect's console handlers print one-line errors without their traceback (call after
    Prefect is imported: importing it configures logging)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    for handler in {h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}:
        if not isinstance(handler.formatter, _WithoutTraceback):
            handler.setFormatter(_WithoutTraceback(handler.formatter, errors))


def run_or_exit(prog: str, run: Callable[[], T]) -> T:
    """``run()``; a one-line error ends the command with ``prog: error: <message>`` and exit 1."""
    errors = one_line_errors()
    quiet_console_tracebacks(errors)
    try:
        if _STARTED is not None:
            _STARTED.wait()
        return run()
    except errors as e:
        _exit(prog, e)
    except RuntimeError as e:
        if not str(e).startswith(EPHEMERAL_TIMEOUT):
            raise
        _exit(prog, RuntimeError(
            "Prefect's temporary API server did not answer within "
            f"{os.environ.get(STARTUP_TIMEOUT, '?')} s ({STARTUP_TIMEOUT}); set a larger value, or start a server "
            "(prefect server start) and point PREFECT_API_URL at it"))


def _exit(prog: str, error: BaseException) -> NoReturn:
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(1)


def exit_finished() -> NoReturn:
    """End a command whose run has finished, without the interpreter's teardown (call last, from a
    command's ``__main__`` block only: it ends the process).

    Runs what a normal exit runs that writes or stops anything: threading's exit hooks (Prefect
    sends its last logs and events to the API there), then the ``atexit`` handlers (W&B's
    teardown, the temporary API server's stop, temporary folders, ``logging.shutdown``), and
    flushes stdout and stderr. What it skips is freeing every module and object one by one, which
    after torch and Lightning took about 1 s on a 2-core machine and writes nothing.
    """
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is None:  # not CPython as we know it: the ordinary exit
        sys.exit(0)
    shutdown()  # waits for non-daemon threads, then runs threading's exit hooks
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a pipe whose reader went away
            pass
    os._exit(0)
