"""Model registry: networks are plain ``nn.Module``s, built by name.

A new model registers itself with ``@register("name")`` on a builder ``(num_classes) -> nn.Module``
and is then selectable with ``--model name``; nothing else in the pipeline changes.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

Builder = Callable[[int], nn.Module]
MODELS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    def add(builder: Builder) -> Builder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = builder
        return builder

    return add


def build_model(name: str, num_classes: int) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"model: unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes)


# Importing a model module registers it.
from cifar_lit.models import airnet, seed_cnn  # noqa: E402,F401
