"""``export-triton``'s ``config.pbtxt`` through Triton's own protobuf schema: the text the
CLI writes parses into ``ModelConfig`` with exactly the fields the Triton Deployment
relies on (GPU instances, batching, one input per crossing tensor), every dtype of the
dtype table maps to its Triton type, and what the schema refuses fails the export."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb
from typer.testing import CliRunner

from cloud_core.triton_export import (
    build_config,
    parse_config_text,
    render_config,
    triton_data_type,
)
from contract import dtypes
from contract.bundle import TensorSpec
from tiersplit.cli import app
from tiersplit.devtools import bundles as test_bundles
from transport import keys


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> test_bundles.BuiltBundle:
    base = tmp_path_factory.mktemp("triton")
    secret, public = keys.generate("ed25519", base, "signing")
    root = base / "bundles"
    test_bundles.build_bundle(root, "cnn", "3", test_bundles.cnn(1),
                              keys.load_ed25519_private(secret))
    return test_bundles.load_built(root / "cnn" / "3", root, secret, public)


def test_cli_gpu_export_parses_with_tritons_schema(bundle, tmp_path: Path) -> None:
    out = tmp_path / "models"
    r = CliRunner().invoke(app, ["cloud", "export-triton", str(bundle.path), "--out", str(out),
                                 "--public-key", str(bundle.public_key), "--gpu",
                                 "--max-batch", "16", "--instances", "2",
                                 "--max-queue-delay-us", "750"])
    assert r.exit_code == 0, r.output
    tails = [c for c in bundle.manifest.cuts if not c.is_edge]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"cnn__{c.id}" for c in tails)
    for cut in tails:
        cfg = pb.ModelConfig()
        text_format.Parse((out / f"cnn__{cut.id}" / "config.pbtxt").read_text(), cfg)
        assert cfg.name == f"cnn__{cut.id}" and cfg.platform == "onnxruntime_onnx"
        assert cfg.max_batch_size == 16
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 750
        assert [(g.kind, g.count) for g in cfg.instance_group] == [
            (pb.ModelInstanceGroup.KIND_GPU, 2)]
        assert cfg.version_policy.WhichOneof("policy_choice") == "all"
        assert [(i.name, list(i.dims), i.data_type) for i in cfg.input] == [
            (t.name, t.shape[1:], pb.DataType.Value(dtypes.by_name(t.dtype).triton))
            for t in cut.tensors]
        assert [o.name for o in cfg.output] == [t.name for t in bundle.manifest.outputs]
        assert (out / f"cnn__{cut.id}" / "3" / "model.onnx").stat().st_size > 0


@pytest.mark.parametrize("dt", dtypes.DTYPES, ids=lambda d: d.name)
def test_every_dtype_of_the_table_has_its_triton_type(dt: dtypes.DType) -> None:
    assert pb.DataType.Name(triton_data_type(dt.name)) == dt.triton


def test_unknown_dtype_fails_the_export_naming_the_tensor() -> None:
    bad = TensorSpec(name="z", dtype="complex64", shape=[-1, 2])
    with pytest.raises(ValueError, match=r"tensor 'z'.*complex64"):
        render_config("m__c", [bad], [], max_batch=4, max_queue_delay_us=1, instances=1,
                      kind="KIND_CPU", digest="d")


def test_unbatched_shapes_have_no_dynamic_batching() -> None:
    cfg = build_config("m__c", [TensorSpec(name="x", dtype="int64", shape=[3, 4])],
                       [TensorSpec(name="y", dtype="bool", shape=[3])], max_batch=8,
                       max_queue_delay_us=100, instances=1, kind="KIND_CPU", digest="d")
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [3, 4] and cfg.input[0].data_type == pb.TYPE_INT64
    assert cfg.output[0].data_type == pb.TYPE_BOOL


def test_schema_refuses_what_triton_would() -> None:
    good = render_config("m__c", [TensorSpec(name="x", dtype="float32", shape=[-1, 2])],
                         [TensorSpec(name="y", dtype="float32", shape=[-1, 1])], max_batch=4,
                         max_queue_delay_us=1, instances=1, kind="KIND_CPU", digest="d")
    assert parse_config_text(good).parameters["tiersplit_digest"].string_value == "d"
    with pytest.raises(ValueError, match="not a valid Triton model configuration"):
        parse_config_text(good + "max_batch_sise: 3\n")
    with pytest.raises(ValueError, match="not a valid Triton model configuration"):
        parse_config_text(good.replace("TYPE_FP32", "TYPE_FP33", 1))
