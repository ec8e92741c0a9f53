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
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from cloud_core.backends.base import tail_file
from contract.bundle import Bundle, TensorSpec

__all__ = [
    "TRITON_DTYPES",
    "ExportedModel",
    "export_triton",
    "render_config",
    "triton_model_name",
    "triton_model_version",
]

TRITON_DTYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64",
    "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "int16": "TYPE_INT16",
    "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL",
}


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


def _tensor(spec: TensorSpec, batched: bool) -> str:
    if spec.dtype not in TRITON_DTYPES:
        raise ValueError(f"tensor {spec.name!r} has dtype {spec.dtype} which Triton's "
                         f"onnxruntime backend does not take ({sorted(TRITON_DTYPES)})")
    dims = spec.shape[1:] if batched else spec.shape
    return (f'  {{\n    name: "{spec.name}"\n    data_type: {TRITON_DTYPES[spec.dtype]}\n'
            f"    dims: [ {', '.join(str(d) for d in dims)} ]\n  }}")


def render_config(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec], *,
                  max_batch: int, max_queue_delay_us: int, instances: int, kind: str,
                  digest: str) -> str:
    """The ``config.pbtxt`` text of one tail model."""
    batched = all(t.shape and t.shape[0] == -1 for t in [*inputs, *outputs])
    mbs = max_batch if batched else 0
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {mbs}",
        "version_policy: { all { } }",
        "input [\n" + ",\n".join(_tensor(t, batched) for t in inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor(t, batched) for t in outputs) + "\n]",
    ]
    if batched:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: "
                     f"{max_queue_delay_us}\n}}")
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]")
    lines.append(f'parameters {{\n  key: "tiersplit_digest"\n  value: {{ string_value: '
                 f'"{digest}" }}\n}}')
    return "\n".join(lines) + "\n"


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
