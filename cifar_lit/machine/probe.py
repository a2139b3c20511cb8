"""Choices a recipe leaves to the machine, measured on it: memory format, precision and threads.

``cpu-fast`` was tuned on a Xeon with AVX-512; an AMD EPYC with AVX2 only ran the same network
at about half the speed, and what is fastest differs between such CPUs (bf16 helps only with
AMX tiles; channels_last depends on the convolution kernels the CPU gets). So for the fields a
recipe marks ``PROBE``, a fit times a few training steps of the real network, optimizer and
batch size on random images for each candidate, and takes the fastest. The result is cached
per machine (CPU model and flags, CPUs available, torch version, GPU) and per network, image
size and batch size, so a machine probes once: 2.2 s on a 2-core AMD EPYC for ``airnet_s``.

Candidates: contiguous and channels_last; float32, and bf16 autocast only where the hardware
has bf16 arithmetic (AMX or AVX-512 BF16 on a CPU, any CUDA GPU that supports it: elsewhere it
is emulated); all CPUs, and half of them where there are 4 or more (one thread per core
instead of per hardware thread). The batch size is not probed: it changes what a step learns
(the recipes' batch sizes are measured for accuracy, see ``cifar_lit.recipes``).

A distributed fit does not probe (its processes would time each other): it takes the rule the
recipes used before, channels_last, bf16 where the CPU has AMX.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cifar_lit.files.atomic import write_json_atomic
from cifar_lit.machine.checks import forced_precision
from cifar_lit.recipes.presets import PROBE, RECIPES, wants_gpu

log = logging.getLogger(__name__)

PROBED_FIELDS = ("precision", "channels_last", "threads")
CACHE_ENV = "CIFAR_LIT_CACHE"
STEPS = 2  # timed steps per candidate and round, after one warm-up step
ROUNDS = 2  # every candidate is timed this often, the rounds interleaved
# Two rounds of one candidate further apart than this (of the faster) mean something else ran
# meanwhile: the choice is used for this run but not cached, so one measurement taken under load
# (14 images/s cached on a machine that does 1,600) cannot steer every later run.
NOISE = 0.25
BUSY = 0.25  # nor when other processes used more than this share of the CPUs meanwhile
CACHE_FORMAT = 2


@dataclass(frozen=True)
class Choice:
    precision: str = "32-true"
    channels_last: bool = False
    threads: int = 1


@dataclass
class Probed:
    """What a probe chose, what each candidate measured and what the probe cost in this run."""

    choice: Choice
    images_per_second: dict[str, float]  # candidate (as words) -> training images per second
    seconds: float  # spent probing in this run: 0 when the cache answered
    cached: bool
    forced_precision: str | None = None  # CIFAR_LIT_PROBE_PRECISION, when it decided the precision
    load: float | None = None  # the share of the CPUs other processes used while it measured
    noisy: bool = False  # its rounds disagreed, or the machine was busy: used, not cached
    decided_by: str = "measured"  # measured, cache, or deterministic (no timing: fixed choices)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.choice), "images_per_second": self.images_per_second, "seconds": round(self.seconds, 2),
                "cached": self.cached, "forced_precision": self.forced_precision, "load": self.load,
                "noisy": self.noisy, "decided_by": self.decided_by}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    """The CPU's model name and flags (Linux; empty elsewhere)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return "", set()
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return model, set(flags)


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU reports AMX bf16 tiles (Linux; False where that cannot be read)."""
    return "amx_bf16" in cpu_flags(cpuinfo)[1]


def cpus() -> int:
    """The CPUs this process may run on (a container's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _busy_seconds() -> float | None:
    """CPU seconds every CPU of the machine has been busy since boot (Linux; None elsewhere)."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


class OthersLoad:
    """The share of the machine's CPUs that other processes used while it was open (0: none
    but this one ran; 1: every CPU busy with something else). Not the load average, which
    counts this process's own work and trails by a minute."""

    def __enter__(self) -> OthersLoad:
        self.start = (time.perf_counter(), _busy_seconds(), _own_seconds())
        self.share: float | None = None
        return self

    def __exit__(self, *exc) -> None:
        wall0, busy0, own0 = self.start
        busy1 = _busy_seconds()
        if busy0 is None or busy1 is None:
            return
        wall = time.perf_counter() - wall0
        others = (busy1 - busy0) - (_own_seconds() - own0)
        self.share = round(min(1.0, max(0.0, others / max(wall * (os.cpu_count() or 1), 1e-9))), 2)


def machine(device: str) -> dict[str, Any]:
    """What identifies this machine for the cache: another CPU, GPU, torch or Lightning is
    another entry."""
    model, flags = cpu_flags()
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    return {"cpu": model, "flags": hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16], "cpus": cpus(),
            "torch": torch.__version__, "lightning": importlib.metadata.version("lightning"), "gpu": gpu}


def cache_file() -> Path:
    base = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cifar_lit"
    return Path(base) / "probe.json"


def candidates(device: str, given: dict[str, Any]) -> list[Choice]:
    """What to time; ``given``: fields the user set (precision, channels_last, threads), kept as they are.
    ``OMP_NUM_THREADS`` set keeps torch's thread count too, and ``CIFAR_LIT_PROBE_PRECISION``
    the precision (bf16 then runs even where the CPU only emulates it)."""
    if device == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        threads = [torch.get_num_threads()]
    else:
        _, flags = cpu_flags()
        bf16 = cpu_has_amx() or "avx512_bf16" in flags
        n = cpus()
        threads = [n, n // 2] if n >= 4 and not os.environ.get("OMP_NUM_THREADS") else [torch.get_num_threads()]
    if "threads" in given:
        threads = [given["threads"]]
    forced = forced_precision()
    precisions = ([given["precision"]] if "precision" in given else [forced] if forced
                  else ["32-true", "bf16-mixed"] if bf16 else ["32-true"])
    layouts = [given["channels_last"]] if "channels_last" in given else [False, True]
    return [Choice(p, cl, t) for p in precisions for cl in layouts for t in threads]


def words(c: Choice) -> str:
    return f"{c.precision}, {'channels_last' if c.channels_last else 'contiguous'}, {c.threads} threads"


def images_per_second(step, choice: Choice, batch: torch.Tensor, device: str) -> float:
    """Training images per second of ``step`` (one optimizer step on ``batch``) under ``choice``."""
    torch.set_num_threads(choice.threads)
    x = batch.contiguous(memory_format=torch.channels_last) if choice.channels_last else batch
    dtype = torch.bfloat16 if choice.precision == "bf16-mixed" else None
    with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
        step(x)  # warm-up: first-call allocations and kernel choice
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(STEPS):
            step(x)
        if device == "cuda":
            torch.cuda.synchronize()
    return STEPS * len(batch) / (time.perf_counter() - t0)


def given(config) -> dict[str, Any]:
    return {name: getattr(config, name) for name in PROBED_FIELDS if getattr(config, name) is not None}


def measure(config, num_classes: int, device: str) -> tuple[dict[Choice, float], float]:
    """Images/s of each candidate (the configured network, optimizer and batch size: the faster
    of ``ROUNDS`` interleaved rounds), and the largest disagreement between one candidate's
    rounds, as a fraction of the faster."""
    from cifar_lit.models import build_model
    from cifar_lit.training.module import LitClassifier

    size = config.image_size or 32
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(config.batch_size, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, num_classes, (config.batch_size,), generator=generator).to(device)
    threads = torch.get_num_threads()
    steps, rounds = {}, {}
    try:
        for choice in candidates(device, given(config)):
            net = build_model(config.network(), num_classes).to(device)
            if choice.channels_last:
                net = net.to(memory_format=torch.channels_last)
            module = LitClassifier(net, num_classes, lr=config.step_lr, optimizer=config.optimizer,
                                   weight_decay=config.weight_decay, muon_lr=config.muon_lr)
            steps[choice] = _step(net, module.build_optimizer(100)[0], labels)
        # Interleaved, so a burst of other work slows one round of every candidate, not all the
        # rounds of one (which would pick the wrong one and look consistent).
        for _ in range(ROUNDS):
            for choice, step in steps.items():
                rounds.setdefault(choice, []).append(images_per_second(step, choice, batch, device))
    finally:
        torch.set_num_threads(threads)
    spread = max((max(r) - min(r)) / max(r) if max(r) > 0 else 0.0 for r in rounds.values())
    return {c: max(r) for c, r in rounds.items()}, spread


def _step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, labels: torch.Tensor):
    """One training step of ``net`` on a batch, as a fit takes it (loss in float32)."""
    def step(x: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x).float(), labels).backward()
        optimizer.step()

    return step


def key(config, num_classes: int, device: str) -> str:
    what = {"format": CACHE_FORMAT, "machine": machine(device), "model": config.network(), "image_size": config.image_size,
            "batch_size": config.batch_size, "optimizer": config.optimizer, "num_classes": num_classes,
            "given": given(config), "omp_threads": os.environ.get("OMP_NUM_THREADS"), "forced": forced_precision()}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


def probe(config, num_classes: int, device: str = "cpu") -> Probed:
    """The fastest candidate for ``config`` on this machine: from the cache (unless
    ``config.reprobe``), else measured, and cached when the measurement was clean. A cache that
    cannot be read or written is only a slower start, never a failure."""
    path, k = cache_file(), key(config, num_classes, device)
    forced = None if "precision" in given(config) else forced_precision()
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        entries = {}
    if not isinstance(entries, dict):
        entries = {}
    if isinstance(hit := entries.get(k), dict) and not getattr(config, "reprobe", False):
        try:
            return Probed(Choice(**hit["choice"]), hit["images_per_second"], 0.0, cached=True, forced_precision=forced,
                          load=hit.get("load"), decided_by="cache")
        except (KeyError, TypeError):
            pass  # an entry of another layout: measure again
    t0 = time.perf_counter()
    with OthersLoad() as others:
        rates, spread = measure(config, num_classes, device)
    best = max(rates, key=rates.get)
    load = others.share
    noisy = spread > NOISE or (load is not None and load > BUSY)
    result = Probed(best, {words(c): round(r, 1) for c, r in rates.items()}, time.perf_counter() - t0, cached=False,
                    forced_precision=forced, load=load, noisy=noisy)
    log.info("probe: %s, %s is fastest here (%s images/s; %s)", config.network(), words(best), f"{rates[best]:.0f}",
             "; ".join(f"{w} {r:.0f}" for w, r in result.images_per_second.items()))
    if noisy:
        log.warning("probe: the machine was busy (other processes used %s of its CPUs; rounds %.0f%% apart): its "
                    "choice is used for this run, not cached", "an unknown share" if load is None else f"{load:.0%}",
                    100 * spread)
        return result
    entries[k] = {"choice": asdict(best), "images_per_second": result.images_per_second, "load": load}
    try:
        write_json_atomic(path, entries)
    except OSError as e:
        log.warning("probe: could not cache the result in %s (%s)", path, e)
    return result


def network_rates(config, num_classes: int, device: str, names: list[str],
                  worth: Callable[[str, dict[str, float]], bool], known: dict[str, float] | None = None
                  ) -> tuple[dict[str, float], float]:
    """Training images/s of each network of ``names`` (smallest first), under ``config``'s
    precision, memory format and threads: each probed once per machine, then cached like every
    probe. The next network is timed only while ``worth(name, the rates so far)`` (a network
    too slow for the budget costs nothing); ``known``: rates already measured. Returns the rates
    and the seconds spent timing in this run."""
    rates, seconds = dict(known or {}), 0.0
    for name in names:
        if name in rates:
            continue
        if not worth(name, rates):
            break
        found = probe(config.model_copy(update={"model": name}), num_classes, device)
        rates[name] = max(found.images_per_second.values())
        seconds += found.seconds
    return rates, seconds


def wants_probe(config) -> list[str]:
    """The fields of ``config`` its recipe leaves to the probe and the user left unset."""
    preset = RECIPES.get(config.recipe, {})
    return [name for name in PROBED_FIELDS if preset.get(name) == PROBE and getattr(config, name) is None]


def apply(config, num_classes: int) -> tuple[Any, Probed | None]:
    """``config`` with the fields its recipe leaves to the machine filled in: by a probe, or by
    the fixed rule for a distributed fit. Returns the config and what the probe found (None
    when nothing was probed)."""
    fields = wants_probe(config)
    if not fields:
        return config, None
    distributed = config.strategy.startswith("ddp") or config.num_nodes > 1
    device = "cuda" if wants_gpu(config.accelerator) else "cpu"
    if getattr(config, "deterministic", False):  # what was fastest may differ next time: the same choices every run
        found = Choice("32-true", False, torch.get_num_threads())
        probed = Probed(found, {}, 0.0, cached=False, decided_by="deterministic")
    elif distributed:
        precision = forced_precision() or ("bf16-mixed" if cpu_has_amx() else "32-true")
        found, probed = Choice(precision, True, torch.get_num_threads()), None
    else:
        probed = probe(config, num_classes, device)
        found = probed.choice
        torch.set_num_threads(found.threads)
    return config.model_copy(update={name: getattr(found, name) for name in fields}), probed
