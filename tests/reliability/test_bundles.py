"""Bundles that must not run, and versions that must not mix.

A bit-flipped file, a head or tail swapped in from another version, an unsigned manifest
and a manifest signed with another key are refused at load, with a clear error, by the
cloud (its repository, ``tiersplit cloud serve`` and the admin load API) and by the edge
(``load_edge_bundle``, the agent). A request naming a bundle digest the core does not
serve gets VERSION_MISMATCH, never outputs of another version; with two versions loaded
each request runs on exactly the version it names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from cloud_core import Repository
from cloud_core.backends import make_backend_factory
from cloud_core.config import BackendConfig
from cloud_core.errors import RepositoryError
from contract.bundle import MANIFEST, SIGNATURE, Bundle
from contract.deadline import Deadline
from edge_agent import BundleRefused
from edge_agent.runtime import load_edge_bundle
from tests.reliability.conftest import MODEL_A, OUTPUT
from tests.reliability.fleet import (
    Ledger,
    agent_config,
    cloud_doc,
    cosine,
    start_cloud,
)
from transport import keys
from transport.config import ZmqClientConfig
from transport.messages import Request
from transport.zmq import ZmqClientLink

pytestmark = [pytest.mark.integration]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in [dst, *dst.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return dst


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _resign(path: Path, secret: Path) -> None:
    sk = keys.load_ed25519_private(secret)
    (path / SIGNATURE).write_bytes(sk.sign((path / MANIFEST).read_bytes()))


def _tamper(kind: str, repo, d: Path, other_key: Path) -> None:
    v2 = repo.path(MODEL_A, "2")
    if kind == "bit_flip_tail":
        _flip(d / "tail-k2.onnx")
    elif kind == "bit_flip_head":
        _flip(d / "head-k2.int8.onnx")
    elif kind == "bit_flip_full":
        _flip(d / "full.int8.onnx")
    elif kind == "bit_flip_manifest":
        _flip(d / MANIFEST)
    elif kind == "swapped_tail":
        shutil.copy(v2 / "tail-k2.onnx", d / "tail-k2.onnx")
    elif kind == "swapped_head":
        shutil.copy(v2 / "head-k2.int8.onnx", d / "head-k2.int8.onnx")
    elif kind == "swapped_signature":
        shutil.copy(v2 / SIGNATURE, d / SIGNATURE)
    elif kind == "unsigned":
        (d / SIGNATURE).unlink()
    elif kind == "wrongly_signed":
        _resign(d, other_key)
    else:
        raise AssertionError(kind)


# what a clear error says, per kind (both tiers word it through contract.bundle)
CLEAR = {"bit_flip_tail": "tampered", "bit_flip_head": "tampered", "bit_flip_full": "tampered",
         "bit_flip_manifest": "bad signature", "swapped_tail": "tampered",
         "swapped_head": "tampered", "swapped_signature": "bad signature",
         "unsigned": "unsigned", "wrongly_signed": "bad signature"}


@pytest.fixture(scope="module")
def other_key(tmp_path_factory) -> Path:
    secret, _ = keys.generate("ed25519", tmp_path_factory.mktemp("other"), "other")
    return secret


@pytest.mark.parametrize("kind", sorted(CLEAR))
def test_tampered_bundle_refused_at_load_by_both_tiers(kind, tmp_path, repo, other_key) -> None:
    root = tmp_path / "repo"
    d = _copy(repo.path(MODEL_A, "1"), root / MODEL_A / "1")
    _tamper(kind, repo, d, other_key)
    pk = keys.load_ed25519_public(repo.public_key)
    loaded: list[str] = []
    r = Repository(root, pk, allow_unsigned=False,
                   backend_factory=make_backend_factory(BackendConfig(device="cpu")))
    try:
        with pytest.raises(RepositoryError, match=CLEAR[kind]) as ei:
            loaded.append(r.load(MODEL_A, "1").digest)
        assert str(d) in str(ei.value)
        assert not r.all_loaded()
    finally:
        r.close()
    with pytest.raises(BundleRefused, match=CLEAR[kind]):
        load_edge_bundle(d, repo.public_key, allow_unsigned=False)
    assert not loaded


def test_cloud_serve_and_admin_load_refuse_tampered_bundles(tmp_path, repo, fleet, clouds,
                                                           other_key) -> None:
    root = tmp_path / "repo"
    _copy(repo.path(MODEL_A, "1"), root / MODEL_A / "1")
    bad = _copy(repo.path(MODEL_A, "1"), root / MODEL_A / "3")
    _flip(bad / "tail-k4.onnx")
    # 1) `tiersplit cloud serve` configured with the tampered version: one line, exit 2
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(cloud_doc(root, repo.public_key, fleet,
                                            [{"name": MODEL_A, "versions": ["3"]}])))
    p = subprocess.run([sys.executable, "-m", "tiersplit.cli", "cloud", "serve", "--config",
                        str(cfg)], capture_output=True, text=True, timeout=120)
    err = " ".join(p.stderr.split())
    assert p.returncode == 2 and "READY" not in p.stdout, (p.returncode, p.stdout, err[-500:])
    assert "refusing bundle" in err and "tampered" in err and "Traceback" not in err
    # 2) a running core asked to load it at run time: 4xx, and it keeps serving v1
    c = start_cloud(tmp_path / "c", cloud_doc(root, repo.public_key, fleet,
                                              [{"name": MODEL_A, "versions": ["1"]}]))
    clouds.append(c)
    r = c.admin_call("POST", f"/v1/models/{MODEL_A}/versions/3/load")
    assert 400 <= r.status_code < 500 and "tampered" in r.json()["error"], r.text
    models = c.admin_call("GET", "/v1/models").json()["models"]
    assert [(m["name"], m["version"]) for m in models] == [(MODEL_A, "1")]
    assert httpx.get(c.http + "/health/ready", timeout=10).status_code == 200


def _link(c, fleet) -> ZmqClientLink:
    link = ZmqClientLink(ZmqClientConfig(
        endpoint=c.zmq, secret_key=fleet.secret("a0"), server_public_key=fleet.cloud_public),
        "a0")
    assert link.wait_connected(10)
    return link


def test_versions_never_mix_and_stale_digest_gets_an_error(tmp_path, repo, samples, fleet,
                                                           clouds) -> None:
    c = start_cloud(tmp_path / "c", cloud_doc(repo.root, repo.public_key, fleet, [MODEL_A]))
    clouds.append(c)
    pk = keys.load_ed25519_public(repo.public_key)
    b1 = Bundle.load(repo.path(MODEL_A, "1"), pk, role="cloud")
    b2 = Bundle.load(repo.path(MODEL_A, "2"), pk, role="cloud")
    ref = {b1.digest: samples.refs[(MODEL_A, "1")], b2.digest: samples.refs[(MODEL_A, "2")]}
    other = {b1.digest: b2.digest, b2.digest: b1.digest}
    link = _link(c, fleet)
    ledger = Ledger()

    def send(tag: str, bundles: list[Bundle], n: int) -> dict[str, tuple[str, int]]:
        futs, meta = {}, {}
        for i in range(n):  # interleaved, concurrently in flight: batches form
            b = bundles[i % len(bundles)]
            rid = f"{tag}-{i}"
            ledger.send(rid)
            meta[rid] = (b.digest, i % 4)
            futs[rid] = link.submit(Request(
                request_id=rid, agent_id="a0", model=b.name, version=b.version,
                digest=b.digest, cut="cloud", deadline=Deadline.after_ms(30_000),
                tensors=samples.inputs[i % 4]))
        for rid, fut in futs.items():
            rep = fut.result(60)
            if rep.ok:
                ledger.result(rid, rep)
            else:
                ledger.error(rid, f"{rep.status.name}: {rep.error}")
        return meta

    try:
        meta = send("mix", [b1, b2], 48)
        for rid, (digest, i) in meta.items():
            out = ledger.results[rid].tensors[OUTPUT]
            assert cosine(out, ref[digest][i]) > 0.999, rid
            assert cosine(out, ref[other[digest]][i]) < 0.99, rid  # really different models
        assert c.metrics().total("tiersplit_cloud_batch_size_count") < 48  # batching happened
        # unload v1 at run time: v1's digest is now stale
        c.admin(f"/v1/models/{MODEL_A}/versions/1/unload")
        work0 = c.backend_work()
        m0 = c.metrics()
        stale = send("stale", [b1], 8)
        assert c.backend_work() == work0, "compute spent on a stale digest"
        fresh = send("fresh", [b2], 4)
    finally:
        link.close()
    ledger.settle(errors_allowed=True)
    assert set(ledger.errors) == set(stale)
    for rid in stale:
        assert ledger.errors[rid].startswith("VERSION_MISMATCH"), ledger.errors[rid]
        assert b1.digest[:12] in ledger.errors[rid]  # names what was asked for
    for rid, (digest, i) in fresh.items():
        assert cosine(ledger.results[rid].tensors[OUTPUT], ref[digest][i]) > 0.999
    m1 = c.metrics()
    assert (m1.total("tiersplit_cloud_rejected_total", reason="version_mismatch")
            - m0.total("tiersplit_cloud_rejected_total", reason="version_mismatch")) == 8
    assert (m1.total("tiersplit_cloud_requests_total", status="VERSION_MISMATCH")
            - m0.total("tiersplit_cloud_requests_total", status="VERSION_MISMATCH")) == 8
    assert (m1.total("tiersplit_cloud_requests_total", status="OK")
            - m0.total("tiersplit_cloud_requests_total", status="OK")) == 4


def test_agent_on_an_old_version_finishes_locally_never_with_new_outputs(
        tmp_path, repo, samples, fleet, clouds, make_agent) -> None:
    c = start_cloud(tmp_path / "c", cloud_doc(repo.root, repo.public_key, fleet,
                                              [{"name": MODEL_A, "versions": ["2"]}]))
    clouds.append(c)
    agent = make_agent(agent_config("a0", repo.path(MODEL_A, "1"), repo.public_key,
                                    {"c": fleet.zmq_link("a0", c.zmq)},
                                    policy={"fixed_cut": "k2"}))
    assert agent.wait_connected(10)
    work0 = c.backend_work()
    ledger = Ledger()
    check: Callable = samples.checker(MODEL_A, "1")
    for i in range(12):
        rid = f"old-{i}"
        ledger.send(rid)
        res = agent.infer(samples.inputs[i % 4], request_id=rid).result(60)
        check(i % 4, res)
        assert cosine(res.outputs[OUTPUT], samples.refs[(MODEL_A, "2")][i % 4]) < 0.99
        assert res.path in ("fallback", "device") and res.endpoint is None
        ledger.result(rid, res)
    ledger.settle()
    assert c.backend_work() == work0
    st = agent.status()
    refused = c.metrics().total("tiersplit_cloud_rejected_total", reason="version_mismatch")
    assert refused >= 1 and st["endpoints"]["c"]["failed"] == refused
    assert "version_mismatch" in st["endpoints"]["c"]["last_error"]
