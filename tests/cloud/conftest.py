"""Fixtures of the cloud core tests: one signed repository (mlp v1+v2, cnn v1) per session."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_core import CloudCore
from cloud_core.config import CloudConfig, parse_config
from contract.deadline import Deadline
from tiersplit.devtools import bundles as test_bundles
from transport import keys
from transport.messages import Reply, Request


@dataclass(frozen=True)
class Repo:
    root: Path
    public_key: Path
    secret_key: Path


@pytest.fixture(scope="session")
def cloud_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    base = tmp_path_factory.mktemp("cloud-repo")
    secret, public = keys.generate("ed25519", base / "keys", "signing")
    sk = keys.load_ed25519_private(secret)
    root = base / "bundles"
    test_bundles.build_bundle(root, "mlp", "1", test_bundles.mlp(1), sk)
    test_bundles.build_bundle(root, "mlp", "2", test_bundles.mlp(2), sk)
    test_bundles.build_bundle(root, "cnn", "1", test_bundles.cnn(3), sk)
    return Repo(root=root, public_key=public, secret_key=secret)


def config_for(repo: Repo, **over: Any) -> CloudConfig:
    """A config over ``repo`` loading every version, no HTTP, no links, unless overridden."""
    data: dict[str, Any] = {
        "repository": str(repo.root),
        "signing_public_key": str(repo.public_key),
        "models": [{"name": "mlp", "versions": ["all"]}, {"name": "cnn"}],
        "http": {"enabled": False},
        "admin": {"enabled": False, "port": 0},
        "batching": {"max_batch": 8, "max_queue_delay_ms": 5, "max_queue": 64},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    return parse_config(data)


class Inbox:
    """A real Responder for in-process tests: collects replies by request id."""

    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {}
        self._cond = threading.Condition()

    def send(self, reply: Reply) -> None:
        with self._cond:
            assert reply.request_id not in self.replies, "two replies for one request"
            self.replies[reply.request_id] = reply
            self._cond.notify_all()

    def wait(self, ids: list[str], timeout: float = 60.0) -> list[Reply]:
        end = time.monotonic() + timeout
        with self._cond:
            while not all(i in self.replies for i in ids):
                left = end - time.monotonic()
                assert left > 0, f"no reply for {[i for i in ids if i not in self.replies]}"
                self._cond.wait(left)
            return [self.replies[i] for i in ids]


_ids = itertools.count()


def make_request(lv_or_bundle: Any, cut: str, tensors: dict[str, np.ndarray], *,
                 deadline_s: float = 30.0, **over: Any) -> Request:
    b = getattr(lv_or_bundle, "bundle", lv_or_bundle)
    fields = {"request_id": f"r{next(_ids)}", "agent_id": "agent-1", "model": b.name,
              "version": b.version, "digest": b.digest, "cut": cut,
              "deadline": Deadline.after_ms(deadline_s * 1e3), "tensors": tensors}
    fields.update(over)
    return Request(**fields)


def wait_busy(core: Any, timeout: float = 30.0) -> None:
    """Block until a batch is executing (instead of sleeping and hoping)."""
    end = time.monotonic() + timeout
    while core.load().inflight < 1:
        assert time.monotonic() < end, "no batch started"
        time.sleep(0.005)


def queue_behind_a_batch(core: Any, n: int) -> tuple[Inbox, list[Request]]:
    """``n`` requests for ``mlp``'s cut ``h1`` handed to ``core`` (slowed by its
    ``debug.tail_delay_ms``), returned once the first batch is executing, so the rest
    wait in the queue."""
    lv = core.repository.active("mlp")
    inbox = Inbox()
    reqs = [make_request(lv, "h1", {"h1": np.ones((1, 32), np.float32)}) for _ in range(n)]
    for r in reqs:
        core.on_request(r, inbox)
    wait_busy(core)
    return inbox, reqs


def metric(core: Any, name: str, **labels: str) -> float:
    return core.metrics.registry.get_sample_value(name, labels) or 0.0


TRITON_SERVED = (("mlp", "2"), ("cnn", "1"))


@pytest.fixture(scope="session")
def triton_server(cloud_repo: Repo, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real Triton (PyTriton) serving the tails of mlp v2 and cnn v1; skips if unavailable.

    One version per Triton model: PyTriton names its per-instance sockets after the model
    instance, not the version, so two versions of one model collide inside PyTriton (a real
    Triton serves several version directories of one model fine).
    """
    from cloud_core.triton_export import export_triton
    from contract.bundle import Bundle
    from tiersplit.devtools.triton_local import TritonUnavailable, run_triton

    out = tmp_path_factory.mktemp("triton-repo")
    key = keys.load_ed25519_public(cloud_repo.public_key)
    for name, version in TRITON_SERVED:
        export_triton(Bundle.load(cloud_repo.root / name / version, key, role="cloud"), out,
                      max_batch=8, max_queue_delay_us=2000)
    try:
        with run_triton(out) as proc:
            yield proc
    except TritonUnavailable as e:
        print(f"SKIP triton: {e}")
        pytest.skip(f"real Triton unavailable: {e}")


@pytest.fixture
def core_factory(cloud_repo: Repo) -> Any:
    """Start in-process cores (no links) with config overrides; stopped after the test."""
    cores: list[CloudCore] = []

    def make(**over: Any) -> CloudCore:
        core = CloudCore(config_for(cloud_repo, **over), links=[])
        core.start()
        cores.append(core)
        return core

    yield make
    for c in cores:
        c.stop(grace=5)
