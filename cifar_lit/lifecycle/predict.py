"""Classify image files with a trained model: ``predict(model, paths) -> pandas.DataFrame``.

    from cifar_lit.lifecycle.model_file import load_model
    from cifar_lit.lifecycle.predict import predict
    model = load_model("runs/registry/cifar10-airnet_s/v1/model.pt")
    df = predict(model, ["photos/"])      # files and folders (searched recursively)

Images are prepared exactly as the test step sees them (8-bit RGB; the shorter side resized to
the model's ``image_size``, aspect ratio kept, the centre square cropped) and scored with the
model's own normalisation and test-time augmentation. A file that cannot be read is a row with
an ``error``, not a crash.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cifar_lit.data.images import load_rgb
from cifar_lit.files.atomic import save_atomic
from cifar_lit.lifecycle.model_file import LoadedModel
from cifar_lit.lifecycle.registry import RegistryError
from cifar_lit.run.rundir import OutputDirError, check_output

TOP_K = 3


def image_files(paths: Iterable[Path | str]) -> Iterator[Path]:
    """The given files, and every file under the given folders (sorted, hidden ones skipped).
    As in training, what is an image is decided by reading it, not by its name (``.jfif``, no
    extension): a file that is not one becomes a row with its reason, never a missing row. A
    path that does not exist is yielded as is, so it becomes an error row too."""
    for p in map(Path, paths):
        if not p.is_dir():
            yield p
            continue
        for dirpath, dirnames, files in os.walk(p):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith("."):
                    yield Path(dirpath) / name


def _read(path: Path, size: int) -> tuple[np.ndarray | None, str | None]:
    try:
        # Opening a FIFO (or a device) would wait for a writer forever: only regular files are read.
        if not stat.S_ISREG(path.stat().st_mode):
            return None, "not a regular file (a FIFO, socket or device)"
        return np.asarray(load_rgb(path, size)), None
    except Exception as e:  # noqa: BLE001 - any unreadable file is a row with its reason
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"[:200]


def _columns(k: int) -> list[str]:
    cols = ["path", "prediction", "confidence"]
    for i in range(1, k + 1):
        cols += [f"top{i}", f"top{i}_prob"]
    return cols + ["error"]


@torch.no_grad()
def predict(model: LoadedModel, paths: Iterable[Path | str], batch_size: int = 256) -> pd.DataFrame:
    """One row per image: ``path, prediction, confidence, top1, top1_prob, ..., error``."""
    k = min(TOP_K, len(model.classes))
    rows: list[list] = []
    batch: list[tuple[int, np.ndarray]] = []  # (row index, pixels)

    def flush() -> None:
        if not batch:
            return
        x = torch.from_numpy(np.stack([a for _, a in batch])).permute(0, 3, 1, 2).float().div_(255)
        probs = model.module(x.to(model.device)).float().softmax(1).cpu()
        top_p, top_i = probs.topk(k, dim=1)
        for (row, _), ps, idx in zip(batch, top_p.tolist(), top_i.tolist()):
            rows[row][1:3] = [model.classes[idx[0]], ps[0]]
            for j, (p, i) in enumerate(zip(ps, idx)):
                rows[row][3 + 2 * j : 5 + 2 * j] = [model.classes[i], p]
        batch.clear()

    model.module.eval()
    for path in image_files(paths):
        pixels, error = _read(path, model.image_size)
        rows.append([str(path), None, None] + [None] * (2 * TOP_K) + [error])
        if error is None:
            batch.append((len(rows) - 1, pixels))
            if len(batch) == batch_size:
                flush()
    flush()
    return pd.DataFrame(rows, columns=_columns(TOP_K))


def class_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Predicted class counts (errors counted as their own row), for the Prefect table."""
    counts = df["prediction"].fillna("(error)").value_counts().rename_axis("class").reset_index(name="images")
    return counts.sort_values(["images", "class"], ascending=[False, True], ignore_index=True)


def resolve_model(config) -> Path:
    """The model file a ``PredictConfig`` names: ``--model``, or a registry version or alias.
    A missing registry, model, alias or file is one RegistryError/ModelFileError line."""
    from cifar_lit.lifecycle.model_file import ModelFileError
    from cifar_lit.lifecycle.registry import Registry

    if config.model is not None:
        if not config.model.is_file():
            raise ModelFileError(f"model: {config.model} does not exist")
        return config.model
    reg = Registry(config.registry_dir)
    if not reg.root.is_dir():
        raise RegistryError(f"registry_dir: {reg.root} does not exist (train first, or pass --model FILE)")
    version = reg.get(config.name or reg.only_name(), version=config.version, alias=config.alias)
    path = version.file("model")
    if not path.is_file():
        raise ModelFileError(f"{path}: listed in {version.path / 'model.json'} but missing")
    return path


def predict_to_csv(config) -> dict:
    """Resolve the model, classify ``config.input`` and write ``config.output``; return a summary."""
    from cifar_lit.lifecycle.model_file import load_model

    out = Path(config.output)
    check_output(out)  # before any image is classified
    path = resolve_model(config)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    model = load_model(path, device=device)
    df = predict(model, config.input, batch_size=config.batch_size)
    try:
        save_atomic(out, lambda tmp: df.to_csv(tmp, index=False))
    except OSError as e:
        raise OutputDirError(f"output: {out} could not be written ({e.strerror or e})") from None
    return {"model": str(path), "output": str(out), "images": len(df), "errors": int(df["error"].notna().sum()),
            "counts": class_counts(df).to_dict("records")}
