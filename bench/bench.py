"""Benchmarks on the real CIFAR-10 JPEG images, all measured in one run on one machine.

    python bench/bench.py                       # unpacks ../shared/data/cifar10-train-jpeg.tar.gz
    python bench/bench.py --data-dir DIR        # an image folder with DIR/train/<class>/*.jpg

A seeded 10,000 images are held out as test and never trained on, the same 10,000 for every
recipe; the tutorial recipe validates on its default 10% of the rest (its EarlyStopping needs
them) and trains on 36,000, the fast recipes train on all 40,000 (no validation split). Prints a table and writes
bench/out/results.json:

  (a) the tutorial recipe (seed) vs the default recipe (and cpu-long): fit seconds and
      held-out accuracy
  (b) data loading images/s at the same batch size: the tutorial's PIL DataLoader vs the fast
      tensor path, the median of 5 passes
  (c) Lightning vs a plain PyTorch loop: steps/s, same model, data and batch size
  (d) flow overhead: the whole Prefect flow vs direct fit + test calls (after a warm-up flow
      that starts Prefect's ephemeral API), and the download + split time of a cached re-run
  (e) peak resident memory of the default recipe's fit + test process, and of the fast data path
      alone per 10,000 images (`--only memory` runs just that row)
  (f) start-up: `train_flow.py --help` against `python -c "import pydantic"`, and the fixed cost
      of a cached re-run from the command line (wall time minus fit and test) on a 2,000-image
      folder: Python, imports, the Prefect API (temporary, then a dedicated server), W&B
      offline, export, promote, shutdown (`--only startup` runs just these rows; `--root DIR`
      measures another checkout)
  (g) time budgets (`--only budget`): the default recipe with `--time-budget` equal to 1x and 3x
      the tutorial recipe's fit time measured in the same run, held-out accuracy and the fit time
      it took; `--budgets 30,120,600` adds fixed budgets (how closely the fit keeps to each)

Each recipe trains in its own process so that (e) measures it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch
from startup_bench import startup, startup_rows  # bench/ is the script's folder: on sys.path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
TARBALL = ROOT.parent / "shared" / "data" / "cifar10-train-jpeg.tar.gz"
COMMON = dict(dataset="imagefolder", test_size=10_000, seed=0, wandb_mode="disabled",
              prediction_samples=0, accelerator="cpu", devices=1)


def unpack(tarball: Path, data_dir: Path) -> None:
    """The JPEG image folder, extracted once (the tarball's members cannot land outside it)."""
    if not (data_dir / "train").is_dir():
        print(f"unpacking {tarball} into {data_dir}", flush=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tar:
            tar.extractall(data_dir, filter="data")


def config(data_dir: Path, recipe: str, out: Path, **extra):
    from cifar_lit.config import TrainConfig

    return TrainConfig(recipe=recipe, data_dir=data_dir, output_dir=out, **{**COMMON, **extra})


def resolved(data_dir: Path, recipe: str, out: Path, split: Path, **extra):
    """The config a run of ``recipe`` on ``split`` trains with: the recipe, the data's batch size
    and the machine's timed choices (``cifar_lit.machine.probe``), as ``cifar_lit.training.train.fit`` makes it."""
    from cifar_lit.data.split import Split
    from cifar_lit.machine import probe
    from cifar_lit.recipes.plan import DataSize, resolve

    s = Split.read(split)
    cfg = resolve(config(data_dir, recipe, out, **extra), data=DataSize.of_split(s))
    # A network the budget sizes is the fit's to choose (its FitResult says which): the family's smallest here.
    return probe.apply(cfg.model_copy(update={"model": cfg.network()}), len(s.classes))[0]


def prepare(data_dir: Path) -> dict[str, Path]:
    """Scan, split and tensor-cache once, untimed: every measurement below starts warm. One
    split per validation size (the recipes differ there); all hold out the same test images."""
    from cifar_lit.data.datamodule import ImageDataModule

    splits = {}
    for recipe in ("seed", "cpu-fast"):
        dm = ImageDataModule.from_config(config(data_dir, recipe, OUT / f"prepare-{recipe}"))
        dm.prepare_data()
        dm.setup()
        splits[recipe] = dm.split_file
    tests = [json.loads(p.read_text())["test"] for p in splits.values()]
    if tests[0] != tests[1]:
        raise RuntimeError("the recipes' splits hold out different test images")
    splits["cpu-long"] = splits["auto"] = splits["cpu-fast"]
    return splits


def fit_and_test(data_dir: Path, recipe: str, split: Path, time_budget: float | None = None, **extra) -> dict:
    """(a), (e) and (g): runs in a child process; prints one JSON line. ``extra``: other fields."""
    from cifar_lit.training.train import evaluate, fit

    out = OUT / f"fit-{recipe}-{int(time.time())}"
    cfg = config(data_dir, recipe, out, **({"time_budget": time_budget} if time_budget else {}), **extra)
    t0 = time.perf_counter()
    fitted = fit(cfg, split)
    tested = evaluate(cfg, split, fitted.best_checkpoint)
    used = resolved(data_dir, recipe, out, split, **({"time_budget": time_budget} if time_budget else {}), **extra)
    return {
        "recipe": used.recipe,
        "model": fitted.decided.get("model") or used.model,
        "optimizer": used.optimizer,
        "precision": (fitted.probe or {}).get("precision", cfg.precision),
        "probe": fitted.probe,
        "scaling": fitted.scaling,
        "train_images": len(json.loads(split.read_text())["train"]),
        "epochs": fitted.epochs_completed,
        "fit_seconds": fitted.fit_seconds,
        "time_budget": time_budget,
        "budget": fitted.budget,
        "fit_and_test_seconds": round(time.perf_counter() - t0, 2),
        "test_acc": tested.metrics["test_acc"],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _proc_status(key: str) -> int:
    return next(int(ln.split()[1]) * 1024 for ln in Path("/proc/self/status").read_text().splitlines()
                if ln.startswith(key))


def data_memory(data_dir: Path, split: Path) -> dict:
    """(e): the fast data path's own peak memory (Linux): setting up the tensor path and one
    epoch of training batches, measured from here (VmHWM reset), per 10,000 images of the pool."""
    from cifar_lit.data.datamodule import ImageDataModule

    Path("/proc/self/clear_refs").write_text("5")  # restart the peak from the current RSS
    before = _proc_status("VmRSS")
    dm = ImageDataModule.from_config(resolved(data_dir, "cpu-fast", OUT / "memory", split), split)
    dm.setup("fit")
    for _ in dm.train_dataloader():
        pass
    peak = _proc_status("VmHWM") - before
    pool = len(dm.serving.views["train"][0])
    uint8 = pool * 3 * 32 * 32
    return {"pool_images": pool, "peak_mib": round(peak / 2**20, 1),
            "mib_per_10k_images": round(peak / 2**20 / (pool / 10_000), 1), "ratio_to_uint8": round(peak / uint8, 2)}


def child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"bench child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def loading_speed(data_dir: Path, splits: dict[str, Path], batches: int = 60, passes: int = 5) -> dict:
    """(b): images/s through ``batches`` training batches at the default recipe's batch size,
    augmentation included; the median of ``passes`` passes. One pass of the fast path takes
    about 0.1 s, where a single pass moved by 1.7x between runs on this machine."""
    import statistics

    from cifar_lit.data.datamodule import ImageDataModule

    batch_size = resolved(data_dir, "cpu-fast", OUT / "loading", splits["cpu-fast"]).batch_size
    speeds = {}
    for name, recipe in (("tutorial DataLoader", "seed"), ("fast path", "cpu-fast")):
        dm = ImageDataModule.from_config(config(data_dir, recipe, OUT / "loading", batch_size=batch_size), splits[recipe])
        dm.setup("fit")
        rates = []
        for _ in range(passes):
            it = iter(dm.train_dataloader())
            next(it)  # start workers / move tensors before timing
            n, t0 = 0, time.perf_counter()
            for _, (x, _) in zip(range(batches), it):
                n += len(x)
            rates.append(n / (time.perf_counter() - t0))
        speeds[name] = statistics.median(rates)
    return {"tutorial_images_per_s": speeds["tutorial DataLoader"], "fast_images_per_s": speeds["fast path"],
            "batch_size": batch_size, "passes": passes}


def lightning_vs_plain(data_dir: Path, split: Path, steps: int = 45, rounds: int = 5) -> dict:
    """(c): the default recipe's model, data, batch size, optimizer and schedule; optimizer
    steps per second after 5 warm-up steps. The two loops take turns, ``rounds`` times each, and
    the overhead is the median of the paired ratios: this 2-core machine's speed drifts by
    several percent within a minute, and pairing neighbours cancels most of that drift."""
    import statistics

    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from cifar_lit.data.datamodule import ImageDataModule
    from cifar_lit.training.train import build_classifier

    cfg = resolved(data_dir, "cpu-fast", OUT / "overhead", split)
    dm = ImageDataModule.from_config(cfg, split)
    dm.setup("fit")

    class Clock(Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 5:  # after warm-up
                self.t0 = time.perf_counter()

        def on_train_end(self, trainer, *args):
            self.rate = (trainer.global_step - 5) / (time.perf_counter() - self.t0)

    def lightning_rate() -> float:
        torch.manual_seed(0)
        clock = Clock()
        trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                            accelerator="cpu", devices=1, precision=cfg.precision, callbacks=[clock])
        trainer.fit(build_classifier(cfg, dm), train_dataloaders=dm.train_dataloader())
        return clock.rate

    def plain_rate() -> float:
        torch.manual_seed(0)
        model = build_classifier(cfg, dm)
        opt, sched = model.build_optimizer(steps)  # the LightningModule's own, stepped by hand
        batches = iter(dm.train_dataloader())
        model.train()
        for step in range(steps):
            if step == 5:
                t0 = time.perf_counter()
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(dm.train_dataloader())
                x, y = next(batches)
            loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        return (steps - 5) / (time.perf_counter() - t0)

    pairs = [(lightning_rate(), plain_rate()) for _ in range(rounds)]
    lit = statistics.median(p[0] for p in pairs)
    plain = statistics.median(p[1] for p in pairs)
    ratios = sorted(1 - a / b for a, b in pairs)
    return {"lightning_steps_per_s": lit, "plain_steps_per_s": plain,
            "lightning_overhead": statistics.median(ratios), "overhead_range": [ratios[0], ratios[-1]], "rounds": rounds}


def flow_overhead(data_dir: Path) -> dict:
    """(d): runs in a child process. A 1-epoch warm-up flow starts Prefect's ephemeral API
    (what the first flow of a process pays) and fills the download and split caches; then the
    default recipe's full flow runs, timed against the direct fit + test of (a), and its
    download and split come from the cache."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.train_flow import train_flow

    cfg = config(data_dir, "cpu-fast", OUT / f"flow-{int(time.time())}")
    t0 = time.perf_counter()
    train_flow(cfg.model_copy(update={"output_dir": cfg.out.with_name(cfg.out.name + "-warmup"), "max_epochs": 1}))
    warmup_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    state = train_flow(cfg, return_state=True)
    flow_seconds = time.perf_counter() - t0
    summary = state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    tasks = {r.name.rsplit("-", 1)[0]: r for r in runs}
    stages = [tasks[k] for k in ("download", "split")]
    return {
        "warmup_flow_seconds": warmup_seconds,
        "flow_seconds": flow_seconds,
        "flow_fit_seconds": summary["fit_seconds"],
        "flow_test_acc": summary["test_acc"],
        "rerun_states": {k: tasks[k].state.name for k in ("download", "split")},
        "rerun_download_split_seconds": sum((r.end_time - r.start_time).total_seconds() for r in stages),
    }


def budgets(data_dir: Path, splits: dict[str, Path], fixed: list[float]) -> dict:
    """(g): the tutorial recipe's fit time T, then the default recipe under budgets T, 3T and
    each of ``fixed`` seconds, each in its own process."""
    def run(recipe: str, budget: float | None = None) -> dict:
        print(f"fitting {recipe}" + (f" in {budget:.0f} s" if budget else "") + " ...", flush=True)
        return child("--child", "fit", "--recipe", recipe, "--data-dir", str(data_dir), "--split", str(splits[recipe]),
                     *(["--time-budget", str(budget)] if budget else []))

    tutorial = run("seed")
    t = tutorial["fit_seconds"]
    return {"tutorial": tutorial, "runs": [{"times_tutorial": k, **run("auto", k * t)} for k in (1, 3)]
            + [{"times_tutorial": None, **run("auto", b)} for b in fixed]}


def budget_rows(g: dict) -> list[tuple[str, str, str]]:
    t = g["tutorial"]
    rows = [(f"(g) tutorial recipe ({t['epochs']} ep)", f"fit {t['fit_seconds']:.1f} s, test acc {t['test_acc']:.2%}",
             "baseline: the budget")]
    for r in g["runs"]:
        b = r["budget"]
        # What counts against the budget: the machine probe (when it ran) and the fit.
        probe = (r.get("probe") or {}).get("seconds", 0.0)
        used = r["fit_seconds"] + probe
        what = f"{r['times_tutorial']}x the tutorial's fit" if r["times_tutorial"] else "fixed"
        rows.append((f"(g) default recipe, --time-budget {r['time_budget']:.0f} s ({what})",
                     f"probe + fit {used:.1f} s, test acc {r['test_acc']:.2%}",
                     f"{used / r['time_budget'] - 1:+.1%} of the budget; {b['steps']} steps "
                     f"({b['epochs']} ep) at {b['images_per_second']:.0f} img/s"))
    return rows


def machine() -> dict:
    import lightning
    import prefect

    flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0] if Path("/proc/cpuinfo").exists() else ""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y
        t0 = time.perf_counter()
        for _ in range(5):
            x @ y
        rates[str(dtype).split(".")[1]] = round(5 * 2 * 2048**3 / (time.perf_counter() - t0) / 1e9)
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "amx": "amx_bf16" in flags,
        "matmul_gflops": rates,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "prefect": prefect.__version__,
        "python": platform.python_version(),
    }


def table(r: dict) -> str:
    a_seed, a_fast, a_long = r["fit"]["seed"], r["fit"]["default"], r["fit"]["long"]
    b, c, d, m = r["loading"], r["overhead"], r["flow"], r["machine"]
    direct = a_fast["fit_and_test_seconds"]

    def label(what: str, a: dict) -> str:
        how = f"{a['recipe']}, {a['model']}, {a['optimizer']}, {a['epochs']} ep, {a['precision']}"
        return f"(a) {what} ({how}, {a['train_images']:,} train)"

    def result(a: dict) -> str:
        return f"fit {a['fit_seconds']:.1f} s, test acc {a['test_acc']:.2%}"

    rows = [
        (label("tutorial recipe", a_seed), result(a_seed), "baseline"),
        (label("default recipe", a_fast), result(a_fast), f"{a_fast['fit_seconds'] / a_seed['fit_seconds']:.2f}x the fit time"),
        (label("longer recipe", a_long), result(a_long), f"{a_long['fit_seconds'] / a_seed['fit_seconds']:.2f}x the fit time"),
        (f"(b) data loading, tutorial DataLoader, batch {b['batch_size']}", f"{b['tutorial_images_per_s']:,.0f} img/s",
         f"baseline (median of {b['passes']} passes)"),
        (f"(b) data loading, fast path, batch {b['batch_size']}", f"{b['fast_images_per_s']:,.0f} img/s",
         f"{b['fast_images_per_s'] / b['tutorial_images_per_s']:.1f}x"),
        ("(c) plain PyTorch loop", f"{c['plain_steps_per_s']:.2f} steps/s", "baseline"),
        ("(c) Lightning", f"{c['lightning_steps_per_s']:.2f} steps/s",
         f"{c['lightning_overhead']:+.1%} overhead (median of {c['rounds']} pairs, "
         f"range {c['overhead_range'][0]:+.1%} to {c['overhead_range'][1]:+.1%})"),
        ("(d) direct fit + test", f"{direct:.1f} s", "baseline"),
        ("(d) whole flow, Prefect API up", f"{d['flow_seconds']:.1f} s", f"{d['flow_seconds'] - direct:+.1f} s"),
        ("(d) first flow of a process, 1 epoch", f"{d['warmup_flow_seconds']:.1f} s", "starts the ephemeral API"),
        ("(d) cached re-run: download + split", f"{d['rerun_download_split_seconds']:.2f} s",
         "/".join(d["rerun_states"].values())),
        ("(e) peak RSS, default recipe", f"{a_fast['peak_rss_mib']:,.0f} MiB", ""),
    ] + memory_rows(r["memory"]) + startup_rows(r["startup"])
    width = max(len(x[0]) for x in rows)
    lines = [f"{m['cpu']}, {m['cores']} cores, AMX: {m['amx']}, matmul fp32 {m['matmul_gflops']['float32']} / "
             f"bf16 {m['matmul_gflops']['bfloat16']} GFLOP/s; torch {m['torch']}, Lightning {m['lightning']}, "
             f"Prefect {m['prefect']}, Python {m['python']}", ""]
    lines += [f"{name:<{width}}  {value:<34}  {ratio}" for name, value, ratio in rows]
    return "\n".join(lines)


def memory_rows(e: dict) -> list[tuple[str, str, str]]:
    return [("(e) fast data path, setup + 1 epoch of batches", f"{e['mib_per_10k_images']:,.1f} MiB per 10,000 images",
             f"{e['ratio_to_uint8']:.2f}x the uint8 images ({e['pool_images']:,} in the pool)")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=OUT / "cifar10-jpeg")
    parser.add_argument("--child", choices=["fit", "flow", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=["memory", "startup", "budget"],
                        help="run one measurement: memory, the (e) data-path row; startup, the (f) rows; "
                             "budget, the (g) rows")
    parser.add_argument("--budgets", default="",
                        help="with --only budget: fixed budgets in seconds to add, e.g. 30,120,600")
    parser.add_argument("--time-budget", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)  # child fit: FIELD=VALUE
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose start-up (f) measures")
    parser.add_argument("--before", type=Path,
                        help="with --only startup: another checkout measured alongside, its runs taking turns with --root's")
    parser.add_argument("--recipe", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--split", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "fit":
        extra = dict(item.split("=", 1) for item in args.set)
        print(json.dumps(fit_and_test(args.data_dir, args.recipe, args.split, args.time_budget, **extra)))
        return
    if args.child == "flow":
        print(json.dumps(flow_overhead(args.data_dir)))
        return
    if args.child == "memory":
        print(json.dumps(data_memory(args.data_dir, args.split)))
        return

    OUT.mkdir(parents=True, exist_ok=True)
    unpack(TARBALL, args.data_dir)
    if args.only == "startup":
        start = startup(args.data_dir, args.root.resolve(), before=args.before.resolve() if args.before else None)
        (OUT / "startup.json").write_text(json.dumps({"machine": machine(), "startup": start}, indent=2))
        print("\n".join(f"{a}  {b}  {c}" for a, b, c in startup_rows(start)))
        return
    splits = prepare(args.data_dir)
    if args.only == "budget":
        g = budgets(args.data_dir, splits, [float(b) for b in args.budgets.split(",") if b.strip()])
        (OUT / "budget.json").write_text(json.dumps({"machine": machine(), "budget": g}, indent=2))
        print("\n".join(f"{a}  {b}  {c}" for a, b, c in budget_rows(g)))
        return
    memory = child("--child", "memory", "--data-dir", str(args.data_dir), "--split", str(splits["cpu-fast"]))
    if args.only == "memory":
        (OUT / "memory.json").write_text(json.dumps({"machine": machine(), "memory": memory}, indent=2))
        print("\n".join(f"{a}  {b}  {c}" for a, b, c in memory_rows(memory)))
        return
    results = {"machine": machine(), "fit": {}, "memory": memory}
    for key, recipe, what in (("seed", "seed", "the tutorial recipe"), ("default", "auto", "the default recipe"),
                              ("long", "cpu-long", "the longer CPU recipe")):
        print(f"fitting {what} ...", flush=True)
        results["fit"][key] = child("--child", "fit", "--recipe", recipe, "--data-dir", str(args.data_dir),
                                    "--split", str(splits[recipe]))
    print("data loading, Lightning overhead ...", flush=True)
    results["loading"] = loading_speed(args.data_dir, splits)
    results["overhead"] = lightning_vs_plain(args.data_dir, splits["cpu-fast"])
    print("the whole flow, twice ...", flush=True)
    results["flow"] = child("--child", "flow", "--data-dir", str(args.data_dir))
    print("start-up ...", flush=True)
    results["startup"] = startup(args.data_dir)
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    print()
    print(table(results))


if __name__ == "__main__":
    main()
