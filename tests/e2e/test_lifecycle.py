"""The model lifecycle through the real flow (real Prefect API, real Trainer, tiny data): the
first run promotes v1, an identical run is skipped, a worse one is rejected, a better one becomes
v2, the champion is re-evaluated on the challenger's split; the predict flow reproduces a run's
test accuracy with the training data deleted; registry and model-file failures are one line."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import fakes
import numpy as np
import pytest
import torch
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL
from prefect_processes import REPO

from cifar_lit.data.split import Split
from cifar_lit.lifecycle.model_file import ModelFileError, contract, load_model, read_model
from cifar_lit.lifecycle.predict import predict
from cifar_lit.lifecycle.promote import gate
from cifar_lit.lifecycle.registry import Registry
from flows.train_flow import train_flow

pytestmark = pytest.mark.usefixtures("prefect_api")


def _noisy_folder(root: Path, per_class: int, noise: float = 2.0, classes=("cat", "dog", "frog"), seed: int = 0) -> Path:
    """``root/train/<class>/*.png``: the fakes' class patterns under heavy noise, so accuracy
    keeps growing with training instead of reaching 100% at once, and models can be ranked."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        imgs = fakes.class_images(np.full(per_class, label), len(classes), rng).astype(np.float64)
        imgs = np.clip(imgs + rng.normal(0, 255 * noise, imgs.shape), 0, 255).astype(np.uint8)
        for i, img in enumerate(imgs):
            Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


def _folder_config(make_config, root: Path, out: Path, **overrides):
    """The fast recipe (tensor path, normalised with the training images' own statistics) on
    a tiny image folder without test/: a seeded 25% is held out as the test split. Float32 and
    contiguous memory, not the machine probe's choice: which model beats which must not depend
    on the CPU (with bf16 on an AVX-512 EPYC, a 2-epoch champion tied the untrained model)."""
    base = dict(recipe="cpu-fast", dataset="imagefolder", data_dir=root, test_size=0.25, val_size=0,
                batch_size=12, max_epochs=4, prediction_samples=0, wandb_mode="disabled", output_dir=out,
                precision="32-true", channels_last=False)
    return make_config(**(base | overrides))


def _run(cfg):
    state = train_flow(cfg, return_state=True)
    assert state.is_completed(), state.message
    return state.result(), state.state_details.flow_run_id


def _task_names(flow_run_id) -> set[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0] for r in runs}


def _promotion_artifact(flow_run_id) -> str:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    (art,) = [a for a in found if (a.key or "").endswith("-promotion")]
    return art.data


def _events(prefix: str, resource: str, expected: int, timeout: float = 60) -> list[dict]:
    """Events about ``resource`` the server has stored under ``prefix`` (other tests' models
    emit theirs too); they arrive asynchronously."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            body = {"filter": {"event": {"prefix": [prefix]}, "resource": {"id": [resource]}, "order": "ASC"}, "limit": 50}
            events = client.request("POST", "/events/filter", json=body).json()["events"]
            if len(events) >= expected or time.monotonic() > deadline:
                return events
            time.sleep(1)


def _heldout_accuracy(model_file: Path, split_file: Path, data_dir: Path) -> float:
    """The model's accuracy on a split's test images, computed here through predict()."""
    split = Split.read(split_file)
    paths = [data_dir / split.samples[i][0] for i in split.test]
    labels = [split.classes[split.samples[i][1]] for i in split.test]
    df = predict(load_model(model_file), paths)
    return float((df["prediction"] == labels).mean())


def test_promote_skip_reject_and_a_better_challenger(make_config, tmp_path):
    # 80 per class: 60 test images, and 15 steps an epoch, enough for 2 epochs to learn (with 40,
    # 2 epochs were chance on some CPUs and 3 near the ceiling, so models could not be ranked).
    root = _noisy_folder(tmp_path / "shapes", per_class=80)
    registry = tmp_path / "runs" / "registry"

    # 1. The first model: no production yet, so it is promoted as v1.
    first, run1 = _run(_folder_config(make_config, root, tmp_path / "r1", max_epochs=2))
    assert first["promotion"]["promoted"] and first["promotion"]["version"] == "v1"
    assert first["promotion"]["reason"] == "no production model yet"
    assert first["tta"] == {"test_acc": "flip and 1px shifts", "val_acc": "none"}  # cpu-fast's TTA; validation never
    reg = Registry(registry)
    name = "shapes-airnet"  # the family: cpu-fast sizes its AirNet to the budget
    assert reg.names() == [name] and reg.aliases(name) == {"latest": "v1", "production": "v1"}
    v1 = reg.get(name, alias="production")
    assert v1.card["metrics"]["test_acc"] == pytest.approx(first["test_acc"])
    assert v1.card["data_fingerprint"] == first["data_fingerprint"] and v1.card["run_name"] == "r1"
    assert v1.card["code_version"] == first["code_version"] and v1.card["classes"] == ["cat", "dog", "frog"]
    assert [r["class"] for r in v1.card["per_class"]] == ["cat", "dog", "frog"]
    assert (v1.path / "split.json").read_bytes() == (tmp_path / "r1" / "split.json").read_bytes()
    # The registered file is the run's own model: its predictions reproduce the run's test_acc.
    assert _heldout_accuracy(v1.file("model"), v1.path / "split.json", root) == pytest.approx(first["test_acc"])

    # 2. Same data, code and config into a new output dir: skipped, without fitting.
    skipped, run2 = _run(_folder_config(make_config, root, tmp_path / "r2", max_epochs=2))
    assert skipped["skipped"] is True and skipped["matched"]["version"] == "v1" and skipped["test_acc"] is None
    assert json.loads((tmp_path / "r2" / "summary.json").read_text())["skipped"] is True
    assert "fit" not in _task_names(run2) and not (tmp_path / "r2" / "checkpoints").exists()
    assert reg.versions(name) == ["v1"]

    # 2b. --force on unchanged data, code and config: it trains again, reproduces v1 to the last
    # test image (float32, fixed epochs) and is rejected as a clone, not promoted on the tie.
    clone, _ = _run(_folder_config(make_config, root, tmp_path / "r2b", max_epochs=2, force=True))
    assert clone["test_acc"] == first["test_acc"] and not clone["promotion"]["promoted"]
    assert clone["promotion"]["reason"].startswith("same data, code and config as production v1")
    assert reg.versions(name) == ["v1"]

    # 3. A deliberately worse model (--force, else it is a different config anyway): rejected.
    worse, run3 = _run(_folder_config(make_config, root, tmp_path / "r3", lr=1e-7, muon_lr=1e-7, max_epochs=1,
                                      force=True))
    p = worse["promotion"]
    # The premise, on any CPU: the champion is clearly better than an untrained model (by 12 of
    # 60 test images; measured: 85% against 33%, float32 and bf16 alike).
    assert first["test_acc"] - worse["test_acc"] >= 0.2, (first["test_acc"], worse["test_acc"])
    assert not p["promoted"] and p["version"] is None and p["champion_version"] == "v1"
    assert p["challenger_test_acc"] == pytest.approx(worse["test_acc"]) and worse["test_acc"] < first["test_acc"]
    # Same split, data and code: v1's own recorded number, not a second test of v1.
    assert p["champion_test_acc"] == first["test_acc"] and "as its own run tested it on this same split" in p["reason"]
    assert reg.aliases(name) == {"latest": "v1", "production": "v1"} and reg.versions(name) == ["v1"]
    page = _promotion_artifact(run3)
    assert page.startswith(f"# Not promoted: {name}") and "| cat |" in page and "| frog |" in page

    # 4. A better one (longer training) becomes v2, production moves.
    better, run4 = _run(_folder_config(make_config, root, tmp_path / "r4", max_epochs=6))
    assert better["test_acc"] - first["test_acc"] >= 2 / 60  # the premise (measured: 97% against 85%)
    assert better["promotion"]["promoted"] and better["promotion"]["version"] == "v2"
    assert reg.aliases(name) == {"latest": "v2", "production": "v2"}
    assert reg.get(name, version="v2").card["run_name"] == "r4"

    # 5. Another seed holds out other images: the champion (v2) is evaluated on *that* split.
    other, run5 = _run(_folder_config(make_config, root, tmp_path / "r5", max_epochs=2, seed=7))
    p = other["promotion"]
    assert other["data_fingerprint"] != better["data_fingerprint"]
    theirs = _heldout_accuracy(reg.get(name, version="v2").file("model"), tmp_path / "r5" / "split.json", root)
    assert p["champion_version"] == "v2" and p["champion_test_acc"] == pytest.approx(theirs)
    assert "on the challenger's test split" in p["reason"]  # tested here, on the new split
    n = len(Split.read(tmp_path / "r5" / "split.json").test)
    assert p["promoted"] == (round(other["test_acc"] * n) > round(theirs * n))  # a tie keeps production

    # A tie never promotes, and --promote-margin counts test images (rounded up, at least one):
    # v2's own numbers in another config's card, then one image better under a 3-image margin.
    v2 = reg.get(name, version="v2")
    card = {**v2.card, "effective_config": {**v2.card["effective_config"], "lr": 0.5}}
    files, split_file = {"model": v2.file("model")}, v2.file("split")
    tie = gate(_folder_config(make_config, root, tmp_path / "t"), files, split_file, card)
    assert not tie.promoted and "+0 of 60 test images, fewer than the 1 needed" in tie.reason
    one_up = {**card, "metrics": {**card["metrics"], "test_acc": card["metrics"]["test_acc"] + 1 / 60}}
    margin = gate(_folder_config(make_config, root, tmp_path / "t", promote_margin=0.05), files, split_file, one_up)
    assert not margin.promoted and "+1 of 60 test images, fewer than the 3 needed" in margin.reason

    # Every decision is a Prefect event an automation can trigger on, metrics in the payload.
    events = _events("cifar_lit.model.", f"cifar_lit.model.{name}", expected=5)
    assert len(events) == 5  # runs 1, 2b, 3, 4 and 5; the skipped run 2 decided nothing, nor do gate() calls
    kinds = [e["event"] for e in events]
    assert kinds.count("cifar_lit.model.rejected") == 2 + (not p["promoted"])
    assert kinds.count("cifar_lit.model.promoted") == 2 + p["promoted"]
    rejected = [e for e in events if e["event"] == "cifar_lit.model.rejected"]
    assert all(e["resource"]["prefect.resource.id"] == f"cifar_lit.model.{name}" for e in rejected)
    assert rejected[1]["payload"]["challenger_test_acc"] == pytest.approx(worse["test_acc"])
    assert rejected[0]["payload"]["champion_version"] == rejected[1]["payload"]["champion_version"] == "v1"


def test_different_class_lists_are_not_promoted_unless_forced(make_config, tmp_path):
    root = fakes.image_folder(tmp_path / "pets", classes=("cat", "dog", "frog"), per_class=12)
    _run(_folder_config(make_config, root, tmp_path / "a", max_epochs=1))
    shutil.rmtree(root / "train" / "frog")  # the same model name now has two classes
    two, _ = _run(_folder_config(make_config, root, tmp_path / "b", max_epochs=1))
    assert not two["promotion"]["promoted"] and "class lists differ" in two["promotion"]["reason"]
    forced, _ = _run(_folder_config(make_config, root, tmp_path / "c", max_epochs=1, force_promote=True))
    assert forced["promotion"]["promoted"] and forced["promotion"]["version"] == "v2"
    assert Registry(tmp_path / "runs" / "registry").get("pets-airnet").card["classes"] == ["cat", "dog"]


def test_predict_flow_reproduces_test_accuracy_with_the_training_data_deleted(make_config, tmp_path):
    root = fakes.image_folder(tmp_path / "ds", per_class=16, test_per_class=6)
    summary, _ = _run(_folder_config(make_config, root, tmp_path / "run", max_epochs=3))
    # Keep the test images (and an unreadable file) elsewhere, then delete the training data.
    incoming = tmp_path / "incoming"
    shutil.copytree(root / "test", incoming)
    (incoming / "cat" / "broken.jpg").write_bytes(b"not an image")
    shutil.rmtree(root)

    out = tmp_path / "preds" / "predictions.csv"
    cmd = [sys.executable, "flows/predict_flow.py", "--registry-dir", str(tmp_path / "runs" / "registry"),
           "--input", str(incoming), "--output", str(out)]
    # Against the tests' API server, where the flow run and its artifact can be read back.
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "prediction", "confidence", "top1", "top1_prob", "top2", "top2_prob",
                             "top3", "top3_prob", "error"]
    good = [r for r in rows if not r["error"]]
    (bad,) = [r for r in rows if r["error"]]
    assert bad["path"].endswith("broken.jpg") and bad["prediction"] == ""
    assert len(good) == 18 and all(r["prediction"] == r["top1"] for r in good)
    assert all(float(r["top1_prob"]) >= float(r["top2_prob"]) >= float(r["top3_prob"]) for r in good)
    correct = sum(Path(r["path"]).parent.name == r["prediction"] for r in good)
    assert correct / len(good) == pytest.approx(summary["test_acc"])
    # The flow run's table artifact: predicted class counts, the unreadable file counted apart.
    with get_client(sync_client=True) as client:
        found = [a for a in client.read_artifacts() if a.key == "predicted-class-counts"]
    (art,) = found  # the one predict run of this session
    table = json.loads(art.data) if isinstance(art.data, str) else art.data
    counts = {r["class"]: r["images"] for r in table}
    assert counts.pop("(error)") == 1 and sum(counts.values()) == 18
    assert counts == {c: sum(r["prediction"] == c for r in good) for c in counts}

    # Lineage, read back from the server as Prefect keeps it (asset materialization events):
    # data -> split -> model v1 -> predictions, each made by its own task.
    registry = Registry(tmp_path / "runs" / "registry")
    version = registry.get(registry.only_name(), version="v1")
    made_from = _made_from(out.resolve().as_uri())
    assert made_from[out.resolve().as_uri()] == {version.path.resolve().as_uri()}
    (split_key,) = made_from[version.path.resolve().as_uri()]
    assert split_key.startswith("file://") and split_key.endswith(".json")
    assert made_from[split_key] == {root.resolve().as_uri()}


def _made_from(last: str, timeout: float = 60) -> dict[str, set[str]]:
    """Every asset materialized in this session -> the assets it was made from (its upstreams),
    once the server holds the materialization of ``last`` (it stores events in the background)."""
    from prefect.events.filters import EventFilter, EventNameFilter

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            page = client.read_events(
                filter=EventFilter(event=EventNameFilter(name=["prefect.asset.materialization.succeeded"])), limit=50)
            events = list(page.events)
            while page.next_page:
                page = client.read_events_page(str(page.next_page))
                events += page.events
        made_from = {e.resource.id: {r.id for r in e.related if r.role == "asset"} for e in events}
        if last in made_from or time.monotonic() > deadline:
            return made_from
        time.sleep(0.5)


def test_exported_program_and_onnx_load_without_this_package_and_match(make_config, tmp_path):
    root = fakes.image_folder(tmp_path / "ds", per_class=12)
    cfg = _folder_config(make_config, root, tmp_path / "run", max_epochs=1)
    summary, _ = _run(cfg)
    files = summary["model_files"]
    doc = read_model(Path(files["model"]))
    # The fast path normalises with the training images' statistics: recorded, not 0.5.
    assert doc["mean"] != [0.5, 0.5, 0.5] and len(doc["std"]) == 3 and doc["classes"] == ["cat", "dog", "frog"]
    images = torch.rand(5, 3, 32, 32)  # another batch size than export traced and checked
    expected = load_model(Path(files["model"])).module(images)
    torch.save(images, tmp_path / "images.pt")
    script = (
        "import sys, json, torch, onnx, onnxruntime\n"
        "sys.modules['cifar_lit'] = None  # importing it now fails: the files must not need it\n"
        "images = torch.load(sys.argv[3])\n"
        "extra = {'model.json': ''}\n"
        "net = torch.export.load(sys.argv[1], extra_files=extra).module()\n"
        "session = onnxruntime.InferenceSession(sys.argv[2], providers=['CPUExecutionProvider'])\n"
        "meta = {p.key: p.value for p in onnx.load(sys.argv[2]).metadata_props}\n"
        "print(json.dumps({'contract': json.loads(extra['model.json']), 'onnx_contract': json.loads(meta['model.json']),\n"
        "                  'program': net(images).tolist(),\n"
        "                  'onnx': session.run(['logits'], {'images': images.numpy()})[0].tolist()}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, files["program"], files["onnx"], str(tmp_path / "images.pt")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    assert got["contract"] == got["onnx_contract"] == contract(doc)
    assert got["contract"]["classes"] == ["cat", "dog", "frog"] and got["contract"]["input"]["shape"] == ["batch", 3, 32, 32]
    for name in ("program", "onnx"):
        out = torch.tensor(got[name])
        assert torch.equal(out.argmax(1), expected.argmax(1)), name
        assert torch.allclose(out, expected, rtol=0, atol=1e-4), (name, float((out - expected).abs().max()))
    # The registry's card carries the same contract, and the version holds both files.
    version = Registry(cfg.registry).get(cfg.model_name(), alias="production")
    assert version.card["contract"] == contract(doc)
    assert {"model.pt", "model.pt2", "model.onnx"} <= {p.name for p in version.path.iterdir()}


def test_exported_files_that_do_not_match_the_network_fail_the_export_in_one_line(tiny_model):
    from cifar_lit.lifecycle.model_file import build_inference, check_exported

    folder = Path(tiny_model).parent
    doc = read_model(Path(tiny_model))
    files = {"program": folder / "model.pt2", "onnx": folder / "model.onnx"}
    check_exported(files, build_inference(doc, folder), doc["image_size"], folder)  # its own network: passes
    torch.manual_seed(1)
    other = {**doc, "state_dict": {k: torch.randn_like(v) if v.is_floating_point() else v
                                   for k, v in doc["state_dict"].items()}}
    with pytest.raises(ModelFileError, match=r"the exported model\.pt2 differs from the network at 32x32 "
                                             r"\(largest logit difference"):
        check_exported(files, build_inference(other, folder), doc["image_size"], folder)


def test_a_version_made_before_onnx_still_loads_and_predicts(tiny_model, tmp_path):
    """Older versions hold model.pt and model.torchscript.pt only: everything that loads a
    registry version goes through model.pt, so they keep working."""
    src = Path(tiny_model)
    reg = Registry(tmp_path / "registry")
    reg.add("old", {"model": src}, {"metrics": {"test_acc": 0.5}}, aliases=("latest", "production"))
    old = reg.get("old", alias="production")
    assert old.card["files"] == {"model": "model.pt"}
    loaded = load_model(old.file("model"))
    rows = predict(loaded, [fakes.image_folder(tmp_path / "photos", per_class=1)])
    assert rows["error"].isna().all() and set(rows["prediction"]) <= set(loaded.classes)


def _register_many(root: str, start: int, count: int) -> None:
    reg = Registry(Path(root))
    src = Path(root).parent / f"model-{start}.pt"
    src.write_bytes(b"weights %d" % start)
    for i in range(count):
        reg.add("m", {"model": src}, {"metrics": {"test_acc": (start + i) / 100}}, aliases=("latest", "production"))


def test_two_processes_registering_at_once_leave_a_consistent_registry(tmp_path):
    root = tmp_path / "registry"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_register_many, args=(str(root), s, 15)) for s in (0, 50)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    reg = Registry(root)
    assert reg.versions("m") == [f"v{i}" for i in range(1, 31)]  # no number given twice, none lost
    accs = sorted(reg.get("m", version=v).card["metrics"]["test_acc"] for v in reg.versions("m"))
    assert accs == sorted([i / 100 for i in range(15)] + [(50 + i) / 100 for i in range(15)])
    assert reg.aliases("m") == {"latest": "v30", "production": "v30"}
    assert not [p for p in (root / "m").iterdir() if p.name.startswith(".new-") or p.name.endswith(".tmp")]


def _predict_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "flows/predict_flow.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_missing_or_corrupt_registry_entries_exit_2_with_one_line(tmp_path, capsys):
    reg = Registry(tmp_path / "reg")
    model = tmp_path / "model.pt"
    model.write_bytes(b"\x00 not a torch file")
    v1 = reg.add("m", {"model": model}, {"metrics": {}}, aliases=("latest", "production"))
    cases = {
        "no registry": (["--registry-dir", str(tmp_path / "nowhere")], "does not exist"),
        "no alias": (["--registry-dir", str(reg.root), "--version", "v9"], "has no version 'v9'"),
        "corrupt model": (["--registry-dir", str(reg.root)], str(v1.path / "model.pt")),
        "missing file": (["--model", str(tmp_path / "gone.pt")], "gone.pt does not exist"),
    }
    from flows.predict_flow import main

    # The command's own main, in this process (each case fails before any flow run); the
    # truncated card below goes through the real command line.
    for case, (args, expected) in cases.items():
        with pytest.raises(SystemExit) as exit_:
            main([*args, "--input", str(tmp_path)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2, case
        lines = err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (case, err[-500:])
    (v1.path / "model.json").write_text("{ truncated")
    proc = _predict_cli("--registry-dir", str(reg.root), "--input", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"predict_flow.py: error: {v1.path / 'model.json'}: unreadable model card (JSONDecodeError)"]


class _Boom:
    def __reduce__(self):
        return (open, (str(MARKER), "w"))  # what a crafted file would do: run code when unpickled


MARKER = Path("/nonexistent")


def test_a_crafted_model_file_runs_nothing(tmp_path, monkeypatch):
    global MARKER
    MARKER = tmp_path / "pwned"
    crafted = tmp_path / "model.pt"
    torch.save({"format": "cifar_lit.model/1", "payload": _Boom()}, crafted)
    with pytest.raises(ModelFileError, match=f"^{crafted}: refused to load"):
        load_model(crafted)
    assert not MARKER.exists()


def test_registry_command_lists_shows_and_rolls_back(tmp_path, capsys):
    from cifar_lit.lifecycle.registry import main

    reg = Registry(tmp_path / "reg")
    src = tmp_path / "model.pt"
    src.write_bytes(b"w")
    for acc in (0.5, 0.7):
        reg.add("m", {"model": src}, {"metrics": {"test_acc": acc}}, aliases=("latest", "production"))
    args = ["--registry-dir", str(reg.root)]
    assert main([*args, "set-alias", "m", "production", "v1"]) == 0
    assert reg.aliases("m") == {"latest": "v2", "production": "v1"}
    capsys.readouterr()
    assert main([*args, "list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["m v1  test_acc=0.5  production", "m v2  test_acc=0.7  latest"]
    assert main([*args, "show", "m"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v1"
    assert main([*args, "set-alias", "m", "production", "v7"]) == 2
    assert "has no version 'v7'" in capsys.readouterr().err and reg.aliases("m")["production"] == "v1"
