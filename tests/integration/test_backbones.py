"""Transfer learning: the torchvision backbones, their starting weights (a weights file saved
from a random initialisation of the same torchvision network stands in for the published ones:
no internet here), tiny real runs through fit, evaluate, export and the model file, the one-line
failures, and head-first fine-tuning."""

from __future__ import annotations

import pytest
import torch
import torchvision
from fakes import image_folder, refused_url

from cifar_lit.config import TrainConfig
from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.lifecycle.export import export_model
from cifar_lit.lifecycle.model_file import ModelFileError, load_model
from cifar_lit.lifecycle.predict import predict
from cifar_lit.models import build_model
from cifar_lit.models.torchvision_nets import HEADS, WeightsError, load_start_weights, normalisation
from cifar_lit.recipes.plan import resolve
from cifar_lit.training import train
from cifar_lit.training.module import HeadFirst, head_of
from cifar_lit.training.train import build_classifier, evaluate, fit, load_classifier

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory) -> dict[str, object]:
    """Per backbone, a state dict saved from a seeded random initialisation of torchvision's own
    network with ImageNet's 1000 classes: the layout of the published weights."""
    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for name in HEADS:
        torch.manual_seed(7)
        path = folder / f"{name}.pth"
        torch.save(torchvision.models.get_model(name, weights=None).state_dict(), path)
        files[name] = path
    return files


def _split(cfg: TrainConfig):
    ImageDataModule.from_config(cfg).setup("fit")  # downloads the tiny archive and writes the split
    return cfg.out / "split.json"


def test_builders_resize_the_head_and_name_it():
    net = build_model("resnet18", 7)
    assert head_of(net) == "fc" and net.fc.out_features == 7
    net = build_model("mobilenet_v3_small", 3)
    assert head_of(net) == "classifier.3" and net.classifier[3].out_features == 3
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 3)  # CIFAR-sized input
    assert head_of(build_model("seed_cnn", 10)) == "fc3"  # no head_name: the last Linear
    assert normalisation("resnet18") == normalisation("mobilenet_v3_small") == IMAGENET  # no download


def test_weights_file_sets_every_starting_weight_but_the_head(make_config, weights_files):
    cfg = make_config(model="resnet18", weights_file=weights_files["resnet18"])
    dm = ImageDataModule.from_config(cfg)
    dm.setup("fit")
    saved = torch.load(weights_files["resnet18"], weights_only=True)
    own = build_classifier(cfg, dm).net.state_dict()
    body = [k for k in own if not k.startswith("fc.")]
    assert len(body) == len(saved) - 2 and all(torch.equal(own[k], saved[k]) for k in body)  # BN statistics too
    assert own["fc.weight"].shape == (10, 512)  # the 1000-class head left out: fresh, for 10 classes
    plain = build_classifier(make_config(model="resnet18"), dm).net.state_dict()
    assert not torch.equal(plain["layer1.0.conv1.weight"], saved["layer1.0.conv1.weight"])


def test_weights_file_of_as_many_classes_loads_the_head_too(tmp_path):
    torch.manual_seed(3)
    source = torchvision.models.mobilenet_v3_small(num_classes=10)
    torch.save(source.state_dict(), tmp_path / "ten.pth")
    net = build_model("mobilenet_v3_small", 10)
    assert "head included" in load_start_weights(net, "mobilenet_v3_small", tmp_path / "ten.pth")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), source.state_dict().values()))


@pytest.mark.parametrize("name, recipe", [("resnet18", "seed"), ("mobilenet_v3_small", "cpu-fast"),
                                          ("mobilenet_v3_small", "transfer")])
def test_tiny_transfer_run_fits_tests_exports_and_reloads(make_config, weights_files, tmp_path, name, recipe):
    # seed: the PIL data path and Adam; cpu-fast: the tensor data path, Muon, channels_last, TTA.
    weights = tmp_path / "start.pth"
    weights.write_bytes(weights_files[name].read_bytes())
    cfg = make_config(recipe=recipe, model=name, weights_file=weights, max_epochs=1, wandb_mode="disabled")
    split = _split(cfg)
    fitted = fit(cfg, split)
    print(f"\n{name} ({recipe}): one epoch of {fitted.metrics.get('train_loss_epoch')} loss in {fitted.fit_seconds} s")
    tested = evaluate(cfg, split, fitted.best_checkpoint)
    assert sum(map(sum, tested.confusion)) == 60 and 0 <= tested.metrics["test_acc"] <= 1
    model = load_classifier(fitted.best_checkpoint)
    # Pretrained inputs are normalised with the weights' own statistics, recorded for inference.
    assert (model.hparams.mean, model.hparams.std) == IMAGENET

    exported = export_model(cfg, fitted.best_checkpoint, tested.metrics, "fp")
    weights.unlink()  # the model file is self-contained: the starting weights are not needed
    loaded = load_model(exported["files"]["model"])
    assert loaded.info["model"] == name and loaded.classes == tested.classes
    images = torch.rand(5, 3, 32, 32)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    with torch.no_grad():
        expected = model.predict_tta((images - mean) / std)
        assert torch.allclose(loaded.module(images), expected, atol=1e-5)
        program = torch.export.load(exported["files"]["program"]).module()
        assert torch.allclose(program(images), expected, atol=1e-4)
    assert exported["metadata"]["contract"]["classes"] == tested.classes
    rows = predict(loaded, [image_folder(tmp_path / "photos", per_class=2)])
    assert len(rows) == 6 and rows["error"].isna().all() and set(rows["prediction"]) <= set(tested.classes)


def test_published_weights_without_internet_is_one_line(make_config, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # nothing cached
    real = torch.hub.load_state_dict_from_url
    # Wherever these tests run, the download goes to a port where nothing listens.
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda url, **kw: real(refused_url("/resnet18-f37072fd.pth"), **kw))
    cfg = make_config(model="resnet18", pretrained=True, max_epochs=1, wandb_mode="disabled")
    with pytest.raises(WeightsError) as failed:
        fit(cfg, _split(cfg))
    message = str(failed.value)
    assert "\n" not in message and message.startswith("pretrained: could not download the published weights of resnet18")
    assert "use --weights-file PATH" in message and "torchvision's resnet18" in message
    assert isinstance(failed.value, ModelFileError)  # a one-line error of the flows' command lines
    assert not (cfg.out / "checkpoints").exists()


def test_starting_weights_for_a_network_without_them_is_one_line(make_config, weights_files):
    # --pretrained: refused when the recipe is resolved, which the command line does while it
    # reads the flags (no torch needed to know the catalogue).
    with pytest.raises(ValueError, match="pretrained: published weights exist for resnet18, mobilenet_v3_small; "
                                         "not for seed_cnn"):
        resolve(make_config(pretrained=True, max_epochs=1, wandb_mode="disabled"))
    # --weights-file of another network: one line when the fit loads it.
    cfg = make_config(weights_file=weights_files["resnet18"], max_epochs=1, wandb_mode="disabled")
    with pytest.raises(ModelFileError) as failed:
        fit(cfg, _split(cfg))
    assert "\n" not in str(failed.value) and "seed_cnn" in str(failed.value)


def test_a_wrong_weights_file_is_one_line_naming_it(weights_files, tmp_path):
    def fails(path) -> str:
        with pytest.raises(ModelFileError) as failed:
            load_start_weights(build_model("resnet18", 10), "resnet18", path)
        message = str(failed.value)
        assert "\n" not in message and message.startswith(str(path)), message
        return message

    assert "missing (e.g. conv1.weight)" in fails(weights_files["mobilenet_v3_small"])
    state = torch.load(weights_files["resnet18"], weights_only=True)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, tmp_path / "reshaped.pth")
    assert "1 of another shape (e.g. layer1.0.conv1.weight: (64, 64, 1, 1), not (64, 64, 3, 3))" in fails(
        tmp_path / "reshaped.pth")
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "other.pth")
    assert "1 missing (e.g. layer1.0.conv1.weight); 1 unexpected (e.g. extra.weight)" in fails(tmp_path / "other.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    assert "holds a list" in fails(tmp_path / "list.pth")
    torch.save({"lr": 0.1, "conv1.weight": torch.zeros(1)}, tmp_path / "dict.pth")
    assert "not a state dict (its 'lr' holds a float)" in fails(tmp_path / "dict.pth")
    torch.save(build_model("resnet18", 10), tmp_path / "module.pth")  # a whole pickled network
    assert "refused to load" in fails(tmp_path / "module.pth")
    (tmp_path / "cut.pth").write_bytes(weights_files["resnet18"].read_bytes()[:5000])
    assert "not a readable weights file" in fails(tmp_path / "cut.pth")
    assert "no such weights file" in fails(tmp_path / "nowhere.pth")


def test_head_first_trains_only_the_head_then_everything(make_config, weights_files, monkeypatch):
    seen = []  # (state dict, requires_grad by name, parameters in the optimizer), at each point

    class Recording(HeadFirst):
        def record(self, trainer, net) -> None:
            in_optimizer = sum(len(g["params"]) for opt in trainer.optimizers for g in opt.param_groups)
            seen.append(({k: v.detach().clone() for k, v in net.state_dict().items()},
                         {k: p.requires_grad for k, p in net.named_parameters()}, in_optimizer))

        def on_train_start(self, trainer, pl_module) -> None:
            super().on_train_start(trainer, pl_module)
            self.record(trainer, pl_module.net)

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.record(trainer, pl_module.net)

    monkeypatch.setattr(train, "HeadFirst", Recording)
    cfg = make_config(model="mobilenet_v3_small", weights_file=weights_files["mobilenet_v3_small"], max_epochs=2,
                      wandb_mode="disabled", prediction_samples=0, head_epochs=1)
    fit(cfg, _split(cfg))

    (start, grad0, n0), (epoch0, _, _), (epoch1, grad1, _) = seen
    head = [k for k in start if k.startswith("classifier.3.")]
    changed = {k for k in start if not torch.equal(start[k], epoch0[k])}
    assert changed == set(head)  # epoch 0: the head alone; BatchNorm statistics untouched too
    assert [k for k, g in grad0.items() if g] == head
    assert n0 == len(grad0)  # every parameter is in the optimizer from the start
    later = {k for k in start if not torch.equal(epoch0[k], epoch1[k])}
    body = [k for k in start if k not in head]
    assert len(later & set(body)) > 0.9 * len(body) and all(grad1.values())  # epoch 1: the whole network
