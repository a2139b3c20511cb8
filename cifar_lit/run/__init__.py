"""A run's records: its output dir, summary, W&B tracking, provenance, redaction of secrets and
signal handling."""
