"""The fast path: tensor cache, batched augmentation on the device, AirNet and the fast recipes."""

from __future__ import annotations

import fakes
import pytest
import torch
import torch.nn.functional as F

from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.data.tensors import DeviceBatches, flip_and_translate, load_tensors, tensor_cache_path
from cifar_lit.models.airnet import AirNet
from cifar_lit.recipes.plan import resolve
from cifar_lit.training.train import evaluate, fit


def _reference_uint8(dm: ImageDataModule, dataset) -> torch.Tensor:
    """The PIL path's images as uint8: undo its (0.5, 0.5) normalisation."""
    return torch.stack([((dataset[i][0] * 0.5 + 0.5) * 255).round().to(torch.uint8) for i in range(len(dataset))])


@pytest.mark.parametrize("dataset", ["cifar10", "imagefolder"])
def test_tensor_path_serves_the_reference_images(dataset, make_config, tmp_path):
    extra = {}
    if dataset == "imagefolder":
        root = fakes.image_folder(tmp_path / "ds", per_class=8)
        from PIL import Image

        Image.new("L", (40, 20), 90).save(root / "train" / "cat" / "grey-odd-size.png")
        Image.new("RGBA", (32, 32), (1, 2, 3, 4)).save(root / "train" / "dog" / "rgba.png")
        extra = dict(dataset="imagefolder", data_dir=root, val_size=0.25, test_size=0.25)
    pil = ImageDataModule.from_config(make_config(**extra))
    pil.prepare_data()
    pil.setup()
    fast = ImageDataModule.from_config(make_config(**extra, data_path="tensor"), pil.split_file)
    fast.setup()
    # The per-sample path's evaluation view of each part (its train set is augmented).
    for part, ref in ((p, pil.eval_set(p)) for p in ("train", "val", "test")):
        images, labels = fast.images_of(part)
        assert torch.equal(images, _reference_uint8(pil, ref))
        assert labels.tolist() == [ref[i][1] for i in range(len(ref))]
    assert tensor_cache_path(fast.data_dir, pil.split.content_fingerprint).is_file()
    # Unaugmented batches are the normalised images, in order.
    (x, y), *_ = list(fast.serving.loader("val", batch_size=500))  # evaluation batches are twice as big
    mean = torch.tensor(fast.mean).view(1, 3, 1, 1)
    std = torch.tensor(fast.std).view(1, 3, 1, 1)
    assert torch.allclose(x, (fast.images_of("val")[0].float() / 255 - mean) / std, atol=1e-6)


def test_tensor_cache_is_reused(make_config):
    dm = ImageDataModule.from_config(make_config(data_path="tensor"))
    dm.prepare_data()
    dm.setup()
    path = tensor_cache_path(dm.data_dir, dm.split.content_fingerprint)
    stamp = path.stat().st_mtime_ns
    again = load_tensors(dm.split, dm.data_dir)
    assert torch.equal(again["train"][list(dm.split.val)], dm.images_of("val")[0])
    assert path.stat().st_mtime_ns == stamp  # read back, not decoded and written again


def test_augmentation_is_seeded_and_stays_inside_the_image():
    x = torch.rand(64, 3, 32, 32)
    a = flip_and_translate(x, torch.Generator().manual_seed(3), pad=2)
    b = flip_and_translate(x, torch.Generator().manual_seed(3), pad=2)
    c = flip_and_translate(x, torch.Generator().manual_seed(4), pad=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Every output is a 32x32 window of the reflect-padded (possibly mirrored) original.
    for i in range(len(x)):
        found = False
        for img in (x[i], x[i].flip(2)):
            padded = F.pad(img[None], (2, 2, 2, 2), mode="reflect")[0]
            windows = [padded[:, r : r + 32, s : s + 32] for r in range(5) for s in range(5)]
            found |= any(torch.equal(a[i], w) for w in windows)
        assert found, i
    # Batches from DeviceBatches honour channels_last.
    batches = DeviceBatches((x * 255).to(torch.uint8), torch.zeros(64, dtype=torch.long), 16, [0.5] * 3, [0.25] * 3,
                            train=True, channels_last=True)
    assert all(b.is_contiguous(memory_format=torch.channels_last) for b, _ in batches)


def test_device_batches_epochs_and_ranks():
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 3, 32, 32).contiguous()
    labels = torch.arange(20)
    batches = DeviceBatches(images, labels, 4, [0.0] * 3, [1 / 255] * 3, train=True, seed=1)
    epoch1 = torch.cat([y for _, y in batches])
    epoch2 = torch.cat([y for _, y in batches])
    assert len(batches) == 5 and sorted(epoch1.tolist()) == list(range(20)) and not torch.equal(epoch1, epoch2)
    replay = DeviceBatches(images, labels, 4, [0.0] * 3, [1 / 255] * 3, train=True, seed=1)
    assert torch.equal(torch.cat([y for _, y in replay]), epoch1)
    ranks = [DeviceBatches(images, labels, 5, [0.0] * 3, [1 / 255] * 3, train=True, seed=1, rank=r, world_size=2)
             for r in (0, 1)]
    seen = [torch.cat([y for _, y in r]).tolist() for r in ranks]
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) + len(seen[1]) == 20


def test_whitening_decorrelates_patches():
    torch.manual_seed(0)
    base = torch.randn(200, 3, 16, 16)
    images = F.interpolate(base, size=32, mode="bilinear") * torch.tensor([1.0, 0.5, 2.0]).view(1, 3, 1, 1)
    net = AirNet(10, widths=(8, 8, 8))
    net.init_whitening(images, eps=1e-6)
    out = F.conv2d(images, net.whiten.weight[:12])  # the + half of the filters
    flat = out.permute(1, 0, 2, 3).reshape(12, -1)
    cov = torch.cov(flat)
    assert torch.allclose(cov, torch.eye(12), atol=0.05)
    assert not net.whiten.weight.requires_grad and not net.whiten.bias.requires_grad


def test_fast_recipe_learns_on_cpu(make_config):
    cfg = make_config(recipe="cpu-fast", batch_size=32, max_epochs=6, wandb_mode="disabled", prediction_samples=2)
    resolved = resolve(cfg)
    assert (resolved.network(), resolved.data_path, resolved.optimizer, resolved.tta) == ("airnet_s", "tensor", "muon", 2)
    assert resolved.model is None  # sized to a time budget when there is one; without, airnet_s
    dm = ImageDataModule.from_config(cfg)
    dm.prepare_data()
    dm.setup("fit")
    result = fit(cfg, cfg.out / "split.json")
    import csv

    with open(cfg.out / "csv" / "fit" / "metrics.csv") as f:
        losses = [float(r["train_loss_epoch"]) for r in csv.DictReader(f) if r.get("train_loss_epoch")]
    assert len(losses) == 6 and losses[-1] < losses[0]
    tested = evaluate(cfg, cfg.out / "split.json", result.best_checkpoint)
    assert tested.metrics["test_acc"] > 0.3  # 10 classes: chance is 0.1
    # The optimizer ran at the recipe's lr per 1024 examples scaled to batch 32.
    hp = torch.load(result.best_checkpoint, weights_only=False)["hyper_parameters"]
    assert hp["lr"] == pytest.approx(2.4 * 32 / 1024) and hp["config"]["lr_batch"] == 1024
