"""Download fault matrix, the concurrency row: two first runs downloading into one empty data
dir at the same moment (two real processes, a slow mirror), and what a killed run leaves behind.

Only names that existed before these faults were handled are imported at module level, so that
against the old code each test fails on its assertions, not on an import.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import fakes

from cifar_lit.data import cifar
from cifar_lit.data.cifar import download_cifar, load_cifar

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"


# ---- 5. two first downloads into one data dir at once -----------------------------------------------


def _download_in_child(barrier, results, root: str, url: str, md5: str) -> None:
    barrier.wait(timeout=30)  # both processes call download_cifar at the same moment
    try:
        results.put(("ok", str(download_cifar("cifar10", Path(root), url, md5))))
    except BaseException as e:  # report it to the test instead of a bare exit code
        results.put(("error", f"{type(e).__name__}: {e}"))


def test_two_processes_download_into_one_data_dir(tmp_path, server, archives):
    server.body_seconds = 1.5  # a slow mirror: the second process arrives mid-download
    root, url, md5 = tmp_path / "data", server.url("/cifar10.tar.gz"), fakes.md5(archives["cifar10"])
    ctx = multiprocessing.get_context("fork")  # already imported: both start at once
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_download_in_child, args=(barrier, results, str(root), url, md5)) for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert outcomes == [("ok", str(root / FOLDER))] * 2, outcomes
    assert [p.exitcode for p in procs] == [0, 0]
    assert server.gets() == [("/cifar10.tar.gz", 200)]  # the second waited, then found the data ready
    assert load_cifar(root / FOLDER, "cifar10", train=False)[0].shape == (60, 32, 32, 3)
    assert not fakes.leftovers(root)


def test_a_killed_run_leaves_nothing_that_blocks_the_next(tmp_path, server, archives):
    """Temporary names are unique now, so nothing reuses them: the next download clears what a
    killed run (SIGKILL: no cleanup) left behind, under the lock, where none can be in use."""
    stale_part = tmp_path / f"{ARCHIVE}.k1ll3d.part"
    stale_part.write_bytes(b"half a download")
    (tmp_path / ".extract-k1ll3d" / FOLDER).mkdir(parents=True)
    download_cifar("cifar10", tmp_path, server.url("/cifar10.tar.gz"), fakes.md5(archives["cifar10"]))
    assert not fakes.leftovers(tmp_path)
    assert (tmp_path / FOLDER / cifar.MARKER).is_file()
