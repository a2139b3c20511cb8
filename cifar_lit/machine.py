"""What this machine can run: checked before any data work, so a wrong accelerator, device list
or node count is one line at the start instead of a traceback (or a hang) after the download."""

from __future__ import annotations

import os

from cifar_lit.config import TrainConfig


class MachineError(ValueError):
    """The config asks for hardware this machine does not have; the message names the flag."""


# Forces the probe's precision (cifar_lit.probe) where a recipe leaves it to the machine, so a
# developer on a float32-only CPU can run the tests as a bf16 machine would (CI runs the fault
# and lifecycle tests this way), and an operator can rule bf16 out. A precision the user gave
# still wins.
PRECISION_ENV = "CIFAR_LIT_PROBE_PRECISION"
PRECISIONS = ("32-true", "bf16-mixed")


def forced_precision() -> str | None:
    """The precision ``CIFAR_LIT_PROBE_PRECISION`` forces on the probe (None when unset)."""
    value = os.environ.get(PRECISION_ENV, "").strip()
    if value and value not in PRECISIONS:
        raise MachineError(f"{PRECISION_ENV}: {value!r} is not a precision the probe can force; "
                           f"use one of {', '.join(PRECISIONS)} or unset it")
    return value or None


def check_machine(config: TrainConfig) -> None:
    import torch

    forced_precision()  # a bad value is one line here, not a failure inside the fit
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
