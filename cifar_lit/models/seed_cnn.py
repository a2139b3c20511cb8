"""The tutorial's network: four 3x3 convs (3->32->32->64->64), a 2x2 max-pool after the 2nd and
4th, then FC 1600->512->128->classes, returning log-probabilities (NLL loss).

At 32x32, the tutorial's size, it is the tutorial's network exactly. At any other size (16 px
and up) an adaptive average pool brings the last feature maps to the 5x5 they have at 32 px, so
the FC layers, the parameter count and the state dict stay the same; the tutorial's flatten of
the whole map would grow fc1 with the square of the side (5.5M weights at 64 px, 14M at 96)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cifar_lit.models import register


class SeedCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.conv2 = nn.Conv2d(32, 32, 3)
        self.conv3 = nn.Conv2d(32, 64, 3)
        self.conv4 = nn.Conv2d(64, 64, 3)
        self.pool1 = nn.MaxPool2d(2)
        self.pool2 = nn.MaxPool2d(2)
        # 32 -> 30 -> 28 -> pool 14 -> 12 -> 10 -> pool 5: 64 * 5 * 5 features. At 32 px the
        # adaptive pool is the identity (each output averages one input); no parameters.
        self.pool3 = nn.AdaptiveAvgPool2d(5)
        self.fc1 = nn.Linear(64 * 5 * 5, 512)
        self.fc2 = nn.Linear(512, 128)
        self.fc3 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = self.pool1(F.relu(self.conv2(x)))
        x = F.relu(self.conv3(x))
        x = self.pool2(F.relu(self.conv4(x)))
        x = torch.flatten(self.pool3(x), 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return F.log_softmax(self.fc3(x), dim=1)


@register("seed_cnn")
def seed_cnn(num_classes: int) -> nn.Module:
    return SeedCNN(num_classes)
