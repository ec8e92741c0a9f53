"""The zoo registry: names, shapes, determinism, the held-out digits split."""

from __future__ import annotations

import numpy as np
import pytest

from partitioner import zoo
from partitioner.errors import UnknownModel


def test_names_and_lookup() -> None:
    assert zoo.names("small") == ["digits_cnn", "resnet_like", "mobilenet_like",
                                  "transformer_encoder", "bert_tiny"]
    assert zoo.names("real") == ["resnet50", "mobilenet_v2", "bert_base", "detector"]
    with pytest.raises(UnknownModel, match="known: digits_cnn"):
        zoo.get("resnet_big")


@pytest.mark.parametrize("name", zoo.names())
def test_example_inputs_respect_dtype_and_are_seeded(name: str) -> None:
    m = zoo.get(name)
    a, b, c = m.example_inputs(3, seed=0), m.example_inputs(3, seed=0), m.example_inputs(3, 1)
    assert [x.shape for x in a] == [(3, *s[1:]) for s in m.input_shapes]
    assert [x.dtype.name for x in a] == [d.dtype for d in m.decls()]
    for d, x in zip(m.decls(), a, strict=True):
        if "ids" in d.name:
            assert x.min() >= 0 and x.max() < m.vocab
        if "mask" in d.name:
            assert set(np.unique(x)) <= {0, 1} and (x[:, 0] == 1).all()
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_heldout_digits_is_disjoint_from_examples() -> None:
    m = zoo.get("digits_cnn")
    x, y = m.heldout()
    assert x.shape[1:] == (1, 8, 8) and len(x) == len(y) >= 300
    assert set(np.unique(y)) == set(range(10))
    train = m.example_inputs(200, seed=0)[0].reshape(200, -1)
    held = {r.tobytes() for r in x.reshape(len(x), -1)}
    assert sum(r.tobytes() in held for r in train) < 5  # a few digits images repeat exactly
    with pytest.raises(UnknownModel):
        zoo.get("resnet_like").heldout()


def test_digits_cnn_is_trained_cached_and_deterministic() -> None:
    import torch

    m = zoo.get("digits_cnn")
    net = m.build()
    assert not net.training
    assert list(zoo.cache_dir().glob("digits_cnn-*.pt"))
    x, y = m.heldout()
    with torch.no_grad():
        acc = (net(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert acc > 0.9
    again = m.build()
    for p, q in zip(net.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", ["resnet_like", "mobilenet_like", "transformer_encoder"])
def test_random_weight_models_are_deterministic(name: str) -> None:
    import torch

    m = zoo.get(name)
    x = torch.from_numpy(m.example_inputs(2)[0])
    with torch.no_grad():
        assert torch.equal(m.build()(x), m.build()(x))
