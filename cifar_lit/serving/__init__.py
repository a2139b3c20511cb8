"""Serving: the registry's production model over HTTP (``cifar-lit serve``), following the alias."""
