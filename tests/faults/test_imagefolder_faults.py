"""Fault matrix, the image-folder rows, each injected for real on disk:

1. every per-file failure is a skipped file with a reason, never a crash: a decompression bomb
   (a real 50 kB PNG that declares 400 M pixels), a dangling symlink, a symlink loop, a file
   name that is not UTF-8, a file that cannot be read (permission, I/O error), a FIFO; with
   ``bad_images="error"`` the scan stops with one line naming the file and the reason. The same
   at any depth in a class folder, where a sub-folder that cannot be listed is one more such
   file. Broken class-folder links and class names that are not UTF-8 are one-line errors.
2. a dataset with a single class (or a class without one readable image) is an error at scan time.
3. a run's output dir inside the data's train/ (or test/) is refused, never read as a class.
4. derived files: deleting DIR/.cifar_lit does not break the next run; a corrupt tensor cache is
   rebuilt with the original pixels; edits inside a symlinked class folder invalidate the cache.

Only names that existed before these faults were handled are imported at module level, so that
against the old code each test fails on its assertions (or on the crash the row is about), not
on an import.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import fakes
import numpy as np
import pytest
import torch
from PIL import Image

from cifar_lit.data.common import DataError
from cifar_lit.data.formats import on_disk
from cifar_lit.data.imagefolder import scan_imagefolder
from cifar_lit.data.images import load_rgb32
from cifar_lit.data.prepare import cache_dir, prepare_data
from cifar_lit.data.signature import stat_signature
from cifar_lit.data.split import Split, make_split
from cifar_lit.data.tensors import load_tensors, tensor_cache_path
from cifar_lit.run.rundir import own_output_dir
from tasks import download as download_task

GOOD = 3 * 6  # fakes.image_folder(per_class=6): cat, dog, frog


def _png(path: Path | bytes) -> None:
    img = Image.new("RGB", (32, 32), (40, 90, 200))
    if isinstance(path, bytes):  # a name Path cannot hold as text: write through the OS
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            img.save(f, "PNG")
    else:
        img.save(path)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(path: Path, side: int = 20_000) -> None:
    """A valid 1-bit PNG of side x side zero pixels: 400 M pixels, more than twice PIL's default
    MAX_IMAGE_PIXELS (89 M), where Image.open raises DecompressionBombError. 50 kB on disk."""
    rows = b"\0" * ((side // 8 + 1) * side)  # each row: filter byte 0, then side / 8 bytes
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows, 9))
                     + _chunk(b"IEND", b""))


# Each maker puts one bad entry into train/cat and returns its name as the scan must report it
# (a name that is not UTF-8 shows its bytes as \xNN escapes), with a word of the expected reason.
def _bomb(cat: Path):
    bomb_png(cat / "bomb.png")
    assert (cat / "bomb.png").stat().st_size < 100_000 and Image.MAX_IMAGE_PIXELS == 89_478_485
    return "bomb.png", "DecompressionBombError"


def _dangling(cat: Path):
    (cat / "gone.png").symlink_to(cat.parent.parent.parent / "moved-away.png")
    return "gone.png", "broken symlink"


def _loop(cat: Path):
    (cat / "loop.png").symlink_to("loop.png")
    return "loop.png", "Too many levels of symbolic links"


def _not_utf8(cat: Path):
    _png(os.fsencode(cat) + b"/caf\xe9.png")  # a Latin-1 name from an old camera or share
    return "caf\\xe9.png", "not valid UTF-8"


def _io_error(cat: Path):
    # Reading /proc/self/mem at offset 0 fails with EIO, as a failing disk or a stale NFS handle does.
    (cat / "eio.png").symlink_to("/proc/self/mem")
    return "eio.png", "Input/output error"


def _fifo(cat: Path):
    os.mkfifo(cat / "pipe.png")  # reading it would block the scan forever
    return "pipe.png", "not a regular file"


FAULTS = {"bomb": _bomb, "dangling-symlink": _dangling, "symlink-loop": _loop, "name-not-utf8": _not_utf8,
          "io-error": _io_error, "fifo": _fifo}


# ---- 1. every per-file failure is a skipped file with a reason ---------------------------------------


@pytest.mark.parametrize("fault", FAULTS)
def test_bad_file_is_skipped_with_a_reason(tmp_path, fault):
    root = fakes.image_folder(tmp_path / "ds", per_class=6)
    name, why = FAULTS[fault](root / "train" / "cat")
    rel = f"train/cat/{name}"
    ref = prepare_data("imagefolder", root)  # the old code: a traceback for most of these
    assert ref.skipped == (rel,)  # what the flow counts (len) and the split file lists
    reasons = dict(getattr(ref, "skipped_reasons", ()))
    assert why in reasons.get(rel, ""), reasons
    assert "\n" not in reasons[rel]
    # The manifest is strict JSON in UTF-8 (no lone surrogates) and holds every good image.
    text = Path(ref.manifest).read_bytes().decode("utf-8")
    manifest = json.loads(text)
    assert len(manifest["train"]) == GOOD and rel not in {r for r, _ in manifest["train"]}
    assert on_disk("imagefolder", root, None)  # the flow's cache check does not crash either
    doc = Split.read(make_split(ref, 3, 3, 0, root))
    assert len(doc.samples) == GOOD and doc.skipped == (rel,)


@pytest.mark.parametrize("fault", FAULTS)
def test_bad_images_error_stops_with_one_line_naming_the_file_and_reason(tmp_path, fault):
    root = fakes.image_folder(tmp_path / "ds", per_class=6)
    name, why = FAULTS[fault](root / "train" / "cat")
    with pytest.raises(DataError) as caught:
        prepare_data("imagefolder", root, bad_images="error")
    msg = str(caught.value)
    assert f"{root}/train/cat/{name}" in msg and why in msg and "\n" not in msg
    assert not list(cache_dir(root).glob("manifest-*.json"))  # nothing half-prepared


def test_bomb_does_not_need_a_lowered_limit():
    """The file trips PIL's real default limit: no monkeypatching anywhere in this module."""
    with tempfile.TemporaryDirectory() as d:
        bomb_png(Path(d) / "b.png")
        with pytest.raises(Image.DecompressionBombError):
            Image.open(Path(d) / "b.png")


@pytest.fixture
def world_readable_dir():
    """A folder another user can reach (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="cifar-lit-perm-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _scan_as_nobody(root: Path) -> dict:
    """Scan in a forked child that dropped root: the tests run as root, and chmod 000 does not
    stop root, but it stops a nightly worker under its own user. Forked rather than exec'd, so
    the child needs no access to the interpreter's install (which may sit under /root)."""
    Image.init()  # import PIL's format plugins here: the child may not be able to read them
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(r)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            s = scan_imagefolder(root)
            try:
                scan_imagefolder(root, "error")
                err = None
            except DataError as e:
                err = str(e)
            out = {"skipped": s.skipped, "reasons": getattr(s, "skipped_reasons", None), "n": len(s.train), "err": err}
        except BaseException as e:  # noqa: BLE001 - report the crash to the parent
            out = {"crash": f"{type(e).__name__}: {e}"}
        with os.fdopen(w, "w") as f:
            f.write(json.dumps(out))
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return json.loads(text)


def test_unreadable_file_is_skipped_with_a_reason(world_readable_dir):
    root = fakes.image_folder(world_readable_dir / "ds", per_class=6)
    secret = root / "train" / "dog" / "secret.png"
    _png(secret)
    secret.chmod(0)
    got = _scan_as_nobody(root)
    assert "crash" not in got, got["crash"]  # the old code: PermissionError out of the scan
    assert got["skipped"] == ["train/dog/secret.png"] and got["n"] == GOOD
    assert got["reasons"] and "Permission denied" in dict(got["reasons"])["train/dog/secret.png"]
    err = got["err"]
    assert f"{root}/train/dog/secret.png" in err and "Permission denied" in err and "\n" not in err


def test_every_bad_file_at_once_is_listed_with_its_reason(tmp_path):
    root = fakes.image_folder(tmp_path / "ds", per_class=6)
    expected = {}
    for make in FAULTS.values():
        name, why = make(root / "train" / "cat")
        expected[f"train/cat/{name}"] = why
    (root / "train" / "frog" / "broken.jpg").write_bytes(b"this is not a jpeg")
    expected["train/frog/broken.jpg"] = "not a readable image"
    ref = prepare_data("imagefolder", root)
    assert set(ref.skipped) == set(expected)
    reasons = dict(getattr(ref, "skipped_reasons", ()))
    assert all(why in reasons.get(rel, "") for rel, why in expected.items()), reasons
    manifest = json.loads(Path(ref.manifest).read_bytes().decode("utf-8"))
    assert sorted(manifest["skipped"]) == sorted([rel, reasons[rel]] for rel in expected)


@pytest.mark.parametrize("fault", FAULTS)
def test_bad_file_in_a_sub_folder_is_skipped_with_a_reason(tmp_path, fault):
    """Images in sub-folders of a class are samples (at any depth), so their faults are too."""
    root = fakes.image_folder(tmp_path / "ds", per_class=6)
    deep = root / "train" / "cat" / "2019" / "may"
    deep.mkdir(parents=True)
    _png(deep / "good.png")
    name, why = FAULTS[fault](deep)
    rel = f"train/cat/2019/may/{name}"
    ref = prepare_data("imagefolder", root)  # the old code: the sub-folder was not read at all
    assert ref.skipped == (rel,) and why in dict(ref.skipped_reasons)[rel]
    manifest = json.loads(Path(ref.manifest).read_bytes().decode("utf-8"))
    assert len(manifest["train"]) == GOOD + 1 and ["train/cat/2019/may/good.png", 0] in manifest["train"]
    with pytest.raises(DataError) as caught:
        prepare_data("imagefolder", root, bad_images="error")
    msg = str(caught.value)
    assert f"{root}/{rel}" in msg and why in msg and "\n" not in msg


def test_a_sub_folder_that_cannot_be_listed_is_skipped_with_a_reason(world_readable_dir):
    root = fakes.image_folder(world_readable_dir / "ds", per_class=6)
    private = root / "train" / "dog" / "private"
    private.mkdir()
    _png(private / "secret.png")
    private.chmod(0)
    got = _scan_as_nobody(root)
    assert "crash" not in got, got["crash"]
    assert got["skipped"] == ["train/dog/private"] and got["n"] == GOOD
    assert "Permission denied" in dict(got["reasons"])["train/dog/private"]
    err = got["err"]
    assert f"{root}/train/dog/private" in err and "Permission denied" in err and "\n" not in err


def _dangling_class(train: Path):
    (train / "zebra").symlink_to(train.parent.parent / "unmounted-share" / "zebras")
    return "zebra", "does not exist"


def _looping_class(train: Path):
    (train / "zebra").symlink_to("zebra")
    return "zebra", "Too many levels of symbolic links"


def _class_not_utf8(train: Path):
    os.mkdir(os.fsencode(train) + b"/z\xe8bre")
    _png(os.fsencode(train) + b"/z\xe8bre/1.png")
    return "z\\xe8bre", "not valid UTF-8"


@pytest.mark.parametrize("make", [_dangling_class, _looping_class, _class_not_utf8], ids=["dangling", "loop", "not-utf8"])
def test_broken_class_folder_is_a_one_line_error(tmp_path, make):
    """A class folder link whose share is not mounted would silently drop the class from the model."""
    root = fakes.image_folder(tmp_path / "ds", per_class=6)
    name, why = make(root / "train")
    with pytest.raises(DataError) as caught:
        prepare_data("imagefolder", root)
    msg = str(caught.value)
    assert f"{root}/train/{name}" in msg and why in msg and "\n" not in msg


# ---- 2. a single class is an error at scan time -------------------------------------------------------


@pytest.mark.parametrize("test_per_class", [0, 2])
def test_a_single_class_is_an_error_at_scan_time(tmp_path, test_per_class):
    root = fakes.image_folder(tmp_path / "ds", classes=("cat",), per_class=6, test_per_class=test_per_class)
    with pytest.raises(DataError) as caught:
        prepare_data("imagefolder", root)
    msg = str(caught.value)
    assert "at least two classes" in msg and f"{root}/train" in msg and "\n" not in msg
    assert not list(cache_dir(root).glob("manifest-*.json"))  # stopped before anything was derived


def test_a_class_without_one_readable_image_is_an_error(tmp_path):
    root = fakes.image_folder(tmp_path / "ds", per_class=6)
    (root / "train" / "yak").mkdir()
    (root / "train" / "yak" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError) as caught:  # the old code trained a 4-class model that never saw a yak
        prepare_data("imagefolder", root)
    msg = str(caught.value)
    assert f"{root}/train/yak" in msg and "no readable images" in msg and "\n" not in msg


# ---- 3. an output dir inside the data dir is refused ----------------------------------------------------


def test_output_dir_inside_train_is_refused_on_the_first_run(tmp_path):
    root = fakes.image_folder(tmp_path / "ds", per_class=6)
    # What the flow does before its download stage: take the output dir (--output-dir DIR/train/runs).
    with own_output_dir(root / "train" / "runs"):
        with pytest.raises(DataError) as caught:
            prepare_data("imagefolder", root)
    msg = str(caught.value)
    assert f"{root}/train/runs" in msg and "output dir" in msg and "\n" not in msg


@pytest.mark.parametrize("layout", ["output-dir", "runs-dir"])
def test_a_finished_run_inside_train_never_becomes_a_class(tmp_path, layout):
    root = fakes.image_folder(tmp_path / "ds", per_class=6)
    runs = root / "train" / "runs"
    out = runs if layout == "output-dir" else runs / "imagefolder-seed_cnn-e1-20261127-1"
    (out / "checkpoints").mkdir(parents=True)
    (out / ".lock").touch()
    (out / "checkpoints" / "last.ckpt").write_bytes(b"checkpoint")
    (out / "split.json").write_text("{}")
    (out / "summary.json").write_text("{}")
    with pytest.raises(DataError) as caught:  # the old code: a 4th class "runs" (a --resume'd run)
        prepare_data("imagefolder", root)
    msg = str(caught.value)
    assert f"{root}/train/runs" in msg and "output dir" in msg and "\n" not in msg


def test_exclude_refuses_an_output_dir_inside_the_data_before_it_exists(tmp_path):
    assert "exclude" in inspect.signature(prepare_data).parameters
    root = fakes.image_folder(tmp_path / "ds", per_class=6, test_per_class=2)
    for inside in (root / "train" / "runs" / "r1", root / "test" / "out", root / "train"):
        with pytest.raises(DataError) as caught:
            prepare_data("imagefolder", root, exclude=[inside])
        msg = str(caught.value)
        assert str(inside) in msg and "\n" not in msg
    # Outside train/ and test/ (beside the data, or DIR itself) is fine, and changes nothing.
    plain = prepare_data("imagefolder", root)
    for fine in (root / "runs", tmp_path / "elsewhere"):
        ref = prepare_data("imagefolder", root, exclude=[fine])
        assert (ref.fingerprint, ref.classes) == (plain.fingerprint, plain.classes)


# ---- 4. derived files: deleted, corrupt, or behind a symlink ----------------------------------------------


@pytest.mark.usefixtures("prefect_api")
def test_deleting_the_cache_dir_does_not_break_the_next_run(make_config, tmp_path):
    from flows.train_flow import train_flow

    root = fakes.image_folder(tmp_path / "ds", per_class=8)
    cfg = make_config(dataset="imagefolder", data_dir=root, val_size=0.2, test_size=0.2, wandb_mode="disabled",
                      max_epochs=1, prediction_samples=0, output_dir=tmp_path / "run1")
    first = train_flow(cfg, return_state=True)
    assert first.is_completed(), first.message
    shutil.rmtree(cache_dir(root))  # a user tidying up, or a sync tool that skips dot folders
    second = train_flow(cfg.model_copy(update={"output_dir": tmp_path / "run2"}), return_state=True)
    assert second.is_completed(), second.message  # the old code: the cached scan's manifest is gone
    assert second.result()["data_fingerprint"] == first.result()["data_fingerprint"]
    assert list(cache_dir(root).glob("manifest-*.json")) and list(cache_dir(root).glob("split-*.json"))


def _split(root: Path) -> dict:
    return Split.read(make_split(prepare_data("imagefolder", root), 3, 3, 0, root))


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "other-data"])
def test_corrupt_tensor_cache_is_rebuilt_with_the_original_pixels(tmp_path, damage):
    root = fakes.image_folder(tmp_path / "ds", per_class=6)
    split = _split(root)
    first = load_tensors(split, root)
    path = tensor_cache_path(root, split.content_fingerprint)
    good = path.read_bytes()
    if damage == "truncated":  # the machine died while another process copied the cache
        path.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, len(good), dtype=np.uint8).tobytes())
    else:  # a readable cache that does not hold this split's images (labels shuffled, one image short)
        torch.save({k: v[1:].flip(0) for k, v in first.items()}, path)
    again = load_tensors(split, root)
    pixels = np.stack([np.asarray(load_rgb32(root / rel)) for rel, _ in split.samples])
    assert torch.equal(again["train"], torch.from_numpy(pixels).permute(0, 3, 1, 2))
    assert again["train_labels"].tolist() == [label for _, label in split.samples]
    assert all(torch.equal(again[k], first[k]) for k in first)
    rebuilt = torch.load(path, weights_only=True)  # the file on disk is whole again
    assert torch.equal(rebuilt["train"], first["train"])


def test_edits_inside_a_symlinked_class_folder_invalidate_the_cache(tmp_path):
    root = fakes.image_folder(tmp_path / "ds", per_class=6)
    elsewhere = tmp_path / "elsewhere" / "cats"
    shutil.move(root / "train" / "cat", elsewhere)
    (root / "train" / "cat").symlink_to(elsewhere, target_is_directory=True)  # train/cat -> /elsewhere/cats
    scan = scan_imagefolder(root)
    assert len([r for r, label in scan.train if label == 0]) == 6  # the scanner follows the link
    prepare_data("imagefolder", root)  # as the download stage does: the manifest on_disk looks for

    def key() -> str:
        params = dict(dataset="imagefolder", data_dir=root, download_url=None, download_md5=None, bad_images="skip")
        return download_task._cache_key(None, params)

    before = (stat_signature(root), on_disk("imagefolder", root, None), key())
    _png(elsewhere / "new.png")  # a new image in the linked folder
    added = (stat_signature(root), on_disk("imagefolder", root, None), key())
    assert all(a != b for a, b in zip(before, added)), "adding an image behind the link was not noticed"
    img = Image.open(elsewhere / "000.png").convert("RGB")
    img.transpose(Image.FLIP_LEFT_RIGHT).save(elsewhere / "000.png")  # an edited image
    edited = (stat_signature(root), on_disk("imagefolder", root, None), key())
    assert all(a != b for a, b in zip(added, edited)), "editing an image behind the link was not noticed"
    assert len(scan_imagefolder(root).train) == GOOD + 1
