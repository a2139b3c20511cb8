"""Read an offline W&B run back from its ``run-<id>.wandb`` file (what ``wandb sync`` uploads).

The file is W&B's record log: a 7-byte header, then 32 KiB blocks of records (crc32, length,
type) whose payloads are ``wandb_internal_pb2.Record`` protobufs, split across blocks when long.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B", f"{path} is not a W&B run file"
    out, pos, buf = [], 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # block trailer too short for a header: padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, FIRST):
            buf = chunk
        else:
            buf += chunk
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


def _items(items) -> dict:
    """Record items to a dict; nested keys (``examples`` -> ``captions``) become nested dicts."""
    out: dict = {}
    for item in items:
        keys = [item.key] if item.key else list(item.nested_key)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = json.loads(item.value_json)
    return out


@dataclass
class OfflineRun:
    dir: Path
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    artifacts: list[pb.ArtifactRecord] = field(default_factory=list)
    group: str = ""

    @classmethod
    def load(cls, run_dir: Path) -> OfflineRun:
        (path,) = Path(run_dir).glob("run-*.wandb")
        run = cls(Path(run_dir))
        for rec in records(path):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                run.config = _items(rec.run.config.update)
                run.group = rec.run.run_group
            elif kind == "config":
                run.config.update(_items(rec.config.update))
            elif kind == "history":
                run.history.append(_items(rec.history.item))
            elif kind == "summary":
                run.summary.update(_items(rec.summary.update))
            elif kind == "artifact":
                run.artifacts.append(rec.artifact)
        return run

    def values(self, key: str) -> list:
        return [row[key] for row in self.history if key in row]

    def artifact(self, type_: str) -> pb.ArtifactRecord:
        found = [a for a in self.artifacts if a.type == type_]
        assert found, f"no {type_} artifact in {self.dir}: {[a.type for a in self.artifacts]}"
        return found[-1]


def offline_run_dirs(output_dir: Path) -> list[Path]:
    return sorted((Path(output_dir) / "wandb").glob("offline-run-*"))
