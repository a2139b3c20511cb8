"""fit and test: plain functions over a config and a split file, returning small results.

Prefect tasks wrap them one to one; they also run on their own (no Prefect, W&B optional):

    from cifar_lit.training.train import evaluate, fit
    cfg = TrainConfig(output_dir="runs/try").with_output_dir()
    result = fit(cfg, split_file)   # split_file from cifar_lit.data.split.make_split
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from cifar_lit.config import NOT_EFFECTIVE, TrainConfig
from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.data.split import Split
from cifar_lit.lifecycle.model_file import ModelFileError, from_checkpoint, safe_load
from cifar_lit.machine import probe
from cifar_lit.machine.checks import check_training_step
from cifar_lit.models import CATALOGUE, build_model, check_input_size
from cifar_lit.recipes import scaling
from cifar_lit.recipes.plan import DataSize, resolve
from cifar_lit.recipes.presets import RECIPES, TORCHVISION_NETS
from cifar_lit.run.rundir import OutputDirError
from cifar_lit.run.tracking import log_test_results, make_loggers, per_class_table, update_config
from cifar_lit.training.budget import ReplayedBudget, TimeBudget
from cifar_lit.training.callbacks import EpochHook, ImagePredictionLogger, build_callbacks, on_terminal
from cifar_lit.training.checkpointing import AtomicCheckpointIO, readable_checkpoint
from cifar_lit.training.module import HeadFirst, LitClassifier
from cifar_lit.training.quality import collapse_warnings

log = logging.getLogger(__name__)


class _LightningNoise(logging.Filter):
    """Lightning lines that say nothing about this run: adverts for other packages, and a TPU
    line on machines that have none."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (text.startswith("\N{ELECTRIC LIGHT BULB} Tip:") or text.startswith("TPU available: False")
                    or text.startswith("Loading `train_dataloader` to estimate"))


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_LightningNoise())
# Lightning 2.6 calls a torch pytree API that torch 2.14 deprecates, on every fit: theirs to change.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=DeprecationWarning)


@dataclass
class FitResult:
    best_checkpoint: str
    last_checkpoint: str
    metrics: dict[str, float]  # the last epoch's logged metrics, plus best_val_acc
    epochs_completed: int  # in total, including epochs done before a resume
    epochs_this_run: int
    fit_seconds: float  # wall time of trainer.fit in this attempt
    resumed_from: str | None = None
    # Under --time-budget: what the budget chose (cifar_lit.training.budget.TimeBudget.report).
    budget: dict | None = None
    # What the machine probe chose and measured (cifar_lit.machine.probe), when the recipe asked for it.
    probe: dict | None = None
    # The network the time budget chose, and from what (cifar_lit.recipes.scaling.Decision).
    scaling: dict | None = None
    # What this fit decided that the config left open (precision, memory format, the budget's
    # plan): with these, the config replays the fit (cifar_lit.training.train.replayable).
    decided: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    per_class: list[dict]  # rows of the per-class accuracy table
    confusion: list[list[int]]  # rows: true class, columns: predicted
    classes: list[str] = field(default_factory=list)
    test_seconds: float = 0.0  # wall time of trainer.test
    # A model that collapsed (one class for nearly every image, or no better than always
    # guessing the largest class), one readable line per problem; see cifar_lit.training.quality.
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def checkpoint_dir(config: TrainConfig) -> Path:
    return config.out / "checkpoints"


def _trainer(config: TrainConfig, stage: str, callbacks, steps_per_epoch: int, **overrides) -> L.Trainer:
    kwargs = dict(
        # A budget's plan stops the fit; an epoch count with it is only a cap.
        max_epochs=(config.max_epochs or -1) if config.time_budget else config.max_epochs,
        max_time=config.max_time,
        accelerator=config.accelerator,
        devices=config.devices,
        strategy=_strategy(config),
        num_nodes=config.num_nodes,
        precision=config.precision,
        callbacks=callbacks,
        logger=make_loggers(config, stage),
        default_root_dir=config.out,
        plugins=[AtomicCheckpointIO()],
        # Log at least once per epoch even on tiny datasets.
        log_every_n_steps=max(1, min(50, steps_per_epoch)),
        enable_progress_bar=on_terminal(),
        # The summary table counts parameters of the metrics too and FLOPs it cannot measure (0):
        # the run's own "network" line says what trains (see fit).
        enable_model_summary=False,
        deterministic=config.deterministic or None,
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def _strategy(config: TrainConfig):
    """Lightning's strategy; DDP with ``node_timeout``, so a process that never joins ends the
    fit with an error instead of a hang (torch's default wait is 30 minutes)."""
    if config.strategy.startswith("ddp"):
        from datetime import timedelta

        from lightning.pytorch.strategies import DDPStrategy

        unused = config.strategy == "ddp_find_unused_parameters_true"
        return DDPStrategy(timeout=timedelta(seconds=config.node_timeout), find_unused_parameters=unused)
    return config.strategy


def fit(config: TrainConfig, split_file: Path, resume: bool = False, on_epoch: EpochHook | None = None,
        extra_callbacks: Sequence[Callback] = ()) -> FitResult:
    """Train ``config.model`` on the split's train part, validating every epoch when the split
    has validation images (without them, the checkpoint of the last epoch is the best one).

    ``resume=True`` continues from ``<output_dir>/checkpoints/last.ckpt`` when it exists (a
    retried fit loses at most the epoch it crashed in). Without it, a checkpoint dir that
    already holds checkpoints is refused rather than overwritten.
    """
    config = resolved_for(config, split_file)
    split = Split.read(split_file)
    if resume:  # what the interrupted attempt chose, from its checkpoint: not probed again, as a
        # busy machine might choose otherwise and the checkpoint would no longer fit the config
        config = config.model_copy(update=_chosen_before(config))
    sizing = config.model is None  # the recipe sizes the network to the budget, once the machine is timed
    if sizing:
        config = config.model_copy(update={"model": scaling.BASE})
    # Before the probe, which already trains steps of the configured batch and image size.
    for line in check_training_step(config, len(split.classes), len(split.train), split.median_side):
        log.warning("%s", line)
    # What the recipe leaves to the machine (memory format, precision, threads): timed here
    # once, then cached (cifar_lit.machine.probe). Before resume_point: the checkpoint records the choice.
    # Timed on a batch no larger than the data (a batch of --batch-size 100000 random images was
    # a kill for memory on 27 photos).
    timed = config.model_copy(update={"batch_size": min(config.batch_size, len(split.train))})
    timed, probed = probe.apply(timed, len(split.classes))
    config = config.model_copy(update={name: getattr(timed, name) for name in probe.PROBED_FIELDS})
    spent = probed.seconds if probed else 0.0
    scaled = None
    if sizing:
        scaled, seconds = size_network(config, timed, probed, len(split.train), len(split.classes))
        spent += seconds
        if scaled and scaled["network"] != config.model:
            config = config.model_copy(update={"model": scaled["network"]})
            for line in check_training_step(config, len(split.classes), len(split.train), split.median_side):
                log.warning("%s", line)
    if config.threads:  # set by the user or a replayed config, or chosen (and set) by the probe
        torch.set_num_threads(config.threads)
    config = config.model_copy(update={"threads": torch.get_num_threads()})  # recorded: config.json replays it
    L.seed_everything(config.seed, workers=True, verbose=False)
    ckpt_dir = checkpoint_dir(config)
    last = ckpt_dir / "last.ckpt"
    ckpt_path = resume_point(config, last) if resume else None
    if ckpt_path is None and ckpt_dir.is_dir() and any(ckpt_dir.glob("*.ckpt")):
        raise OutputDirError(f"output_dir: {config.out} already holds checkpoints; use a new --output-dir or --resume")

    pretrained = starts_pretrained(config)
    dm = ImageDataModule.from_config(config, split_file, weights_normalisation(config) if pretrained else None)
    dm.setup("fit")
    # A resumed fit takes every weight from its checkpoint: no download, no weights file needed.
    model = build_classifier(config, dm, start_weights=ckpt_path is None)
    log.info("network: %s, %.2fM parameters; precision %s, %s memory, %d threads", config.network(),
             sum(p.numel() for p in model.parameters()) / 1e6, config.precision,
             "channels_last" if config.channels_last else "contiguous", torch.get_num_threads())

    validate = dm.has_val
    samples = dm.samples("val", config.prediction_samples) if config.prediction_samples and validate else None
    start = _StartEpoch()
    callbacks = [*build_callbacks(config, ckpt_dir, samples, dm.classes, dm.denormalize, on_epoch, validate), start,
                 *extra_callbacks]
    # Head-first fine-tuning (--head-epochs: epochs that train the head alone, the transfer
    # recipe's 1): see cifar_lit.training.module.HeadFirst.
    if config.head_epochs:
        callbacks.append(HeadFirst(config.head_epochs))
    steps = max(1, dm.num_images("train") // config.batch_size)
    budget = time_budget(config, steps, spent=spent)
    if budget is not None:
        callbacks.append(budget)
    # A resumed fit logs beside the first attempt's CSV instead of overwriting it.
    stage = "fit" if ckpt_path is None else f"fit-resumed-{time.strftime('%H%M%S')}"
    trainer = _trainer(config, stage, callbacks, steps, **({} if validate else {"limit_val_batches": 0}))

    t0 = time.perf_counter()
    trainer.fit(
        torch.compile(model) if config.compile else model, datamodule=dm, ckpt_path=ckpt_path, weights_only=True
    )
    fit_seconds = time.perf_counter() - t0

    ckpt = trainer.checkpoint_callback
    # A budget may stop inside an epoch, which Lightning then counts as done: only whole epochs
    # count here (the budget's report has the fraction).
    completed = (trainer.global_step // max(1, trainer.num_training_batches) if budget is not None
                 else trainer.current_epoch)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if ckpt.best_model_score is not None:
        metrics["best_val_acc"] = float(ckpt.best_model_score)
    return FitResult(
        best_checkpoint=str(Path(ckpt.best_model_path).resolve()) if ckpt.best_model_path else str(last.resolve()),
        last_checkpoint=str(last.resolve()),
        metrics=metrics,
        epochs_completed=completed,
        epochs_this_run=completed - start.epoch,
        fit_seconds=round(fit_seconds, 3),
        resumed_from=ckpt_path,
        budget=budget.report(trainer) if budget is not None else None,
        probe=probed.to_dict() if probed is not None else None,
        scaling=scaled,
        decided={"model": config.model, **{name: getattr(config, name) for name in probe.PROBED_FIELDS},
                 **({"budget_plan": budget.schedule.plans} if budget is not None else {})},
    )


def size_network(config: TrainConfig, timed: TrainConfig, probed: probe.Probed | None, n_train: int,
                 num_classes: int) -> tuple[dict | None, float]:
    """The network of the recipe's family for ``config.time_budget`` (``cifar_lit.recipes.scaling``),
    from the training speed of each, timed here under the probe's choices (``timed``). Without a
    budget, in a deterministic or distributed fit, nothing is timed: the family's smallest, the
    one its recipe's epochs were tuned for. Returns the decision (None then) and the seconds spent."""
    distributed = config.strategy.startswith("ddp") or config.num_nodes > 1
    if not config.time_budget or config.deterministic or distributed:
        return None, 0.0
    budget, most = float(config.time_budget), config.max_epochs
    known = {scaling.BASE: max(probed.images_per_second.values())} if probed and probed.images_per_second else {}
    rates, seconds = probe.network_rates(
        timed, num_classes, "cuda" if probe.wants_gpu(config.accelerator) else "cpu", [n.name for n in scaling.FAMILY],
        lambda name, so_far: scaling.worth_timing(name, budget, n_train, so_far, scaling.FAMILY, most), known)
    decision = scaling.choose(budget, n_train, rates, family=scaling.FAMILY, max_epochs=most)
    log.info("%s", decision.describe())
    return {**decision.to_dict(), "timing_seconds": round(seconds, 2)}, seconds


def replayable(config: TrainConfig, fitted: dict) -> TrainConfig:
    """The config that replays a fit: ``config`` (resolved for the data) with what the fit
    decided itself (``FitResult.decided``), for ``<output_dir>/config.json``."""
    return config.model_copy(update=fitted.get("decided") or {})


def time_budget(config: TrainConfig, steps_per_epoch: int, spent: float = 0.0) -> TimeBudget | None:
    """The callback that plans the fit's steps for ``config.time_budget`` (None without one),
    at most ``config.max_epochs`` epochs of them when that is set. Until the first steps are
    timed, the schedule assumes the recipe's own epoch count. ``spent``: seconds of the budget
    already used (the machine probe's)."""
    if config.time_budget is None:
        return None
    if config.budget_plan is not None:  # a replay: the plan the budget made then, without a clock
        return ReplayedBudget(config.budget_plan, warmup=config.warmup or 0.0, constant=config.lr_schedule == "constant",
                              batch_size=config.batch_size, seconds=float(config.time_budget))
    most = config.max_epochs * steps_per_epoch if config.max_epochs else None
    guess = RECIPES[config.recipe]["max_epochs"] * steps_per_epoch
    return TimeBudget(config.time_budget, min(guess, most or guess), warmup=config.warmup or 0.0,
                      constant=config.lr_schedule == "constant", batch_size=config.batch_size, spent=spent, most=most)


def resolved_for(config: TrainConfig, split_file: Path) -> TrainConfig:
    """``config`` with its recipe filled in for this machine and this split's data (a no-op
    for the flow's already resolved config; see ``cifar_lit.recipes``)."""
    if config.is_resolved:
        return config
    config = resolve(config, data=DataSize.of_split(Split.read(split_file)))
    update_config(config)
    return config


def _chosen_before(config: TrainConfig) -> dict:
    """The fields the config leaves to the machine (the probe's, and the network a budget sizes), as
    the checkpoint this fit would resume records them."""
    found = readable_checkpoint(checkpoint_dir(config) / "last.ckpt")
    saved = ((found[1].get("hyper_parameters") or {}).get("config") or {}) if found else {}
    return {k: saved[k] for k in ("model", *probe.PROBED_FIELDS) if getattr(config, k) is None and saved.get(k) is not None}


def resume_point(config: TrainConfig, last: Path) -> str | None:
    """The checkpoint to resume from: ``last.ckpt``, or its last-good copy when a crash left it
    unreadable; None when there is none. A checkpoint of another run or config (another
    output dir, other hyperparameters) is refused, never resumed."""
    found = readable_checkpoint(last)
    if found is None:
        return None
    path, ckpt = found
    saved = (ckpt.get("hyper_parameters") or {}).get("config") or {}
    # How long to train may change on resume (continue a run for more epochs); nothing else.
    length = {"max_epochs", "max_time", "time_budget", "patience"}
    now = {k: v for k, v in config.effective(by_content=False).items() if k not in length}
    same = {k: v for k, v in saved.items() if k not in NOT_EFFECTIVE | length} == now
    if saved.get("output_dir") != config.as_dict()["output_dir"] or not same:
        raise OutputDirError(f"{path}: was written by a run with another config; use a new --output-dir")
    if path != last:
        log.warning("%s is unreadable; resuming from its last-good copy %s", last, path)
    return str(path)


def starts_pretrained(config: TrainConfig) -> bool:
    """True when the run starts from weights: published ones (``pretrained``) or a file."""
    return config.pretrained or config.weights_file is not None


def _pretrained_nets(config: TrainConfig):
    """The module of the torchvision networks, for a model that is one of them; else one line."""
    if CATALOGUE.get(config.model) != TORCHVISION_NETS:
        have = ", ".join(name for name, m in CATALOGUE.items() if m == TORCHVISION_NETS)
        field = "weights_file" if config.weights_file is not None else "pretrained"
        raise ModelFileError(f"{field}: starting weights are for the torchvision networks ({have}), not {config.model!r}")
    import cifar_lit.models.torchvision_nets as nets

    return nets


def weights_normalisation(config: TrainConfig) -> tuple[list[float], list[float]]:
    """The mean and std the model's published weights expect (ImageNet's), for its inputs."""
    return _pretrained_nets(config).normalisation(config.model)


def build_classifier(config: TrainConfig, dm: ImageDataModule, start_weights: bool = True) -> LitClassifier:
    """The configured network inside a LitClassifier, initialised from the training data where
    the network asks for it (AirNet's patch whitening), or, with ``start_weights`` and a config
    that asks for them, from published weights or a weights file (the torchvision networks).
    The network takes the data module's images (``dm.image_size`` square); the checkpoint
    records that size, and the exported model predicts at it."""
    net = build_model(config.model, dm.num_classes)
    check_input_size(net, config.model, dm.image_size)
    if start_weights and starts_pretrained(config):
        loaded = _pretrained_nets(config).load_start_weights(net, config.model, config.weights_file)
        log.info("%s starts from %s", config.model, loaded)
    if hasattr(net, "init_whitening"):
        net.init_whitening(dm.whitening_sample())
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return LitClassifier(
        net,
        dm.num_classes,
        dm.classes,
        lr=config.step_lr,
        optimizer=config.optimizer,
        weight_decay=config.weight_decay,
        label_smoothing=config.label_smoothing,
        lr_schedule=config.lr_schedule,
        warmup=config.warmup,
        tta=config.tta,
        muon_lr=config.muon_lr,
        config=config.as_dict(),
        mean=[float(m) for m in dm.mean],
        std=[float(v) for v in dm.std],
        image_size=dm.image_size,
    )


class _StartEpoch(Callback):
    """Records the epoch training starts at: 0, or the restored epoch on resume."""

    epoch = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch = trainer.current_epoch


def load_classifier(checkpoint: Path, map_location: str = "cpu") -> LitClassifier:
    """Rebuild the network from the checkpoint's own hyperparameters and load its weights.

    Loaded with ``weights_only=True`` (a crafted checkpoint cannot run code); a corrupt or
    foreign file is one ``ModelFileError`` line naming it."""
    ckpt = safe_load(Path(checkpoint), "checkpoint")
    from_checkpoint(ckpt, Path(checkpoint))  # checks it is one of ours, with its normalisation
    hp = ckpt["hyper_parameters"]
    model = LitClassifier(build_model(hp["config"]["model"], hp["num_classes"]), **hp)
    model.load_state_dict(ckpt["state_dict"])
    return model.to(map_location).eval()


def evaluate(config: TrainConfig, split_file: Path, checkpoint: Path) -> EvalResult:
    """Evaluate ``checkpoint`` on the split's test part; log the results to W&B when active."""
    config = resolved_for(config, split_file)
    model = load_classifier(Path(checkpoint))
    # A pretrained model's inputs are normalised as its checkpoint records (its weights' own
    # statistics), not by the data module's default.
    # Tested at the image size it was trained at, and with the machine's choices
    # (cifar_lit.machine.probe) the fit made, as its checkpoint records them.
    config = config.model_copy(update={name: model.hparams.config.get(name) for name in probe.wants_probe(config)})
    sized = config.model_copy(update={"image_size": model.hparams.image_size})
    dm = ImageDataModule.from_config(sized, split_file,
                                     (model.hparams.mean, model.hparams.std) if starts_pretrained(config) else None)
    dm.setup("test")
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Captioned test images in W&B: the only ones a run without a validation split shows.
    callbacks = (
        [ImagePredictionLogger(dm.samples("test", config.prediction_samples), dm.classes, dm.denormalize, stage="test")]
        if config.prediction_samples
        else []
    )
    # One device: a distributed sampler would pad and repeat test images.
    trainer = _trainer(
        config, "test", callbacks, steps_per_epoch=1, devices=1, strategy="auto", num_nodes=1, enable_progress_bar=False
    )
    t0 = time.perf_counter()
    metrics = {k: float(v) for k, v in trainer.test(model, datamodule=dm, verbose=False)[0].items()}
    test_seconds = time.perf_counter() - t0
    confusion = model.confusion
    table = per_class_table(confusion, dm.classes)
    log_test_results(metrics, table, confusion, dm.classes)
    warnings = collapse_warnings(confusion.long().tolist(), dm.classes)
    for line in warnings:
        log.warning("%s: %s", model.hparams.config.get("model"), line)
    return EvalResult(
        metrics, table.to_dict("records"), confusion.long().tolist(), dm.classes, round(test_seconds, 3), warnings
    )
