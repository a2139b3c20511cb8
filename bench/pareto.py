"""Accuracy against time: the default recipe under budgets of 1, 2, 3, 5 and 10 times the tutorial
recipe's fit time S, all measured in one run on this machine, plotted with the tutorial's point.

    python bench/pareto.py                          # writes bench/out/pareto.json and bench/out/pareto.png
    python bench/pareto.py --multiples 1,3 --no-default
    python bench/pareto.py --airbench 87.36:390,90.76:718   # add measured airbench94 points (acc %:seconds)

The same seeded 10,000 of the 50,000 CIFAR-10 JPEG images are held out as test for every point
and never trained on (bench/bench.py's split). Each fit runs in its own process, one after the
other: a quiet machine is part of the method. The fit time of a budgeted run counts the machine
probe and the network timing as well (they are spent out of the budget). Per point the JSON has
the network the scaling rule chose and what it chose from (``cifar_lit.recipes.scaling``), the
epochs, the measured training speed and the process's peak resident memory per 10,000 training
images; and, once, the data path's speed against the tutorial's loader.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# bench.py beside this file (the script's folder is on sys.path).
from bench import OUT, TARBALL, child, loading_speed, machine, prepare, unpack

TARGETS = {1: 0.85, 3: 0.88, 10: 0.91}  # held-out accuracy the budget of k x S must reach


def fit(data_dir: Path, split: Path, recipe: str, budget: float | None = None) -> dict:
    print(f"fitting {recipe}" + (f" in {budget:.0f} s" if budget else "") + " ...", flush=True)
    r = child("--child", "fit", "--recipe", recipe, "--data-dir", str(data_dir), "--split", str(split),
              *(["--time-budget", f"{budget:.1f}"] if budget else []))
    r["used_seconds"] = round(r["fit_seconds"] + ((r.get("probe") or {}).get("seconds") or 0.0)
                              + ((r.get("scaling") or {}).get("timing_seconds") or 0.0), 2)
    r["peak_rss_mib_per_10k"] = round(r["peak_rss_mib"] / (r["train_images"] / 10_000), 1)
    print(f"  {r['model']}: {r['test_acc']:.2%} in {r['used_seconds']:.1f} s ({r['epochs']} epochs)", flush=True)
    return r


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["tutorial"]["fit_seconds"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    runs = result["runs"]
    xs = [r["used_seconds"] / s for r in runs]
    ys = [100 * r["test_acc"] for r in runs]
    ax.plot(xs, ys, "o-", color="tab:blue", label="default recipe, --time-budget k x S")
    for x, y, r in zip(xs, ys, runs):
        ax.annotate(r["model"], (x, y), textcoords="offset points", xytext=(4, -12), fontsize=8)
    if result.get("default"):
        d = result["default"]
        ax.plot([d["used_seconds"] / s], [100 * d["test_acc"]], "D", color="tab:green", label="no flags (3-minute budget)")
    t = result["tutorial"]
    ax.plot([1], [100 * t["test_acc"]], "s", color="tab:red", label=f"tutorial recipe ({100 * t['test_acc']:.1f}%)")
    for seconds, acc in result.get("airbench94") or []:
        ax.plot([seconds / s], [acc], "^", color="tab:purple")
    if result.get("airbench94"):
        ax.plot([], [], "^", color="tab:purple", label="airbench94 (measured elsewhere)")
    for k, target in TARGETS.items():
        ax.plot([k], [100 * target], "_", color="black", markersize=16, mew=2)
    ax.plot([], [], "_", color="black", mew=2, label="targets")
    ax.set_xscale("log")
    ax.set_xticks([1, 2, 3, 5, 10])
    ax.set_xticklabels(["S", "2S", "3S", "5S", "10S"])
    ax.set_ylim(min(ys + [100 * t["test_acc"]]) - 3, 95)
    ax.set_xlabel(f"fit time (S = the tutorial's fit, {s:.0f} s here)")
    ax.set_ylabel("held-out accuracy, % (10,000 CIFAR-10 JPEGs)")
    m = result["machine"]
    ax.set_title(f"{m['cpu']}, {m['cores']} cores, {result['date']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=OUT / "cifar10-jpeg")
    parser.add_argument("--multiples", default="1,2,3,5,10", help="budgets as multiples of S")
    parser.add_argument("--no-default", action="store_true", help="skip the run with no flags")
    parser.add_argument("--airbench", default="", help="measured airbench94 points, ACC%%:SECONDS,...")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    unpack(TARBALL, args.data_dir)
    splits = prepare(args.data_dir)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "airbench94": [(float(sec), float(acc)) for acc, sec in
                             (p.split(":") for p in args.airbench.split(",") if p.strip())]}
    result["loading"] = loading_speed(args.data_dir, splits)
    tutorial = result["tutorial"] = fit(args.data_dir, splits["seed"], "seed")
    s = tutorial["fit_seconds"]
    result["runs"] = []
    for k in (float(x) for x in args.multiples.split(",")):
        run = fit(args.data_dir, splits["auto"], "auto", k * s)
        run["times_s"] = k
        run["within_budget"] = run["used_seconds"] <= 1.05 * run["time_budget"]
        run["target"] = TARGETS.get(int(k)) if k.is_integer() else None
        result["runs"].append(run)
    result["default"] = None if args.no_default else fit(args.data_dir, splits["auto"], "auto")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pareto.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "pareto.png")
    print(f"\nS = {s:.1f} s (tutorial, {tutorial['test_acc']:.2%})")
    for r in result["runs"]:
        target = f"target {r['target']:.0%}" if r["target"] else ""
        print(f"{r['times_s']:g}S  {r['model']:9s} {r['test_acc']:.2%}  {r['used_seconds']:.1f} s of "
              f"{r['time_budget']:.1f}  {r['epochs']} ep  rss {r['peak_rss_mib_per_10k']} MiB/10k  {target}")
    if result["default"]:
        d = result["default"]
        print(f"no flags  {d['model']:9s} {d['test_acc']:.2%}  {d['used_seconds']:.1f} s")
    ld = result["loading"]
    print(f"data path {ld['fast_images_per_s'] / ld['tutorial_images_per_s']:.1f}x the tutorial's loader")


if __name__ == "__main__":
    main()
