"""Graph analysis: topological order, live sets, DAG-aware cuts, validation of any cut."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from partitioner import load
from partitioner.errors import GraphError
from partitioner.graph import analyze, candidate_cuts, make_cut, validate_cut
from tests.partitioner.conftest import USER_MODEL
from tests.partitioner.user_models import INPUT_SHAPES


@pytest.fixture(scope="module")
def resnet():
    return analyze(load.load("zoo:resnet_like", None).model)


@pytest.fixture(scope="module")
def user():
    return analyze(load.load(USER_MODEL, INPUT_SHAPES).model)


def test_topological_order_and_live_sets(resnet) -> None:
    info = resnet
    seen = set(info.inputs)
    for node in info.nodes:
        assert set(node.inputs) <= seen, node.name
        seen.update(node.outputs)
    assert info.live[0] == info.inputs
    assert info.live[-1] == info.outputs
    for p, live in enumerate(info.live):
        for t in live:  # crossing: produced before p, needed at or after p
            ti = info.tensors[t]
            assert ti.producer is None or ti.producer < p
            assert ti.is_output or any(c >= p for c in ti.consumers)


def test_shapes_bytes_and_macs(resnet) -> None:
    info = resnet
    assert info.tensors["image"].shape == (-1, 3, 64, 64)
    assert info.tensors["image"].bytes == 3 * 64 * 64 * 4
    stem = info.nodes[0]
    assert stem.op_type == "Conv"
    # 16 output channels of 32x32, each a 3x3x3 dot product
    assert stem.macs == 16 * 32 * 32 * 27
    assert info.total_macs > 20e6


def test_candidates_include_cloud_and_edge_and_shrink(resnet) -> None:
    cuts = candidate_cuts(resnet, 6)
    assert cuts[0].id == "cloud" and cuts[0].tensors == resnet.inputs
    assert cuts[-1].id == "edge" and cuts[-1].tensors == () and cuts[-1].bytes == 0
    assert len(cuts) == 6
    splits = cuts[1:-1]
    assert [c.depth for c in splits] == sorted({c.depth for c in splits})
    assert all(a.bytes > b.bytes for a, b in itertools.pairwise(splits))
    for c in splits:  # each is a valid cut on its own terms
        assert make_cut(resnet, c.tensors).head_nodes == c.head_nodes
    with pytest.raises(ValueError):
        candidate_cuts(resnet, 1)
    assert [c.id for c in candidate_cuts(resnet, 2)] == ["cloud", "edge"]


def test_cut_inside_a_residual_block_crosses_skip_and_branch(resnet) -> None:
    info = resnet
    # position right after the first block's first conv: the skip input is still live
    adds = [n for n in info.nodes if n.op_type == "Add"]
    first_add = adds[0]
    p = first_add.index  # head = everything before the Add
    crossing = info.live[p]
    assert len(crossing) == 2 and set(crossing) == set(first_add.inputs)
    head = validate_cut(info, crossing)
    assert first_add.index not in head
    with pytest.raises(GraphError, match="also needs"):
        validate_cut(info, [crossing[1]])  # the branch alone leaves the skip behind


def test_validate_rejects_unknown_superfluous_and_non_batch(resnet) -> None:
    info = resnet
    with pytest.raises(GraphError, match="not activation tensors"):
        validate_cut(info, ["nope"])
    good = list(info.live[10])
    extra = next(t for t in info.live[3] if t not in good)
    with pytest.raises(GraphError):
        validate_cut(info, [*good, extra])


def test_two_input_dag(user) -> None:
    info = user
    assert info.inputs == ("rgb", "depth")
    assert info.outputs == ("output0", "output1")
    cuts = candidate_cuts(info, 8)
    assert cuts[0].tensors == ("rgb", "depth")
    # a cut right after both input convs, before the concat: two tensors cross
    cat = next(n for n in info.nodes if n.op_type == "Concat")
    both = validate_cut(info, cat.inputs)
    assert all(info.nodes[i].op_type in ("Conv", "Relu") for i in both)
    # the first input alone is not a cut: the depth branch must cross too
    with pytest.raises(GraphError):
        validate_cut(info, cat.inputs[:1])
    # a deep cut crossing the features output and the logits' input
    feats = info.tensors["output1"]
    cut = make_cut(info, ["output1"])
    assert cut.tensors == ("output1",) and cut.bytes == feats.bytes == 32 * 4
    assert np.isclose(cut.head_macs + cut.tail_macs, info.total_macs)


def test_privacy_floor_drops_cloud_and_shallow_cuts(resnet) -> None:
    cuts = candidate_cuts(resnet, 5, min_depth=10)
    assert "cloud" not in [c.id for c in cuts]
    assert cuts[-1].id == "edge" and len(cuts) == 5
    assert all(c.depth >= 10 for c in cuts)
    with pytest.raises(ValueError):
        candidate_cuts(resnet, 4, min_depth=-1)


def test_dynamo_exporter_output_is_analysable_and_splits_exactly() -> None:
    """The fallback exporter (used when the TorchScript one fails) yields a usable graph."""
    from partitioner import ortutil
    from partitioner.split import head_model, run_split, tail_model
    from tests.partitioner.user_models import make

    model = load.export(make(), INPUT_SHAPES, exporter="dynamo")
    info = analyze(model)
    assert info.opset >= 17 and info.inputs == ("rgb", "depth")
    feeds = ortutil.random_feeds(ortutil.input_specs(info.model), 3, seed=1)
    ref = ortutil.session(info.model).run(None, feeds)
    for cut in candidate_cuts(info, 5)[1:-1]:
        got = run_split(ortutil.session(head_model(info, cut)),
                        ortutil.session(tail_model(info, cut)), feeds)
        for r, g in zip(ref, got, strict=True):
            assert np.abs(r - g).max() <= 1e-4 * max(1.0, np.abs(r).max())
    with pytest.raises(ValueError):
        load.export(make(), INPUT_SHAPES, exporter="onnxscript")
