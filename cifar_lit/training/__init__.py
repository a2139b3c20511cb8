"""Training: the LightningModule, its optimizers and schedules, the time budget, callbacks,
checkpointing, the fit itself and its DDP launcher, and the checks of what a fit learned."""
