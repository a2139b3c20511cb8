"""Fault matrix, the predict rows: every input file gets a row (an image by its content, not its
name: .jfif and extension-less photos too; anything else a row with its reason), a FIFO never
blocks it, and an --output it cannot write is one line before any image is classified, leaving
nothing behind."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from prefect_processes import processes_of, seeded_home

from cifar_lit.lifecycle.model_file import load_model
from cifar_lit.lifecycle.predict import predict

REPO = Path(__file__).resolve().parents[2]


def _photo(path: Path, fmt: str) -> None:
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path, format=fmt)


def _incoming(folder: Path) -> Path:
    folder.mkdir(parents=True)
    _photo(folder / "a.png", "PNG")
    _photo(folder / "b.jfif", "JPEG")  # JPEG's other extension
    _photo(folder / "c", "PNG")  # no extension at all
    (folder / "notes.txt").write_text("not an image")
    os.mkfifo(folder / "x.png")  # opening it for reading would wait for a writer forever
    return folder


def test_every_file_gets_a_row_and_a_fifo_never_blocks(tiny_model, tmp_path):
    incoming = _incoming(tmp_path / "incoming")
    found = {}
    worker = threading.Thread(target=lambda: found.update(df=predict(load_model(tiny_model), [incoming])), daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "predict blocked on the FIFO"
    rows = {Path(p).name: r for p, r in zip(found["df"]["path"], found["df"].to_dict("records"))}
    assert sorted(rows) == ["a.png", "b.jfif", "c", "notes.txt", "x.png"]
    for name in ("a.png", "b.jfif", "c"):
        assert rows[name]["prediction"] is not None and pd.isna(rows[name]["error"]), rows[name]
    assert rows["x.png"]["error"] == "not a regular file (a FIFO, socket or device)"
    assert pd.isna(rows["notes.txt"]["prediction"]) and rows["notes.txt"]["error"].startswith("UnidentifiedImageError")


def _predict(tiny_model: Path, tmp_path: Path, output: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "flows/predict_flow.py", "--model", str(tiny_model), "--input", str(tmp_path / "in"),
           "--output", str(output)]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(seeded_home(tmp_path / "home"))}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("where", ["a folder", "under a file"])
def test_an_output_it_cannot_write_is_one_line_before_any_work(tiny_model, tmp_path, where):
    (tmp_path / "in").mkdir()
    _photo(tmp_path / "in" / "a.png", "PNG")
    if where == "a folder":
        output = tmp_path / "existing"
        output.mkdir()
        expected = f"predict_flow.py: error: --output: {output} is a folder; name the CSV file to write"
    else:
        (tmp_path / "file").write_text("x")
        output = tmp_path / "file" / "predictions.csv"
        expected = f"predict_flow.py: error: --output: {output.parent} cannot be created: {tmp_path / 'file'} is a file"
    proc = _predict(tiny_model, tmp_path, output)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.startswith(expected) and proc.stderr.count("\n") == 1
    assert processes_of(tmp_path / "home") == []  # refused before any flow run; the temporary server stopped
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [] and (not output.is_dir() or list(output.iterdir()) == [])


def test_a_written_csv_has_every_row(tiny_model, tmp_path):
    _incoming(tmp_path / "in")
    out = tmp_path / "preds" / "p.csv"
    proc = _predict(tiny_model, tmp_path, out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and sum(1 for r in rows if r["error"]) == 2
