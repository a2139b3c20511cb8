"""cifar_lit: the Lightning library of the pipeline. Imports no Prefect; imports W&B only where
it logs. Import submodules directly (``cifar_lit.training.train``, ``cifar_lit.config``...)."""

__version__ = "0.1.0"
