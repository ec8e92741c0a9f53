"""Observability end to end, with real processes: the probes and the autoscaling metric
named in the rendered manifests against a running core started from the rendered
``cloud.yaml``; a real Prometheus scraping that core and two real edge agents during a
short, bounded load; every Grafana panel's PromQL and the KEDA query evaluated through
Prometheus's HTTP API, each returning data.

Set ``TIERSPLIT_DASHBOARD_PNG=docs/img/dashboard.png`` to also draw the panels from this
Prometheus with ``deploy/grafana/render_png.py`` (a by-hand step for the docs).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import transport
from cloud_core.metrics import AgentTracker, build_version
from contract.deadline import Deadline
from tests.deploy import render, stack
from transport.config import ZmqClientConfig
from transport.messages import Request, Status

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DASHBOARD = render.REPO / "deploy" / "grafana" / "tiersplit.json"
#: 300 requests through the agents (and 10 bad ones), spread over several scrapes.
WAVES, PER_WAVE = 10, 30
#: Substitutions Grafana makes before sending a panel's query.
GRAFANA_VARS = {"$__rate_interval": "1m", "$model": ".+", "$cut": ".+"}
#: Panels fed by a recording call the core's request path makes; until that call is in,
#: their metric has no samples and the panel is reported, not failed.


@pytest.fixture(scope="module", autouse=True)
def _need_tools() -> None:
    for tool in ("kubectl", "prometheus"):
        if shutil.which(tool) is None and not Path(f"/usr/bin/{tool}").exists():
            print(f"SKIP observability: {tool} not installed")
            pytest.skip(f"{tool} not installed")


@dataclass
class Stack:
    rendered: render.Rendered
    cloud_http: str
    agents: dict[str, str]
    prom: str
    sent_ok: int

    def metrics_text(self) -> str:
        r = httpx.get(self.cloud_http + "/metrics", timeout=30)
        r.raise_for_status()
        return r.text


def _infer(url: str, x: np.ndarray) -> httpx.Response:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.reshape(-1).tolist()}]}
    return httpx.post(f"{url}/v2/models/{stack.MODEL}/infer", json=body, timeout=60)


@contextlib.contextmanager
def _probe_link(fleet: stack.Fleet, zmq_endpoint: str) -> Iterator[transport.ClientLink]:
    """A direct, allow-listed client link to the core (for requests no agent would send)."""
    cfg = ZmqClientConfig(endpoint=zmq_endpoint, secret_key=fleet.agent_key(stack.PROBE_AGENT),
                          server_public_key=fleet.cloud_public)
    link = transport.make_client_link(cfg, stack.PROBE_AGENT)
    try:
        stack.wait_until(lambda: link.connected, 30, "the probe link to connect")
        yield link
    finally:
        link.close()


def _bad_request(link: transport.ClientLink, i: int) -> Status:
    """A request naming a bundle digest the core does not hold: refused, counted."""
    req = Request(request_id=f"bad-{i}", agent_id=stack.PROBE_AGENT, model=stack.MODEL,
                  version="1", digest="f" * 64, cut="h1", deadline=Deadline.after_ms(10_000),
                  tensors={"h1": np.ones((1, 32), np.float32)})
    return link.submit(req).result(30).status


def _connected(url: str) -> bool:
    eps = httpx.get(url + "/status", timeout=30).json().get("endpoints", {})
    return any(isinstance(e, dict) and e.get("connected")
               for e in (eps.values() if isinstance(eps, dict) else eps))


def _load(agents: dict[str, str], probe: transport.ClientLink) -> int:
    """Waves of good requests through the agents, one bad request straight to the core
    per wave, so every counter moves across several scrapes."""
    rng = np.random.default_rng(3)
    urls = itertools.cycle(agents.values())
    ok = 0
    with ThreadPoolExecutor(6) as pool:
        for wave in range(WAVES):
            xs = [(next(urls), rng.standard_normal((1 + i % 3, 16)).astype(np.float32))
                  for i in range(PER_WAVE)]
            for r in pool.map(lambda a: _infer(*a), xs):
                assert r.status_code == 200, r.text
                assert np.asarray(r.json()["outputs"][0]["data"]).size % 10 == 0
                ok += 1
            assert _bad_request(probe, wave) == Status.VERSION_MISMATCH
            time.sleep(0.5)
    return ok


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("observability")
    tree = render.copy_tree(work)
    rendered = render.Rendered("cpu", render.kustomize(tree, "overlays/cpu"),
                               tree / "base" / "secrets")
    cloud_yaml = yaml.safe_load(rendered.one("ConfigMap", "tiersplit-cloud-config")
                                ["data"]["cloud.yaml"])
    fleet = stack.Fleet.make(work / "fleet")
    services = []
    try:
        cloud = stack.start_cloud(work, stack.local_cloud_config(cloud_yaml, fleet))
        services.append(cloud)
        zmq_endpoint = cloud.ready["zmq"].split(",")[0]
        agents = {}
        for agent, cut in stack.AGENTS.items():
            svc = stack.start_agent(work, agent, stack.edge_config(agent, cut, fleet,
                                                                   zmq_endpoint))
            services.append(svc)
            agents[agent] = svc.ready["http"]
        jobs = {"tiersplit-cloud": [stack.hostport(cloud.ready["http"])],
                "tiersplit-edge": [stack.hostport(u) for u in agents.values()]}
        with stack.prometheus(work, jobs) as prom:
            stack.wait_until(lambda: len(stack.query(prom, "up == 1")) == 3, 120,
                             "prometheus to scrape the core and both agents")
            for url in agents.values():  # connected before the load, or it runs locally
                stack.wait_until(lambda u=url: _connected(u), 60, "the agents' links to connect")
            with _probe_link(fleet, zmq_endpoint) as probe:
                sent_ok = _load(agents, probe)
            s = Stack(rendered, cloud.ready["http"], agents, prom, sent_ok)
            cloud_ok = sum(x.value for f in text_string_to_metric_families(s.metrics_text())
                           if f.name == "tiersplit_cloud_requests" for x in f.samples
                           if x.name.endswith("_total") and x.labels.get("status") == "OK")
            assert cloud_ok >= sent_ok, "requests did not reach the core"
            stack.wait_until(lambda: float(stack.query(
                prom, 'sum(tiersplit_cloud_requests_total{status="OK"})')[0]["value"][1])
                >= cloud_ok, 60, "prometheus to see the whole load")
            time.sleep(2.5)  # two more scrapes: gauges after the load, rates on both sides
            yield s
            if png := os.environ.get("TIERSPLIT_DASHBOARD_PNG"):
                subprocess.run([sys.executable, str(DASHBOARD.parent / "render_png.py"),
                                "--prometheus", prom, "--dashboard", str(DASHBOARD),
                                "--out", png, "--minutes", "1.5"], check=True, timeout=600)
    finally:
        for svc in reversed(services):
            with contextlib.suppress(Exception):
                svc.stop(grace=20)


def _finite(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in result)


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, refId, PromQL with Grafana's variables substituted) of every panel."""
    out = []
    for panel in dashboard["panels"]:
        for t in panel.get("targets", []):
            expr = t["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            assert "$" not in expr.replace('"$1"', ""), f"unsubstituted variable in {expr}"
            out.append((panel["title"], t["refId"], expr))
    return out


def test_probe_paths_in_the_manifest_answer_on_a_real_core(live: Stack) -> None:
    spec = live.rendered.one("Deployment", "tiersplit-cloud")["spec"]["template"]["spec"]
    core = next(c for c in spec["containers"] if c["name"] == "core")
    ports = {p["name"]: p["containerPort"] for p in core["ports"]}
    cfg = yaml.safe_load(live.rendered.one("ConfigMap", "tiersplit-cloud-config")
                         ["data"]["cloud.yaml"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = core[probe]["httpGet"]
        assert ports[get["port"]] == cfg["http"]["port"], probe  # the HTTP listener's port
        r = httpx.get(live.cloud_http + get["path"], timeout=30)
        assert r.status_code == 200, (probe, get["path"], r.status_code)
    assert httpx.get(live.cloud_http + "/health/nope", timeout=30).status_code == 404
    ready = core["readinessProbe"]["httpGet"]["path"]
    assert httpx.get(live.cloud_http + ready, timeout=30).json()["status"] == "ready"


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_autoscaling_metric_exists_and_its_query_returns_data(live: Stack) -> None:
    so = live.rendered.one("ScaledObject", "tiersplit-cloud")
    expr = so["spec"]["triggers"][0]["metadata"]["query"]
    names = set(re.findall(r"\b(tiersplit_[a-z_]+)\b", expr))
    assert names == {"tiersplit_cloud_queue_depth"}
    fams = _families(live.metrics_text())
    for name in names:
        assert name in fams and fams[name].type == "gauge" and fams[name].samples, name
    result = stack.query(live.prom, expr)
    assert result and _finite(result), expr


def test_core_metrics_are_seconds_with_build_info_and_process(live: Stack) -> None:
    fams = _families(live.metrics_text())
    ours = [n for n in fams if n.startswith("tiersplit_")]
    assert not [n for n in ours if re.search(r"_(ms|millis|milliseconds)(_|$)", n)], ours
    for n in ("tiersplit_cloud_queue_seconds", "tiersplit_cloud_compute_seconds"):
        assert fams[n].type == "histogram"
    info = fams["tiersplit_build_info"].samples
    assert [(s.labels["version"], s.value) for s in info] == [(build_version(), 1.0)]
    assert build_version() != "unknown"  # the suite runs on an installed tiersplit
    for n in ("process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds",
              "python_info"):
        assert n in fams and fams[n].samples, n


def test_every_dashboard_panel_returns_data(live: Stack) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = panel_queries(dashboard)
    assert len(queries) >= 15
    empty = []
    for title, ref, expr in queries:
        result = stack.query(live.prom, expr)
        if result and _finite(result):
            continue
        empty.append(f"{title} [{ref}]: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_dashboard_is_per_model_and_cut_and_covers_every_stage() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "model", "cut"} <= names
    exprs = " ".join(e for _, _, e in panel_queries(dashboard))
    for metric in ("tiersplit_edge_head_seconds", "tiersplit_edge_request_seconds_sum",
                   "tiersplit_cloud_queue_seconds_bucket",
                   "tiersplit_cloud_compute_seconds_bucket",
                   "tiersplit_cloud_batch_size_bucket", "tiersplit_cloud_queue_depth",
                   "tiersplit_cloud_rejected_total", "tiersplit_cloud_agents",
                   "tiersplit_cloud_requests_total", "tiersplit_build_info"):
        assert metric in exprs, metric
    for panel in dashboard["panels"]:
        for t in panel.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}"


def test_agent_tracker_counts_distinct_agents_in_its_window() -> None:
    tracker = AgentTracker(window_s=0.3, max_entries=3)
    for agent in ("a", "b", "a"):
        tracker.seen(agent, "mlp", "1")
    tracker.seen("c", "mlp", "2")
    assert tracker.counts() == {("mlp", "1"): 2, ("mlp", "2"): 1}
    tracker.seen("d", "mlp", "2")  # a fourth entry evicts the least recently seen ("b")
    assert tracker.counts() == {("mlp", "1"): 1, ("mlp", "2"): 2}
    time.sleep(0.4)
    assert tracker.counts() == {}
    fam = next(iter(tracker.collect()))
    assert fam.name == "tiersplit_cloud_agents" and fam.samples == []
