"""`cifar-lit serve` as a user starts it: a real LitServe process on 127.0.0.1 serving a real
registry, answered over real HTTP; the alias moved by the real `cifar-lit registry` command."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import fakes
import numpy as np
import pytest
import torch
from PIL import Image
from prefect_processes import REPO, background, free_port, tail

from cifar_lit.config import PredictConfig
from cifar_lit.lifecycle.model_file import load_model
from cifar_lit.lifecycle.predict import predict_to_csv
from cifar_lit.lifecycle.registry import Registry, RegistryError
from cifar_lit.serving.model import Follower, load_version

CLI = [sys.executable, "-m", "flows.main"]


def _register(root: Path, model_pt: Path, versions: int) -> Registry:
    """``versions`` versions of the session's tiny model; production is v1."""
    reg = Registry(root)
    folder = Path(model_pt).parent
    files = {"model": folder / "model.pt", "program": folder / "model.pt2", "onnx": folder / "model.onnx"}
    for i in range(versions):
        reg.add("m", files, {"metrics": {"test_acc": 0.5 + i / 10}}, aliases=("latest", "production") if i == 0 else ("latest",))
    return reg


def _post(url: str, body: bytes, content_type: str, timeout: float = 30) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _multipart(data: bytes, field: str = "file", filename: str = "image.png") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _announce(url: str, length: int) -> tuple[int, dict]:
    """Headers that announce a body of ``length`` bytes, and no body: the server must answer
    from the headers, before it reads (or waits for) what it would refuse."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("POST", parts.path)
        conn.putheader("Content-Type", "multipart/form-data; boundary=zz")
        conn.putheader("Content-Length", str(length))
        conn.endheaders()
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def _send_file(url: str, data: bytes, field: str = "file") -> tuple[int, dict]:
    return _post(url, *_multipart(data, field))


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    """A registry with v1 (production) and v2, and `cifar-lit serve` on it: (base URL, registry, log)."""
    tmp = tmp_path_factory.mktemp("serve")
    reg = _register(tmp / "registry", tiny_model, versions=2)
    port, log = free_port(), tmp / "serve.log"
    args = [*CLI, "serve", "--registry-dir", str(reg.root), "--port", str(port), "--poll", "0.2"]
    with background(args, log, cwd=REPO) as proc:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"the server exited {proc.returncode}:\n{tail(log)}"
            assert time.monotonic() < deadline, f"no /health 200 after 180 s:\n{tail(log)}"
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        yield base, reg, log


def _photos(root: Path) -> list[Path]:
    """Files as users send them: a PNG, a JPEG, a photo that is not square, a grey one."""
    fakes.layout(root / "set", {"x": {"cat": 1, "dog": 1}}, size=(90, 70), seed=3)
    files = sorted((root / "set").rglob("*.png"))
    Image.open(files[0]).convert("RGB").save(root / "photo.jpg", quality=90)
    Image.open(files[1]).convert("L").save(root / "grey.png")
    return [*files, root / "photo.jpg", root / "grey.png"]


def test_health_and_every_answer_equal_the_predict_flows_rows(served, tiny_model, tmp_path):
    base, reg, log = served
    with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
        assert r.status == 200
    files = _photos(tmp_path)
    csv = tmp_path / "preds.csv"
    predict_to_csv(PredictConfig(registry_dir=reg.root, input=[tmp_path / "set", tmp_path / "photo.jpg",
                                                                tmp_path / "grey.png"], output=csv))
    import pandas as pd

    rows = {r["path"]: r for r in pd.read_csv(csv).to_dict("records")}
    assert len(rows) == len(files)
    answers = {str(f): _send_file(f"{base}/predict", f.read_bytes()) for f in files}
    batch_status, batch = _post(f"{base}/predict", json.dumps(
        {"images": [base64.b64encode(f.read_bytes()).decode() for f in files]}).encode(), "application/json")
    assert batch_status == 200 and batch["version"] == "v1" and len(batch["predictions"]) == len(files)
    for f, from_batch in zip(files, batch["predictions"], strict=True):
        status, answer = answers[str(f)]
        assert status == 200 and (answer["model"], answer["version"]) == ("m", "v1"), answer
        row = rows[str(f)]
        for top in (answer["top"], from_batch["top"]):
            assert [t["label"] for t in top] == [row["top1"], row["top2"], row["top3"]]
            assert [t["prob"] for t in top] == pytest.approx([row["top1_prob"], row["top2_prob"], row["top3_prob"]], abs=1e-5)


def test_bad_input_is_a_4xx_with_one_line_and_good_requests_beside_it_are_answered(served, tmp_path):
    base, _, log = served
    good = (_photos(tmp_path)[0]).read_bytes()
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(jpeg, "JPEG")
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, "PNG")  # 400 megapixels in 50 kB
    url = f"{base}/predict"
    bad = {
        "not an image": (_send_file, (url, b"just some text"), 415),
        "a truncated jpeg": (_send_file, (url, jpeg.getvalue()[: len(jpeg.getvalue()) // 2]), 400),
        "a decompression bomb": (_send_file, (url, bomb.getvalue()), 413),
        "the wrong field": (_send_file, (url, good, "image"), 422),
        "a body that is not json": (_post, (url, b"{not json", "application/json"), 400),
        "json without an image": (_post, (url, b'{"picture": "x"}', "application/json"), 422),
        "json that is not base64": (_post, (url, b'{"image": "%%%"}', "application/json"), 400),
        "a plain text body": (_post, (url, b"hello", "text/plain"), 415),
        "a broken multipart form": (_post, (url, b"garbage", "multipart/form-data; boundary=zz"), 400),
        "a body over the limit": (_announce, (url, 11 << 20), 413),
    }
    results: dict[str, tuple[int, dict]] = {}

    def call(name, fn, args):
        results[name] = fn(*args)

    # All at once, with good requests among them: the server batches what arrives together, and
    # each request must get its own answer.
    jobs = [(name, fn, args) for name, (fn, args, _) in bad.items()] + [(f"good{i}", _send_file, (url, good)) for i in range(6)]
    threads = [threading.Thread(target=call, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for name, (_, _, status) in bad.items():
        got, body = results[name]
        assert got == status, (name, got, body)
        assert isinstance(body["detail"], str) and "\n" not in body["detail"] and body["detail"], (name, body)
    assert all(results[f"good{i}"][0] == 200 for i in range(6)), [results[f"good{i}"] for i in range(6)]
    assert "Traceback" not in log.read_text(errors="replace")
    assert _send_file(url, good)[0] == 200  # and it goes on serving


def test_the_server_follows_production_without_a_restart_or_a_failed_request(served, tmp_path):
    base, reg, log = served
    good = _photos(tmp_path)[0].read_bytes()
    seen: list[tuple[float, int, str | None]] = []
    stop = threading.Event()

    def stream():
        while not stop.is_set():
            status, body = _send_file(f"{base}/predict", good)
            seen.append((time.monotonic(), status, body.get("version")))

    clients = [threading.Thread(target=stream) for _ in range(3)]
    for c in clients:
        c.start()
    try:
        time.sleep(1)
        moved = time.monotonic()
        subprocess.run([*CLI, "registry", "--registry-dir", str(reg.root), "set-alias", "m", "production", "v2"],
                       cwd=REPO, check=True, capture_output=True, timeout=120)
        deadline = moved + 30
        while not any(v == "v2" and t > moved for t, _, v in seen) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # and some more answers after the switch
    finally:
        stop.set()
        for c in clients:
            c.join(60)
    assert seen and all(status == 200 for _, status, _ in seen), [s for s in seen if s[1] != 200][:5]
    first_v2 = min(t for t, _, v in seen if v == "v2")
    assert first_v2 - moved < 15, f"v2 answered {first_v2 - moved:.1f} s after the alias moved"
    assert {v for t, _, v in seen if t < moved} == {"v1"}
    assert {v for t, _, v in seen if t > first_v2 + 0.5} == {"v2"}  # no way back
    assert "moved v1 -> v2" in log.read_text(errors="replace")


def test_onnx_answers_like_torch_and_a_version_without_it_is_one_line(tiny_model, tmp_path):
    reg = _register(tmp_path / "registry", tiny_model, versions=1)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 30, 3), dtype=np.uint8)) for i in range(7)]
    by_torch = load_version(reg.get("m", "v1"))
    by_onnx = load_version(reg.get("m", "v1"), onnx=True)
    assert (by_torch.runtime, by_onnx.runtime) == ("torch", "onnxruntime")
    assert by_onnx.classes == by_torch.classes == load_model(Path(tiny_model)).classes
    p_torch, p_onnx = by_torch.probabilities(images), by_onnx.probabilities(images)
    assert torch.equal(p_torch.argmax(1), p_onnx.argmax(1)) and torch.allclose(p_torch, p_onnx, atol=1e-4)

    old = Registry(tmp_path / "old")  # registered before ONNX export: model.pt (and TorchScript) only
    old.add("m", {"model": Path(tiny_model)}, {"metrics": {}}, aliases=("latest", "production"))
    with pytest.raises(RegistryError, match=r"has no model\.onnx .*serve it without --onnx"):
        load_version(old.get("m", "v1"), onnx=True)
    assert load_version(old.get("m", "v1")).version == "v1"  # without --onnx it serves
    proc = subprocess.run([*CLI, "serve", "--registry-dir", str(old.root), "--onnx", "--port", str(free_port())],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("cifar-lit serve: error: ") and "has no model.onnx" in proc.stderr


@pytest.mark.parametrize("args, says", [
    (["--registry-dir", "{tmp}/nowhere"], "does not exist"),
    (["--registry-dir", "{reg}", "--name", "other"], "no model named 'other'"),
    (["--registry-dir", "{reg}", "--version", "v9"], "has no version 'v9'"),
])
def test_a_wrong_registry_name_or_version_is_one_line_before_anything_starts(tiny_model, tmp_path, args, says):
    reg = _register(tmp_path / "registry", tiny_model, versions=1)
    args = [a.format(tmp=tmp_path, reg=reg.root) for a in args]
    proc = subprocess.run([*CLI, "serve", *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and says in proc.stderr, proc.stderr


def test_a_new_version_that_cannot_load_is_logged_once_and_the_current_one_goes_on(tiny_model, tmp_path, caplog):
    reg = _register(tmp_path / "registry", tiny_model, versions=2)
    (reg.root / "m" / "v2" / "model.pt").write_bytes(b"truncated")  # damaged after it was registered
    follower = Follower(reg.root, poll=60)  # checked by hand below, not by the thread
    reg.set_alias("m", "production", "v2")
    assert follower.check() is False and follower.check() is False
    assert follower.current().version == "v1"
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]  # once, not per check
    assert line.startswith("m production -> v2: cannot load it, still serving v1 (ModelFileError")
    shutil.copyfile(Path(tiny_model), reg.root / "m" / "v2" / "model.pt")  # repaired: tried again
    assert follower.check() is True and follower.current().version == "v2"
