"""Prefect flows. Run one as a script: ``python flows/train_flow.py --help``."""
