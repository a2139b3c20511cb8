"""Security row: a mirror serves an archive whose CIFAR batch is a crafted pickle, with the md5
the user was given for it. The md5 matches, the archive extracts, and reading the batch must
still run no code: it is refused in one line naming the file. Real tar.gz served from 127.0.0.1,
read by the real data module."""

from __future__ import annotations

import io
import os
import pickle
import tarfile

import fakes
import numpy as np
import pytest

from cifar_lit.data.cifar import load_cifar
from cifar_lit.data.common import DataError
from cifar_lit.data.datamodule import ImageDataModule


class _Payload:
    """Pickles as a call of ``func(arg)``: what a crafted pickle runs when it is loaded."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def _with_member(archive: bytes, name: str, payload: bytes) -> bytes:
    """``archive`` with member ``name`` replaced by ``payload``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as src, tarfile.open(fileobj=buf, mode="w:gz") as out:
        for member in src.getmembers():
            if member.name.endswith("/" + name):
                member.size = len(payload)
                out.addfile(member, io.BytesIO(payload))
            else:
                out.addfile(member, src.extractfile(member) if member.isfile() else None)
    return buf.getvalue()


@pytest.mark.parametrize("member", ["data_batch_1", "batches.meta"])
@pytest.mark.parametrize("call", ["os.system", "exec"])
def test_a_crafted_cifar_pickle_runs_no_code(make_config, server, archives, tmp_path, member, call):
    marker = tmp_path / "pwned"
    func, arg = (os.system, f"touch {marker}") if call == "os.system" else (exec, f"open({str(marker)!r}, 'w')")
    batch = {"batch_label": "training batch 1 of 5", "labels": [0], "data": _Payload(func, arg)}
    if member == "batches.meta":
        batch = {"label_names": _Payload(func, arg), "num_cases_per_batch": 1}
    crafted = _with_member(archives["cifar10"], member, pickle.dumps(batch, protocol=2))
    server.files["/crafted.tar.gz"] = crafted
    cfg = make_config(download_url=server.url("/crafted.tar.gz"), download_md5=fakes.md5(crafted))  # md5 matches
    with pytest.raises(DataError) as caught:
        ImageDataModule.from_config(cfg).setup("fit")
    message = str(caught.value)
    assert not marker.exists(), "the crafted pickle ran code"
    assert f"cifar-10-batches-py/{member}: refused to load" in message and "\n" not in message
    # The global it asked for is named (protocol 2 spells builtins as __builtin__).
    assert ("asks for posix.system" if call == "os.system" else "asks for __builtin__.exec") in message


def test_real_batches_still_load_and_a_batch_without_data_is_one_line(tmp_path, archives):
    with tarfile.open(fileobj=io.BytesIO(archives["cifar10"]), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    folder = tmp_path / "cifar-10-batches-py"
    images, labels = load_cifar(folder, "cifar10", train=True)
    assert images.shape == (200, 32, 32, 3) and images.dtype == np.uint8 and len(labels) == 200
    (folder / "data_batch_2").write_bytes(pickle.dumps({"labels": [1, 2]}, protocol=2))
    with pytest.raises(DataError, match="data_batch_2: not a CIFAR batch") as caught:
        load_cifar(folder, "cifar10", train=True)
    assert "\n" not in str(caught.value)
