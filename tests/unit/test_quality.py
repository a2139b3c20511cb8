"""The collapse check: on hand-made confusion matrices, and on real tiny runs through fit and
evaluate, one whose network answers one class for every image and one that learns."""

from __future__ import annotations

import logging

import pytest
import torch

from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.models import MODELS, register
from cifar_lit.models.seed_cnn import SeedCNN
from cifar_lit.training.quality import collapse_warnings
from cifar_lit.training.train import evaluate, fit

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_collapsed_matrix_names_the_class_and_both_numbers():
    # 10 balanced classes of 6 test images; 58 of the 60 predictions are 'cat'. Right on 8 of
    # them (13%): better than the largest class (10%), so only the collapse is reported.
    confusion = [[0, 0, 0, 6, 0, 0, 0, 0, 0, 0] for _ in range(10)]
    confusion[0] = [2, 0, 0, 4, 0, 0, 0, 0, 0, 0]
    assert collapse_warnings(confusion, CLASSES) == [
        "predicts 'cat' for 97% of the test images (58 of 60), though 'cat' is 10% of them"
    ]


def test_fully_collapsed_matrix_gives_both_lines():
    confusion = torch.zeros(10, 10, dtype=torch.long)
    confusion[:, 3] = 6  # every image called 'cat': right on the 6 cats only
    assert collapse_warnings(confusion, CLASSES) == [
        "predicts 'cat' for 100% of the test images (60 of 60), though 'cat' is 10% of them",
        "test accuracy 10.0% (6 of 60) is no better than always guessing the largest class 'cat' (10.0%, 6 of 60)",
    ]


def test_a_model_that_learned_gives_none():
    assert collapse_warnings([[5, 1, 0], [0, 6, 0], [1, 0, 5]], ["cat", "dog", "frog"]) == []
    # 89% of the predictions 'cat' (just under 90%), accuracy 91% against the largest class's 80%.
    assert collapse_warnings([[80, 0], [9, 11]], ["cat", "dog"]) == []


def test_two_balanced_classes_at_chance_level():
    # Never one class much more than the other, yet no better than always saying 'cat'.
    assert collapse_warnings([[5, 5], [5, 5]], ["cat", "dog"]) == [
        "test accuracy 50.0% (10 of 20) is no better than always guessing the largest class 'cat' (50.0%, 10 of 20)"
    ]
    assert collapse_warnings([[3, 7], [7, 3]], ["cat", "dog"]) == [
        "test accuracy 30.0% (6 of 20) is no better than always guessing the largest class 'cat' (50.0%, 10 of 20)"
    ]
    assert collapse_warnings([[6, 4], [4, 6]], ["cat", "dog"]) == []


def test_edge_cases():
    assert collapse_warnings([[0, 0], [0, 0]], ["cat", "dog"]) == []  # an empty test set: nothing to judge
    assert collapse_warnings([], []) == []
    assert collapse_warnings([[7]], ["only"]) == []  # one class: always right
    # A test set of one class, all right: answering that class is no collapse.
    assert collapse_warnings([[10, 0], [0, 0]], ["cat", "dog"]) == []
    # A test set that is 95% 'cat', always answered 'cat': not a collapse of the predictions
    # (the data are like that), but no better than the largest class.
    assert collapse_warnings([[95, 0], [5, 0]], ["cat", "dog"]) == [
        "test accuracy 95.0% (95 of 100) is no better than always guessing the largest class 'cat' (95.0%, 95 of 100)"
    ]
    with pytest.raises(ValueError, match="square"):
        collapse_warnings([[1, 2], [3]], ["cat", "dog"])
    with pytest.raises(ValueError, match="3 class names for a 2x2"):
        collapse_warnings([[1, 2], [3, 4]], ["cat", "dog", "frog"])


COLLAPSED = "collapsed_cnn"


@pytest.fixture
def collapsed_model():
    """A registered network that answers 'cat' (class 3) for every image: the seed network with
    its last bias far above the rest, which a few small steps cannot undo."""

    def build(num_classes: int) -> SeedCNN:
        net = SeedCNN(num_classes)
        with torch.no_grad():
            net.fc3.bias.zero_()
            net.fc3.bias[3] = 100.0
        return net

    register(COLLAPSED)(build)
    yield COLLAPSED
    MODELS.pop(COLLAPSED)


def test_real_run_that_collapsed_warns(make_config, collapsed_model, caplog):
    cfg = make_config(model=collapsed_model, max_epochs=1, lr=1e-6, wandb_mode="disabled", prediction_samples=0)
    ImageDataModule.from_config(cfg).setup("fit")
    fitted = fit(cfg, cfg.out / "split.json")
    with caplog.at_level(logging.WARNING, logger="cifar_lit.training.train"):
        tested = evaluate(cfg, cfg.out / "split.json", fitted.best_checkpoint)
    assert tested.warnings == [
        "predicts 'cat' for 100% of the test images (60 of 60), though 'cat' is 10% of them",
        "test accuracy 10.0% (6 of 60) is no better than always guessing the largest class 'cat' (10.0%, 6 of 60)",
    ]
    assert tested.to_dict()["warnings"] == tested.warnings
    logged = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "cifar_lit.training.train"]
    assert [r.getMessage() for r in logged] == [f"{COLLAPSED}: {line}" for line in tested.warnings]


def test_real_run_that_learns_has_no_warnings(make_config):
    cfg = make_config(max_epochs=3, lr=2e-3, wandb_mode="disabled", prediction_samples=0)
    ImageDataModule.from_config(cfg).setup("fit")
    fitted = fit(cfg, cfg.out / "split.json")
    tested = evaluate(cfg, cfg.out / "split.json", fitted.best_checkpoint)
    assert tested.metrics["test_acc"] > 0.2
    assert tested.warnings == []
