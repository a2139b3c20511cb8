"""``cifar-lit``: the one command for users, with a sub-command per job.

    cifar-lit train [flags]       the training flow (the same as python flows/train_flow.py)
    cifar-lit predict [flags]     the predict flow (python flows/predict_flow.py)
    cifar-lit sweep [flags]       the sweep flow (python flows/sweep_flow.py)
    cifar-lit registry ...        list, show, set-alias, sync-wandb (python -m cifar_lit.lifecycle.registry)
    cifar-lit serve [flags]       the production model over HTTP, following the alias (cifar_lit.serving.app)

Each sub-command runs its module as ``__main__``, so ``--help`` and flag errors answer before
Prefect, torch or W&B are imported, exactly as the scripts do.
"""

from __future__ import annotations

import runpy
import sys

COMMANDS = {
    "train": ("flows.train_flow", "train a model: download, split, fit, test, export, promote"),
    "predict": ("flows.predict_flow", "classify image files and folders with a registered model, into a CSV"),
    "sweep": ("flows.sweep_flow", "tune: an Optuna study of train runs; the best one goes through the gate"),
    "registry": ("cifar_lit.lifecycle.registry", "the model registry: list, show, set-alias, sync-wandb"),
    "serve": ("cifar_lit.serving.app", "serve the production model over HTTP (/health, /predict), following the alias"),
}

USAGE = "usage: cifar-lit {" + ",".join(COMMANDS) + "} [flags]   (cifar-lit <command> --help for its flags)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, "", "commands:", *(f"  {name:<10}{about}" for name, (_, about) in COMMANDS.items()), sep="\n")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{USAGE}\ncifar-lit: error: unknown command {name!r}", file=sys.stderr)
        return 2
    if name == "registry":  # a plain function: nothing to start early
        from cifar_lit.lifecycle.registry import main as registry

        return registry(rest, prog="cifar-lit registry")
    if name == "serve":  # not a flow: no Prefect
        from cifar_lit.serving.app import main as serve

        return serve(rest, prog="cifar-lit serve")
    from flows import command

    command.PROGRAM = f"cifar-lit {name}"  # the name its help, errors and messages give
    sys.argv = [sys.argv[0], *rest]  # what the script parses (run_module sets argv[0] to its file)
    try:
        runpy.run_module(COMMANDS[name][0], run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
