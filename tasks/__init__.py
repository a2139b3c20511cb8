"""Prefect tasks, one per data stage, each a thin wrapper over one cifar_lit function.

Inputs and outputs are paths, configs and metrics only: Prefect hashes task inputs for caching
and cannot hash tensors or DataModules.
"""

from tasks.download import download_data
from tasks.evaluate import evaluate_model
from tasks.export import export_checkpoint
from tasks.fit import fit_model
from tasks.promote import promote_model
from tasks.split import split_data

__all__ = ["download_data", "split_data", "fit_model", "evaluate_model", "export_checkpoint", "promote_model"]
