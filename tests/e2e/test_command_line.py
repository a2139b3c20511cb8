"""What a user sees from ``python flows/train_flow.py`` when a run cannot start or cannot get its
data: one line that says what happened and what to do, exit 1, no traceback, no noise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fakes
from prefect_processes import free_port, processes_of, seeded_home

REPO = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A user's shell: no Prefect server configured (the flow starts its temporary one) and
    Prefect's own defaults for logging and telemetry, which the test session overrides."""
    drop = ("PREFECT_API_URL", "PREFECT_LOGGING_LEVEL", "PREFECT_SERVER_ANALYTICS_ENABLED")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "PYTHONPATH": str(REPO), **extra})
    return env


def _error_line(stderr: str) -> str:
    """The command's own error line."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("train_flow.py: error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _train(tmp_path: Path, args: list[str], **env: str) -> subprocess.CompletedProcess:
    common = ["--wandb-mode", "disabled", "--accelerator", "cpu", "--runs-dir", str(tmp_path / "runs")]
    seeded_home(tmp_path / "prefect-home")
    return subprocess.run([sys.executable, "flows/train_flow.py", *args, *common], cwd=REPO, env=_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=300)


def test_a_failed_download_ends_with_one_line_naming_the_url_and_the_ways_out(tmp_path):
    server = fakes.FileServer({}).start()  # answers 404: not retried, so the test is quick
    try:
        url = server.url("/cifar-10-python.tar.gz")
        proc = _train(tmp_path, ["--data-dir", str(tmp_path / "data"), "--download-url", url,
                                 "--download-md5", "0" * 32])
    finally:
        server.stop()
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert "Traceback" not in output and "telemetry" not in output, output[-3000:]
    last = _error_line(proc.stderr)
    assert url in last and "404" in last, last
    for way_out in ("--download-url", "--data-dir", "cifar-10-python.tar.gz"):
        assert way_out in last, last
    assert len(output.splitlines()) < 20, output  # Prefect's run lines and the error, not pages
    assert processes_of(tmp_path / "prefect-home") == []  # its temporary API server stopped with it


def test_a_slow_temporary_prefect_server_is_one_line_naming_prefect_api_url(tmp_path):
    root = fakes.image_folder(tmp_path / "photos", per_class=4)
    # The user's own (tiny) startup timeout stands in for a machine too busy to start the server.
    proc = _train(tmp_path, ["--dataset", "imagefolder", "--data-dir", str(root)],
                  PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    last = _error_line(proc.stderr)
    assert last.startswith("train_flow.py: error: Prefect's temporary API server did not answer within 0 s")
    assert "PREFECT_API_URL" in last and "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in last
    assert processes_of(tmp_path / "prefect-home") == []


def test_a_broken_torch_torchvision_pair_is_one_line_saying_how_to_reinstall(tmp_path):
    # torchvision from another index than torch fails on import like this (its C++ operators are
    # missing); a stand-in package first on the path makes the real commands meet that failure.
    broken = tmp_path / "site" / "torchvision"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    env = _env(tmp_path) | {"PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{REPO}"}
    for script, prog, args in (("flows/train_flow.py", "train_flow.py", ["--wandb-mode", "disabled",
                                                                         "--runs-dir", str(tmp_path / "runs")]),
                               ("flows/predict_flow.py", "predict_flow.py", ["--input", str(tmp_path)])):
        proc = subprocess.run([sys.executable, script, *args], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 1 and "Traceback" not in output, output[-3000:]
        (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"{prog}: error: ")]
        assert "torch and torchvision cannot be loaded together" in line and "torchvision::nms" in line
        assert "pip install --force-reinstall torch torchvision" in line and len(output.splitlines()) <= 2, output
    assert processes_of(tmp_path / "prefect-home") == []  # the temporary API server stopped with it
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_a_place_it_cannot_write_is_refused_before_a_server_starts(tmp_path):
    """The real command: an output or runs dir under a file is exit 2 with one line, and no
    temporary API server was started for it (nothing under PREFECT_HOME, no process)."""
    (tmp_path / "a-file").write_text("x")
    for flags, expected in ((["--output-dir", str(tmp_path / "a-file" / "run")], "--output-dir: "),
                            (["--runs-dir", str(tmp_path / "a-file")], "--runs-dir: ")):
        proc = subprocess.run([sys.executable, "flows/train_flow.py", *flags], cwd=REPO, env=_env(tmp_path),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
        assert proc.stderr.startswith(f"train_flow.py: error: {expected}") and "cannot be created" in proc.stderr
    assert processes_of(tmp_path / "prefect-home") == [] and not (tmp_path / "prefect-home").exists()


def test_a_prefect_api_it_cannot_use_is_one_line_before_any_work(tmp_path):
    not_prefect = fakes.FileServer({}).start()  # answers 404 to everything, /api/health included
    dead = f"http://127.0.0.1:{free_port()}/api"
    try:
        cases = [
            ({"PREFECT_API_URL": dead}, f"PREFECT_API_URL: {dead}: nothing answers there"),
            ({"PREFECT_API_URL": not_prefect.url("/api")},
             f"PREFECT_API_URL: {not_prefect.url('/api')}: it answered /health with HTTP 404, not as a Prefect server"),
            ({"PREFECT_HOME": str(tmp_path / "file" / "home")},
             f"PREFECT_HOME: {tmp_path / 'file' / 'home'} cannot be created: {tmp_path / 'file'} is a file"),
        ]
        (tmp_path / "file").write_text("x")
        for env, expected in cases:
            proc = _train(tmp_path, ["--data-dir", str(tmp_path / "data")], **env)
            output = proc.stdout + proc.stderr
            assert proc.returncode == 1 and "Traceback" not in output, output[-3000:]
            assert _error_line(proc.stderr).startswith(f"train_flow.py: error: {expected}"), proc.stderr
            assert len(output.splitlines()) == 1, output
    finally:
        not_prefect.stop()
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_a_temporary_server_that_dies_is_named_not_reported_as_slow(tmp_path):
    import resource

    def small_files() -> None:  # its database cannot grow past 200 KiB
        resource.setrlimit(resource.RLIMIT_FSIZE, (200 * 1024, 200 * 1024))

    cmd = [sys.executable, "flows/train_flow.py", "--wandb-mode", "disabled", "--runs-dir", str(tmp_path / "runs")]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=300,
                          preexec_fn=small_files)
    line = _error_line(proc.stderr)
    assert proc.returncode == 1 and "did not answer within" not in line, proc.stderr[-3000:]
    assert line.startswith("train_flow.py: error: Prefect's temporary API server exited with code ")
    assert "before it answered" in line and "file-size limit" in line and str(tmp_path / "prefect-home") in line
    assert processes_of(tmp_path / "prefect-home") == []


def test_the_cifar_lit_command_runs_each_flow_and_the_registry_under_its_own_name(tmp_path, tiny_model):
    """``cifar-lit train|predict|registry``: the installed console script, each sub-command with
    its help and its errors named after it; predict really classifies with a registered model."""
    import csv
    import shutil

    from cifar_lit.lifecycle.registry import Registry

    script = shutil.which("cifar-lit", path=str(Path(sys.executable).parent))
    assert script, "the cifar-lit console script is not installed (pip install -e .)"

    seeded_home(tmp_path / "prefect-home")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([script, *args], cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                              timeout=300)

    top = run("--help")
    assert top.returncode == 0 and all(f"  {c}" in top.stdout for c in ("train", "predict", "registry"))
    assert run().returncode == 2 and run("serve").returncode == 2
    helped = run("train", "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: cifar-lit train ") and "--time-budget" in helped.stdout
    bad = run("train", "--max-epochs", "0")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        "cifar-lit train: error: --max-epochs: Input should be greater than or equal to 1")

    reg = Registry(tmp_path / "registry")
    reg.add("tiny", {"model": tiny_model}, {"metrics": {"test_acc": 0.5}}, aliases=("latest", "production"))
    listed = run("registry", "--registry-dir", str(reg.root), "list")
    assert listed.returncode == 0 and listed.stdout.strip() == "tiny v1  test_acc=0.5  latest, production"
    assert run("registry", "--registry-dir", str(reg.root), "show", "tiny", "v9").returncode == 2

    photos = fakes.image_folder(tmp_path / "photos", per_class=2) / "train"
    out = tmp_path / "preds.csv"
    done = run("predict", "--registry-dir", str(reg.root), "--input", str(photos), "--output", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and all(r["prediction"] and not r["error"] for r in rows)
