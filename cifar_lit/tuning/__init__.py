"""Hyperparameter sweeps: search spaces, trials and studies (Optuna), for flows/sweep_flow.py."""
