"""The GPU target's check: the gpu-fast recipe's fit time after a warm-up run, and its held-out
accuracy, on the real CIFAR-10 JPEG images. Needs cifar_lit's training dependencies only (torch,
torchvision, Lightning, torchmetrics, pandas, pydantic), not Prefect or W&B, so it runs on a bare
GPU machine:

    python bench/gpu.py --tarball cifar10-train-jpeg.tar.gz      # writes bench/out/gpu.json
    python bench/gpu.py --tarball cifar10-train-jpeg.tar.gz --time-budget 10   # the 10-second target

The same seeded 10,000 images as bench/bench.py are held out as test; gpu-fast trains on the
other 40,000. Run 1 is the warm-up (CUDA context, cuDNN autotuning); every later run is timed
and tested. ``--accelerator cpu --model airnet_s --max-epochs 1`` smoke-tests it on a CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

# bench.py beside this file (the script's folder is on sys.path); it imports Prefect only inside
# the functions that need it.
from bench import OUT, TARBALL, unpack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tarball", type=Path, default=TARBALL)
    parser.add_argument("--data-dir", type=Path, default=OUT / "cifar10-jpeg")
    parser.add_argument("--runs", type=int, default=3, help="fits in all, the first one a warm-up")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--model")
    parser.add_argument("--max-epochs", type=int)
    parser.add_argument("--time-budget", type=float,
                        help="seconds of fitting instead of the recipe's epochs, e.g. 10 and 5 for the targets")
    args = parser.parse_args()

    from cifar_lit.config import TrainConfig
    from cifar_lit.data.datamodule import ImageDataModule
    from cifar_lit.training.train import evaluate, fit

    unpack(args.tarball, args.data_dir)
    overrides = {k: v for k, v in (("model", args.model), ("max_epochs", args.max_epochs),
                                   ("time_budget", args.time_budget)) if v is not None}
    stamp = int(time.time())

    def config(i: int) -> TrainConfig:
        return TrainConfig(recipe="gpu-fast", dataset="imagefolder", data_dir=args.data_dir, test_size=10_000, seed=0,
                           accelerator=args.accelerator, devices=1, wandb_mode="disabled", prediction_samples=0,
                           output_dir=OUT / f"gpu-{stamp}-run{i}", **overrides)

    dm = ImageDataModule.from_config(config(0))  # split and tensor cache, untimed
    dm.prepare_data()
    dm.setup()
    runs = []
    for i in range(args.runs):
        cfg = config(i)
        fitted = fit(cfg, dm.split_file)
        tested = evaluate(cfg, dm.split_file, fitted.best_checkpoint)
        runs.append({"run": i, "warm_up": i == 0, "fit_seconds": fitted.fit_seconds, "test_acc": tested.metrics["test_acc"]})
        print(json.dumps(runs[-1]), flush=True)
    timed = [r for r in runs if not r["warm_up"]] or runs
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch": torch.__version__,
        "recipe": {k: getattr(cfg, k) for k in ("model", "batch_size", "max_epochs", "time_budget", "lr", "lr_batch",
                                                "precision", "tta")},
        "train_images": len(json.loads(Path(dm.split_file).read_text())["train"]),
        "runs": runs,
        "best_timed_fit_seconds": min(r["fit_seconds"] for r in timed),
        "mean_timed_test_acc": sum(r["test_acc"] for r in timed) / len(timed),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gpu.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
