"""The model repository: verification on load, versions side by side, unload, pin and
rollback at run time, and what requests see after each."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cloud_core import CloudCore, RepositoryError
from cloud_core.backends import make_backend_factory
from cloud_core.config import BackendConfig
from cloud_core.repository import Repository, version_key
from tests.cloud.conftest import Inbox, make_request, metric, wait_busy
from tiersplit.devtools import bundles as test_bundles
from transport import keys
from transport.messages import Status


def _repo(root: Path, key=None, allow_unsigned=False) -> Repository:
    return Repository(root, key, allow_unsigned=allow_unsigned,
                      backend_factory=make_backend_factory(BackendConfig(device="cpu")))


def _copy(src: Path, dst_root: Path, name: str, version: str) -> Path:
    dst = dst_root / name / version
    shutil.copytree(src, dst)
    for p in [dst, *dst.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return dst


def test_version_order() -> None:
    assert sorted(["10", "2", "b", "1", "a"], key=version_key) == ["1", "2", "10", "a", "b"]


def test_tampered_tail_is_refused(cloud_repo, tmp_path: Path) -> None:
    d = _copy(cloud_repo.root / "mlp" / "1", tmp_path, "mlp", "1")
    with open(d / "tail-h1.onnx", "ab") as f:
        f.write(b"\0")
    repo = _repo(tmp_path, keys.load_ed25519_public(cloud_repo.public_key))
    with pytest.raises(RepositoryError, match=r"tail-h1\.onnx sha256"):
        repo.load("mlp", "1")
    assert repo.all_loaded() == []


def test_wrong_signing_key_and_unsigned_are_refused(cloud_repo, tmp_path: Path) -> None:
    _, other_pub = keys.generate("ed25519", tmp_path / "k", "other")
    repo = _repo(cloud_repo.root, keys.load_ed25519_public(other_pub))
    with pytest.raises(RepositoryError, match="bad signature"):
        repo.load("mlp", "1")
    unsigned_root = tmp_path / "u"
    test_bundles.build_bundle(unsigned_root, "mlp", "1", test_bundles.mlp(1), None)
    strict = _repo(unsigned_root, keys.load_ed25519_public(cloud_repo.public_key))
    with pytest.raises(RepositoryError, match="unsigned"):
        strict.load("mlp", "1")
    lax = _repo(unsigned_root, keys.load_ed25519_public(cloud_repo.public_key),
                allow_unsigned=True)
    assert not lax.load("mlp", "1").bundle.signed


def test_missing_version_names_what_is_on_disk(cloud_repo) -> None:
    repo = _repo(cloud_repo.root, keys.load_ed25519_public(cloud_repo.public_key))
    with pytest.raises(RepositoryError, match=r"versions on disk: \['1', '2'\]"):
        repo.load("mlp", "7")
    assert repo.expand("mlp", ["latest"]) == ["2"]
    assert repo.expand("mlp", ["all"]) == ["1", "2"]


def test_torch_backend_refuses_unsupported_ops_at_load(tmp_path: Path) -> None:
    import onnx
    import torch
    from onnx import TensorProto, helper

    from cloud_core.backends.onnx_to_torch import OnnxTorchProgram, UnsupportedOnnx

    g = helper.make_graph([helper.make_node("Hardmax", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(UnsupportedOnnx, match=r"\['Hardmax'\].*backend onnxruntime"):
        OnnxTorchProgram(path, torch.device("cpu"))


class TestRunTimeAdmin:
    """Load/unload/pin/rollback on a running core, seen through requests."""

    def _ask(self, core: CloudCore, name: str, version: str, digest: str):
        inbox = Inbox()
        lv = core.repository.active(name)
        req = make_request(lv, "h1", {"h1": np.ones((1, 32), np.float32)}, version=version,
                           digest=digest)
        core.on_request(req, inbox)
        return inbox.wait([req.request_id])[0]

    def test_unload_then_requests_get_version_mismatch(self, core_factory) -> None:
        core = core_factory()
        d2 = next(m["digest"] for m in core.models() if m["version"] == "2")
        assert self._ask(core, "mlp", "2", d2).status == Status.OK
        core.unload_model("mlp", "2")
        reply = self._ask(core, "mlp", "2", d2)
        assert reply.status == Status.VERSION_MISMATCH
        assert "versions loaded: 1" in reply.error and "active: 1" in reply.error
        assert metric(core, "tiersplit_cloud_models_loaded") == 2
        core.load_model("mlp", "2")
        assert self._ask(core, "mlp", "2", d2).status == Status.OK

    def test_pin_keeps_version_active_and_rollback_unloads_current(self, core_factory) -> None:
        core = core_factory(models=[{"name": "mlp", "versions": ["1"]}])
        core.load_model("mlp", "2")
        assert core.repository.active("mlp").version == "2"  # newest becomes active
        core.pin_model("mlp", "1")
        core.unload_model("mlp", "2")
        core.load_model("mlp", "2")
        assert core.repository.active("mlp").version == "1"  # pinned stays
        core.pin_model("mlp", "2")
        assert core.rollback_model("mlp") == "1"
        listed = {m["version"]: m for m in core.models()}
        assert set(listed) == {"1"} and listed["1"]["active"] and listed["1"]["pinned"]

    def test_rollback_without_history_loads_older_from_disk(self, core_factory) -> None:
        core = core_factory(models=[{"name": "mlp", "versions": ["2"]}])
        assert core.rollback_model("mlp") == "1"
        assert [m["version"] for m in core.models()] == ["1"]
        with pytest.raises(RepositoryError, match="no version"):
            core.rollback_model("mlp")

    def test_unload_fails_queued_requests_unavailable(self, core_factory) -> None:
        core = core_factory(batching={"max_batch": 1}, executor_workers=1,
                            debug={"tail_delay_ms": 300})
        lv = core.repository.resolve("mlp", "1", next(
            m["digest"] for m in core.models() if m["version"] == "1" and m["name"] == "mlp"))
        inbox = Inbox()
        reqs = [make_request(lv, "h1", {"h1": np.ones((1, 32), np.float32)}) for _ in range(4)]
        for r in reqs:
            core.on_request(r, inbox)
        wait_busy(core)  # the first batch is running, the rest wait in the queue
        core.unload_model("mlp", "1")
        statuses = [r.status for r in inbox.wait([r.request_id for r in reqs])]
        assert statuses[0] == Status.OK
        assert Status.UNAVAILABLE in statuses
