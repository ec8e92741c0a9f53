"""The CUDA backends: ORT's CUDA execution provider, torch on CUDA, Triton GPU instances.

Each GPU test checks that the tail really runs on the GPU and answers what the CPU
answers (fp32 on both sides; TF32 and kernel choice allow small differences), on single
samples and on a batch, through the backend and through a whole core. Without a GPU (or
without a CUDA build of the engine) they skip and say which one is missing;
``scripts/gpu_check.sh`` runs them with the CUDA benchmark on a GPU machine.

On every machine: asking for ``device: cuda`` where the engine has no CUDA is refused at
load with advice, never silently run on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud_core.backends import make_backend_factory
from cloud_core.config import BackendConfig
from cloud_core.errors import BackendError
from contract.bundle import Bundle
from tests.cloud.conftest import Inbox, Repo, make_request
from tiersplit.devtools import bundles as test_bundles
from transport import keys


def _ort_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


needs_ort_cuda = pytest.mark.skipif(
    not _ort_cuda(), reason="onnxruntime has no CUDAExecutionProvider here (needs "
    "onnxruntime-gpu and an NVIDIA GPU); run scripts/gpu_check.sh on a GPU machine")
needs_torch_cuda = pytest.mark.skipif(
    not _torch_cuda(), reason="torch sees no CUDA device here (CPU build or no NVIDIA GPU); "
    "run scripts/gpu_check.sh on a GPU machine")


@pytest.fixture(scope="module")
def wide_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    base = tmp_path_factory.mktemp("gpu-bundle")
    secret, public = keys.generate("ed25519", base / "keys", "signing")
    test_bundles.build_bundle(base / "bundles", "wide", "1", test_bundles.wide(3, 256, 3),
                              keys.load_ed25519_private(secret))
    return Bundle.load(base / "bundles" / "wide" / "1", keys.load_ed25519_public(public),
                       role="cloud")


def _feeds(bundle: Bundle, n: int) -> dict[str, np.ndarray]:
    spec = bundle.manifest.cut("h1").tensors[0]
    x = np.random.default_rng(n).standard_normal((n, *spec.sample_shape)).astype(np.float32)
    return {spec.name: x}


def _same_as_cpu(kind: str, bundle: Bundle) -> None:
    cut = bundle.manifest.cut("h1")
    gpu = make_backend_factory(BackendConfig(kind=kind, device="cuda"))()
    cpu = make_backend_factory(BackendConfig(kind=kind, device="cpu"))()
    gpu.load(bundle, cut)
    cpu.load(bundle, cut)
    try:
        assert gpu.device == "cuda"
        for n in (1, 7, 32):
            feeds = _feeds(bundle, n)
            got, want = gpu.run(feeds), cpu.run(feeds)
            assert set(got) == set(want)
            for name, arr in want.items():
                assert got[name].shape == arr.shape
                np.testing.assert_allclose(got[name], arr, rtol=2e-2, atol=2e-3)
    finally:
        gpu.close()
        cpu.close()


@needs_ort_cuda
def test_ort_cuda_backend_matches_cpu(wide_bundle: Bundle) -> None:
    _same_as_cpu("onnxruntime", wide_bundle)


@needs_torch_cuda
def test_torch_cuda_backend_matches_cpu(wide_bundle: Bundle) -> None:
    _same_as_cpu("torch", wide_bundle)


@pytest.mark.parametrize("kind", ["onnxruntime", "torch"])
def test_core_on_cuda_batches_and_answers(kind: str, cloud_repo: Repo, core_factory) -> None:
    """A whole core with ``device: cuda``: concurrent requests are batched on the GPU and
    each gets its own rows back (checked against the CPU core)."""
    if not (_ort_cuda() if kind == "onnxruntime" else _torch_cuda()):
        pytest.skip(f"{kind} has no CUDA here; run scripts/gpu_check.sh on a GPU machine")
    gpu = core_factory(backend={"kind": kind, "device": "cuda"},
                       batching={"max_batch": 8, "max_queue_delay_ms": 20})
    cpu = core_factory(backend={"kind": kind, "device": "cpu"})
    lv_gpu, lv_cpu = gpu.repository.active("mlp"), cpu.repository.active("mlp")
    assert lv_gpu.tails["h1"].device == "cuda"
    spec = lv_gpu.cut("h1").tensors[0]
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, *spec.sample_shape)).astype(np.float32) for _ in range(8)]
    replies = []
    for core, lv in ((gpu, lv_gpu), (cpu, lv_cpu)):
        inbox = Inbox()
        reqs = [make_request(lv, "h1", {spec.name: x}) for x in xs]
        for r in reqs:
            core.on_request(r, inbox)
        replies.append(inbox.wait([r.request_id for r in reqs]))
    for g, c in zip(*replies, strict=True):
        assert g.ok and c.ok, (g.error, c.error)
        for name, arr in c.tensors.items():
            np.testing.assert_allclose(g.tensors[name], arr, rtol=2e-2, atol=2e-3)


def test_cuda_without_cuda_is_refused(wide_bundle: Bundle) -> None:
    """``device: cuda`` on an engine without CUDA fails at load with advice (runs on
    every machine without a GPU; on a GPU machine the CUDA tests above run instead)."""
    cut = wide_bundle.manifest.cut("h1")
    if not _ort_cuda():
        backend = make_backend_factory(BackendConfig(kind="onnxruntime", device="cuda"))()
        with pytest.raises(BackendError, match="CUDAExecutionProvider"):
            backend.load(wide_bundle, cut)
    if not _torch_cuda():
        with pytest.raises(BackendError, match="no CUDA device"):
            make_backend_factory(BackendConfig(kind="torch", device="cuda"))()
    if _ort_cuda() and _torch_cuda():
        pytest.skip("both engines have CUDA here: nothing to refuse")


def test_triton_gpu_instance_group(wide_bundle: Bundle, tmp_path: Path) -> None:
    """Triton with a KIND_GPU instance group answers like the CPU backend."""
    if not _torch_cuda():
        pytest.skip("no CUDA device here; run scripts/gpu_check.sh on a GPU machine")
    import tritonclient.grpc as grpcclient

    from cloud_core.triton_export import export_triton
    from tiersplit.devtools.triton_local import TritonUnavailable, run_triton

    export_triton(wide_bundle, tmp_path / "triton", max_batch=8, kind="KIND_GPU")
    feeds = _feeds(wide_bundle, 4)
    cpu = make_backend_factory(BackendConfig(kind="onnxruntime", device="cpu"))()
    cpu.load(wide_bundle, wide_bundle.manifest.cut("h1"))
    want = cpu.run(feeds)
    try:
        with run_triton(tmp_path / "triton", device="cuda") as tp:
            client = grpcclient.InferenceServerClient(url=tp.grpc_url)
            (name, x), = feeds.items()
            inp = grpcclient.InferInput(name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            out_name = next(iter(want))
            r = client.infer(f"{wide_bundle.name}__h1", [inp], model_version="1",
                             outputs=[grpcclient.InferRequestedOutput(out_name)])
            np.testing.assert_allclose(r.as_numpy(out_name), want[out_name], rtol=2e-2,
                                       atol=2e-3)
            client.close()
    except TritonUnavailable as e:
        pytest.skip(f"real Triton unavailable: {e}")
