"""Tiny datasets in the real on-disk formats, and a local HTTP server that serves them.

Images carry a class-dependent colour and stripe pattern plus noise, so a small network learns
them in a few steps and tests can check that training does something.

The server can also misbehave the way real mirrors do (``Fault``): error statuses with
``Retry-After``, bodies cut short of their Content-Length, stalls before or in the middle of a
body, and slow bodies, so download tests inject those faults over a real socket.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import socket
import tarfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

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


def with_members(archive: bytes, extra: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """``archive`` (a tar.gz) with ``extra`` members appended after its own, e.g. links or
    devices built with ``tarfile.TarInfo``; ``None`` as content for members without data."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as src, tarfile.open(fileobj=buf, mode="w:gz") as out:
        for member in src.getmembers():
            out.addfile(member, src.extractfile(member) if member.isfile() else None)
        for info, content in extra:
            if content is not None:
                info.size = len(content)
            out.addfile(info, io.BytesIO(content) if content is not None else None)
    return buf.getvalue()


def leftovers(root: Path) -> list[str]:
    """Temporary download (``*.part``) or extraction (``.extract-*``) files left in a data root."""
    return sorted(p.name for p in Path(root).iterdir() if p.name.endswith(".part") or p.name.startswith(".extract-"))


def snapshot(top: Path) -> dict[str, object]:
    """Every path under ``top``: its bytes, ``("link", target)`` or ``"dir"``; to compare before and after."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(top))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = p.read_bytes()
    return out


def refused_url(path: str = "/cifar10.tar.gz") -> str:
    """A URL on 127.0.0.1 where nothing listens: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


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


def layout(root: Path, counts: dict[str, dict[str, int]], size: int | tuple[int, int] = 8, seed: int = 0) -> Path:
    """An image folder of any layout: ``counts[folder][class_path]`` PNGs in
    ``root/folder/class_path/``, e.g. ``{"train": {"cat": 3, "dog/2019/may": 2}, "val":
    {"cat": 1}}`` (dog's images one level deep). Colour and stripes follow the class (the first
    part of ``class_path``), so every image differs and its class is learnable. ``size``: a
    square side, or (width, height) for photos that are not square (``class_images`` at the
    longer side, cut to the shorter)."""
    rng = np.random.default_rng(seed)
    w, h = (size, size) if isinstance(size, int) else size
    classes = sorted({c.split("/")[0] for per in counts.values() for c in per})
    for folder, per in counts.items():
        for class_path, n in per.items():
            out = root / folder / class_path
            out.mkdir(parents=True, exist_ok=True)
            label = classes.index(class_path.split("/")[0])
            for i, img in enumerate(class_images(np.full(n, label), len(classes), rng, max(w, h))):
                Image.fromarray(img[:h, :w]).save(out / f"{i:03d}.png")
    return root


@dataclass
class Fault:
    """What the server does to one GET instead of answering it normally.

    ``status``: answer with this status (and ``headers``, e.g. ``Retry-After``) instead of the file.
    ``truncate_to``: announce the full Content-Length, send this many bytes, close the connection.
    ``stall_after``: send this many bytes of the body, then go silent with the connection open
    (until the server stops, or ``FileServer.stall_seconds``). ``stall_headers``: go silent
    before even sending the status line.
    """

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    truncate_to: int | None = None
    stall_after: int | None = None
    stall_headers: bool = False


def _range_start(header: str | None) -> int | None:
    """N of ``Range: bytes=N-``, the one form of range a resuming client sends."""
    if header and header.startswith("bytes=") and header.endswith("-") and header[6:-1].isdigit():
        return int(header[6:-1])
    return None


class _Handler(BaseHTTPRequestHandler):
    """Answers for the ``FileServer`` at ``self.server.fake``."""

    def _answer(self, body: bool) -> None:
        fake: FileServer = self.server.fake
        status, data, fault = fake._take(self.command, self.path, dict(self.headers.items()))
        if fault.stall_headers:
            fake._stopping.wait(fake.stall_seconds)
            return
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        if fake.ranges and status in (200, 206):
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", '"v1"')
        if status == 206:
            start = _range_start(self.headers.get("Range"))
            self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{start + len(data)}")
        for name, value in fault.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            try:
                self._send_body(fake, data, fault)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout, or torchvision's redirect probe)

    def _send_body(self, fake: FileServer, data: bytes, fault: Fault) -> None:
        end = len(data)
        if fault.truncate_to is not None or fault.stall_after is not None:
            end = min(end, fault.truncate_to if fault.truncate_to is not None else fault.stall_after)
            self.close_connection = True
        pieces = 20 if fake.body_seconds > 0 else 1
        step = max(1, -(-end // pieces))
        for start in range(0, end, step):
            self.wfile.write(data[start : start + step])
            self.wfile.flush()
            if fake.body_seconds > 0:
                time.sleep(fake.body_seconds / pieces)
        if fault.stall_after is not None:
            fake._stopping.wait(fake.stall_seconds)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def log_message(self, *args) -> None:
        pass


@dataclass
class FileServer:
    """Serves ``files`` on 127.0.0.1; answers 503 to the next ``fail_next`` requests.

    Each GET takes the next of ``faults`` while there are any. Probes take none, so a client
    that probes first meets the fault on its download: HEAD requests, and torchvision's redirect
    probe (a GET that carries a ``Method: HEAD`` header and closes without reading the body).
    ``ranges``: says it takes ``Range: bytes=N-`` requests, and answers them with 206.
    ``body_seconds`` spreads every body over about that long (a slow mirror). ``requests`` lists
    (method, path with query, status); ``request_times`` (time.monotonic) and
    ``request_headers`` go with it, index for index.
    """

    files: dict[str, bytes]
    fail_next: int = 0
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    body_seconds: float = 0.0
    ranges: bool = False
    stall_seconds: float = 8.0  # bounded, so a client without a timeout still ends (as a test failure)
    request_times: list[float] = field(default_factory=list)
    request_headers: list[dict[str, str]] = field(default_factory=list)

    def start(self) -> FileServer:
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.fake = self
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def _take(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes, Fault]:
        """What to answer to one request, and record it. Handlers run in threads: the lock makes
        each fault go to exactly one request."""
        probe = method == "HEAD" or headers.get("Method") == "HEAD"
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                fault = Fault(status=503)
            else:
                fault = self.faults.pop(0) if self.faults and not probe else Fault()
            file = urlsplit(path).path  # a ?token=... query does not change which file
            if fault.status is not None:
                status, data = fault.status, b"busy"
            elif file in self.files and self.ranges and _range_start(headers.get("Range")) is not None:
                status, data = 206, self.files[file][_range_start(headers.get("Range")) :]
            elif file in self.files:
                status, data = 200, self.files[file]
            else:
                status, data = 404, b"not found"
            self.requests.append((method, path, status))
            self.request_times.append(time.monotonic())
            self.request_headers.append(headers)
        return status, data, fault

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def gets(self) -> list[tuple[str, int]]:
        """(path, status) of every GET so far: what a download actually fetched."""
        return [(path, status) for method, path, status in self.requests if method == "GET"]

    def stop(self) -> None:
        self._stopping.set()  # let stalled handlers end
        self.httpd.shutdown()
        self.httpd.server_close()


def banded(size: tuple[int, int], band: tuple[int, int], colours=((255, 0, 0), (0, 160, 0), (0, 0, 255))) -> Image.Image:
    """An RGB image of ``size`` (width, height): its outer quarters on the long axis in
    ``colours[0]``, the middle half in ``colours[1]`` with a band ``band`` = (start, stop) along
    the long axis in ``colours[2]``. A square crop of the centre shows no ``colours[0]``."""
    w, h = size
    long = max(w, h)
    line = np.empty((long, 3), np.uint8)
    line[:] = colours[0]
    line[long // 4 : long - long // 4] = colours[1]
    line[band[0] : band[1]] = colours[2]
    pixels = np.broadcast_to(line[None, :, :], (h, w, 3)) if w >= h else np.broadcast_to(line[:, None, :], (h, w, 3))
    return Image.fromarray(np.ascontiguousarray(pixels))
