"""Real cloud cores for the edge tests: `tiersplit cloud serve` subprocesses with Curve
keys, waited on through their READY line and killed by PID."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tiersplit.devtools.services import Service, tiersplit_cmd
from transport import keys


@dataclass
class Keyring:
    """A cloud Curve keypair, one agent's keypair and the cloud's allow-list dir."""

    dir: Path
    cloud_secret: Path
    cloud_public: Path
    agent_secret: Path
    agent_public: Path
    allowed: Path
    agent_id: str

    @classmethod
    def create(cls, d: Path, agent_id: str = "edge-test") -> Keyring:
        d.mkdir(parents=True, exist_ok=True)
        cs, cp = keys.generate("curve", d, "cloud")
        ask, apk = keys.generate("curve", d, agent_id)
        allowed = d / "agents"
        allowed.mkdir()
        shutil.copy(apk, allowed / f"{agent_id}.pub")
        return cls(d, cs, cp, ask, apk, allowed, agent_id)

    def client_link(self, endpoint: str, **extra: Any) -> dict[str, Any]:
        link = {"kind": "zmq", "endpoint": endpoint, "secret_key": str(self.agent_secret),
                "server_public_key": str(self.cloud_public), "heartbeat_ivl_ms": 300,
                "heartbeat_timeout_ms": 1000, "heartbeat_ttl_ms": 2000}
        link.update(extra)
        return link


@dataclass
class CloudProc:
    svc: Service
    zmq: str
    http: str
    log: Path

    @property
    def port(self) -> int:
        return int(self.zmq.rsplit(":", 1)[1])

    def kill(self) -> None:
        self.svc.kill()

    def stop(self) -> None:
        self.svc.stop(grace=15)


def start_cloud(work: Path, repo: Path, signing_pub: Path, ring: Keyring, model: str,
                name: str = "cloud", **overrides: Any) -> CloudProc:
    """Start `tiersplit cloud serve` and wait for its READY line."""
    work.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {
        "repository": str(repo),
        "signing_public_key": str(signing_pub),
        "models": [{"name": model}],
        "transports": [{"kind": "zmq", "endpoints": ["tcp://127.0.0.1:0"],
                        "secret_key": str(ring.cloud_secret),
                        "allowed_keys_dir": str(ring.allowed),
                        "heartbeat_ivl_ms": 300, "heartbeat_timeout_ms": 1000,
                        "heartbeat_ttl_ms": 2000}],
        "batching": {"max_batch": 8, "max_queue_delay_ms": 0.5},
        "backend": {"kind": "onnxruntime", "device": "cpu", "threads": 1},
        "executor_workers": 1,
        "http": {"port": 0},
        "admin": {"port": 0},
        "grace_s": 2,
    }
    cfg.update(overrides)
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = work / f"{name}.log"
    svc = Service(name, tiersplit_cmd("cloud", "serve", "--config", str(path)),
                  log_path=log).start(timeout=120)
    zmq_ep = svc.ready.get("zmq", "tcp://127.0.0.1:0").split(",")[0]
    return CloudProc(svc, zmq_ep, svc.ready.get("http", ""), log)
