"""torchvision networks for transfer learning: ``resnet18`` and ``mobilenet_v3_small``, each with
its classifier head sized for the dataset's classes.

The builders make randomly initialised networks: that is all rebuilding an exported model needs,
its weights being in model.pt. Starting weights are a separate step, ``load_start_weights``,
which ``cifar_lit.training.train.build_classifier`` takes for a run with ``--pretrained`` (torchvision's
published ImageNet weights through its weights API, downloaded once into the torch hub cache,
``$TORCH_HOME/hub/checkpoints``) or ``--weights-file PATH`` (a state dict saved from the same
torchvision network, for machines without internet).

The networks are torchvision's own modules, so their state dicts keep torchvision's layout
(``fc.weight``, ``classifier.3.weight``): an exported model.pt's ``state_dict`` loads into
``torchvision.models.resnet18(num_classes=k)`` as it is.

Why MobileNetV3-Small beside ResNet-18: it is the smallest backbone torchvision publishes
ImageNet weights for (2.5M parameters, 0.06 GFLOPs at 224x224, 67.7% top-1), about 30 times
cheaper than ResNet-18 (1.8 GFLOPs) and 7 times cheaper than EfficientNet-B0 (0.39 GFLOPs),
which matters on the CPUs this project trains on; ResNet-18 is the plain, well-understood one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cifar_lit.lifecycle.model_file import ModelFileError, safe_load
from cifar_lit.models import register

# The classifier layer each network's builder resizes, by its name inside the network.
HEADS = {"resnet18": "fc", "mobilenet_v3_small": "classifier.3"}


class WeightsError(ModelFileError):
    """Starting weights that cannot be had or used; one line that names the model or the file."""


def _build(name: str, num_classes: int) -> nn.Module:
    from torchvision.models import get_model

    net = get_model(name, weights=None, num_classes=num_classes)
    # Where the head is, for head-first fine-tuning (cifar_lit.training.module.HeadFirst) and for loading
    # starting weights without it; a plain string, so TorchScript keeps scripting the network.
    net.head_name = HEADS[name]
    return net


@register("resnet18")
def resnet18(num_classes: int) -> nn.Module:
    return _build("resnet18", num_classes)


@register("mobilenet_v3_small")
def mobilenet_v3_small(num_classes: int) -> nn.Module:
    return _build("mobilenet_v3_small", num_classes)


def published(name: str):
    """torchvision's recommended published weights (a ``WeightsEnum`` member) for ``name``."""
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def normalisation(name: str) -> tuple[list[float], list[float]]:
    """The per-channel mean and std the published weights were trained with (ImageNet's): the
    inputs a pretrained network expects. Read from the weights' own preprocessing; no download."""
    preset = published(name).transforms()
    return [float(m) for m in preset.mean], [float(s) for s in preset.std]


def load_start_weights(net: nn.Module, name: str, weights_file: Path | None = None) -> str:
    """Load starting weights into ``net`` (built by this module's ``name`` builder): the file's
    when ``weights_file`` is given, else the published ones. Returns what was loaded, in words."""
    if weights_file is not None:
        state, source = read_weights_file(Path(weights_file)), str(weights_file)
    else:
        state, source = download(name), f"torchvision's {published(name)}"
    return load_without_head(net, state, source, name)


def download(name: str) -> dict[str, torch.Tensor]:
    """The published weights' state dict, from the torch hub cache or downloaded into it."""
    weights = published(name)
    try:
        # What weights.get_state_dict() does, with torch.load's weights_only=True.
        return torch.hub.load_state_dict_from_url(
            weights.url, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except Exception as e:  # noqa: BLE001 - no network, a proxy, a full disk, a bad hash: one line
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise WeightsError(
            f"pretrained: could not download the published weights of {name} ({weights.url}): {reason}; "
            f"without internet, use --weights-file PATH, a state dict saved from torchvision's {name} where there is "
            f"(torch.save(torchvision.models.{name}(weights='DEFAULT').state_dict(), PATH))"
        ) from None


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (``torch.load(weights_only=True)``). Also accepted: a dict
    holding one under ``state_dict``, as this package's model.pt and Lightning checkpoints do
    (a checkpoint's ``net.`` prefix is dropped), so a run can start from an earlier model."""
    obj = safe_load(path, "weights file")
    if isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
        if obj and all(k.startswith("net.") for k in obj):
            obj = {k.removeprefix("net."): v for k, v in obj.items()}
    odd = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
    if odd is not None or not obj:
        what = f"its {odd!r} holds a {type(obj[odd]).__name__}" if odd is not None else "it is empty"
        raise WeightsError(f"{path}: not a state dict ({what}); save one with torch.save(model.state_dict(), PATH)")
    return obj


def load_without_head(net: nn.Module, state: dict[str, torch.Tensor], source: str, name: str) -> str:
    """Load ``state`` into ``net``: every weight but the head's must be there with its shape.

    The head (the classifier layer) is sized by the class count: weights for another count
    (ImageNet's 1000 classes, always, for the published ones) are left out and the head keeps
    its fresh initialisation, to be trained for this dataset's classes. A head of this run's
    shape (a file saved from a model of as many classes) loads with the rest."""
    own = net.state_dict()
    prefix = getattr(net, "head_name", HEADS.get(name, "")) + "."
    body = [k for k in own if not k.startswith(prefix)]
    missing = [k for k in body if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in body if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or reshaped:
        found = [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
        found += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
        if reshaped:
            k = reshaped[0]
            found.append(f"{len(reshaped)} of another shape (e.g. {k}: {tuple(state[k].shape)}, "
                         f"not {tuple(own[k].shape)})")
        raise WeightsError(f"{source}: not weights of torchvision's {name}: keys {'; '.join(found)}")
    head = [k for k in own if k.startswith(prefix)]
    with_head = all(k in state and state[k].shape == own[k].shape for k in head)
    net.load_state_dict({k: v for k, v in state.items() if with_head or not k.startswith(prefix)}, strict=with_head)
    return f"{source}, {'head included' if with_head else 'all but the head (another class count)'}"
