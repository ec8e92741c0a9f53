"""One request, one trace across the tiers.

In-process: an agent and a cloud core in this process, their spans collected by the
OpenTelemetry SDK's in-memory exporter. Across processes: a `tiersplit cloud serve`
subprocess and the agent each write their spans as JSON lines (``exporter: file``) and
the test reads both files. Either way the spans of one request share the application's
trace id and the core's spans hang below the agent's ``network`` span.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract.tracing import TracingConfig, bad_traceparents, tracer_for, valid_traceparent
from tests.edge.cloud_proc import Keyring, start_cloud
from tests.edge.conftest import base_config
from tiersplit.devtools.bundles import EDGE_CNN_INPUT as INPUT
from tiersplit.devtools.bundles import EDGE_CNN_SHAPE as IN_SHAPE

pytest.importorskip("opentelemetry.sdk")
httpclient = pytest.importorskip("tritonclient.http")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
APP_SPAN = "00f067aa0ba902b7"
APP_TP = f"00-{TRACE_ID}-{APP_SPAN}-01"
EDGE_SPANS = {"infer", "decode", "request", "head", "network", "encode"}
CORE_SPANS = {"queue", "batch", "backend"}


@pytest.fixture(scope="module")
def ring(tmp_path_factory) -> Keyring:
    return Keyring.create(tmp_path_factory.mktemp("trace-keys") / "k")


def _cloud_cfg(edge_bundle, ring: Keyring, tracing: dict[str, Any]) -> dict[str, Any]:
    return {
        "repository": str(edge_bundle.root), "signing_public_key": str(edge_bundle.public_key),
        "models": [{"name": "edge_cnn"}],
        "transports": [{"kind": "zmq", "endpoints": ["tcp://127.0.0.1:0"],
                        "secret_key": str(ring.cloud_secret),
                        "allowed_keys_dir": str(ring.allowed)}],
        "batching": {"max_batch": 8, "max_queue_delay_ms": 0.5},
        "backend": {"kind": "onnxruntime", "device": "cpu", "threads": 1},
        "executor_workers": 1, "http": {"port": 0}, "admin": {"port": 0}, "grace_s": 1,
        "tracing": tracing,
    }


def _agent_cfg(edge_bundle, ring: Keyring, endpoint: str, tracing: dict[str, Any]) -> dict:
    return base_config(edge_bundle, tracing=tracing,
                       policy={"fixed_cut": "k2", "probe_interval_s": 0.5, "seed": 1},
                       endpoints=[{"name": "a", "link": ring.client_link(endpoint)}])


def _infer(agent, traceparent: str | None) -> dict[str, Any]:
    x = np.random.default_rng(0).standard_normal((2, *IN_SHAPE)).astype(np.float32)
    c = httpclient.InferenceServerClient(agent.http_url.removeprefix("http://"))
    try:
        inp = httpclient.InferInput(INPUT, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        headers = {"traceparent": traceparent} if traceparent else None
        return c.infer("edge_cnn", [inp], headers=headers).get_response()["parameters"]
    finally:
        c.close()


def _check_one_trace(spans: list[dict[str, Any]], trace_id: str,
                     app_span: str | None) -> None:
    """Every span in ``trace_id``; the edge's spans under the app's, the core's under the
    agent's network span; cut and version on every span that has them."""
    assert {s["trace_id"] for s in spans} == {trace_id}, spans
    by_name = {s["name"]: s for s in spans}
    assert set(by_name) >= EDGE_SPANS | CORE_SPANS, sorted(by_name)
    ids = {s["span_id"]: s for s in spans}

    def parent(name: str) -> str | None:
        pid = by_name[name]["parent_span_id"]
        return ids[pid]["name"] if pid in ids else pid

    assert parent("infer") == app_span
    assert parent("decode") == "infer" and parent("request") == "infer"
    assert parent("head") == "request" and parent("network") == "request"
    assert parent("encode") == "network"
    assert parent("queue") == "network" and parent("batch") == "network"
    assert parent("backend") == "batch"
    for name in ("head", "network", "encode", "queue", "batch", "backend", "request"):
        assert by_name[name]["attributes"]["tiersplit.cut"] == "k2", name
    for name in ("head", "network", "queue", "batch", "request"):
        assert by_name[name]["attributes"]["tiersplit.version"] == "1", name
    assert by_name["request"]["attributes"]["tiersplit.path"] == "remote"
    services = {s["name"]: s["service"] for s in spans}
    assert {services[n] for n in EDGE_SPANS} == {"tiersplit-edge"}
    assert {services[n] for n in CORE_SPANS} == {"tiersplit-cloud"}
    # the core's spans lie within the agent's network span
    net = by_name["network"]
    for name in CORE_SPANS:
        assert net["start_ns"] <= by_name[name]["start_ns"] <= by_name[name]["end_ns"]


def _as_docs(spans: list[Any]) -> list[dict[str, Any]]:
    return [{"name": s.name, "trace_id": f"{s.context.trace_id:032x}",
             "span_id": f"{s.context.span_id:016x}",
             "parent_span_id": f"{s.parent.span_id:016x}" if s.parent else None,
             "service": s.resource.attributes["service.name"],
             "start_ns": s.start_time, "end_ns": s.end_time,
             "attributes": dict(s.attributes or {})} for s in spans]


@pytest.fixture
def core_factory():
    from cloud_core.config import parse_config
    from cloud_core.server import CloudCore

    cores: list[CloudCore] = []

    def start(cfg: dict[str, Any]) -> CloudCore:
        core = CloudCore(parse_config(cfg))
        cores.append(core)
        core.start()
        return core

    yield start
    for core in cores:
        core.stop(0.5)


def _memory(cfg: dict[str, Any], service: str) -> InMemorySpanExporter:
    mem = InMemorySpanExporter()
    tracer_for(TracingConfig(**cfg), service).add_processor(SimpleSpanProcessor(mem))
    return mem


def test_one_request_one_trace_in_process(edge_bundle, ring, core_factory,
                                          make_agent) -> None:
    on = {"enabled": True, "service_name": None}
    edge_mem, core_mem = _memory(on, "tiersplit-edge"), _memory(on, "tiersplit-cloud")
    core = core_factory(_cloud_cfg(edge_bundle, ring, on))
    agent = make_agent(_agent_cfg(edge_bundle, ring, core.endpoints[0], on))
    assert agent.wait_connected(15)
    assert _infer(agent, APP_TP)["path"] == "remote"
    _check_one_trace(_as_docs([*edge_mem.get_finished_spans(),
                               *core_mem.get_finished_spans()]), TRACE_ID, APP_SPAN)

    # no traceparent from the app: the agent starts the trace, the core still joins it
    edge_mem.clear()
    core_mem.clear()
    _infer(agent, None)
    spans = _as_docs([*edge_mem.get_finished_spans(), *core_mem.get_finished_spans()])
    _check_one_trace(spans, spans[0]["trace_id"], None)
    assert spans[0]["trace_id"] != TRACE_ID

    # a malformed traceparent is counted and ignored: a fresh trace, the request served
    edge_mem.clear()
    core_mem.clear()
    before = bad_traceparents()
    assert _infer(agent, "00-not-a-trace-01")["path"] == "remote"
    assert bad_traceparents() == before + 1
    assert f"tiersplit_edge_traceparents_ignored_total {float(before + 1)}" in \
        agent.metrics_text().decode()
    spans = _as_docs([*edge_mem.get_finished_spans(), *core_mem.get_finished_spans()])
    _check_one_trace(spans, spans[0]["trace_id"], None)


def test_an_untraced_agent_passes_the_traceparent_on(edge_bundle, ring, core_factory,
                                                     make_agent) -> None:
    """Tracing off on the agent: no edge spans, but the core continues the app's trace
    (and the backend sees it, to forward to Triton)."""
    on = {"enabled": True, "service_name": "core-passthrough"}
    core_mem = _memory(on, "tiersplit-cloud")
    core = core_factory(_cloud_cfg(edge_bundle, ring, on))
    agent = make_agent(_agent_cfg(edge_bundle, ring, core.endpoints[0], {}))
    assert not agent.tracer.enabled
    assert agent.wait_connected(15)
    _infer(agent, APP_TP)
    spans = _as_docs(core_mem.get_finished_spans())
    assert {s["name"] for s in spans} == CORE_SPANS
    assert {s["trace_id"] for s in spans} == {TRACE_ID}
    queue = next(s for s in spans if s["name"] == "queue")
    assert queue["parent_span_id"] == APP_SPAN


def _read_spans(path: Path, want: set[str]) -> list[dict[str, Any]]:
    """The spans written to ``path`` once every name in ``want`` is there (a core writes
    its spans as its batch ends, which may be just after the reply left)."""
    spans: list[dict[str, Any]] = []
    for _ in range(200):
        if path.exists():
            spans = [json.loads(line) for line in path.read_text().splitlines()]
            if want <= {s["name"] for s in spans}:
                return spans
        time.sleep(0.05)
    pytest.fail(f"{path} has only {sorted(s['name'] for s in spans)}")


def test_one_request_one_trace_across_processes(edge_bundle, ring, make_agent,
                                                tmp_path) -> None:
    core_file, edge_file = tmp_path / "core.jsonl", tmp_path / "edge.jsonl"
    cloud = start_cloud(tmp_path / "cloud", edge_bundle.root, edge_bundle.public_key, ring,
                        "edge_cnn", tracing={"enabled": True, "exporter": "file",
                                             "file": str(core_file)})
    try:
        agent = make_agent(_agent_cfg(edge_bundle, ring, cloud.zmq, {
            "enabled": True, "exporter": "file", "file": str(edge_file),
            "service_name": "tiersplit-edge"}))
        assert agent.wait_connected(15)
        assert _infer(agent, APP_TP)["path"] == "remote"
        spans = _read_spans(edge_file, EDGE_SPANS) + _read_spans(core_file, CORE_SPANS)
    finally:
        cloud.stop()
    _check_one_trace(spans, TRACE_ID, APP_SPAN)


def test_traceparent_validation() -> None:
    assert valid_traceparent(APP_TP)
    assert valid_traceparent(f"01-{TRACE_ID}-{APP_SPAN}-01-future-fields")
    for bad in (None, 3, "", APP_TP.upper(), f"00-{TRACE_ID}-{APP_SPAN}-01-extra",
                f"00-{'0' * 32}-{APP_SPAN}-01", f"00-{TRACE_ID}-{'0' * 16}-01",
                f"ff-{TRACE_ID}-{APP_SPAN}-01"):
        assert not valid_traceparent(bad), bad
    with pytest.raises(ValueError, match=r"tracing\.file"):
        TracingConfig(enabled=True, exporter="file")
