"""Fault matrix, the signal rows: SIGTERM (a preempted pod, `docker stop`) and Ctrl-C during
training end the command within seconds, mark the run Crashed (never Completed), stop Prefect's
temporary API server instead of orphaning it, and leave the last finished epoch's checkpoint."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import fakes
import pytest
import torch
from prefect_processes import REPO, seeded_home


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid="], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_run_crashed_and_stops_the_temporary_server(tmp_path, sig):
    root = fakes.image_folder(tmp_path / "ds", per_class=60)
    out, home = tmp_path / "run", tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # its own temporary server
    env.update(PREFECT_HOME=str(seeded_home(home)), PREFECT_LOGGING_LEVEL="INFO")
    args = ["--recipe", "seed", "--dataset", "imagefolder", "--data-dir", str(root), "--val-size", "0.2",
            "--max-epochs", "50", "--batch-size", "2", "--num-workers", "0", "--accelerator", "cpu", "--devices", "1",
            "--wandb-mode", "disabled", "--prediction-samples", "0", "--output-dir", str(out),
            "--runs-dir", str(tmp_path / "runs")]
    proc = subprocess.Popen([sys.executable, "flows/train_flow.py", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = out / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 300
        while not last.is_file():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        children = _children(proc.pid)
        assert children  # the temporary API server
        t0 = time.monotonic()
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        proc.kill()
    assert proc.returncode != 0 and took < 60, output[-3000:]
    time.sleep(2)
    assert [c for c in children if _alive(c)] == [], output[-3000:]
    with sqlite3.connect(home / "prefect.db") as db:
        states = db.execute("select state_type from flow_run").fetchall()
    assert states == [("CRASHED",)]
    assert torch.load(last, weights_only=True)["epoch"] >= 0  # the last finished epoch, whole
    assert not (out / "summary.json").exists()  # nothing reported as a result
