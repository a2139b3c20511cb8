"""Fault matrix, the lock rows: a lock held by another process (the registry's, the download's,
the output dir's) is waited for at most CIFAR_LIT_LOCK_TIMEOUT seconds, then one line names the
holder (pid, host, since when); a holder killed with SIGKILL leaves nothing held; a run that
fails before writing anything leaves neither its lock nor an empty output dir."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifar_lit.data.cifar import LOCK_FILE, download_cifar
from cifar_lit.files.locks import TIMEOUT_ENV, LockTimeoutError, SettingError, exclusive
from cifar_lit.lifecycle.registry import Registry
from flows.train_flow import train_flow

HOLD = "import sys, time\nfrom cifar_lit.files.locks import exclusive\nwith exclusive(sys.argv[1], 'test'):\n" \
       "    print('held', flush=True)\n    time.sleep(120)\n"


def _holder(lock: Path) -> subprocess.Popen:
    """Another process that takes ``lock`` and then hangs holding it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def hung(tmp_path):
    procs = []

    def hold(lock: Path) -> subprocess.Popen:
        procs.append(_holder(lock))
        return procs[-1]

    yield hold
    for p in procs:
        p.kill()
        p.wait()


def test_a_hung_registry_holder_ends_the_wait_with_one_line_naming_it(tmp_path, monkeypatch, hung):
    monkeypatch.setenv(TIMEOUT_ENV, "1.5")
    reg = Registry(tmp_path / "registry")
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    reg.add("shapes", {"model": model}, {"metrics": {}})
    holder = hung(tmp_path / "registry" / "shapes" / ".lock")
    t0 = time.monotonic()
    with pytest.raises(LockTimeoutError) as caught:
        reg.add("shapes", {"model": model}, {"metrics": {}})
    waited = time.monotonic() - t0
    message = str(caught.value)
    assert 1.5 <= waited < 30 and "\n" not in message
    assert message.startswith(f"registry {tmp_path / 'registry' / 'shapes'}: still locked by pid {holder.pid} "
                              f"on {socket.gethostname()} since ")
    assert "after 1.5 s" in message and TIMEOUT_ENV in message
    assert reg.versions("shapes") == ["v1"]  # nothing was written while it waited

    # The registry command says the same in one line, exit 2.
    out = subprocess.run([sys.executable, "-m", "cifar_lit.lifecycle.registry", "--registry-dir", str(tmp_path / "registry"),
                          "set-alias", "shapes", "production", "v1"], capture_output=True, text=True,
                         env={**os.environ, TIMEOUT_ENV: "1"})
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and f"pid {holder.pid}" in out.stderr


def test_a_holder_killed_with_sigkill_leaves_nothing_held(tmp_path, monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, "5")
    lock = tmp_path / "registry" / "shapes" / ".lock"
    holder = _holder(lock)
    assert Path(f"{lock}.holder").is_file()  # the note names it while it holds
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert Path(f"{lock}.holder").is_file()  # a dead holder's note stays behind ...
    t0 = time.monotonic()
    with exclusive(lock, "test"):  # ... but its lock does not
        assert time.monotonic() - t0 < 1
        assert f'"pid": {os.getpid()}' in Path(f"{lock}.holder").read_text()  # the note is ours now
    assert not Path(f"{lock}.holder").exists()  # and is gone with the lock


def test_a_hung_download_holder_ends_the_wait_with_one_line(tmp_path, server, archives, monkeypatch, hung):
    import fakes

    monkeypatch.setenv(TIMEOUT_ENV, "1")
    holder = hung(tmp_path / LOCK_FILE)
    with pytest.raises(LockTimeoutError, match=f"^data_dir: {tmp_path}: still locked by pid {holder.pid} on "):
        download_cifar("cifar10", tmp_path, server.url("/cifar10.tar.gz"), fakes.md5(archives["cifar10"]))
    assert server.gets() == []  # it did not download beside the holder


def test_an_output_dir_held_by_another_run_names_it(make_config, tmp_path, hung):
    cfg = make_config(max_epochs=1, wandb_mode="disabled", prediction_samples=0, output_dir=tmp_path / "shared")
    holder = hung(cfg.out / ".lock")
    state = train_flow(cfg, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError) as caught:
        state.result()
    assert str(caught.value).startswith(f"output_dir: {cfg.out} is in use by another run (pid {holder.pid} on ")
    assert sorted(p.name for p in cfg.out.iterdir()) == [".lock", ".lock.holder"]  # the holder's, untouched


def test_a_bad_lock_timeout_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(SettingError, match=f"^{TIMEOUT_ENV}: 'soon' is not a number of seconds \\(0 or more\\)$"):
        with exclusive(tmp_path / "x.lock", "test"):
            pass


def test_a_run_that_fails_at_the_start_leaves_no_lock_and_no_empty_dir(make_config, tmp_path, server):
    bad = make_config(download_url=server.url("/missing.tar.gz"), output_dir=tmp_path / "runs" / "new" / "r1",
                      wandb_mode="disabled")
    assert train_flow(bad, return_state=True).is_failed()
    assert not (tmp_path / "runs" / "new").exists()  # every folder the run created, gone
    # A folder the user made is kept (empty, as it was).
    mine = tmp_path / "mine"
    mine.mkdir()
    assert train_flow(bad.model_copy(update={"output_dir": mine}), return_state=True).is_failed()
    assert mine.is_dir() and list(mine.iterdir()) == []
