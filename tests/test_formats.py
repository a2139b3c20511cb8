"""The data layer's on-disk files stay what they are: split files, manifests and their names,
byte for byte as the code before the data-layer redesign wrote them (``fixtures/old_splits``)."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import fakes

from cifar_lit.data.cifar import cifar_classes
from cifar_lit.data.prepare import DataRef, prepare_data
from cifar_lit.data.split import make_split

OLD = Path(__file__).parent / "fixtures" / "old_splits"  # written by the code before Split (see its README)


def test_make_split_writes_what_the_old_code_wrote(tmp_path):
    """The same data gives the same split file, manifest and names as before the redesign: data
    fingerprints, tensor caches and the registry's matches hold."""
    root = shutil.copytree(OLD / "photos", tmp_path / "photos")
    ref = prepare_data("imagefolder", root)
    assert Path(ref.manifest).read_bytes() == (OLD / "imagefolder-manifest.json").read_bytes()
    path = make_split(ref, 0.25, 2, 0, root)
    assert path.read_bytes() == (OLD / "imagefolder-split.json").read_bytes()
    # CIFAR: a split depends on the number of training images and the class names only.
    with tarfile.open(fileobj=io.BytesIO(fakes.cifar_archive("cifar10", n_train=50, n_test=10))) as t:
        t.extractall(tmp_path / "c", filter="data")
    folder = tmp_path / "c" / "cifar-10-batches-py"
    ref = DataRef("cifar10", folder, "0123456789abcdef" * 4, tuple(cifar_classes(folder, "cifar10")))
    assert make_split(ref, 10, 0.1, 3, tmp_path / "c").read_bytes() == (OLD / "cifar10-split.json").read_bytes()
