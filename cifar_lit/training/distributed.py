"""Scale-out on Lightning's DDP, from inside a Prefect task.

Lightning starts DDP by re-running the command that started the process, once per extra local
rank. Re-running a Prefect flow (or pytest) that way would start whole new flow runs, so a
distributed fit runs in its own command instead:

    python -m cifar_lit.training.distributed --config CFG.json --split split.json --result fit.json [--resume]

which Lightning can safely re-run on every rank. The fit task starts it and waits; global rank
0 writes the result file, saves checkpoints and logs to W&B (a "fit" run in the flow run's W&B
group). Everything around fit (test, export, summary, Prefect artifacts) runs once, in the flow.

On several nodes, every node runs the same command with Lightning's environment
(``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK``; see docs/deployments.md, Scaling out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from cifar_lit.config import TrainConfig


def device_count(config: TrainConfig) -> int:
    d = config.devices
    if isinstance(d, int):
        if d == -1:
            return _visible_devices(config)
        return d
    if d == "auto":
        return _visible_devices(config)
    return len([x for x in str(d).split(",") if x.strip()])


def _visible_devices(config: TrainConfig) -> int:
    from cifar_lit.recipes.presets import wants_gpu

    if wants_gpu(config.accelerator):
        import torch

        return max(1, torch.cuda.device_count())
    return 1  # Lightning's "auto" on CPU is one process


def is_distributed(config: TrainConfig) -> bool:
    """True when Lightning would launch more than one process for this config."""
    return config.num_nodes > 1 or device_count(config) > 1 or config.strategy.startswith(("ddp", "fsdp"))


def fit_in_subprocess(config: TrainConfig, split_file: Path, resume: bool = False, timeout: float | None = None):
    """Run the distributed fit command and return rank 0's FitResult."""
    from cifar_lit.training.train import FitResult

    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    cfg_file, result_file = out / "fit-config.json", out / "fit-result.json"
    cfg_file.write_text(config.model_dump_json())
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "cifar_lit.training.distributed", "--config", str(cfg_file), "--split", str(split_file),
           "--result", str(result_file)] + (["--resume"] if resume else [])
    proc = subprocess.run(cmd, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0 or not result_file.is_file():
        raise RuntimeError(f"distributed fit failed with exit code {proc.returncode}; see the log above")
    return FitResult(**json.loads(result_file.read_text()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="One rank of a distributed fit (started by the fit task).")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)

    from cifar_lit.run import tracking
    from cifar_lit.training.train import fit

    config = TrainConfig.model_validate_json(args.config.read_text())
    # Lightning gives the ranks it launches LOCAL_RANK (and NODE_RANK on other nodes).
    global_zero = os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
    if global_zero:  # only rank 0 talks to W&B: a "fit" run in the flow run's group
        tracking.start_run(config, name=f"{config.out.name}-fit", job_type="fit")
    try:
        result = fit(config, args.split, resume=args.resume)
    except Exception as e:
        if not _timed_out(e):
            raise
        # One line instead of a traceback per rank: the usual cause is a node that never started.
        where = f"{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{os.environ.get('MASTER_PORT', '?')}"
        print(f"num_nodes: not every process joined {where} within --node-timeout {config.node_timeout} s "
              f"({str(e).strip().splitlines()[0][:160]}); start this command on every node with its NODE_RANK",
              file=sys.stderr)
        sys.exit(1)
    finally:
        tracking.finish_run()
    if global_zero:
        args.result.write_text(json.dumps(result.to_dict()))


def _timed_out(e: BaseException) -> bool:
    import torch.distributed as dist

    return isinstance(e, getattr(dist, "DistStoreError", ())) or "timed out" in str(e).lower()


if __name__ == "__main__":
    main()
