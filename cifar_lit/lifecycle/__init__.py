"""A trained model's life: the model file, export, the registry and its command, the
champion/challenger gate, W&B's copy of the aliases, and prediction."""
