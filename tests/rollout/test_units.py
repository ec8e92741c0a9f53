"""The rollout pieces on their own: wire encoding of the control messages, plans and
their persistence, the canary set, per-version stats and the automatic rollback, the
core's edge-file server, and the download rate cap."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cloud_core.distribution import MAX_CHUNK, Distributor
from cloud_core.errors import RolloutError
from cloud_core.rollout import (
    FleetStats,
    PlanStore,
    RolloutManager,
    Thresholds,
    agent_fraction,
    parse_canary,
)
from contract.bundle import MANIFEST, SIGNATURE
from contract.deadline import Deadline
from edge_agent.updater import TokenBucket
from tests.rollout.conftest import MODEL
from transport import wire
from transport.errors import WireError
from transport.messages import Chunk, Directive, Fetch, Report, Status


def _report(agent: str, version: str, requests: int = 0, cloud: int = 0, errors: int = 0,
            p99: float = 10.0, labels: list[str] | None = None, digest: str = "") -> Report:
    return Report(request_id="r", agent_id=agent, model=MODEL, version=version,
                  digest=digest or f"d{version}", deadline=Deadline.after_ms(1000),
                  labels=labels or [], requests=requests, cloud=cloud, errors=errors,
                  p50_ms=p99 / 2, p99_ms=p99)


# ----------------------------------------------------------------------------- wire

def test_control_messages_round_trip() -> None:
    msgs = [
        Fetch("f1", "a0", MODEL, "2", "head-k2.int8.onnx", 8192, 4096, Deadline.after_ms(500)),
        Chunk("f1", Status.OK, "", "head-k2.int8.onnx", 8192, 20000, "ab" * 32, b"\x00\x01" * 9),
        _report("a0", "1", 10, 4, 1, labels=["eu", "canary"]),
        Directive("p1", target={"model": MODEL, "version": "2", "digest": "c" * 64}),
        Directive("p2"),
    ]
    for m in msgs:
        back = wire.decode(wire.encode(m))
        assert type(back) is type(m)
        for name in ("request_id", "file", "offset", "length", "data", "total", "target",
                     "labels", "requests", "cloud", "errors", "p99_ms", "version"):
            if hasattr(m, name):
                assert getattr(back, name) == getattr(m, name), name
    frames = wire.encode(msgs[0])
    assert wire.peek_request_id(frames) == "f1"  # so a refusing link can answer it


@pytest.mark.parametrize("header", [
    {"id": "x", "model": "m", "version": "1", "file": "f", "offset": -1, "length": 1,
     "budget_ms": 5},
    {"id": "x", "model": "m", "version": "1", "file": "f", "offset": 0, "length": 1 << 40,
     "budget_ms": 5},
    {"id": "x", "model": "m", "version": 1, "file": "f", "offset": 0, "length": 1,
     "budget_ms": 5},
])
def test_bad_fetch_is_a_wire_error(header: dict) -> None:
    head = bytes((wire.WIRE_VERSION, 5)) + json.dumps(header).encode()
    with pytest.raises(WireError):
        wire.decode([head])


def test_bad_directive_and_report_are_wire_errors() -> None:
    d = bytes((wire.WIRE_VERSION, 8)) + json.dumps({"id": "x", "status": 0,
                                                     "target": {"model": "m"}}).encode()
    with pytest.raises(WireError):
        wire.decode([d])
    r = bytes((wire.WIRE_VERSION, 7)) + json.dumps({"id": "x", "model": "m", "version": "1",
                                                     "labels": "eu", "budget_ms": 1}).encode()
    with pytest.raises(WireError):
        wire.decode([r])
    c = wire.encode(Chunk("c", data=b"abc"))
    with pytest.raises(WireError):
        wire.decode([c[0]])  # the data frame is missing


# ----------------------------------------------------------------------------- plans

def _manager(tmp_path: Path, loaded: dict[str, str] | None = None,
             on_loaded=None) -> RolloutManager:
    digests = {"1": "d1", "2": "d2"}
    loaded = loaded if loaded is not None else {"d1": "1", "d2": "2"}

    def digest_of(model: str, version: str) -> str:
        if version not in digests:
            raise RolloutError(f"no {version}")
        return digests[version]

    return RolloutManager(PlanStore(tmp_path / "plans.json"), FleetStats(60.0), digest_of,
                          lambda d: (MODEL, loaded[d]) if d in loaded else None,
                          lambda m: "2", on_loaded=on_loaded)


def test_canary_share_is_a_stable_hash_of_the_agent_id() -> None:
    ids = [f"agent-{i}" for i in range(2000)]
    share = [a for a in ids if agent_fraction(a) < 0.10]
    assert 140 <= len(share) <= 260  # about 10% (sha256 is uniform)
    assert share == [a for a in ids if agent_fraction(a) < 0.10]  # same answer every time
    assert parse_canary("10%") == (0.10, None)
    assert parse_canary("3") == (None, 3)
    for bad in ("ten", "-1", "150%"):
        with pytest.raises(RolloutError):
            parse_canary(bad)


def test_plan_states_and_targets(tmp_path: Path) -> None:
    ro = _manager(tmp_path)
    agents = [f"a{i}" for i in range(4)]
    for a in agents:
        assert ro.on_report(_report(a, "1")) is None  # no plan, version served: keep it
    plan = ro.start(MODEL, "2", canary="1")
    assert (plan.stable, plan.target, plan.state) == ("1", "2", "canary")
    canary = min(agents, key=agent_fraction)
    for a in agents:
        t = ro.on_report(_report(a, "1"))
        assert t == {"model": MODEL, "version": "2" if a == canary else "1",
                     "digest": "d2" if a == canary else "d1"}
    with pytest.raises(RolloutError, match="promote or roll it back"):
        ro.start(MODEL, "2", canary="50%")
    ro.pause(MODEL)
    assert ro.on_report(_report("a1", "1")) is None  # paused: keep what you run
    ro.resume(MODEL)
    ro.promote(MODEL)
    assert all(ro.on_report(_report(a, "2"))["version"] == "2" for a in agents)
    ro.rollback(MODEL)
    assert all(ro.on_report(_report(a, "2"))["version"] == "1" for a in agents)
    with pytest.raises(RolloutError, match="cannot go to promoted"):
        ro.promote(MODEL)
    labelled = _manager(tmp_path / "b")
    labelled.start(MODEL, "2", labels=["eu"], stable="1")
    assert labelled.on_report(_report("x", "1", labels=["eu"]))["version"] == "2"
    assert labelled.on_report(_report("y", "1", labels=["us"]))["version"] == "1"


def test_plans_survive_a_restart(tmp_path: Path) -> None:
    ro = _manager(tmp_path)
    ro.start(MODEL, "2", canary="25%", stable="1",
             thresholds=Thresholds(max_error_rate=0.2, max_p99_ratio=3.0, min_requests=7))
    ro.promote(MODEL)
    again = _manager(tmp_path)
    plan = again.plans[MODEL]
    assert (plan.state, plan.stable, plan.target, plan.canary) == ("promoted", "1", "2", "25%")
    assert plan.thresholds.min_requests == 7
    assert [e["what"] for e in plan.events][-1] == "promoted to every agent"
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left over


def test_agent_on_an_unloaded_version_is_moved_to_the_active_one(tmp_path: Path) -> None:
    ro = _manager(tmp_path, loaded={"d2": "2"})
    assert ro.on_report(_report("a0", "1")) == {"model": MODEL, "version": "2",
                                                  "digest": "d2"}


def test_failing_canary_rolls_back_by_itself(tmp_path: Path) -> None:
    ro = _manager(tmp_path)
    ro.start(MODEL, "2", canary="100%", stable="1",
             thresholds=Thresholds(max_error_rate=0.1, min_requests=10, min_answers=5))
    ro.plans[MODEL].state = "canary"  # a canary of everyone, to judge it
    ro.on_report(_report("a0", "2", 0, 0, 0))
    ro.on_report(_report("a0", "2", 5, 5, 5))
    assert ro.plans[MODEL].state == "canary"  # too few requests to judge yet
    t = ro.on_report(_report("a0", "2", 30, 8, 6))
    assert ro.plans[MODEL].state == "rolled_back"
    assert ro.plans[MODEL].reason.startswith("automatic rollback: error rate 75.0%")
    assert t["version"] == "1"


def test_slow_canary_rolls_back_by_its_p99(tmp_path: Path) -> None:
    ro = _manager(tmp_path)
    ro.start(MODEL, "2", canary="1", stable="1",
             thresholds=Thresholds(max_p99_ratio=2.0, min_requests=10))
    slow = min(["a0", "a1"], key=agent_fraction)
    fast = "a1" if slow == "a0" else "a0"
    ro.on_report(_report(fast, "1", 0, p99=10.0))
    ro.on_report(_report(fast, "1", 150, 150, p99=10.0))
    ro.on_report(_report(slow, "2", 0, p99=50.0))
    ro.on_report(_report(slow, "2", 50, 50, p99=50.0))
    assert ro.plans[MODEL].state == "canary"  # a p99 of 50 requests is their maximum
    ro.on_report(_report(slow, "2", 150, 150, p99=50.0))
    assert ro.plans[MODEL].state == "rolled_back"
    assert "p99" in ro.plans[MODEL].reason
    st = ro.status(MODEL)[MODEL]["versions"]
    assert st["1"]["requests"] == 150 and st["2"]["p99_ms"] == 50.0


# ----------------------------------------------------------------------------- serving

def test_distributor_serves_edge_files_only(repo) -> None:
    refused: list[str] = []
    d = Distributor(repo.root, on_refused=refused.append)

    def fetch(file: str, version: str = "2", offset: int = 0, length: int = 1 << 20) -> Chunk:
        return d.serve(Fetch("f", "a0", MODEL, version, file, offset, length,
                             Deadline.after_ms(1000)))

    v2 = repo.path("2")
    for f in (MANIFEST, SIGNATURE, "head-k2.int8.onnx", "full.int8.onnx"):
        c = fetch(f)
        assert c.ok and c.total == (v2 / f).stat().st_size
        assert c.data == (v2 / f).read_bytes()[:MAX_CHUNK]
    tail = fetch("tail-k2.onnx")
    assert tail.status == Status.INVALID_INPUT and not tail.data
    assert fetch("full.onnx").status == Status.INVALID_INPUT  # the fp32 model stays home
    assert fetch("../1/manifest.yaml").status == Status.INVALID_INPUT
    assert fetch(MANIFEST, version="9").status == Status.MODEL_NOT_FOUND
    assert fetch(MANIFEST, version="..").status == Status.MODEL_NOT_FOUND
    assert fetch(MANIFEST, offset=1 << 30).status == Status.INVALID_INPUT
    big = fetch("full.int8.onnx", offset=10, length=1000)
    assert big.offset == 10 and big.data == (v2 / "full.int8.onnx").read_bytes()[10:1010]
    assert refused == ["not_edge_file", "not_edge_file", "not_edge_file", "unknown_version",
                       "bad_name", "bad_offset"]


def test_token_bucket_caps_the_rate() -> None:
    bucket = TokenBucket(rate=200_000, burst=20_000)
    t0 = time.monotonic()
    for _ in range(5):
        bucket.take(20_000)
    # the first burst is free; the other 80 kB need 0.4 s at 200 kB/s
    assert time.monotonic() - t0 >= 0.39


def test_max_parallel_moves_agents_a_few_at_a_time(tmp_path: Path) -> None:
    ro = _manager(tmp_path)
    agents = ["a0", "a1", "a2"]
    for a in agents:
        ro.on_report(_report(a, "1"))
    ro.start(MODEL, "2", canary="100%", stable="1", max_parallel=1)
    told = [a for a in agents if ro.on_report(_report(a, "1")) is not None]
    assert len(told) == 1  # the others keep v1 for now
    assert ro.on_report(_report(told[0], "1"))["version"] == "2"  # still its turn
    ro.on_report(_report(told[0], "2", digest="d2"))  # it arrived: the slot frees
    nxt = [a for a in agents if a != told[0] and ro.on_report(_report(a, "1")) is not None]
    assert len(nxt) == 1
    ro.rollback(MODEL)  # a rollback is never rationed
    assert all(ro.on_report(_report(a, v))["version"] == "1"
               for a, v in ((told[0], "2"), (nxt[0], "1"), ("a2", "1")))


def test_cores_sharing_the_plan_file_follow_each_other(tmp_path: Path) -> None:
    seen: list[dict] = []
    one = _manager(tmp_path)
    two = _manager(tmp_path, on_loaded=seen.append)  # the core loads their versions
    assert two.on_report(_report("a0", "1")) is None  # no plan yet
    one.start(MODEL, "2", canary="100%", stable="1")  # through the first core's admin API
    assert two.refresh(force=True)
    assert seen and seen[-1][MODEL].target == "2"
    assert two.on_report(_report("a0", "1"))["version"] == "2"
    two.rollback(MODEL)  # the second core's operator rolls back
    assert one.status(MODEL)[MODEL]["plan"]["state"] == "rolled_back"
