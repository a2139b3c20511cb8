"""LitClassifier: the LightningModule. It takes any network from the registry; it does not build
one, so ``LitClassifier(net)`` drops into a Trainer without knowing the network's internals."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix


class LitClassifier(L.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        class_names: list[str] | None = None,
        lr: float = 2e-4,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # config: the run's whole TrainConfig, so a checkpoint says exactly how it was made.
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.confusion: torch.Tensor | None = None  # set after a test epoch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor]):
        x, y = batch
        out = self(x)
        # cross_entropy == nll_loss(log_softmax(out)); on the seed network's log-probabilities
        # the extra log_softmax is the identity, so this is the tutorial's NLL loss.
        return F.cross_entropy(out, y), out.argmax(dim=1), y

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, preds, y = self._shared_step(batch)
        self.train_acc(preds, y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train_acc", self.train_acc, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, preds, y = self._shared_step(batch)
        self.val_acc(preds, y)
        self.log("val_loss", loss, prog_bar=True, sync_dist=True)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        loss, preds, y = self._shared_step(batch)
        self.test_acc(preds, y)
        self.test_confusion.update(preds, y)
        self.log("test_loss", loss, sync_dist=True)
        self.log("test_acc", self.test_acc)

    def on_test_epoch_end(self) -> None:
        self.confusion = self.test_confusion.compute().cpu()
        self.test_confusion.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=0.9, nesterov=True, weight_decay=hp.weight_decay)
        cls = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
        return cls(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
