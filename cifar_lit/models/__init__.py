"""Model registry: networks are plain ``nn.Module``s, built by name.

A new model registers itself with ``@register("name")`` on a builder ``(num_classes) -> nn.Module``
in its own module, and adds one line to ``CATALOGUE`` (name -> module); it is then selectable with
``--model name`` and listed in ``--help``; nothing else in the pipeline changes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

Builder = Callable[[int], "nn.Module"]
MODELS: dict[str, Builder] = {}

# Which module defines each network. The names are known here without importing torch, so the
# CLI can list and check them in milliseconds; the module is imported when the network is built.
CATALOGUE: dict[str, str] = {
    "seed_cnn": "cifar_lit.models.seed_cnn",
    "airnet_s": "cifar_lit.models.airnet",
    "airnet_m": "cifar_lit.models.airnet",
    "airnet94": "cifar_lit.models.airnet",
    "resnet18": "cifar_lit.models.torchvision_nets",
    "mobilenet_v3_small": "cifar_lit.models.torchvision_nets",
}


def register(name: str) -> Callable[[Builder], Builder]:
    def add(builder: Builder) -> Builder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = builder
        return builder

    return add


def known_models() -> list[str]:
    """Every selectable name: the catalogue's and any registered at run time."""
    return sorted(set(CATALOGUE) | set(MODELS))


def check_input_size(net: nn.Module, name: str, size: int) -> None:
    """Every network here takes square images of any side from 16 px (their last pooling layers
    are adaptive); below what one can take, a one-line ``DataError`` naming ``image_size``
    instead of a shape error in the first training step."""
    import torch

    from cifar_lit.data.common import DataError

    mode = net.training
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(2, 3, size, size))  # eval: BatchNorm statistics untouched
    except RuntimeError as e:
        raise DataError(f"image_size: {size} px is too small for model {name} "
                        f"({' '.join(str(e).split())[:160]})") from None
    finally:
        net.train(mode)


def build_model(name: str, num_classes: int) -> nn.Module:
    if name not in MODELS and name in CATALOGUE:
        importlib.import_module(CATALOGUE[name])
    if name not in MODELS:
        raise ValueError(f"model: unknown model {name!r}; known: {', '.join(known_models())}")
    return MODELS[name](num_classes)


# Networks that differ only in size form a family and share its registry name
# (``<dataset>-<family>``): a champion of one width meets a challenger of another at the gate,
# as the time budget may size the network differently from one night to the next.
FAMILIES = {"airnet_s": "airnet", "airnet_m": "airnet", "airnet94": "airnet"}


def family(name: str) -> str:
    """The family of network ``name`` (itself when it has none).

    >>> family("airnet94"), family("resnet18")
    ('airnet', 'resnet18')
    """
    return FAMILIES.get(name, name)
