"""Building blocks of the reliability suite: keys for a fleet, real cloud cores as child
processes (``tiersplit cloud serve``), in-process edge agents, Prometheus scraping, and
the ledger every test settles its accounting with.

The ledger is the point of the suite: each request an application sends is recorded
before it is sent and settled exactly once, with a result or an explicit error. A test
ends by asserting ``sent == answered with result + answered with error`` and
``lost == 0``, then checks the counters of the processes involved.
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tiersplit.devtools.services import Service, tiersplit_cmd
from transport import keys

__all__ = [
    "CloudProc",
    "FleetKeys",
    "Ledger",
    "LoadGen",
    "Metrics",
    "agent_config",
    "cloud_doc",
    "cosine",
    "delta",
    "finished",
    "start_cloud",
    "wait_until",
]


def wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll ``pred`` until it holds (True) or ``timeout`` seconds pass (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def finished(counts: dict[str, int]) -> int:
    """Requests an agent's ``/status`` counts as finished: one per request, by path
    (``remote``, ``device``, ``fallback``) or ``error``; the finer keys it also reports
    (``fallback_<kind>``, ``cascade_<kind>``) break those down and are not added."""
    return sum(counts.get(k, 0) for k in ("remote", "device", "fallback", "error"))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


# ----------------------------------------------------------------------------- keys


@dataclass
class FleetKeys:
    """Cloud keys (Curve for ZeroMQ, X25519 for MQTT) and allow-lists for named agents.

    ``allowed`` / ``allowed_x25519`` are the directories the cloud reads; :meth:`add`
    makes an agent's key pair and allow-lists it, :meth:`revoke` removes it again.
    """

    dir: Path
    cloud_secret: Path = field(init=False)
    cloud_public: Path = field(init=False)
    cloud_x_secret: Path = field(init=False)
    cloud_x_public: Path = field(init=False)
    allowed: Path = field(init=False)
    allowed_x25519: Path = field(init=False)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cloud_secret, self.cloud_public = keys.generate("curve", self.dir, "cloud")
        self.cloud_x_secret, self.cloud_x_public = keys.generate("x25519", self.dir, "cloud-x")
        self.allowed = self.dir / "agents"
        self.allowed_x25519 = self.dir / "agents-x25519"
        self.allowed.mkdir()
        self.allowed_x25519.mkdir()

    def add(self, agent_id: str, allow: bool = True) -> None:
        """Key pairs (Curve and X25519) for ``agent_id``; allow-listed unless ``allow``."""
        if not (self.dir / f"{agent_id}.key").exists():
            keys.generate("curve", self.dir, agent_id)
            keys.generate("x25519", self.dir, f"{agent_id}-x")
        if allow:
            shutil.copy(self.dir / f"{agent_id}.pub", self.allowed / f"{agent_id}.pub")
            shutil.copy(self.dir / f"{agent_id}-x.pub", self.allowed_x25519 / f"{agent_id}.pub")

    def revoke(self, agent_id: str) -> None:
        (self.allowed / f"{agent_id}.pub").unlink(missing_ok=True)
        (self.allowed_x25519 / f"{agent_id}.pub").unlink(missing_ok=True)

    def secret(self, agent_id: str) -> Path:
        return self.dir / f"{agent_id}.key"

    def x_secret(self, agent_id: str) -> Path:
        return self.dir / f"{agent_id}-x.key"

    def zmq_link(self, agent_id: str, endpoint: str, **extra: Any) -> dict[str, Any]:
        """A client link config (short heartbeats: a lost core shows within a second)."""
        link = {"kind": "zmq", "endpoint": endpoint, "secret_key": str(self.secret(agent_id)),
                "server_public_key": str(self.cloud_public), "heartbeat_ivl_ms": 200,
                "heartbeat_timeout_ms": 800, "heartbeat_ttl_ms": 1600,
                "reconnect_ivl_ms": 100, "reconnect_ivl_max_ms": 500}
        link.update(extra)
        return link

    def mqtt_link(self, agent_id: str, broker: dict[str, Any]) -> dict[str, Any]:
        return {"kind": "mqtt", "broker": broker, "secret_key": str(self.x_secret(agent_id)),
                "server_public_key": str(self.cloud_x_public)}


# ----------------------------------------------------------------------------- metrics


class Metrics:
    """One scrape of a Prometheus text exposition: samples by name and labels."""

    def __init__(self, text: str) -> None:
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                self.samples.append((s.name, dict(s.labels), float(s.value)))

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels``."""
        return sum(v for n, lab, v in self.samples
                   if n == name and all(lab.get(k) == x for k, x in labels.items()))

    def by(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for n, lab, v in self.samples:
            if n == name:
                out[lab.get(label, "")] = out.get(lab.get(label, ""), 0.0) + v
        return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Per-label increase between two :meth:`Metrics.by` results (zeros dropped)."""
    keys_ = set(after) | set(before)
    out = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys_}
    return {k: v for k, v in out.items() if v}


# ----------------------------------------------------------------------------- cloud


@dataclass
class CloudProc:
    """A ``tiersplit cloud serve`` child: its READY endpoints, metrics and memory."""

    service: Service
    config_path: Path
    doc: dict[str, Any]
    zmq: str
    http: str
    mqtt: str
    admin_url: str = ""

    @property
    def admin_headers(self) -> dict[str, str]:
        """The bearer token the config gave the admin listener (closed without it)."""
        token = Path(self.doc["admin"]["token_file"]).read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def admin_call(self, method: str, path: str) -> httpx.Response:
        """One authenticated admin call; the response as it came."""
        return httpx.request(method, self.admin_url + path, headers=self.admin_headers,
                             timeout=60)

    @property
    def port(self) -> int:
        return int(self.zmq.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        return self.service.pid

    def alive(self) -> bool:
        return self.service.alive()

    def metrics(self) -> Metrics:
        r = httpx.get(self.http + "/metrics", timeout=10)
        r.raise_for_status()
        return Metrics(r.text)

    def backend_work(self) -> tuple[float, float]:
        """(backend calls, backend items) so far: zero growth proves no compute was spent."""
        m = self.metrics()
        return (m.total("tiersplit_cloud_backend_calls_total"),
                m.total("tiersplit_cloud_backend_items_total"))

    def rss(self) -> int:
        return psutil.Process(self.pid).memory_info().rss

    def admin(self, path: str) -> dict[str, Any]:
        r = self.admin_call("POST", path)
        r.raise_for_status()
        return r.json()

    def kill(self) -> None:
        self.service.kill()

    def stop(self) -> None:
        self.service.stop(grace=10)

    def restart(self) -> CloudProc:
        """Start a fresh process on the same ZeroMQ endpoint (after :meth:`kill`)."""
        doc = dict(self.doc)
        if self.zmq:
            doc["transports"] = [dict(t, endpoints=[self.zmq]) if t["kind"] == "zmq" else t
                                 for t in doc["transports"]]
        return start_cloud(self.config_path.parent, doc, name=self.config_path.stem + "-r")


def cloud_doc(repo: Path, signing_pub: Path, fleet: FleetKeys, models: list[Any], *,
              zmq: bool = True, mqtt_broker: dict[str, Any] | None = None,
              heartbeat_ms: tuple[int, int, int] = (200, 800, 1600),
              **over: Any) -> dict[str, Any]:
    """A ``cloud.yaml`` mapping: small batches, one worker, short heartbeats, HTTP on.

    ``models`` are names (every version on disk is loaded) or ``ModelRef`` mappings;
    ``heartbeat_ms`` is the ZeroMQ (interval, timeout, TTL): short, so a dead peer shows
    within a second.
    """
    transports: list[dict[str, Any]] = []
    if zmq:
        transports.append({"kind": "zmq", "endpoints": ["tcp://127.0.0.1:0"],
                           "secret_key": str(fleet.cloud_secret),
                           "allowed_keys_dir": str(fleet.allowed),
                           "heartbeat_ivl_ms": heartbeat_ms[0],
                           "heartbeat_timeout_ms": heartbeat_ms[1],
                           "heartbeat_ttl_ms": heartbeat_ms[2]})
    if mqtt_broker is not None:
        transports.append({"kind": "mqtt", "broker": mqtt_broker,
                           "secret_key": str(fleet.cloud_x_secret),
                           "allowed_keys_dir": str(fleet.allowed_x25519)})
    doc: dict[str, Any] = {
        "repository": str(repo),
        "signing_public_key": str(signing_pub),
        "models": [{"name": m, "versions": ["all"]} if isinstance(m, str) else m
                   for m in models],
        "transports": transports,
        "batching": {"max_batch": 8, "max_queue_delay_ms": 1.0, "max_queue": 64},
        "backend": {"kind": "onnxruntime", "device": "cpu", "threads": 1},
        "executor_workers": 1,
        "http": {"port": 0},
        "admin": {"port": 0, "token_file": str(_admin_token(fleet.dir))},
        "grace_s": 2,
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(doc.get(k), dict):
            doc[k] = {**doc[k], **v}
        else:
            doc[k] = v
    return doc


def _admin_token(folder: Path) -> Path:
    """A 0600 admin token file in ``folder`` (made once, shared by that fleet's cores)."""
    path = folder / "admin.token"
    if not path.exists():
        keys.write_secret(path, secrets.token_urlsafe(24).encode())
    return path


def start_cloud(work: Path, doc: dict[str, Any], name: str = "cloud") -> CloudProc:
    """Write ``doc`` as ``work/<name>.yaml``, start ``tiersplit cloud serve``, wait READY."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    svc = Service(name, tiersplit_cmd("cloud", "serve", "--config", str(path)),
                  log_path=work / f"{name}.log").start(timeout=120)
    r = svc.ready
    return CloudProc(svc, path, doc, r.get("zmq", "").split(",")[0], r.get("http", ""),
                     r.get("mqtt", ""), r.get("admin", ""))


# ----------------------------------------------------------------------------- edge


def agent_config(agent_id: str, bundle_path: Path, signing_pub: Path,
                 endpoints: dict[str, dict[str, Any]], **sections: Any) -> dict[str, Any]:
    """An ``edge.yaml`` mapping for an in-process agent on an emulated slow device.

    The device runs at ~0.1 GMAC/s (the test CNN takes ~34 ms end to end), so offloading
    pays on a fast link and the policy has a real choice; probes are frequent and
    breakers short so that recoveries happen within a test.
    """
    cfg: dict[str, Any] = {
        "agent_id": agent_id,
        "bundle": {"path": str(bundle_path), "public_key": str(signing_pub)},
        "endpoints": [{"name": n, "region": "eu", "link": link}
                      for n, link in endpoints.items()],
        "api": {"port": 0},
        "runtime": {"emulate_gmacs": 0.1, "workers": 2, "warmup_runs": 1, "measure_runs": 2},
        "policy": {"probe_interval_s": 0.3, "seed": 7, "explore_fraction": 0.0},
        "deadlines": {"default_ms": 3000, "local_reserve": 3.0},
        "retry": {"max_endpoints": 2, "breaker_failures": 2, "breaker_open_s": 1.0},
        "codec": "raw",
    }
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


# ----------------------------------------------------------------------------- ledger


class Ledger:
    """Every request an application sent, and how it ended (exactly once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent: list[str] = []
        self.results: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.duplicates: list[str] = []

    def send(self, rid: str) -> None:
        with self._lock:
            self.sent.append(rid)

    def result(self, rid: str, res: Any) -> None:
        with self._lock:
            if rid in self.results or rid in self.errors:
                self.duplicates.append(rid)
            self.results[rid] = res

    def error(self, rid: str, err: BaseException | str) -> None:
        with self._lock:
            if rid in self.results or rid in self.errors:
                self.duplicates.append(rid)
            self.errors[rid] = err if isinstance(err, str) else f"{type(err).__name__}: {err}"

    @property
    def lost(self) -> list[str]:
        with self._lock:
            return [r for r in self.sent if r not in self.results and r not in self.errors]

    def settle(self, *, errors_allowed: bool = False) -> None:
        """Assert the accounting: sent = results + errors, nothing lost, nothing twice."""
        with self._lock:
            sent, ok, err = len(self.sent), len(self.results), len(self.errors)
            assert len(set(self.sent)) == sent, "a request id was sent twice"
            assert not self.duplicates, f"settled twice: {self.duplicates[:5]}"
        lost = self.lost
        assert not lost, f"{len(lost)} requests lost (no result, no error): {lost[:5]}"
        assert sent == ok + err, (sent, ok, err)
        if not errors_allowed:
            assert err == 0, f"{err} errors: {list(self.errors.values())[:3]}"

    def paths(self, rids: list[str] | None = None) -> Counter:
        with self._lock:
            items = [self.results[r] for r in (rids or list(self.results)) if r in self.results]
        return Counter(r.path for r in items)

    def __len__(self) -> int:
        with self._lock:
            return len(self.results) + len(self.errors)


class LoadGen:
    """Closed-loop senders: ``threads`` per agent, each submitting one request at a time.

    Every request goes through :class:`Ledger`; ``check`` (called with each result)
    validates the outputs. Results keep their order of completion in :attr:`order`.
    """

    def __init__(self, ledger: Ledger, agents: list[Any], inputs: list[dict[str, np.ndarray]],
                 check: Callable[[int, Any], None], threads: int = 2,
                 deadline_ms: float | None = None) -> None:
        self.ledger, self.agents, self.inputs, self.check = ledger, agents, inputs, check
        self.deadline_ms = deadline_ms
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(a, t), daemon=True,
                                          name=f"load-{a.config.agent_id}-{t}")
                         for a in agents for t in range(threads)]
        self.order: list[str] = []
        self.bad: list[str] = []
        self._lock = threading.Lock()

    def _run(self, agent: Any, t: int) -> None:
        n = 0
        while not self._stop.is_set():
            i = (n + t) % len(self.inputs)
            rid = f"{agent.config.agent_id}-{t}-{n}"
            n += 1
            self.ledger.send(rid)
            try:
                res = agent.infer(self.inputs[i], deadline_ms=self.deadline_ms,
                                  request_id=rid).result(120)
            except Exception as e:  # an explicit error: counted, the test decides
                self.ledger.error(rid, e)
                continue
            try:
                assert res.request_id == rid, (res.request_id, rid)
                self.check(i, res)
            except AssertionError as e:
                with self._lock:
                    self.bad.append(f"{rid}: {e}")
            self.ledger.result(rid, res)
            with self._lock:
                self.order.append(rid)

    def start(self) -> LoadGen:
        for th in self._threads:
            th.start()
        return self

    def wait_for(self, n: int, timeout: float = 120.0) -> bool:
        return wait_until(lambda: len(self.ledger) >= n, timeout)

    def since(self, mark: int) -> list[str]:
        with self._lock:
            return self.order[mark:]

    def mark(self) -> int:
        with self._lock:
            return len(self.order)

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(180)
        assert not any(th.is_alive() for th in self._threads), "a sender is stuck"
        assert not self.bad, f"wrong outputs: {self.bad[:3]}"
