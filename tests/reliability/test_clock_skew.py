"""Edge devices whose wall clock is off: a real ``tiersplit cloud serve`` and real
``tiersplit edge run`` processes, the agents' clocks shifted by libfaketime.

Deadlines travel as the budget left (milliseconds) and are re-anchored on each process's
monotonic clock, so a device 30 s ahead or behind is served exactly like one whose clock
is right: every request is answered by the cloud, none is refused DEADLINE_EXCEEDED, and
no request falls back to the device more than for an agent with the right time.

MQTT payloads carry a wall-clock stamp for replay protection (the one cross-machine
wall-clock comparison left, bounded by ``max_skew_s``, 120 s by default): a device 30 s
off works as is; with a bound tighter than its skew its requests are refused as possible
replays, it finishes them on the device, and the cloud says so in one log line naming the
measured skew and the fix.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from tests.reliability.conftest import IN_SHAPE, INPUT, MODEL_A, Repo
from tests.reliability.fleet import (
    CloudProc,
    FleetKeys,
    agent_config,
    cloud_doc,
    finished,
    start_cloud,
    wait_until,
)
from tests.reliability.skew import faketime_missing, skewed_env
from tiersplit.devtools.services import Service, tiersplit_cmd

pytestmark = [pytest.mark.integration]

N_REQUESTS = 12
CLOUD_CUT = "k2"  # head on the device, tail in the cloud: every request crosses the link
SKEWS = {"a0": 0.0, "a1": 30.0, "a2": -30.0}  # agent -> wall-clock offset (s)


@pytest.fixture(autouse=True)
def _need_faketime() -> None:
    if (why := faketime_missing()) is not None:
        print(f"SKIP clock skew: {why}")
        pytest.skip(why)


class AgentProc:
    """A ``tiersplit edge run`` child with a skewed wall clock, driven over its HTTP API."""

    def __init__(self, work: Path, agent_id: str, offset_s: float, cfg: dict[str, Any]
                 ) -> None:
        work.mkdir(parents=True, exist_ok=True)
        path = work / f"{agent_id}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        extra = skewed_env(offset_s, base={})  # only the libfaketime variables
        self.agent_id, self.offset_s = agent_id, offset_s
        self.service = Service(agent_id, tiersplit_cmd("edge", "run", "--config", str(path),
                                                       "--port", "0"),
                               log_path=work / f"{agent_id}.log", env=extra)

    def start(self) -> AgentProc:
        self.service.start(timeout=180)
        self.url = self.service.ready["http"]
        return self

    def status(self) -> dict[str, Any]:
        r = httpx.get(self.url + "/status", timeout=30)
        r.raise_for_status()
        return r.json()

    def wall_clock(self) -> float:
        """The agent's wall clock as its process sees it (the HTTP Date header)."""
        from email.utils import parsedate_to_datetime

        r = httpx.get(self.url + "/v2/health/live", timeout=30)
        return parsedate_to_datetime(r.headers["date"]).timestamp()

    def infer(self, x: np.ndarray) -> dict[str, Any]:
        body = {"inputs": [{"name": INPUT, "datatype": "FP32", "shape": list(x.shape),
                            "data": x.reshape(-1).tolist()}],
                "parameters": {"tiersplit_cut": CLOUD_CUT}}
        r = httpx.post(f"{self.url}/v2/models/{MODEL_A}/infer", json=body, timeout=60)
        r.raise_for_status()
        return r.json()["parameters"]

    def stop(self) -> None:
        self.service.stop(grace=10)


@contextlib.contextmanager
def agents(work: Path, cfgs: dict[str, dict[str, Any]], skews: dict[str, float]
           ) -> Iterator[dict[str, AgentProc]]:
    procs = {a: AgentProc(work, a, skews[a], cfgs[a]) for a in cfgs}
    try:
        with ThreadPoolExecutor(len(procs)) as pool:  # start them side by side
            list(pool.map(AgentProc.start, procs.values()))
        yield procs
    finally:
        for p in procs.values():
            with contextlib.suppress(Exception):
                p.stop()


def _connected(agent: AgentProc) -> bool:
    eps = agent.status().get("endpoints", {})
    items = eps.values() if isinstance(eps, dict) else eps
    return any(isinstance(e, dict) and e.get("connected") for e in items)


def _run(agent: AgentProc, inputs: list[np.ndarray]) -> list[dict[str, Any]]:
    return [agent.infer(x) for x in inputs]


def _cloud_counts(cloud: CloudProc) -> dict[str, float]:
    m = cloud.metrics()
    return {"ok": m.total("tiersplit_cloud_requests_total", status="OK"),
            "deadline": m.total("tiersplit_cloud_requests_total", status="DEADLINE_EXCEEDED"),
            "rejected_deadline": m.total("tiersplit_cloud_rejected_total", reason="deadline"),
            "clock_skew": m.total("tiersplit_cloud_rejected_total", reason="clock_skew")}


def _inputs(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.standard_normal((1, *IN_SHAPE)).astype(np.float32) for _ in range(n)]


def _links(kind: str, fleet: FleetKeys, cloud: CloudProc, broker: dict[str, Any] | None,
           agent_id: str) -> dict[str, Any]:
    if kind == "zmq":
        return fleet.zmq_link(agent_id, cloud.zmq)
    assert broker is not None
    return fleet.mqtt_link(agent_id, broker)


@pytest.mark.parametrize("kind", ["zmq", "mqtt"])
def test_skewed_devices_are_served_like_the_rest(kind: str, tmp_path: Path, repo: Repo,
                                                 fleet: FleetKeys, clouds: list[CloudProc],
                                                 request: pytest.FixtureRequest) -> None:
    broker = None
    if kind == "mqtt":
        handle = request.getfixturevalue("mosquitto_broker")
        broker = handle.broker_config().model_dump(mode="json", exclude_none=True)
    cloud = start_cloud(tmp_path / "cloud", cloud_doc(repo.root, repo.public_key, fleet,
                                                      [MODEL_A], zmq=kind == "zmq",
                                                      mqtt_broker=broker))
    clouds.append(cloud)
    cfgs = {a: agent_config(a, repo.path(), repo.public_key,
                            {"cloud": _links(kind, fleet, cloud, broker, a)},
                            api={"port": 0, "allow_cut_override": True})
            for a in SKEWS}
    inputs = _inputs(N_REQUESTS)
    with agents(tmp_path / "agents", cfgs, SKEWS) as procs:
        now = time.time()
        for a, p in procs.items():  # the skew is real: each process sees its own time
            assert abs(p.wall_clock() - (now + SKEWS[a])) < 10, a
        for p in procs.values():
            assert wait_until(lambda p=p: _connected(p), 60), f"{p.agent_id} never connected"
        before = _cloud_counts(cloud)
        with ThreadPoolExecutor(len(procs)) as pool:
            results = dict(zip(procs, pool.map(lambda p: _run(p, inputs), procs.values()),
                               strict=True))
        counts = {a: p.status()["counts"] for a, p in procs.items()}
    after = _cloud_counts(cloud)
    paths = {a: [r["path"] for r in rs] for a, rs in results.items()}
    missed = {a: sum(r["deadline_missed"] for r in rs) for a, rs in results.items()}
    # Answered by the cloud, every one, whatever the device's clock says.
    for a in SKEWS:
        assert paths[a] == ["remote"] * N_REQUESTS, (a, paths[a], counts[a])
        assert counts[a].get("fallback", 0) == counts["a0"].get("fallback", 0) == 0, counts
        assert missed[a] == 0, (a, missed)
    assert after["ok"] - before["ok"] == N_REQUESTS * len(SKEWS), (before, after)
    assert after["deadline"] == before["deadline"] == 0, after
    assert after["rejected_deadline"] == 0 and after["clock_skew"] == 0, after


def test_mqtt_beyond_max_skew_is_refused_and_said_once(tmp_path: Path, repo: Repo,
                                                       fleet: FleetKeys,
                                                       clouds: list[CloudProc],
                                                       mosquitto_broker: Any) -> None:
    """With ``max_skew_s: 10``, a device 30 s ahead is refused as a possible replayer: its
    requests finish on the device (no DEADLINE_EXCEEDED from the cloud, no compute), and
    the cloud's log says once what it measured and how to fix it."""
    broker = mosquitto_broker.broker_config().model_dump(mode="json", exclude_none=True)
    doc = cloud_doc(repo.root, repo.public_key, fleet, [MODEL_A], zmq=False,
                    mqtt_broker=broker)
    doc["transports"][0]["max_skew_s"] = 10
    cloud = start_cloud(tmp_path / "cloud", doc)
    clouds.append(cloud)
    link = dict(fleet.mqtt_link("a1", broker), max_skew_s=10)
    cfg = agent_config("a1", repo.path(), repo.public_key, {"cloud": link},
                       api={"port": 0, "allow_cut_override": True},
                       deadlines={"default_ms": 1500, "local_reserve": 3.0})
    with agents(tmp_path / "agents", {"a1": cfg}, {"a1": 30.0}) as procs:
        agent = procs["a1"]
        assert wait_until(lambda: _connected(agent), 60), "never connected"
        results = _run(agent, _inputs(4))
        counts = agent.status()["counts"]
    after = _cloud_counts(cloud)
    paths = [r["path"] for r in results]  # once the breaker opens: straight to the device
    assert set(paths) <= {"fallback", "device"} and paths[0] == "fallback", paths
    assert finished(counts) == 4 and counts.get("error", 0) == 0, counts
    assert after["ok"] == 0 and after["deadline"] == 0, after
    assert after["clock_skew"] >= 1, after
    log = (tmp_path / "cloud" / "cloud.log").read_text()
    lines = [ln for ln in log.splitlines() if "max_skew_s=10" in ln]
    assert len(lines) == 1, lines
    measured = float(lines[0].split("stamped ")[1].split(" s")[0])
    assert 20 < measured < 40, lines[0]
    assert "requests of agent a1" in lines[0] and "Sync the clocks" in lines[0]
