"""LitClassifier: the LightningModule. It takes any network from the registry; it does not build
one, so ``LitClassifier(net)`` drops into a Trainer without knowing the network's internals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from cifar_lit.lifecycle.model_file import tta_views
from cifar_lit.training.budget import TimeBudget
from cifar_lit.training.optim import Muon, triangular

# Batch norms by their public classes (torch's common base, _BatchNorm, is private).
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class LitClassifier(L.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        class_names: list[str] | None = None,
        lr: float = 2e-4,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        label_smoothing: float = 0.0,
        lr_schedule: str = "constant",
        warmup: float = 0.0,
        tta: int = 0,
        muon_lr: float = 0.11,
        config: dict[str, Any] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        # config: the run's whole TrainConfig, so a checkpoint says exactly how it was made;
        # mean/std: the per-channel normalisation of its inputs (the fast recipes compute it from
        # the training images), and image_size the side of the square images it was trained on,
        # so the checkpoint alone is enough to predict.
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.confusion: torch.Tensor | None = None  # set after a test epoch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def predict_tta(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs averaged over test-time augmentations: level 1 adds the mirror image, level 2
        also 1-pixel shifts up-left and down-right of both (reflect padding)."""
        return torch.stack([self(v) for v in tta_views(x, self.hparams.tta)]).mean(0)

    def _loss(self, out: torch.Tensor, y: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        # cross_entropy == nll_loss(log_softmax(out)); on the seed network's log-probabilities
        # the extra log_softmax is the identity, so this is the tutorial's NLL loss.
        return F.cross_entropy(out.float(), y, label_smoothing=smoothing)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self(x)
        loss = self._loss(out, y, self.hparams.label_smoothing)
        self.train_acc(out.argmax(dim=1), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train_acc", self.train_acc, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        out = self(x)
        self.val_acc(out.argmax(dim=1), y)
        self.log("val_loss", self._loss(out, y), prog_bar=True, sync_dist=True)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        out = self.predict_tta(x)
        preds = out.argmax(dim=1)
        self.test_acc(preds, y)
        self.test_confusion.update(preds, y)
        self.log("test_loss", self._loss(out, y), sync_dist=True)
        self.log("test_acc", self.test_acc)

    def on_test_epoch_end(self) -> None:
        self.confusion = self.test_confusion.compute().cpu()
        self.test_confusion.reset()

    def build_optimizer(
        self, total_steps: int, factor: Callable[[int], float] | None = None
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        """The optimizer and its per-step schedule (None: constant) for ``total_steps`` steps;
        ``configure_optimizers`` passes the trainer's count, a hand-written loop its own.
        ``factor``: the learning-rate factor of each step instead (a time budget's schedule)."""
        hp = self.hparams
        # No weight decay on biases and normalisation parameters (1-d tensors).
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": hp.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=0.9, nesterov=True)
        elif hp.optimizer == "muon":
            # Conv filters take Muon's orthogonalised steps, at their own lr and momentum 0.6
            # (0.4 and 0.8 measured no better); no decay, as in Muon's published CIFAR recipe.
            # The linear head, biases and norms keep Nesterov SGD.
            filters = {"params": [p for p in params if p.ndim >= 3], "weight_decay": 0.0}
            filters.update(lr=hp.muon_lr, momentum=0.6, orthogonalize=True)
            groups[0]["params"] = [p for p in params if p.ndim == 2]
            optimizer = Muon([g for g in (filters, *groups) if g["params"]], lr=hp.lr, momentum=0.9)
        else:
            optimizer = (torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam)(groups, lr=hp.lr)
        if hp.lr_schedule == "constant":
            return optimizer, None
        if factor is None:
            def factor(step: int) -> float:
                return triangular(step, total_steps, hp.warmup)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def configure_optimizers(self):
        # Under a time budget (cifar_lit.training.budget.TimeBudget) the total is planned while training.
        budget = TimeBudget.of(self.trainer)
        if budget is not None:
            optimizer, schedule = self.build_optimizer(budget.schedule.total, budget.schedule)
        else:
            optimizer, schedule = self.build_optimizer(self.trainer.estimated_stepping_batches)
        if schedule is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def head_of(net: nn.Module) -> str:
    """The name of ``net``'s head, its classifier layer: the network's own ``head_name`` when it
    has one (the torchvision networks), else its last ``nn.Linear``."""
    name = getattr(net, "head_name", None)
    if isinstance(name, str):
        return name
    linear = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ValueError(f"{type(net).__name__} has no nn.Linear head and no head_name")
    return linear[-1]


class HeadFirst(Callback):
    """Head-first fine-tuning: for the first ``epochs`` epochs only the network's head trains
    (``head_of``); the rest of it, the backbone, is frozen: no gradients, and its BatchNorm
    layers in eval mode, so their running statistics (the pretrained ones) stay as they are and
    the head learns on the features the weights were trained to give. Then everything trains.

    Lightning's ``BackboneFinetuning`` does the same for a LightningModule with a ``backbone``
    attribute, adding the backbone's parameters to the optimizer as a new group when they
    unfreeze. That group would be outside ``LitClassifier.build_optimizer``'s weight-decay
    split and its per-step lr schedule (a LambdaLR knows only the groups it was made with), and
    a ``backbone`` would mean wrapping the torchvision networks (losing their state-dict layout).
    Here every parameter is in the optimizer from the start; a frozen one just has no gradient,
    which torch's optimizers (and Muon) skip, weight decay included. So nothing needs patching
    when the backbone joins, and a resumed fit freezes or not by its epoch.

    Under DDP, frozen parameters receive no gradient: use ``ddp_find_unused_parameters_true``.
    """

    def __init__(self, epochs: int = 1) -> None:
        super().__init__()
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        self.epochs = epochs
        self.frozen: list[nn.Parameter] = []  # what this callback froze, to unfreeze exactly that
        self.norms: list[nn.Module] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(trainer, pl_module)  # after a resume, before its first epoch's hooks

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(trainer, pl_module)

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = pl_module.net
        if trainer.current_epoch < self.epochs:
            if not self.frozen:
                self.freeze(net)
            for norm in self.norms:  # again every epoch: validation restores each module's mode
                norm.eval()
        elif self.frozen:
            self.unfreeze()

    def freeze(self, net: nn.Module) -> None:
        head = head_of(net)
        inside = head + "."
        for name, module in net.named_modules():
            if name != head and not name.startswith(inside) and isinstance(module, BATCH_NORMS):
                self.norms.append(module)
        for name, p in net.named_parameters():
            if p.requires_grad and not name.startswith(inside):
                p.requires_grad_(False)
                self.frozen.append(p)

    def unfreeze(self) -> None:
        for p in self.frozen:
            p.requires_grad_(True)
        for norm in self.norms:
            norm.train()
        self.frozen, self.norms = [], []
