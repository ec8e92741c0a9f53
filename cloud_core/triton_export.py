"""Write a Triton model repository from a bundle: one Triton model per cut tail.

Layout (Triton's own)::

    REPO/<model>__<cut>/config.pbtxt
    REPO/<model>__<cut>/<triton version>/model.onnx

``config.pbtxt`` declares ``platform: "onnxruntime_onnx"``, the crossing tensors as inputs
and the model outputs from the manifest (batch dimension left to ``max_batch_size``),
``dynamic_batching`` and an ``instance_group``, and records the bundle digest as a
parameter so an operator can tell which bundle a Triton model came from. The names are
what the ``triton`` backend asks Triton for. Exporting a second bundle version of the same
model adds a version directory and serves all versions (``version_policy: all``).

The configuration is built as Triton's own protobuf message
(``tritonclient.grpc.model_config_pb2.ModelConfig``) and written with
``google.protobuf.text_format``, then parsed back with the same schema before anything is
written, so a field Triton does not know or a malformed value fails the export instead of
the Triton server's model load. Dtypes come from the one dtype table, :mod:`contract.dtypes`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_core.backends.base import tail_file
from contract import dtypes
from contract.bundle import Bundle, TensorSpec

__all__ = [
    "ExportedModel",
    "build_config",
    "export_triton",
    "parse_config_text",
    "render_config",
    "triton_data_type",
    "triton_model_name",
    "triton_model_version",
]


def triton_model_name(model: str, cut: str) -> str:
    """Triton model name of the tail of ``cut``: ``<model>__<cut>``."""
    return f"{model}__{cut}"


def triton_model_version(version: str) -> int:
    """Triton versions are positive integers: the bundle version when it is one, else 1."""
    return int(version) if version.isdigit() and int(version) > 0 else 1


@dataclass(frozen=True)
class ExportedModel:
    name: str
    version: int
    path: Path


def _pb() -> Any:
    # tritonclient.grpc pulls in grpc; only exporting needs it, not the names above.
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def triton_data_type(dtype: str) -> int:
    """The ``DataType`` enum value of a manifest dtype name (``float32`` -> ``TYPE_FP32``).

    Raises:
        ValueError: a dtype the dtype table or Triton's schema does not know.
    """
    pb = _pb()
    try:
        return int(pb.DataType.Value(dtypes.by_name(dtype).triton))
    except dtypes.UnknownDType as e:
        raise ValueError(f"cannot export to Triton: {e}") from None
    except ValueError:
        raise ValueError(f"dtype {dtype} has no Triton data type in this tritonclient's "
                         "schema") from None


def _tensor(msg: Any, spec: TensorSpec, batched: bool) -> None:
    msg.name = spec.name
    try:
        msg.data_type = triton_data_type(spec.dtype)
    except ValueError as e:
        raise ValueError(f"tensor {spec.name!r}: {e}") from None
    msg.dims.extend(spec.shape[1:] if batched else spec.shape)


def build_config(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec], *,
                 max_batch: int, max_queue_delay_us: int, instances: int, kind: str,
                 digest: str) -> Any:
    """The ``ModelConfig`` protobuf message of one tail model.

    The batch dimension goes to ``max_batch_size`` (with dynamic batching) only when every
    tensor has a leading ``-1``; otherwise the shapes are declared whole and Triton does
    not batch.
    """
    pb = _pb()
    batched = all(t.shape and t.shape[0] == -1 for t in [*inputs, *outputs])
    cfg = pb.ModelConfig(name=name, platform="onnxruntime_onnx",
                         max_batch_size=max_batch if batched else 0)
    cfg.version_policy.all.SetInParent()
    for spec in inputs:
        _tensor(cfg.input.add(), spec, batched)
    for spec in outputs:
        _tensor(cfg.output.add(), spec, batched)
    if batched:
        cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    cfg.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.Kind.Value(kind))
    cfg.parameters["tiersplit_digest"].string_value = digest
    return cfg


def parse_config_text(text: str) -> Any:
    """Parse ``config.pbtxt`` text with Triton's schema.

    Raises:
        ValueError: text that is not a valid ``ModelConfig`` (unknown field, bad enum...).
    """
    from google.protobuf import text_format

    cfg = _pb().ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as e:
        raise ValueError(f"not a valid Triton model configuration: {e}") from None
    return cfg


def render_config(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec], *,
                  max_batch: int, max_queue_delay_us: int, instances: int, kind: str,
                  digest: str) -> str:
    """The ``config.pbtxt`` text of one tail model, checked by parsing it back."""
    from google.protobuf import text_format

    cfg = build_config(name, inputs, outputs, max_batch=max_batch,
                       max_queue_delay_us=max_queue_delay_us, instances=instances, kind=kind,
                       digest=digest)
    text = text_format.MessageToString(cfg)
    if parse_config_text(text) != cfg:
        raise ValueError(f"config of {name} does not survive a text round trip")
    return text


def export_triton(bundle: Bundle, out: Path, *, max_batch: int = 16,
                  max_queue_delay_us: int = 2000, instances: int = 1, kind: str = "KIND_CPU",
                  version: int | None = None) -> list[ExportedModel]:
    """Write (or extend) a Triton model repository with every cloud-runnable tail.

    Args:
        bundle: a verified bundle (load it with ``role="cloud"``).
        out: repository root; created if missing.
        max_batch: ``max_batch_size``; match the cloud core's ``batching.max_batch``.
        max_queue_delay_us: ``dynamic_batching.max_queue_delay_microseconds``.
        instances: ``instance_group.count`` per tail.
        kind: ``KIND_CPU`` or ``KIND_GPU``.
        version: Triton version directory; default from the bundle version.

    Raises:
        ValueError: a version directory that already exists (Triton versions are immutable
            like bundles), or a dtype Triton cannot serve.
    """
    if kind not in ("KIND_CPU", "KIND_GPU"):
        raise ValueError(f"instance kind must be KIND_CPU or KIND_GPU, not {kind!r}")
    v = version if version is not None else triton_model_version(bundle.version)
    m = bundle.manifest
    exported = []
    for cut in m.cuts:
        if cut.is_edge:
            continue
        name = triton_model_name(m.name, cut.id)
        model_dir = Path(out) / name
        vdir = model_dir / str(v)
        if vdir.exists():
            raise ValueError(f"{vdir} already exists; pass --version N for another "
                             "Triton version or export to a fresh --out")
        text = render_config(name, cut.tensors, m.outputs, max_batch=max_batch,
                             max_queue_delay_us=max_queue_delay_us, instances=instances,
                             kind=kind, digest=bundle.digest)
        vdir.mkdir(parents=True)
        shutil.copyfile(tail_file(bundle, cut), vdir / "model.onnx")
        (model_dir / "config.pbtxt").write_text(text)
        exported.append(ExportedModel(name=name, version=v, path=model_dir))
    return exported
