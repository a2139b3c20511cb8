"""Fault matrix, the scale-out row: two nodes simulated on one machine (two processes with
NODE_RANK 0 and 1, MASTER_ADDR 127.0.0.1, gloo on the CPU) train to the same weights as one
node with two devices; a node that never arrives ends the fit with one line after
--node-timeout instead of hanging."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import torch

from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.training.distributed import fit_in_subprocess


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(cfg, rank: int, port: int) -> subprocess.Popen:
    cfg_file = cfg.out / "fit-config.json"
    cfg_file.write_text(cfg.model_dump_json())
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(rank),
           "LOCAL_RANK": "0", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "cifar_lit.training.distributed", "--config", str(cfg_file), "--split",
           str(cfg.out / "split.json"), "--result", str(cfg.out / "fit-result.json")]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _weights(cfg) -> dict:
    return torch.load(cfg.out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_two_nodes_train_like_one_node_with_two_devices(make_config, tmp_path, monkeypatch):
    # Pinned, so the two layouts run the same arithmetic on any CPU: float32 and contiguous
    # memory (not the probe's choice), and one thread per process. Lightning gives each rank
    # CPUs // local ranks threads, 1 on one node with two devices and 2 on each of two nodes,
    # and another thread count sums in another order (4e-7 apart on a 2-core Xeon, over 1e-6 on
    # an AVX-512 EPYC). With them pinned the weights are bit-equal.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    common = dict(accelerator="cpu", strategy="ddp", max_epochs=2, wandb_mode="disabled", prediction_samples=0,
                  val_size=0, patience=0, precision="32-true", channels_last=False)
    one = make_config(devices=2, output_dir=tmp_path / "one-node", **common)
    ImageDataModule.from_config(one).setup("fit")
    fit_in_subprocess(one, one.out / "split.json")

    two = make_config(devices=1, num_nodes=2, node_timeout=120, output_dir=tmp_path / "two-nodes", **common)
    ImageDataModule.from_config(two).setup("fit")
    port = _port()
    nodes = [_node(two, rank, port) for rank in (0, 1)]
    outputs = [n.communicate(timeout=600)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert (two.out / "fit-result.json").is_file()  # written by global rank 0 only
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_node_that_never_arrives_fails_in_one_line_after_the_timeout(make_config, tmp_path):
    cfg = make_config(accelerator="cpu", strategy="ddp", devices=1, num_nodes=2, node_timeout=5, max_epochs=1,
                      wandb_mode="disabled", prediction_samples=0, output_dir=tmp_path / "alone")
    ImageDataModule.from_config(cfg).setup("fit")
    t0 = time.monotonic()
    node = _node(cfg, 0, _port())
    output = node.communicate(timeout=300)[0]
    took = time.monotonic() - t0
    assert node.returncode == 1 and took < 120, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("num_nodes:")]
    assert len(lines) == 1 and "not every process joined 127.0.0.1:" in lines[0] and "--node-timeout 5 s" in lines[0]
    assert "Traceback" not in output
