"""A user model as a ``package.module:callable`` (``tests.partitioner.user_models:make``).

Two inputs, a concatenation, a residual skip and two outputs (features are produced before
the logits): every cut of it crosses several tensors, and deep cuts pass a model output
through the tail.
"""

from __future__ import annotations

import torch
from torch import nn

INPUT_SHAPES = [(1, 3, 16, 16), (1, 2, 16, 16)]


class TwoInputNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rgb = nn.Conv2d(3, 8, 3, padding=1)
        self.depth = nn.Conv2d(2, 8, 3, padding=1)
        self.mix = nn.Conv2d(16, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.feat = nn.Linear(24, 32)
        self.cls = nn.Linear(32, 5)

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = torch.cat([torch.relu(self.rgb(rgb)), torch.relu(self.depth(depth))], dim=1)
        x = torch.relu(x + self.mix(x))  # skip around the mixing conv
        x = torch.relu(self.down(x)).mean(dim=(2, 3))
        features = torch.tanh(self.feat(x))
        return self.cls(features), features


def make() -> nn.Module:
    torch.manual_seed(5)
    return TwoInputNet().eval()


def broken() -> nn.Module:
    raise RuntimeError("weights file missing")
