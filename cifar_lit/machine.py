"""What this machine can run: checked before any data work, so a wrong accelerator, device list
or node count is one line at the start instead of a traceback (or a hang) after the download."""

from __future__ import annotations

import os

from cifar_lit.config import TrainConfig


class MachineError(ValueError):
    """The config asks for hardware this machine does not have; the message names the flag."""


def check_machine(config: TrainConfig) -> None:
    import torch

    acc, devices = config.accelerator, config.devices
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if acc in ("gpu", "cuda") and gpus == 0:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise MachineError(f"accelerator: {acc} asked for, but torch {torch.__version__} ({build}) sees no GPU; "
                           "use --accelerator cpu")
    if acc == "mps" and not torch.backends.mps.is_available():
        raise MachineError("accelerator: mps asked for, but this machine has no Apple GPU; use --accelerator cpu")
    on_gpu = acc in ("gpu", "cuda") or (acc == "auto" and gpus > 0)
    if isinstance(devices, str) and devices != "auto":
        ids = [int(d) for d in devices.split(",") if d.strip()]
        if not on_gpu:
            raise MachineError(f"devices: {devices!r} lists GPUs, but this run is on the CPU; give a process count")
        if max(ids) >= gpus:
            raise MachineError(f"devices: {devices!r} names GPU {max(ids)}, but this machine has {gpus}")
    elif isinstance(devices, int) and on_gpu and devices > gpus:
        raise MachineError(f"devices: {devices} GPUs asked for, but this machine has {gpus}")
    if config.num_nodes > 1 and not os.environ.get("MASTER_ADDR"):
        # Without it every rank waits forever for peers that were never started.
        raise MachineError(f"num_nodes: {config.num_nodes} machines need MASTER_ADDR, MASTER_PORT and NODE_RANK "
                           "set on each node (see the README, Scaling out)")
