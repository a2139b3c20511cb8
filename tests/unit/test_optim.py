"""Muon (cifar_lit.training.optim): SGD where it should be SGD, orthogonalised steps for conv filters, and
an exact resume of the recipe that uses it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.recipes.plan import resolve
from cifar_lit.training.module import LitClassifier
from cifar_lit.training.optim import Muon
from cifar_lit.training.train import fit


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))


def _steps(net: nn.Module, opt: torch.optim.Optimizer, n: int = 3) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(n):
        x, y = torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 5, (4,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()


def test_groups_without_orthogonalize_step_like_nesterov_sgd():
    a, b = _net(), _net()
    _steps(a, torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4))
    _steps(b, Muon(b.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4))
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)


def test_filter_steps_are_orthogonalised():
    net = _net()
    conv = net[0].weight
    before = conv.detach().clone()
    filters = {"params": [conv], "orthogonalize": True, "lr": 0.05, "momentum": 0.6}
    rest = [p for p in net.parameters() if p is not conv]
    _steps(net, Muon([filters, {"params": rest}], lr=0.1), n=1)
    step = ((before - conv.detach()) / 0.05).reshape(8, -1)
    # Every singular value of the step is about 1, whatever the gradient's spectrum was.
    s = torch.linalg.svdvals(step)
    assert ((s > 0.6) & (s < 1.3)).all(), s


def test_orthogonalize_refuses_vectors():
    net = _net()
    with pytest.raises(ValueError, match="orthogonalize=True groups must hold matrices"):
        Muon([{"params": [net[1].bias], "orthogonalize": True}], lr=0.1)


def test_cpu_fast_resume_continues_exactly(make_config, crashed_fit):
    """Muon's momentum travels in the checkpoint: a fit that crashes at the start of its 2nd epoch
    and resumes lands on the same weights as one that never crashed."""
    # Pinned: two separate fits on a busy machine (the suite's other worker) could be given
    # different precisions or memory formats by the probe, and so different weights.
    straight = make_config(recipe="cpu-fast", batch_size=32, max_epochs=2, wandb_mode="disabled",
                           precision="32-true", channels_last=False, threads=1)
    assert resolve(straight).optimizer == "muon"
    ImageDataModule.from_config(straight).setup("fit")
    split = straight.out / "split.json"
    whole = fit(straight, split)

    crashed = straight.model_copy(update={"output_dir": straight.out.parent / "crashed"})
    crashed_fit(crashed, split)
    resumed = fit(crashed, split, resume=True)
    assert (resumed.epochs_completed, resumed.epochs_this_run) == (2, 1)

    load = lambda r: torch.load(r.best_checkpoint, weights_only=False)  # noqa: E731
    a, b = load(whole), load(resumed)
    for name, tensor in a["state_dict"].items():
        torch.testing.assert_close(tensor, b["state_dict"][name], msg=name)
    momentum = [s["momentum_buffer"] for s in a["optimizer_states"][0]["state"].values()]
    assert momentum and all(m.abs().sum() > 0 for m in momentum)


def test_muon_groups_cover_every_trainable_parameter_once():
    from cifar_lit.models.airnet import AirNet

    model = LitClassifier(AirNet(10, (8, 16, 32)), 10, optimizer="muon", lr=0.1, muon_lr=0.05)
    optimizer, _ = model.build_optimizer(10)
    grouped = [p for g in optimizer.param_groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}
    (filters,) = [g for g in optimizer.param_groups if g["orthogonalize"]]
    assert filters["lr"] == 0.05 and all(p.ndim == 4 for p in filters["params"]) and len(filters["params"]) == 6
