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


class TinyText(nn.Module):
    """Token ids + attention mask -> masked mean of a two-layer MLP over embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 16)
        self.ff = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.out = nn.Linear(16, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.emb(input_ids)
        x = x + self.ff(x)
        m = attention_mask.unsqueeze(-1).to(x.dtype)
        return self.out((x * m).sum(1) / m.sum(1).clamp(min=1.0))


def text() -> nn.Module:
    torch.manual_seed(6)
    return TinyText().eval()


def raising_metric(reference, actual) -> float:
    raise ZeroDivisionError("metric bug")


def mean_cosine(reference, actual) -> float:
    import numpy as np

    r, a = reference[0], actual[0]
    return float(((r * a).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(a, axis=1))
                  ).mean())
