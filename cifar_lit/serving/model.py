"""What the server answers with: a registry version loaded for inference, and a ``Follower``
that keeps it the version an alias names.

A version loads from ``model.pt`` (torch) or ``model.onnx`` (onnxruntime, ``onnx=True``); both
take the same 8-bit RGB squares and give probabilities, prepared exactly as
``cifar_lit.lifecycle.predict`` prepares files (so the server's answer is the predict flow's row).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cifar_lit.data.images import square
from cifar_lit.lifecycle.model_file import MODEL_FILE, ONNX_FILE, load_model
from cifar_lit.lifecycle.registry import Registry, RegistryError, Version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    """One loaded version: ``probabilities(images)`` for RGB images of any size."""

    name: str
    version: str
    classes: list[str]
    image_size: int
    run: Callable[[torch.Tensor], torch.Tensor]  # N x 3 x S x S in [0, 1] -> N x C probabilities
    runtime: str  # "torch" or "onnxruntime"

    def probabilities(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = np.stack([np.asarray(square(im, self.image_size)) for im in images])
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255)
        return self.run(x)

    def top(self, probs: torch.Tensor, k: int) -> list[list[dict]]:
        p, i = probs.topk(min(k, len(self.classes)), dim=1)
        return [[{"label": self.classes[c], "prob": v} for v, c in zip(ps, cs)] for ps, cs in zip(p.tolist(), i.tolist())]


def load_version(version: Version, onnx: bool = False) -> Served:
    """``version`` ready to answer; a version without the file asked for is one RegistryError line."""
    if not onnx:
        loaded = load_model(version.file("model"))

        @torch.no_grad()
        def run(x: torch.Tensor) -> torch.Tensor:
            return loaded.module(x).float().softmax(1)

        return Served(version.name, version.version, loaded.classes, loaded.image_size, run, "torch")
    import onnxruntime

    path = version.path / ONNX_FILE
    if not path.is_file():
        raise RegistryError(f"{path}: {version.name} {version.version} has no model.onnx (registered before "
                            "ONNX export); serve it without --onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    contract = json.loads(session.get_modelmeta().custom_metadata_map["model.json"])

    def run_onnx(x: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run(["logits"], {"images": x.numpy()})
        return torch.from_numpy(logits).float().softmax(1)

    return Served(version.name, version.version, list(contract["classes"]), int(contract["image_size"]), run_onnx,
                  "onnxruntime")


class Follower:
    """The version ``alias`` names, reloaded when the alias moves (a promotion, a roll-back with
    ``cifar-lit registry set-alias``): a thread reads ``aliases.json`` every ``poll`` seconds and
    loads a new version completely before it swaps it in, so every request is answered whole by
    one version or the other. With ``version`` given the model is pinned and nothing is followed.
    A new version that fails to load is logged once and the current one goes on serving; it is
    tried again when its file changes."""

    def __init__(self, registry: Path, name: str | None = None, alias: str = "production", version: str | None = None,
                 onnx: bool = False, poll: float = 1.0) -> None:
        self.registry, self.alias, self.pinned, self.onnx, self.poll = Registry(registry), alias, version, onnx, poll
        if not self.registry.root.is_dir():
            raise RegistryError(f"registry_dir: {self.registry.root} does not exist (train first)")
        self.name = name or self.registry.only_name()
        self.served = load_version(self._target(), onnx)
        self._failed: str | None = None  # the version that failed to load, logged once
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _target(self) -> Version:
        if self.pinned:
            return self.registry.get(self.name, version=self.pinned)
        return self.registry.get(self.name, alias=self.alias)

    def current(self) -> Served:
        return self.served

    def start(self) -> Follower:
        if self.pinned is None and self._thread is None:
            self._thread = threading.Thread(target=self._follow, name="follow-alias", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll):
            self.check()

    def check(self) -> bool:
        """Load and swap in the version the alias names now, if it changed; True if it did."""
        try:
            wanted = self.registry.aliases(self.name).get(self.alias)
        except RegistryError as e:  # a half-written file never happens (atomic rename); a broken one might
            return self._refuse(str(e), str(e))
        if wanted is None or wanted == self.served.version:
            return False
        # A version that failed is tried again only once its file changed (repaired, replaced).
        file = self.registry.root / self.name / wanted / (ONNX_FILE if self.onnx else MODEL_FILE)
        key = f"{wanted}@{file.stat().st_mtime_ns if file.exists() else 0}"
        if key == self._failed:
            return False
        try:
            new = load_version(self.registry.get(self.name, version=wanted), self.onnx)
        except Exception as e:  # noqa: BLE001 - any failure keeps the current version serving
            return self._refuse(key, f"{self.name} {self.alias} -> {wanted}: cannot load it, still serving "
                                     f"{self.served.version} ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
        old, self.served, self._failed = self.served.version, new, None
        log.warning("%s %s moved %s -> %s: now serving %s", self.name, self.alias, old, wanted, wanted)
        return True

    def _refuse(self, key: str, message: str) -> bool:
        if self._failed != key:
            log.error("%s", message)
            self._failed = key
        return False
