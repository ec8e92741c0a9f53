"""Real-size reference architectures in plain torch (seeded random weights).

torchvision's own definitions would do, but its wheel does not import beside the torch
this project pins; these are written out layer by layer at the published sizes, so the
zoo's latency and crossing-byte figures are those of the real networks. Accuracy on
trained weights is measured separately (``partitioner.minilm``): random weights never
produce the activation outliers that make trained transformers hard to quantize.

torch is imported inside each factory: importing this module costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["BERT_VOCAB", "TINY_VOCAB", "bert_base", "bert_tiny", "detector", "mobilenet_v2",
           "resnet50", "settle"]

BERT_VOCAB = 30522
TINY_VOCAB = 1000


def randomize_batchnorm(net: torch.nn.Module, seed: int) -> None:
    """Give BatchNorm layers plausible non-identity statistics (seeded)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.1, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.5, 1.0, generator=g)
                m.bias.uniform_(-0.1, 0.1, generator=g)


def settle(net: torch.nn.Module, shape: tuple[int, ...], seed: int,
           logit_std: float | None = 3.0) -> torch.nn.Module:
    """Make a random-weight network behave like a trained one at its outputs.

    Random BatchNorm statistics let activations drift until every input gives nearly the
    same logits (their spread across inputs can be 1e-6), and then top-1 agreement is a
    coin flip that says nothing about quantization. Running statistics are therefore
    measured on random inputs (data-dependent initialisation), and the last Linear layer
    is scaled so logits spread with ``logit_std`` across classes, as a confident
    classifier's do.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, *shape[1:], generator=g)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if bns:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the settling passes
        net.train()
        with torch.no_grad():
            for _ in range(2):
                net(x)
    net.eval()
    last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    if logit_std and last:
        with torch.no_grad():
            y = net(x)
            std = float(y.std(dim=1).mean()) if y.dim() == 2 else 0.0
            if std > 0:
                last[-1].weight.mul_(logit_std / std)
                last[-1].bias.mul_(logit_std / std)
    return net


def resnet50() -> torch.nn.Module:
    """ResNet-50 v1.5 (stride on the 3x3), 1000 classes."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            cout = width * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
                nn.ReLU(), nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skip = x if self.down is None else self.down(x)
            return torch.relu(self.body(x) + skip)

    torch.manual_seed(10)
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                               nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = width * 4
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))
    randomize_batchnorm(net, 11)
    return settle(net, (1, 3, 224, 224), 11)


def mobilenet_v2() -> torch.nn.Module:
    """MobileNetV2 (width 1.0), 1000 classes."""
    import torch
    from torch import nn

    def cbr(cin: int, cout: int, k: int, s: int, groups: int = 1, act: bool = True) -> list:
        out: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                                nn.BatchNorm2d(cout)]
        return [*out, nn.ReLU6()] if act else out

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = cin * expand
            self.use_res = stride == 1 and cin == cout
            body = cbr(cin, hidden, 1, 1) if expand != 1 else []
            body += cbr(hidden, hidden, 3, stride, groups=hidden) + cbr(hidden, cout, 1, 1,
                                                                       act=False)
            self.body = nn.Sequential(*body)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.body(x)
            return x + y if self.use_res else y

    torch.manual_seed(12)
    layers: list[nn.Module] = cbr(3, 32, 3, 2)
    cin = 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    net = nn.Sequential(*layers, *cbr(cin, 1280, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(1280, 1000))
    randomize_batchnorm(net, 13)
    return settle(net, (1, 3, 224, 224), 13)


def _bert(vocab: int, dim: int, layers: int, heads: int, ff: int, max_len: int,
          seed: int) -> torch.nn.Module:
    """Post-norm BERT encoder: (input_ids, attention_mask) -> mean-pooled embedding."""
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
            self.out = nn.Linear(dim, dim)
            self.ln1 = nn.LayerNorm(dim, eps=1e-12)
            self.ff = nn.Sequential(nn.Linear(dim, ff), nn.GELU(), nn.Linear(ff, dim))
            self.ln2 = nn.LayerNorm(dim, eps=1e-12)

        def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            b, s = x.shape[0], x.shape[1]
            dh = dim // heads

            def split(t: torch.Tensor) -> torch.Tensor:
                return t.view(b, s, heads, dh).transpose(1, 2)

            q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
            att = torch.softmax(q @ k.transpose(-2, -1) * dh ** -0.5 + bias, dim=-1)
            y = (att @ v).transpose(1, 2).reshape(b, s, dim)
            x = self.ln1(x + self.out(y))
            return self.ln2(x + self.ff(x))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Embedding(vocab, dim)
            self.positions = nn.Embedding(max_len, dim)
            self.ln = nn.LayerNorm(dim, eps=1e-12)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))

        def forward(self, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> torch.Tensor:
            pos = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
            x = self.ln(self.tokens(input_ids) + self.positions(pos))
            mask = attention_mask.to(x.dtype)
            bias = ((1.0 - mask) * -10000.0)[:, None, None, :]
            for layer in self.layers:
                x = layer(x, bias)
            m = mask.unsqueeze(-1)
            return (x * m).sum(1) / m.sum(1).clamp(min=1e-9)

    torch.manual_seed(seed)
    net = Encoder()
    for mod in net.modules():  # BERT's initialisation: N(0, 0.02)
        if isinstance(mod, (nn.Linear, nn.Embedding)):
            nn.init.normal_(mod.weight, std=0.02)
    return net


def bert_base() -> torch.nn.Module:
    """BERT-base sizes: 12 layers, 768 wide, 12 heads, 3072 feed-forward, 512 positions."""
    return _bert(BERT_VOCAB, 768, 12, 12, 3072, 512, seed=14)


def bert_tiny() -> torch.nn.Module:
    """The same architecture at test size: 2 layers, 64 wide, 4 heads, 128 positions."""
    return _bert(TINY_VOCAB, 64, 2, 4, 128, 128, seed=15)


def detector() -> torch.nn.Module:
    """A small single-shot detector: a strided CNN backbone and, at two scales, a head
    giving per-anchor boxes (4), class scores (20) and objectness; the outputs of both
    scales are concatenated: ``boxes (B, N, 4)``, ``scores (B, N, 20)``, ``objectness
    (B, N)``."""
    import torch
    from torch import nn

    anchors, classes = 3, 20

    def cbr(cin: int, cout: int, s: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, s, 1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU())

    class Head(nn.Module):
        def __init__(self, cin: int) -> None:
            super().__init__()
            self.conv = cbr(cin, cin, 1)
            self.out = nn.Conv2d(cin, anchors * (4 + classes + 1), 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.out(self.conv(x))  # (B, A*(25), H, W)
            b = y.shape[0]
            return y.permute(0, 2, 3, 1).reshape(b, -1, 4 + classes + 1)

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(cbr(3, 16, 2), cbr(16, 32, 2), cbr(32, 32, 1),
                                      cbr(32, 64, 2), cbr(64, 64, 1))
            self.c4 = nn.Sequential(cbr(64, 128, 2), cbr(128, 128, 1))
            self.c5 = nn.Sequential(cbr(128, 256, 2), cbr(256, 256, 1))
            self.h4, self.h5 = Head(128), Head(256)

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
            f4 = self.c4(self.stem(image))
            f5 = self.c5(f4)
            y = torch.cat([self.h4(f4), self.h5(f5)], dim=1)
            boxes = torch.sigmoid(y[..., :4])
            scores = torch.softmax(y[..., 4:4 + classes], dim=-1)
            return boxes, scores, torch.sigmoid(y[..., -1])

    torch.manual_seed(16)
    net = Detector()
    randomize_batchnorm(net, 17)
    return settle(net, (1, 3, 256, 256), 17, logit_std=None)
