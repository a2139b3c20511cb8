"""Load test of ``cifar-lit serve`` on loopback, against the model called in-process (the limit).

    python bench/serve.py                                  # a fresh airnet_s registry, CIFAR-sized images
    python bench/serve.py --images DIR --seconds 20        # your images (e.g. CIFAR-10 JPEGs)
    python bench/serve.py --registry-dir runs/registry     # a registry you trained

For each server batch size (``--max-batch-size``) it starts a server, keeps ``--clients``
concurrent clients sending one image each (multipart ``file``) for ``--seconds``, and reports
requests/s, p50/p95/p99 latency and errors; then one JSON request of ``--json-batch`` images per
call; then the same model called in-process on batches of those sizes (no HTTP, no decoding of
request bodies: the most a server could give). Writes ``bench/out/serve.json``. Run it on a quiet
machine: the clients share the CPUs with the server.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def fresh_registry(root: Path, model: str) -> Path:
    """A registry holding one version of ``model`` with random weights (speed does not depend on them)."""
    from cifar_lit.lifecycle.model_file import FORMAT, build_inference, contract, export_program, write_onnx
    from cifar_lit.lifecycle.registry import Registry
    from cifar_lit.models import build_model

    net = build_model(model, num_classes=10)
    doc = {"format": FORMAT, "model": model, "model_args": {"num_classes": 10}, "classes": [f"c{i}" for i in range(10)],
           "image_size": 32, "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26], "tta": 2, "config": {},
           "state_dict": net.state_dict()}
    folder = root / "model"
    folder.mkdir(parents=True)
    torch.save(doc, folder / "model.pt")
    write_onnx(export_program(build_inference(doc, folder), 32, folder), folder / "model.onnx",
               json.dumps(contract(doc)))
    Registry(root / "registry").add("bench", {"model": folder / "model.pt", "onnx": folder / "model.onnx"},
                                    {"metrics": {}}, aliases=("latest", "production"))
    return root / "registry"


def load_images(folder: Path | None, n: int) -> list[bytes]:
    if folder is not None:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
        return [p.read_bytes() for p in files]
    rng, out = np.random.default_rng(0), []
    for _ in range(n):  # CIFAR-sized JPEGs, as the CIFAR-10 JPEG set holds
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG", quality=75)
        out.append(buf.getvalue())
    return out


def post(url: str, body: bytes, content_type: str) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def multipart(data: bytes) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    body = (f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


def load(url: str, bodies: list[tuple[bytes, str]], clients: int, seconds: float) -> dict:
    latencies, errors, stop = [], [0], time.monotonic() + seconds

    def client(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            t = time.perf_counter()
            status = post(url, *bodies[i % len(bodies)])
            latencies.append(time.perf_counter() - t) if status == 200 else errors.__setitem__(0, errors[0] + 1)
            i += clients

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    q = [float(v) for v in np.percentile(latencies, [50, 95, 99]) * 1000] if latencies else [float("nan")] * 3
    return {"requests_per_s": round(len(latencies) / wall, 1), "p50_ms": round(q[0], 1), "p95_ms": round(q[1], 1),
            "p99_ms": round(q[2], 1), "ok": len(latencies), "errors": errors[0]}


def serve(registry: Path, port: int, batch: int, onnx: bool):
    args = [sys.executable, "-m", "flows.main", "serve", "--registry-dir", str(registry), "--port", str(port),
            "--max-batch-size", str(batch)] + (["--onnx"] if onnx else [])
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    os.killpg(proc.pid, 9)
    raise SystemExit("the server did not answer /health within 180 s")


def in_process(registry: Path, images: list[bytes], sizes: list[int], onnx: bool, seconds: float) -> dict:
    from cifar_lit.lifecycle.registry import Registry
    from cifar_lit.serving.inputs import decode_image
    from cifar_lit.serving.model import load_version

    reg = Registry(registry)
    served = load_version(reg.get(reg.only_name(), alias="production"), onnx=onnx)
    decoded = [decode_image(b, 40_000_000) for b in images]
    out = {}
    for n in sizes:
        batch, done, t0 = decoded[:n], 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            served.probabilities(batch)
            done += len(batch)
        out[n] = round(done / (time.perf_counter() - t0), 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--registry-dir", type=Path)
    p.add_argument("--model", default="airnet_s", help="the network of the fresh registry")
    p.add_argument("--images", type=Path, help="a folder of images to send (default: random 32x32 JPEGs)")
    p.add_argument("--batch-sizes", default="1,4,16")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--json-batch", type=int, default=16)
    p.add_argument("--onnx", action="store_true")
    p.add_argument("--port", type=int, default=8765)
    args = p.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    registry = args.registry_dir or fresh_registry(tmp, args.model)
    images = load_images(args.images, 256)
    url = f"http://127.0.0.1:{args.port}/predict"
    from cifar_lit.machine.probe import cpu_flags, machine

    isa = sorted(f for f in cpu_flags()[1] if f.startswith(("avx", "amx")))
    result = {"machine": machine("cpu") | {"isa": isa}, "cores": os.cpu_count(), "python": platform.python_version(),
              "runtime": "onnxruntime" if args.onnx else "torch", "clients": args.clients, "seconds": args.seconds,
              "server": {}, "json_batch": {}, "in_process_images_per_s": {}}
    bodies = [multipart(b) for b in images]
    for batch in sizes:
        proc = serve(registry, args.port, batch, args.onnx)
        try:
            post(url, *bodies[0])  # warm
            result["server"][batch] = load(url, bodies, args.clients, args.seconds)
            if batch == max(sizes):
                body = json.dumps({"images": [base64.b64encode(b).decode() for b in images[: args.json_batch]]}).encode()
                r = load(url, [(body, "application/json")], max(1, args.clients // 4), args.seconds)
                result["json_batch"] = r | {"images_per_s": round(r["requests_per_s"] * args.json_batch, 1),
                                            "images_per_request": args.json_batch}
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(30)
        print(f"server max batch {batch:>3}: {result['server'][batch]}", flush=True)
    print(f"JSON, {args.json_batch} images a request: {result['json_batch']}", flush=True)
    result["in_process_images_per_s"] = in_process(registry, images, sorted({*sizes, args.json_batch}), args.onnx,
                                                   min(args.seconds, 5))
    print(f"in-process (no HTTP), images/s by batch: {result['in_process_images_per_s']}", flush=True)
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'serve.json'}")


if __name__ == "__main__":
    main()
