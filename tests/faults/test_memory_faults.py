"""Fault matrix, the memory row: the fast data path's peak memory stays near the uint8 data
itself (it was about 12x: a float copy of the whole set for its statistics, another for the
reflect padding, and per-part copies), so a large folder does not run the machine out of memory."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from cifar_lit.data.tensors import tensor_cache_path

N = 40_000  # 123 MB of uint8 images: large against the interpreter's own noise

CHILD = r"""
import json, sys
import torch
from cifar_lit.data.split import Split
from cifar_lit.data.tensors import DeviceBatches, channel_stats, split_views

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

split, data_dir = Split.read(sys.argv[1]), sys.argv[2]
list(DeviceBatches(torch.zeros(8, 3, 32, 32, dtype=torch.uint8), torch.zeros(8, dtype=torch.long), 4,
                   [0.5] * 3, [0.5] * 3, train=True))  # warm up torch's allocator and kernels
open("/proc/self/clear_refs", "w").write("5")  # restart the peak (VmHWM) from here
before = status("VmRSS")
views = split_views(split, data_dir)
images, labels, idx = views["train"]
mean, std = channel_stats(images, idx)
for part, train in (("train", True), ("val", False)):
    images, labels, idx = views[part]
    for x, y in DeviceBatches(images, labels, 256, mean, std, indices=idx, train=train, seed=0):
        pass
print(json.dumps({"peak": status("VmHWM") - before}))
"""


def test_fast_path_peak_memory_stays_near_the_data(tmp_path):
    images = torch.randint(0, 256, (N, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (N,))
    fingerprint = "ab" * 32
    split = {"version": 1, "dataset": "cifar10", "data_fingerprint": "cd" * 8, "content_fingerprint": fingerprint,
             "seed": 0, "val_size": N // 10, "test_size": None, "classes": [str(c) for c in range(10)], "skipped": [],
             "train": [i for i in range(N) if i % 10], "val": list(range(0, N, 10)), "test": None, "samples": None}
    path = tensor_cache_path(tmp_path, fingerprint)
    path.parent.mkdir(parents=True)
    torch.save({"train": images, "train_labels": labels, "test": images[:100], "test_labels": labels[:100]}, path)
    data_bytes = images.numel()
    del images

    (tmp_path / "split.json").write_text(json.dumps(split))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "split.json"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak = json.loads(proc.stdout.strip().splitlines()[-1])["peak"]
    # The bound: about 1.5x the uint8 data (memory-mapped cache, per-batch conversion).
    assert peak <= 1.5 * data_bytes, f"peak {peak / 2**20:.0f} MiB for {data_bytes / 2**20:.0f} MiB of images"
