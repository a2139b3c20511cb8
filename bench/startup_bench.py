"""(f) start-up, for bench/bench.py: ``--help`` against importing pydantic, and the fixed cost of
a cached re-run from the command line (wall time minus fit and test), with Prefect's temporary
API and with a dedicated server."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def _wall(cmd: list[str], env: dict | None = None, cwd: Path = ROOT) -> float:
    """Seconds until the command's process exits, as a shell prompt returns: output goes to a
    file, since a pipe would also wait for grandchildren (W&B's service) that keep it open."""
    import tempfile

    with tempfile.TemporaryFile("w+") as log:
        t0 = time.perf_counter()
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd).returncode
        seconds = time.perf_counter() - t0
        if code != 0:
            log.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{log.read()[-3000:]}")
    return seconds


def _startup_folder(data_dir: Path) -> Path:
    """(f)'s image folder: 200 images of each class, so that fit and test take seconds."""
    import shutil

    small = OUT / "startup-2000"
    if not (small / "train").is_dir():
        for cls in sorted(p for p in (data_dir / "train").iterdir() if p.is_dir()):
            (small / "train" / cls.name).mkdir(parents=True, exist_ok=True)
            for img in sorted(cls.iterdir())[:200]:
                shutil.copy(img, small / "train" / cls.name / img.name)
    return small


@contextlib.contextmanager
def _prefect_server(env: dict, port: int = 4299) -> Iterator[str]:
    """A dedicated `prefect server start` for (f); yields its API URL once it answers."""
    import urllib.request

    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                               str(port)], env={**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/api"
    finally:
        server.terminate()
        server.wait(timeout=30)


def startup(data_dir: Path, root: Path = ROOT, repeats: int = 5, before: Path | None = None) -> dict:
    """(f): medians of ``repeats`` runs, each command a fresh process as a user starts it. The
    fixed cost of a run is its wall time minus fit and test (from its summary.json); measured
    with Prefect's temporary API server (no PREFECT_API_URL, what a first user gets) and with a
    dedicated one (`prefect server start`, the setup Prefect recommends). With ``before`` (another
    checkout), the same rows for it too, its runs taking turns with ``root``'s: on a 2-core
    machine whose load moves by seconds within minutes, only neighbouring runs compare."""
    import statistics

    small = _startup_folder(data_dir)
    roots = {"after": root, **({"before": before} if before else {})}
    env = {**os.environ, "WANDB_DIR": str(OUT / "startup-wandb"), "PREFECT_HOME": str(OUT / "startup-prefect")}
    env.pop("PREFECT_API_URL", None)  # the temporary API, as on a first run

    def env_of(tag: str, **extra: str) -> dict:
        return {**env, "PYTHONPATH": os.pathsep.join([str(roots[tag]), os.environ.get("PYTHONPATH", "")]), **extra}

    def flow(tag: str) -> list[str]:
        return [sys.executable, str(roots[tag] / "flows" / "train_flow.py")]

    pydantic = statistics.median(_wall([sys.executable, "-c", "import pydantic"], env) for _ in range(repeats))
    helps = {tag: [] for tag in roots}
    for _ in range(repeats):
        for tag in roots:
            helps[tag].append(_wall([*flow(tag), "--help"], env_of(tag)))
    runs = OUT / f"startup-runs-{int(time.time())}"
    def args(tag: str) -> list[str]:
        # A runs dir (and so a registry) per checkout: each re-run's champion is its own code's
        # model, as for a user re-running one checkout.
        return ["--dataset", "imagefolder", "--data-dir", str(small), "--test-size", "200", "--seed", "0",
                "--max-epochs", "1", "--wandb-mode", "offline", "--runs-dir", str(runs / tag), "--accelerator", "cpu"]

    for tag in roots:
        _wall([*flow(tag), *args(tag)], env_of(tag))  # fills the download and split caches and the registry

    def reruns(mode: str, **extra: str) -> dict[str, tuple[float, float]]:
        fixed, walls = {tag: [] for tag in roots}, {tag: [] for tag in roots}
        for i in range(3):
            for tag in roots:
                out = runs / f"{mode}-{tag}-{i}"
                wall = _wall([*flow(tag), *args(tag), "--force", "--output-dir", str(out)], env_of(tag, **extra))
                summary = json.loads((out / "summary.json").read_text())
                walls[tag].append(wall)
                # An older checkout's summary has no test_seconds: its test time then counts as fixed.
                fixed[tag].append(wall - summary["fit_seconds"] - (summary.get("test_seconds") or 0))
        return {tag: (statistics.median(walls[tag]), statistics.median(fixed[tag])) for tag in roots}

    temporary = reruns("temporary")
    with _prefect_server(env) as api_url:
        dedicated = reruns("dedicated", PREFECT_API_URL=api_url)

    def figures(tag: str) -> dict:
        help_ = statistics.median(helps[tag])
        return {"help_seconds": round(help_, 3), "help_ratio": round(help_ / pydantic, 1),
                "rerun_wall_seconds": round(temporary[tag][0], 2), "rerun_fixed_seconds": round(temporary[tag][1], 2),
                "dedicated_rerun_wall_seconds": round(dedicated[tag][0], 2),
                "dedicated_rerun_fixed_seconds": round(dedicated[tag][1], 2), "root": str(roots[tag])}

    result = {"pydantic_import_seconds": round(pydantic, 3), **figures("after")}
    if before:
        result["before"] = figures("before")
    return result


def startup_rows(f: dict) -> list[tuple[str, str, str]]:
    b = f.get("before")

    def was(key: str, unit: str = " s", digits: int = 1) -> str:
        return f" (before: {b[key]:.{digits}f}{unit})" if b else ""

    return [
        ('(f) python -c "import pydantic"', f"{f['pydantic_import_seconds']:.2f} s", "baseline"),
        ("(f) train_flow.py --help", f"{f['help_seconds']:.2f} s", f"{f['help_ratio']:.1f}x" + was("help_ratio", "x")),
        ("(f) cached re-run, 2,000 images, 1 epoch, temporary Prefect API", f"{f['rerun_wall_seconds']:.1f} s wall",
         f"fixed cost (wall - fit - test) {f['rerun_fixed_seconds']:.1f} s" + was("rerun_fixed_seconds")
         + ", median of 3"),
        ("(f) the same with a dedicated Prefect server", f"{f['dedicated_rerun_wall_seconds']:.1f} s wall",
         f"fixed cost {f['dedicated_rerun_fixed_seconds']:.1f} s" + was("dedicated_rerun_fixed_seconds")
         + ", median of 3"),
    ]
