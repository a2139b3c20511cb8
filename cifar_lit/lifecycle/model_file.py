"""The self-contained model: everything inference needs, in files that load on their own.

``package(checkpoint, dest)`` writes three files from a training checkpoint (a sweep's trials
only the first; ``add_portable`` adds the other two to the one that is registered):

- ``model.pt``: a plain dict (``torch.load(..., weights_only=True)`` reads it; no pickled code)
  with the network's name and constructor arguments, its weights, the class names, the input
  size (``image_size``: the side of the square images it was trained on), the training images'
  normalisation, the test-time augmentation and the run's config. ``load_model`` rebuilds the
  network from it with this package installed.
- ``model.pt2``: a ``torch.export`` program of the same network with normalisation and
  test-time augmentation inside, for plain ``torch`` without this package::

      program = torch.export.load("model.pt2", extra_files=extra := {"model.json": ""})
      net = program.module()                          # float images in [0, 1], N x 3 x S x S
      probs = net(images).softmax(1)                  # classes, S: json.loads(extra["model.json"])

- ``model.onnx``: the same program for ONNX runtimes (``onnxruntime`` here); input ``images``
  (N x 3 x S x S, float in [0, 1], any N), output ``logits``; the class names and the input
  contract are in its metadata (``model.json``).

Both are checked at export on a batch of another size than the one they were traced with: they
must give the network's top-1 and its logits within 1e-4, or the export fails. Versions made
before ``model.pt2`` and ``model.onnx`` hold ``model.torchscript.pt`` and stay loadable: every
load here goes through ``model.pt``.

Every load goes through ``torch.load(weights_only=True)``: a crafted file cannot run code, and a
corrupt or foreign file is one ``ModelFileError`` line naming the file.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cifar_lit.errors import UserError
from cifar_lit.files.atomic import save_atomic

FORMAT = "cifar_lit.model/1"
MODEL_FILE, PROGRAM_FILE, ONNX_FILE = "model.pt", "model.pt2", "model.onnx"
TORCHSCRIPT_FILE = "model.torchscript.pt"  # what versions made before model.pt2 hold
PARITY = 1e-4  # the exported programs' largest allowed difference from the network's logits


class ModelFileError(UserError, ValueError):
    """A model or checkpoint file that cannot be used; the message names the file."""


def tta_views(x: torch.Tensor, level: int) -> list[torch.Tensor]:
    """The test-time views of a batch: level 1 adds the mirror image, level 2 also shifts
    up-left and down-right of both (reflect padding) by 1 pixel per 32 of the image's side (1
    at 32, 2 at 64: the same share of the image as training's translate). Scriptable:
    TorchScript runs it."""
    views = [x]
    if level >= 1:
        views.append(x.flip(3))
    if level >= 2:
        h, w = x.shape[-2], x.shape[-1]
        s = max(1, w // 32)
        padded = F.pad(x, [s, s, s, s], mode="reflect")
        shifted = [padded[:, :, :h, :w], padded[:, :, 2 * s :, 2 * s :]]
        views += shifted + [v.flip(3) for v in shifted]
    return views


class InferenceModel(nn.Module):
    """A trained network with its input normalisation and test-time augmentation inside: takes
    float images in [0, 1] (N x 3 x S x S, S = ``image_size``, the side it was trained at) and
    returns the outputs the test step averages."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float], tta: int, classes: list[str],
                 image_size: int = 32) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.tta = tta
        self.classes = classes
        self.image_size = image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        views = tta_views(x, self.tta)
        return torch.stack([self.net(v) for v in views]).mean(0)


@dataclass
class LoadedModel:
    """A model ready to predict: ``module(images in [0, 1])`` -> averaged outputs."""

    module: InferenceModel
    classes: list[str]
    image_size: int
    info: dict[str, Any] = field(default_factory=dict)  # model name, config, source file

    @property
    def device(self) -> torch.device:
        return self.module.mean.device


def safe_load(path: Path, what: str = "model file") -> dict:
    """``torch.load`` with ``weights_only=True``; any failure is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such {what}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e) or "global" in str(e):  # weights_only refused pickled code or classes
            raise ModelFileError(f"{path}: refused to load: it holds pickled code or classes, not only weights") from None
        raise ModelFileError(f"{path}: not a readable {what} (truncated or corrupt)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, AttributeError, IndexError) as e:
        raise ModelFileError(f"{path}: not a readable {what} ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(obj, dict):
        raise ModelFileError(f"{path}: not a {what} (holds a {type(obj).__name__})")
    return obj


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


def from_checkpoint(ckpt: dict, path: Path) -> dict:
    """The ``model.pt`` dict of a Lightning checkpoint written by ``LitClassifier``."""
    hp = ckpt.get("hyper_parameters") or {}
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or "config" not in hp or "num_classes" not in hp:
        raise ModelFileError(f"{path}: not a cifar_lit checkpoint (no LitClassifier hyperparameters)")
    if hp.get("mean") is None:
        raise ModelFileError(f"{path}: made before checkpoints recorded their normalisation; retrain to use it")
    net_state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    return {
        "format": FORMAT,
        "model": hp["config"]["model"],
        "model_args": {"num_classes": hp["num_classes"]},
        "classes": list(hp["class_names"]),
        "image_size": hp.get("image_size", 32),
        "mean": list(hp["mean"]),
        "std": list(hp["std"]),
        "tta": hp.get("tta", 0),
        "config": hp["config"],
        "state_dict": net_state,
    }


def read_model(path: Path) -> dict:
    """A ``model.pt`` dict from a ``model.pt`` or a Lightning checkpoint, checked."""
    obj = safe_load(path)
    if obj.get("format") != FORMAT:
        if "state_dict" in obj and "hyper_parameters" in obj:
            return from_checkpoint(obj, path)
        raise ModelFileError(f"{path}: not a cifar_lit model file (format {obj.get('format')!r})")
    missing = {"model", "model_args", "classes", "image_size", "mean", "std", "tta", "state_dict"} - obj.keys()
    if missing:
        raise ModelFileError(f"{path}: model file lacks {', '.join(sorted(missing))}")
    return obj


def build_inference(doc: dict, path: Path) -> InferenceModel:
    from cifar_lit.models import build_model

    try:
        net = build_model(doc["model"], **doc["model_args"])
        net.load_state_dict(doc["state_dict"])
    except (ValueError, RuntimeError, TypeError) as e:
        raise ModelFileError(f"{path}: weights do not fit model {doc['model']!r} ({_first_line(e)})") from None
    return InferenceModel(net, doc["mean"], doc["std"], int(doc["tta"]), list(doc["classes"]),
                          int(doc["image_size"])).eval()


def load_model(path: Path, device: str | torch.device = "cpu") -> LoadedModel:
    """A model ready to predict, from ``model.pt`` or a Lightning checkpoint of this package."""
    path = Path(path)
    doc = read_model(path)
    module = build_inference(doc, path).to(device)
    info = {"model": doc["model"], "config": doc.get("config", {}), "file": str(path)}
    return LoadedModel(module, list(doc["classes"]), int(doc["image_size"]), info)


def contract(doc: dict) -> dict[str, Any]:
    """What a caller of ``model.pt2`` or ``model.onnx`` must send and gets back: written into
    both files and into the registry's card."""
    size = int(doc["image_size"])
    return {
        "input": {"name": "images", "shape": ["batch", 3, size, size], "dtype": "float32", "range": [0, 1],
                  "channels": "RGB", "prepare": f"8-bit RGB; the shorter side resized to {size}, the centre "
                                                f"{size}x{size} cropped (cifar_lit.data.images.load_rgb)"},
        "output": {"name": "logits", "shape": ["batch", len(doc["classes"])],
                   "meaning": "logits averaged over the test-time views; softmax gives probabilities"},
        "classes": list(doc["classes"]),
        "image_size": size,
        "inside": {"normalisation": {"mean": list(doc["mean"]), "std": list(doc["std"])}, "tta": int(doc["tta"])},
    }


def package(checkpoint: Path, dest: Path, portable: bool = True) -> dict[str, Path]:
    """Write ``model.pt`` for ``checkpoint`` into ``dest``, and with ``portable`` also
    ``model.pt2`` and ``model.onnx`` (a sweep's trials leave those to the one that is registered)."""
    checkpoint, dest = Path(checkpoint), Path(dest)
    doc = from_checkpoint(safe_load(checkpoint, "checkpoint"), checkpoint)
    dest.mkdir(parents=True, exist_ok=True)
    files = {"model": dest / MODEL_FILE}
    save_atomic(files["model"], lambda tmp: torch.save(doc, tmp))
    return files | (write_portable(doc, dest, checkpoint) if portable else {})


def add_portable(model_file: Path) -> dict[str, Path]:
    """``model.pt2`` and ``model.onnx`` beside an existing ``model.pt``."""
    model_file = Path(model_file)
    return write_portable(read_model(model_file), model_file.parent, model_file)


def write_portable(doc: dict, dest: Path, source: Path) -> dict[str, Path]:
    """``model.pt2`` and ``model.onnx`` of the model ``doc`` in ``dest``, checked against it."""
    files = {"program": Path(dest) / PROGRAM_FILE, "onnx": Path(dest) / ONNX_FILE}
    module = build_inference(doc, source)
    size, card = int(doc["image_size"]), json.dumps(contract(doc), sort_keys=True)
    program = export_program(module, size, source)
    save_atomic(files["program"], lambda tmp: _save_program(program, tmp, card))
    save_atomic(files["onnx"], lambda tmp: write_onnx(program, tmp, card))
    check_exported(files, module, size, source)
    return files


def _example(size: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def export_program(module: InferenceModel, size: int, path: Path) -> torch.export.ExportedProgram:
    """``module`` as a ``torch.export`` program whose batch size is free; a network that cannot
    take ``size`` (or cannot be exported) fails here, at export, not in a user's hands."""
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        with torch.no_grad():
            return torch.export.export(module, (_example(size, 2),), dynamic_shapes={"images": {0: batch}})
    except Exception as e:  # noqa: BLE001 - torch.export raises many types; the user needs the one line
        raise ModelFileError(f"{path}: the network cannot be exported at {size}x{size} ({_first_line(e)})") from None


def _save_program(program: torch.export.ExportedProgram, dest: Path, card: str) -> None:
    with open(dest, "wb") as f:  # a file object: torch.export warns about a path not ending in .pt2
        torch.export.save(program, f, extra_files={"model.json": card})


def write_onnx(program: torch.export.ExportedProgram, dest: Path, card: str) -> None:
    """``program`` as one self-contained ONNX file (no external-data sidecar), with the contract
    in its metadata."""
    import onnx

    onnx_program = torch.onnx.export(program, input_names=["images"], output_names=["logits"], dynamo=True,
                                     external_data=False, verbose=False)
    model = onnx_program.model_proto
    for value in [*model.graph.input, *model.graph.output]:  # torch.export calls it s0, s34...
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.helper.set_model_props(model, {"model.json": card})
    onnx.save_model(model, str(dest))


@torch.no_grad()
def check_exported(files: dict[str, Path], module: InferenceModel, size: int, path: Path) -> None:
    """``model.pt2`` and ``model.onnx``, loaded back from disk, give the module's answers on a
    batch of another size than the traced one (so the free batch dimension is checked too)."""
    import onnxruntime

    example = _example(size, 3, seed=1)
    want = module(example)
    got = {"model.pt2": torch.export.load(files["program"]).module()(example)}
    session = onnxruntime.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    got["model.onnx"] = torch.from_numpy(session.run(["logits"], {"images": example.numpy()})[0])
    top2 = want.topk(min(2, want.shape[1]), dim=1).values
    clear = (top2[:, 0] - top2[:, -1]) > 2 * PARITY  # a near tie may flip within the tolerance
    for name, out in got.items():
        if out.shape != want.shape or not torch.allclose(out, want, rtol=0, atol=PARITY) \
                or not torch.equal(out.argmax(1)[clear], want.argmax(1)[clear]):
            raise ModelFileError(f"{path}: the exported {name} differs from the network at {size}x{size} "
                                 f"(largest logit difference {float((out - want).abs().max()):.2g})")
