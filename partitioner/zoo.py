"""Reference models the project builds itself (no hub downloads).

One registry serves tests, the demo and the benchmarks, so a figure in the README and a
test assertion talk about the same network. ``digits_cnn`` is trained (in seconds, on
scikit-learn's bundled digits) so accuracy numbers are real; the other models carry
seeded random weights, which is enough for speed and cut bytes.

torch is imported only inside :meth:`ZooModel.build`: listing the models, drawing example
inputs and the held-out digits split need numpy and scikit-learn alone.

``transformer_encoder`` takes float token embeddings ``(batch, 32, 64)`` rather than
int64 token ids: the embedding lookup is a table read that gains nothing from a split,
and float inputs keep calibration and the int8 codec uniform across the zoo.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from partitioner import real_models
from partitioner.errors import UnknownModel
from partitioner.inputs import InputDecl, example_feeds

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

__all__ = ["ZooModel", "cache_dir", "get", "names"]

# Bump when an architecture or the training recipe changes: old cached weights are then
# ignored rather than loaded into the wrong shapes.
_DIGITS_RECIPE = "v1"
_DIGITS_SPLIT_SEED = 0
_DIGITS_TEST_FRACTION = 0.2


def cache_dir() -> Path:
    """Where trained zoo weights live (``$TIERSPLIT_CACHE_DIR`` or ``~/.cache/tiersplit``)."""
    base = os.environ.get("TIERSPLIT_CACHE_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "tiersplit"
    return root / "zoo"


@dataclass(frozen=True)
class ZooModel:
    """One reference model.

    Attributes:
        name: registry name (``zoo:<name>`` on the command line).
        input_shapes: shapes with batch 1 as the first dimension.
        input_names: ONNX input names used when exporting.
        task: ``"classification"`` (top-1 agreement is reported) or ``"other"``.
        description: one line for listings.
        input_dtypes: per input dtype (default float32 for all).
        dynamic: per input, the non-batch dims that vary per request ``((axis, name),)``.
        vocab: rows of the token embedding table, for inputs named ``*ids``.
        size: "small" (tests run it) or "real" (real-size network: bench and users).
    """

    name: str
    input_shapes: list[tuple[int, ...]]
    input_names: list[str]
    task: str
    description: str
    _factory: Callable[[], Any] = field(repr=False)
    _examples: Callable[[int, int], list[np.ndarray]] | None = field(default=None, repr=False)
    input_dtypes: tuple[str, ...] = ()
    dynamic: tuple[tuple[tuple[int, str], ...], ...] = ()
    vocab: int | None = None
    size: str = "small"

    def decls(self) -> list[InputDecl]:
        """The input declarations (names, example shapes, dtypes, dynamic dims)."""
        return [InputDecl(n, tuple(s),
                          self.input_dtypes[i] if self.input_dtypes else "float32",
                          self.dynamic[i] if self.dynamic else ())
                for i, (n, s) in enumerate(zip(self.input_names, self.input_shapes,
                                               strict=True))]

    def build(self) -> torch.nn.Module:
        """The model in eval mode (deterministic weights; digits_cnn is trained once)."""
        model = self._factory()
        model.eval()
        return model

    def example_inputs(self, batch: int, seed: int = 0) -> list[np.ndarray]:
        """Representative inputs of batch ``batch`` (real digits for digits_cnn; token ids
        within the vocabulary and 0/1 masks for text models)."""
        if self._examples is not None:
            return self._examples(batch, seed)
        if self.input_dtypes:
            vocab = {n: self.vocab for n in self.input_names if self.vocab and "ids" in n}
            feeds = example_feeds(self.decls(), batch, seed, vocab)
            return [feeds[n] for n in self.input_names]
        rng = np.random.default_rng(seed)
        return [rng.standard_normal((batch, *s[1:])).astype(np.float32)
                for s in self.input_shapes]

    def heldout(self) -> tuple[np.ndarray, np.ndarray]:
        """The held-back split ``(X, y)`` never used for training or calibration."""
        if self.name != "digits_cnn":
            raise UnknownModel(f"zoo model {self.name!r} has no held-out data set "
                               "(only digits_cnn is trained)")
        _, _, x_test, y_test = _digits_split()
        return x_test, y_test


# --------------------------------------------------------------------------- digits
def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=_DIGITS_TEST_FRACTION, random_state=_DIGITS_SPLIT_SEED, stratify=y)
    return x_tr, y_tr, x_te, y_te


def _digits_examples(batch: int, seed: int) -> list[np.ndarray]:
    # Calibration and examples come from the training split only, so the held-out
    # agreement figure is honest.
    x_tr, _, _, _ = _digits_split()
    idx = np.random.default_rng(seed).choice(len(x_tr), size=batch, replace=batch > len(x_tr))
    return [np.ascontiguousarray(x_tr[idx])]


def _digits_net() -> torch.nn.Module:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )


def _digits_cnn() -> torch.nn.Module:
    import torch

    path = cache_dir() / f"digits_cnn-{_DIGITS_RECIPE}.pt"
    model = _digits_net()
    if path.exists():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model
        except (RuntimeError, OSError, EOFError) as e:
            log.warning("cached digits_cnn weights at %s unusable (%s); retraining", path, e)
    _train_digits(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Temp file + rename: parallel test processes may train at once; the last rename wins
    # and every reader sees a complete file.
    fd, tmp = tempfile.mkstemp(prefix=".digits_cnn-", suffix=".pt", dir=path.parent)
    os.close(fd)
    try:
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return model


def _train_digits(model: torch.nn.Module) -> None:
    import torch

    x_tr, y_tr, x_te, y_te = _digits_split()
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    for p in model.parameters():  # re-draw from the seeded generator: independent of history
        if p.dim() > 1:
            torch.nn.init.kaiming_uniform_(p, a=5 ** 0.5, generator=g)
        else:
            torch.nn.init.uniform_(p, -0.05, 0.05, generator=g)
    xs, ys = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _epoch in range(25):
        perm = torch.randperm(len(xs), generator=g)
        for i in range(0, len(xs), 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xs[b]), ys[b])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean()
    log.info("trained digits_cnn: held-out accuracy %.3f", acc)


# --------------------------------------------------------------------------- resnet
def _resnet_like() -> torch.nn.Module:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.b1(self.c1(x)))
            y = self.b2(self.c2(y))
            skip = x if self.down is None else self.down(x)
            return torch.relu(y + skip)

    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        Block(16, 16, 1), Block(16, 16, 1),
        Block(16, 32, 2), Block(32, 32, 1),
        Block(32, 64, 2), Block(64, 64, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )
    real_models.randomize_batchnorm(net, 2)
    return real_models.settle(net, (1, 3, 64, 64), 1)


# --------------------------------------------------------------------------- mobilenet
def _mobilenet_like() -> torch.nn.Module:
    import torch
    from torch import nn

    def cbr(cin: int, cout: int, k: int, s: int, groups: int = 1, act: bool = True) -> list:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups,
                                             bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU6())
        return layers

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = cin * expand
            self.use_res = stride == 1 and cin == cout
            self.body = nn.Sequential(
                *cbr(cin, hidden, 1, 1),  # expand
                *cbr(hidden, hidden, 3, stride, groups=hidden),  # depthwise
                *cbr(hidden, cout, 1, 1, act=False),  # linear bottleneck
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.body(x)
            return x + y if self.use_res else y

    torch.manual_seed(3)
    net = nn.Sequential(
        *cbr(3, 16, 3, 2),
        InvertedResidual(16, 16, 1, 4),
        InvertedResidual(16, 24, 2, 4), InvertedResidual(24, 24, 1, 4),
        InvertedResidual(24, 32, 2, 4), InvertedResidual(32, 32, 1, 4),
        InvertedResidual(32, 48, 1, 4),
        *cbr(48, 128, 1, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )
    real_models.randomize_batchnorm(net, 2)
    return real_models.settle(net, (1, 3, 64, 64), 3)


# --------------------------------------------------------------------------- transformer
_SEQ, _DIM, _HEADS, _LAYERS = 32, 64, 4, 2


def _transformer_encoder() -> torch.nn.Module:
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(_DIM)
            self.qkv = nn.Linear(_DIM, 3 * _DIM)
            self.proj = nn.Linear(_DIM, _DIM)
            self.ln2 = nn.LayerNorm(_DIM)
            self.ff = nn.Sequential(nn.Linear(_DIM, 2 * _DIM), nn.GELU(),
                                    nn.Linear(2 * _DIM, _DIM))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            dh = _DIM // _HEADS
            # -1 for the batch keeps reshape targets constant in the exported graph, so
            # no shape-computation tensors ever cross a cut.
            q, k, v = self.qkv(self.ln1(x)).reshape(-1, _SEQ, 3, _HEADS, dh).unbind(2)
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            att = torch.softmax(q @ k.transpose(-2, -1) * dh ** -0.5, dim=-1)
            y = (att @ v).transpose(1, 2).reshape(-1, _SEQ, _DIM)
            x = x + self.proj(y)
            return x + self.ff(self.ln2(x))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pos = nn.Parameter(torch.randn(1, _SEQ, _DIM) * 0.1)
            self.layers = nn.Sequential(*[Layer() for _ in range(_LAYERS)])
            self.ln = nn.LayerNorm(_DIM)
            self.head = nn.Linear(_DIM, 10)

        def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
            x = self.layers(embeddings + self.pos)
            return self.head(self.ln(x).mean(dim=1))

    torch.manual_seed(4)
    return real_models.settle(Encoder(), (1, _SEQ, _DIM), 4)


_REGISTRY: dict[str, ZooModel] = {
    m.name: m
    for m in [
        ZooModel("digits_cnn", [(1, 1, 8, 8)], ["image"], "classification",
                 "small CNN trained on scikit-learn's 8x8 digits", _digits_cnn,
                 _digits_examples),
        ZooModel("resnet_like", [(1, 3, 64, 64)], ["image"], "classification",
                 "ResNet-style CNN, basic blocks with skips (random weights)", _resnet_like),
        ZooModel("mobilenet_like", [(1, 3, 64, 64)], ["image"], "classification",
                 "MobileNetV2-style: depthwise-separable inverted residuals (random weights)",
                 _mobilenet_like),
        ZooModel("transformer_encoder", [(1, _SEQ, _DIM)], ["embeddings"], "classification",
                 "2-layer pre-norm transformer encoder on float token embeddings",
                 _transformer_encoder),
        ZooModel("resnet50", [(1, 3, 224, 224)], ["image"], "classification",
                 "ResNet-50 at 224 px (bottleneck blocks 3-4-6-3, 25.6M params, random "
                 "weights)", real_models.resnet50, size="real"),
        ZooModel("mobilenet_v2", [(1, 3, 224, 224)], ["image"], "classification",
                 "MobileNetV2 at 224 px (3.5M params, random weights)", real_models.mobilenet_v2,
                 size="real"),
        ZooModel("bert_base", [(1, 128), (1, 128)], ["input_ids", "attention_mask"], "other",
                 "BERT-base-like encoder: 12 layers, 768 wide, int64 ids + mask, dynamic "
                 "sequence length, mean-pooled embedding (random weights)",
                 real_models.bert_base, input_dtypes=("int64", "int64"),
                 dynamic=(((1, "seq"),), ((1, "seq"),)), vocab=real_models.BERT_VOCAB,
                 size="real"),
        ZooModel("bert_tiny", [(1, 32), (1, 32)], ["input_ids", "attention_mask"], "other",
                 "BERT-like encoder, 2 layers, 64 wide: int64 ids + mask, dynamic sequence "
                 "length (random weights)", real_models.bert_tiny,
                 input_dtypes=("int64", "int64"), dynamic=(((1, "seq"),), ((1, "seq"),)),
                 vocab=real_models.TINY_VOCAB),
        ZooModel("detector", [(1, 3, 256, 256)], ["image"], "other",
                 "small single-shot detector: boxes, scores and objectness outputs at two "
                 "scales (random weights)", real_models.detector, size="real"),
    ]
}


def names(size: str | None = None) -> list[str]:
    """Registered zoo model names (only those of ``size`` "small"/"real" when given)."""
    return [n for n, m in _REGISTRY.items() if size is None or m.size == size]


def get(name: str) -> ZooModel:
    """Look a model up by name.

    Raises:
        UnknownModel: with the list of known names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModel(f"unknown zoo model {name!r}; known: {', '.join(_REGISTRY)}") from None
