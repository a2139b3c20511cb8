"""Tiny datasets in the real on-disk formats, and a local HTTP server that serves them.

Images carry a class-dependent colour and stripe pattern plus noise, so a small network learns
them in a few steps and tests can check that training does something.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def class_images(labels: np.ndarray, num_classes: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """uint8 (N, size, size, 3): colour and stripe period depend on the label."""
    n = len(labels)
    hue = (labels / max(num_classes, 1))[:, None, None, None]
    base = np.concatenate([hue, 1 - hue, (labels % 3 / 2.0)[:, None, None, None]], axis=3)
    xs = np.arange(size)[None, None, :, None]
    stripes = ((xs // (1 + labels[:, None, None, None] % 4)) % 2) * 0.4
    img = 0.5 * base + stripes + rng.normal(0, 0.08, (n, size, size, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def cifar_archive(dataset: str, n_train: int = 200, n_test: int = 60, seed: int = 0) -> bytes:
    """A tar.gz laid out exactly like the official CIFAR-10/100 python archives."""
    rng = np.random.default_rng(seed)
    num_classes = 10 if dataset == "cifar10" else 100
    names = CIFAR10_CLASSES if dataset == "cifar10" else [f"class_{i:03d}" for i in range(num_classes)]

    def batch(n: int) -> tuple[np.ndarray, list[int]]:
        labels = np.arange(n) % num_classes
        rng.shuffle(labels)
        imgs = class_images(labels, num_classes, rng)
        return imgs.transpose(0, 3, 1, 2).reshape(n, -1), labels.tolist()

    files: dict[str, dict] = {}
    if dataset == "cifar10":
        base, per = "cifar-10-batches-py", n_train // 5
        for i in range(5):
            data, labels = batch(per)
            files[f"data_batch_{i + 1}"] = {"batch_label": f"training batch {i + 1} of 5", "labels": labels, "data": data}
        data, labels = batch(n_test)
        files["test_batch"] = {"batch_label": "testing batch 1 of 1", "labels": labels, "data": data}
        files["batches.meta"] = {"label_names": names, "num_cases_per_batch": per}
    else:
        base = "cifar-100-python"
        for split, n in (("train", n_train), ("test", n_test)):
            data, labels = batch(n)
            files[split] = {"fine_labels": labels, "coarse_labels": [x // 5 for x in labels], "data": data}
        files["meta"] = {"fine_label_names": names, "coarse_label_names": [f"super_{i}" for i in range(20)]}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, obj in files.items():
            payload = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"{base}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def image_folder(
    root: Path, classes=("cat", "dog", "frog"), per_class: int = 12, test_per_class: int = 0, seed: int = 0
) -> Path:
    """``root/train/<class>/NNN.png`` (and ``root/test/...``) with learnable images."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", test_per_class)):
        if n == 0:
            continue
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            imgs = class_images(np.full(n, label), len(classes), rng)
            for i, img in enumerate(imgs):
                Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


@dataclass
class FileServer:
    """Serves ``files`` on 127.0.0.1; answers 503 to the next ``fail_next`` requests."""

    files: dict[str, bytes]
    fail_next: int = 0
    requests: list[tuple[str, str, int]] = field(default_factory=list)

    def start(self) -> FileServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: bool) -> None:
                if server.fail_next > 0:
                    server.fail_next -= 1
                    status, data = 503, b"busy"
                elif self.path in server.files:
                    status, data = 200, server.files[self.path]
                else:
                    status, data = 404, b"not found"
                server.requests.append((self.command, self.path, status))
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    try:
                        self.wfile.write(data)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # torchvision's redirect probe closes before reading the body

            def do_GET(self) -> None:  # noqa: N802
                self._answer(body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(body=False)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
