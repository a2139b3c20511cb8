"""The W&B prediction panels: which images they show (``panel_indices``, seeded and round-robin
over the classes), the same on both data paths, and what a real run logs (offline run files)."""

from __future__ import annotations

import json
import re
import time
from collections import Counter

import fakes
import numpy as np
import pytest
import torch
from PIL import Image
from wandb_files import OfflineRun, offline_run_dirs, records

from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.data.panels import panel_indices
from cifar_lit.run import tracking
from cifar_lit.training.train import evaluate, fit


def _check_round_robin(labels: list[int], chosen: list[int], n: int) -> None:
    """Distinct positions, as many as there can be; every class once before any class twice
    (a class with no images left excepted); listed round by round, by label within a round."""
    assert len(chosen) == len(set(chosen)) == min(n, len(labels))
    sizes, counts = Counter(labels), Counter(labels[i] for i in chosen)
    most = max(counts.values(), default=0)
    for c in sizes:
        assert counts[c] == sizes[c] or counts[c] >= most - 1, (c, counts, sizes)
    seen: Counter = Counter()
    keys = []
    for i in chosen:
        seen[labels[i]] += 1
        keys.append((seen[labels[i]], labels[i]))  # (round, label)
    assert keys == sorted(keys)


@pytest.mark.parametrize("seed", [0, 1, 42, 2**32 - 1])
def test_panel_indices_go_round_robin_over_the_classes(seed):
    rng = np.random.default_rng(seed % 1000)
    for _ in range(40):
        num_classes = int(rng.integers(1, 7))
        sizes = rng.integers(0, 6, num_classes)
        labels = np.repeat(np.arange(num_classes), sizes).tolist()  # class-sorted, like an image folder split
        for n in range(0, len(labels) + 3):
            chosen = panel_indices(labels, n, seed)
            _check_round_robin(labels, chosen, n)
            present = {c for c, k in enumerate(sizes) if k}
            if n >= len(present):
                assert {labels[i] for i in chosen} == present  # every class in the panel


def test_panel_indices_are_seeded_and_stable():
    labels = np.repeat(np.arange(10), 30)
    first = panel_indices(labels, 16, seed=42)
    assert panel_indices(labels, 16, seed=42) == first  # every epoch, every run
    assert panel_indices(torch.tensor(labels), 16, seed=42) == first  # tensors, arrays, lists alike
    assert panel_indices(labels.tolist(), 16, seed=42) == first
    assert first != list(range(16))  # not the first images
    assert len({tuple(panel_indices(labels, 16, seed=s)) for s in range(5)}) == 5  # the seed chooses
    # Which classes fill a partial round is seeded too, not always the lowest labels.
    assert len({frozenset(labels[panel_indices(labels, 3, seed=s)].tolist()) for s in range(8)}) > 1
    # A class's images are chosen by the seed and its own label: more images of another class
    # (a bigger split elsewhere) do not change them.
    more = np.concatenate([labels, np.full(7, 3)])
    for n in (10, 20, 30):
        of_5 = [i for i in panel_indices(labels, n, 42) if labels[i] == 5]
        assert [i for i in panel_indices(more, n, 42) if more[i] == 5] == of_5
    assert panel_indices([], 4, 0) == [] and panel_indices([1, 2], 0, 0) == []
    assert sorted(panel_indices([7, 7, 2], 10, 0)) == [0, 1, 2]


@pytest.fixture
def folder(tmp_path):
    """Class-sorted splits: the test/ folder's images come class by class."""
    return fakes.image_folder(tmp_path / "ds", classes=("cat", "dog", "frog", "ship"), per_class=6, test_per_class=3)


def _config(make_config, root, **overrides):
    base = dict(dataset="imagefolder", data_dir=root, val_size=0.25, max_epochs=1, batch_size=8, prediction_samples=5)
    return make_config(**{**base, **overrides})


def test_both_data_paths_show_the_same_panel_of_every_class(make_config, folder):
    pil = ImageDataModule.from_config(_config(make_config, folder))
    pil.prepare_data()
    pil.setup()
    fast = ImageDataModule.from_config(_config(make_config, folder, data_path="tensor"), pil.split_file)
    fast.setup()
    for part in ("val", "test"):
        assert pil.labels_of(part) == fast.labels_of(part)
        ref = pil.serving.val_set if part == "val" else pil.serving.test_set
        assert pil.labels_of(part) == [ref[i][1] for i in range(len(ref))]
        x_pil, y_pil = pil.samples(part, 5)
        x_fast, y_fast = fast.samples(part, 5)
        assert torch.equal(y_pil, y_fast)
        to_pixels = lambda dm, x: (dm.denormalize(x) * 255).round()  # noqa: E731
        assert (to_pixels(pil, x_pil) - to_pixels(fast, x_fast)).abs().max() <= 1
        assert y_pil.tolist() == [pil.labels_of(part)[i] for i in panel_indices(pil.labels_of(part), 5, 42)]
    (_, y_test) = pil.samples("test", 5)
    assert sorted(set(y_test.tolist())) == [0, 1, 2, 3]  # the test/ folder is class-sorted: 3 cats first


def _finished_run(run_dir, timeout: float = 60) -> OfflineRun:
    """The offline run, once its file ends with the exit record: W&B's service process may still
    be writing the file (from its first block on) for a moment after ``finish()`` returns."""
    (path,) = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        try:
            last = records(path)[-1].WhichOneof("record_type")
        except Exception as e:  # noqa: BLE001 (empty, or cut in the middle of a record)
            last = repr(e)
        if last == "exit":
            return OfflineRun.load(run_dir)
        assert time.monotonic() < deadline, f"{path}: no exit record after {timeout}s (last: {last})"
        time.sleep(0.2)


def _test_images(root, classes) -> dict[str, tuple[np.ndarray, str]]:
    return {
        str(p.relative_to(root)): (np.asarray(Image.open(p).convert("RGB")), name)
        for name in classes
        for p in sorted((root / "test" / name).glob("*.png"))
    }


@pytest.mark.parametrize("data_path", ["pil", "tensor"])
def test_logged_test_panel_shows_every_class_with_its_own_pixels(make_config, folder, data_path, wandb_run_cleanup):
    classes = ["cat", "dog", "frog", "ship"]
    cfg = _config(make_config, folder, data_path=data_path)
    tracking.start_run(cfg)
    ImageDataModule.from_config(cfg).setup("fit")  # writes the run's split.json
    fitted = fit(cfg, cfg.out / "split.json")
    evaluate(cfg, cfg.out / "split.json", fitted.best_checkpoint)
    tracking.finish_run()

    (run_dir,) = offline_run_dirs(cfg.out)
    wb = _finished_run(run_dir)
    (panel,) = wb.values("test/examples")
    labels = [re.fullmatch(r"Pred: (\w+), Label: (\w+)", c).group(2) for c in panel["captions"]]
    assert len(labels) == 5 and set(labels) == set(classes), labels  # not 3 cats and a dog
    assert Counter(labels).most_common(1)[0][1] == 2  # every class once before any twice
    (table,) = wb.values("test/predictions")
    rows = json.loads((run_dir / "files" / table["path"]).read_text())
    assert [row[1] for row in rows["data"]] == labels  # the Table: the same images, same labels

    # Every logged picture is one of the test images, decoded: the one its caption names.
    originals = _test_images(folder, classes)
    shown = []
    for name, label in zip(panel["filenames"], labels):
        logged = np.asarray(Image.open(run_dir / "files" / name).convert("RGB")).astype(int)
        (match,) = [rel for rel, (img, _) in originals.items() if np.abs(img.astype(int) - logged).max() <= 1]
        assert originals[match][1] == label
        shown.append(match)
    assert len(set(shown)) == 5
    # Exactly the split's panel: the seeded round-robin choice among the test images.
    dm = ImageDataModule.from_config(cfg, cfg.out / "split.json")
    dm.setup("test")
    split = dm.split
    expected = [split.samples[split.test[i]][0] for i in panel_indices(dm.labels_of("test"), 5, cfg.seed)]
    assert shown == expected
