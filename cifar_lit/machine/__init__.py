"""The machine: what it can train (memory, image size, batch) and the probe that times it to
choose precision and memory format."""
