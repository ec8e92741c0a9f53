"""A small real stack for the deployment tests: one ``tiersplit cloud serve`` started from
the rendered ConfigMap's ``cloud.yaml`` (paths and addresses moved to loopback and a
scratch directory), real ``tiersplit edge run`` agents in front of it, and a real
Prometheus scraping both every second."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tiersplit.devtools import bundles as test_bundles
from tiersplit.devtools.services import Service, tiersplit_cmd
from transport import keys

MODEL = "mlp"
#: Edge agents and the cut each one is fixed to (so both cuts carry traffic).
AGENTS = {"edge-1": "h1", "edge-2": "h2"}
PROBE_AGENT = "probe"  # an allow-listed direct client that sends bad requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(httpx.HTTPError):
            if pred():
                return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Fleet:
    """Signed bundle repository and Curve keys for the core and its agents."""

    root: Path
    repo: Path
    signing_pub: Path
    cloud_secret: Path
    cloud_public: Path
    allowed: Path

    @classmethod
    def make(cls, root: Path) -> Fleet:
        kdir = root / "keys"
        kdir.mkdir(parents=True)
        sk_path, pub = keys.generate("ed25519", kdir, "signing")
        repo = root / "bundles"
        test_bundles.build_bundle(repo, MODEL, "1", test_bundles.mlp(1),
                                  keys.load_ed25519_private(sk_path))
        secret, public = keys.generate("curve", kdir, "cloud")
        allowed = kdir / "agents"
        allowed.mkdir()
        for agent in [*AGENTS, PROBE_AGENT]:
            keys.generate("curve", kdir, agent)
            shutil.copy(kdir / f"{agent}.pub", allowed / f"{agent}.pub")
        return cls(root, repo, pub, secret, public, allowed)

    def agent_key(self, agent: str) -> Path:
        return self.root / "keys" / f"{agent}.key"


def local_cloud_config(rendered: dict[str, Any], fleet: Fleet) -> dict[str, Any]:
    """The pod's ``cloud.yaml`` with its paths moved into ``fleet`` and its listeners on
    free loopback ports; every other setting (batching, backend, grace...) as deployed."""
    doc = dict(rendered)
    doc["repository"] = str(fleet.repo)
    doc["signing_public_key"] = str(fleet.signing_pub)
    doc["models"] = [{"name": MODEL, "versions": ["latest"]}]
    doc["transports"] = [dict(t, endpoints=["tcp://127.0.0.1:0"],
                              secret_key=str(fleet.cloud_secret),
                              allowed_keys_dir=str(fleet.allowed))
                         for t in rendered["transports"] if t["kind"] == "zmq"]
    token = fleet.root / "admin.token"
    keys.write_secret(token, b"t0ken-for-tests")
    doc["http"] = dict(rendered["http"], host="127.0.0.1", port=0)
    doc["admin"] = dict(rendered.get("admin", {}), host="127.0.0.1", port=0, token_file=str(token))
    doc["backend"] = dict(rendered.get("backend", {}), device="cpu", threads=1)
    return doc


def edge_config(agent: str, cut: str, fleet: Fleet, zmq_endpoint: str) -> dict[str, Any]:
    return {
        "agent_id": agent,
        "bundle": {"path": str(fleet.repo / MODEL / "1"), "public_key": str(fleet.signing_pub)},
        "endpoints": [{"name": "core-0", "region": "eu", "link": {
            "kind": "zmq", "endpoint": zmq_endpoint, "secret_key": str(fleet.agent_key(agent)),
            "server_public_key": str(fleet.cloud_public)}}],
        "api": {"port": 0},
        "runtime": {"workers": 2, "warmup_runs": 1, "measure_runs": 2},
        "policy": {"fixed_cut": cut, "probe_interval_s": 0.5, "explore_fraction": 0.0},
        "deadlines": {"default_ms": 5000},
        "codec": "raw",
    }


def start_service(name: str, argv: list[str], log: Path) -> Service:
    return Service(name, argv, log_path=log).start(timeout=180)


def start_cloud(work: Path, doc: dict[str, Any]) -> Service:
    path = work / "cloud.yaml"
    path.write_text(yaml.safe_dump(doc))
    return start_service("cloud", tiersplit_cmd("cloud", "serve", "--config", str(path)),
                         work / "cloud.log")


def start_agent(work: Path, agent: str, doc: dict[str, Any]) -> Service:
    path = work / f"{agent}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return start_service(agent, tiersplit_cmd("edge", "run", "--config", str(path),
                                              "--port", "0"), work / f"{agent}.log")


def hostport(url: str) -> str:
    return url.split("://", 1)[1].rstrip("/")


@contextlib.contextmanager
def prometheus(work: Path, jobs: dict[str, list[str]]) -> Iterator[str]:
    """A real Prometheus scraping ``jobs`` (job name -> host:port targets) every second;
    yields its base URL."""
    exe = shutil.which("prometheus") or "/usr/bin/prometheus"
    port = free_port()
    cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
           "scrape_configs": [{"job_name": job, "scrape_interval": "1s",
                               "static_configs": [{"targets": targets}]}
                              for job, targets in jobs.items()]}
    (work / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    log = (work / "prometheus.log").open("w")
    proc = subprocess.Popen([exe, f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
                             "--storage.tsdb.retention.time=1h"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is None
                   and httpx.get(f"{url}/-/ready", timeout=5).status_code == 200,
                   120, "prometheus to get ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    """An instant PromQL query through Prometheus's HTTP API; raises on a query error."""
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=60)
    body = r.json()
    assert body.get("status") == "success", f"{expr}\n-> {body.get('error', r.text)}"
    return body["data"]["result"]
