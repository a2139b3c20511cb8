"""What this machine can run: checked before any data work, so a wrong accelerator, device list
or node count is one line at the start instead of a traceback (or a hang) after the download."""

from __future__ import annotations

import os

from cifar_lit.config import TrainConfig
from cifar_lit.errors import UserError


class MachineError(UserError, ValueError):
    """The config asks for hardware this machine does not have; the message names the flag."""


# Forces the probe's precision (cifar_lit.machine.probe) where a recipe leaves it to the machine, so a
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
                           "set on each node (see docs/deployments.md, Scaling out)")


# A training step needs the batch's activations kept for the backward pass: refused when they
# alone would take more than this share of the memory free now (the data, the model and the
# optimizer need the rest).
MEMORY_SHARE = 0.8
# An image size this many times the photos' median side only upsamples: warned about.
UPSAMPLE_WARNING = 4
# Activations are measured at most at this side and scaled; the network's input check likewise
# runs at most at CHECKED_SIDE (every network here takes any side from 16 px up: the last pooling
# layers are adaptive).
MEASURED_SIDE, CHECKED_SIDE = 128, 512


def check_training_step(config: TrainConfig, num_classes: int, n_train: int, median_side: int | None) -> list[str]:
    """What a resolved ``config`` cannot train on this machine and data, as one line before the
    probe or the first step (either would otherwise fail deep in torch, or be killed for memory
    without a word): an image size the network cannot take, a step whose activations do not fit
    in free memory. Returns warnings for what is only wasteful: a batch larger than the training
    images (each step takes them all), an image size far above the photos' own."""
    from cifar_lit.models import build_model, check_input_size

    warnings = []
    batch = min(config.batch_size, n_train)  # a step never holds more images than there are
    if config.batch_size > n_train:
        warnings.append(f"batch_size: {config.batch_size} is more than the {n_train} training images: every step "
                        f"takes all {n_train}")
    size = config.image_size or 32
    net = build_model(config.model, num_classes)
    check_input_size(net, config.model, min(size, CHECKED_SIDE))
    per_image = activation_bytes(net, size)
    if config.precision and config.precision.startswith(("bf16", "16")):
        per_image //= 2
    need, free = per_image * batch, free_memory(config)
    if free is not None and need > MEMORY_SHARE * free:
        fits = max(1, int(MEMORY_SHARE * free // per_image))
        raise MachineError(f"batch_size: {batch} images of {size}x{size} px need about {_gib(need)} "
                           f"for one training step of {config.model}, more than the {_gib(free)} free here; "
                           f"give at most --batch-size {fits}, or a smaller --image-size")
    if median_side and size >= UPSAMPLE_WARNING * median_side:
        warnings.append(f"image_size: {size} px is {size / median_side:.0f}x the photos' median side "
                        f"({median_side} px): every step pays for pixels that add no detail; --image-size to choose")
    return warnings


def activation_bytes(net, size: int) -> int:
    """Bytes autograd keeps for the backward pass of one ``size`` x ``size`` image through
    ``net`` in float32 (what a batch multiplies), measured on one real forward pass at
    ``MEASURED_SIDE`` px at most and scaled by the pixels: convolutional activations grow with
    them (airnet_s at 1024 px: 880 MiB scaled from 128 px, 872 MiB measured), and measuring at
    the full size would itself take the memory being checked for."""
    import torch

    side = min(size, MEASURED_SIDE)

    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    mode = net.training
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net.train()(torch.zeros(2, 3, side, side, requires_grad=True))  # 2: BatchNorm needs more than one
    finally:
        net.train(mode)
    return round(saved / 2 * (size / side) ** 2)


def free_memory(config: TrainConfig) -> int | None:
    """Bytes free for this run: the GPU's free memory on a GPU, else the memory Linux reports
    available, within the container's limit (None where neither can be read)."""
    from cifar_lit.recipes.presets import wants_gpu

    if wants_gpu(config.accelerator):
        import torch

        return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else None
    try:
        meminfo = dict(line.split(":", 1) for line in open("/proc/meminfo").read().splitlines() if ":" in line)
        available = int(meminfo["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:  # cgroup v2: a container's limit, which /proc/meminfo does not show
        limit, used = (open(f"/sys/fs/cgroup/memory.{f}").read().strip() for f in ("max", "current"))
        if limit != "max":
            available = min(available, int(limit) - int(used))
    except (OSError, ValueError):
        pass
    return available


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"
