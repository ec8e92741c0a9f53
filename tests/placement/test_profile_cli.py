"""Profiles measured on a real bundle, the `tiersplit place` commands end to end, and
publishing a min-cut candidate as a new bundle version."""

from __future__ import annotations

import time

import pytest
import yaml
from typer.testing import CliRunner

from contract.bundle import Bundle
from partitioner.publish import propose_and_publish
from placement import (
    CloudProfile,
    EdgeProfile,
    LinkEstimate,
    LinkProfile,
    cut_profiles,
    link_conditions,
    load_prior,
    load_profile,
)
from transport.keys import load_ed25519_public

runner = CliRunner()


@pytest.fixture(scope="module")
def digits(bundle_factory):
    return bundle_factory("digits_cnn")


def _load(built) -> Bundle:
    return Bundle.load(built.path, load_ed25519_public(built.public_key))


def test_profile_edge_and_cloud_measure_every_cut(digits) -> None:
    from partitioner.profile import profile_cloud, profile_edge

    b = _load(digits)
    edge = profile_edge(b, runs=3, warmup=1, codecs=("raw", "fp16", "int8+lz4"),
                        progress=False)
    cloud = profile_cloud(b, batches=(1, 4), runs=2, warmup=1, progress=False)
    assert set(edge.cuts) == set(b.manifest.cut_ids)
    assert edge.digest == b.digest and edge.machine["threads"] == 1
    for cid, e in edge.cuts.items():
        if cid == "cloud":
            assert e["head_ms"] == 0
        else:
            assert e["head_ms"] > 0
        if cid != "edge":
            assert e["bytes"]["raw"] >= b.manifest.cut(cid).bytes  # payload + header
            assert e["bytes"]["fp16"] < e["bytes"]["raw"]
    assert set(cloud.cuts) == set(b.manifest.cut_ids) - {"edge"}
    assert all(set(c["tail_ms"]) == {1, 4} for c in cloud.cuts.values())
    cuts = cut_profiles(edge, cloud)
    assert [c.cut_id for c in cuts][-1] == "edge"
    assert all(c.tail_ms for c in cuts if c.cut_id != "edge")


def test_profile_link_against_a_real_server(tmp_path) -> None:
    """Probes through a real ZeroMQ link; bandwidth fit from several sizes."""
    from partitioner.profile import profile_link
    from transport import ZmqClientConfig, ZmqServerConfig, make_client_link, make_server_link
    from transport.messages import LoadReport, Reply

    class Echo:
        def on_request(self, request, responder) -> None:
            responder.send(Reply(request.request_id))

        def on_reject(self, reason, agent_id) -> None:
            pass

        def load(self) -> LoadReport:
            return LoadReport()

    server = make_server_link(ZmqServerConfig(endpoints=["tcp://127.0.0.1:0"], insecure=True))
    server.start(Echo())
    try:
        client = make_client_link(ZmqClientConfig(endpoint=server.endpoints[0], insecure=True),
                                  "prober")
        try:
            t0 = time.monotonic()
            while not client.connected and time.monotonic() - t0 < 10:
                time.sleep(0.02)
            prof = profile_link(client, sizes=(0, 65536, 262144), repeats=2,
                                endpoint=server.endpoints[0], progress=False)
        finally:
            client.close()
        from tiersplit.cli import app

        out = tmp_path / "link.yaml"
        r = runner.invoke(app, ["place", "profile-link", "--endpoint", server.endpoints[0],
                                "--insecure", "--sizes", "0,32768", "--repeats", "2",
                                "-o", str(out)])
        assert r.exit_code == 0, r.output
        assert isinstance(load_profile(out), LinkProfile)
    finally:
        server.stop()
    assert prof.rtt_ms >= 0 and prof.up_Bps > 0 and prof.down_Bps > 0
    assert len(prof.probes) == 2 * 5


def test_fit_link_recovers_known_parameters() -> None:
    from partitioner.profile import fit_link

    rtt, up, down = 20.0, 1e6, 4e6
    probes = [{"payload_bytes": u, "reply_bytes": d,
               "rtt_ms": rtt + u / up * 1e3 + d / down * 1e3 + noise}
              for u, d in [(0, 0), (1e5, 0), (4e5, 0), (0, 1e5), (0, 4e5)]
              for noise in (0.0, 0.3, 1.1)]
    got = fit_link(probes)
    assert got[0] == pytest.approx(rtt, rel=1e-6)
    assert got[1] == pytest.approx(up, rel=1e-6) and got[2] == pytest.approx(down, rel=1e-6)


def test_links_yaml_of_the_repo_parses() -> None:
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / "links.yaml"
    if not path.exists():
        pytest.skip(f"{path} not present")
    conds = link_conditions(yaml.safe_load(path.read_text()))
    assert {"3g", "4g", "wifi", "lan"} <= set(conds)
    assert conds["lan"].up_Bps > conds["wifi"].up_Bps > conds["4g"].up_Bps > conds["3g"].up_Bps


def test_cli_profile_and_tune_write_table_png_yaml(digits, tmp_path) -> None:
    from tiersplit.cli import app

    pub = str(digits.public_key)
    e, c = tmp_path / "edge.yaml", tmp_path / "cloud.json"
    r = runner.invoke(app, ["place", "profile-edge", str(digits.path), "--public-key", pub,
                            "--runs", "3", "--speed", "50", "--codecs", "raw,fp16",
                            "-o", str(e)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["place", "profile-cloud", str(digits.path), "--public-key", pub,
                            "--runs", "2", "--batches", "1,2", "-o", str(c)])
    assert r.exit_code == 0, r.output
    assert isinstance(load_profile(e), EdgeProfile)
    assert isinstance(load_profile(c), CloudProfile)
    links = tmp_path / "links.yaml"
    links.write_text("profiles:\n  slow: {rate_mbit: 0.1, rtt_ms: 200}\n"
                     "  fast: {rate_mbit: 10000, rtt_ms: 0.05}\n")
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("objective: mean\ncloud: {workers: 1, max_batch: 4}\n"
                     "agents:\n  - {id: cam, count: 2, rate_rps: 5, link: fast}\n"
                     "  - {id: far, rate_rps: 1, link: slow}\n")
    out, png = tmp_path / "placement.yaml", tmp_path / "plot.png"
    r = runner.invoke(app, ["place", "tune", "--bundle", str(digits.path), "--public-key", pub,
                            "--edge-profile", str(e), "--cloud-profile", str(c),
                            "--links", str(links), "--fleet", str(fleet), "--out", str(out),
                            "--plot", str(png)], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "chosen" in r.output and "slow" in r.output and "fleet" in r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    prior = load_prior(out)
    m = prior.models["digits_cnn"]
    assert m.conditions["slow"]["cut"] == "edge"  # 50x slower edge still beats 0.1 Mbit
    assert prior.cut_for("digits_cnn", 1.0, 200) == "edge"
    assert set(prior.agents) == {"cam-0", "cam-1", "far"}
    assert prior.agent_cut("far") == "edge"


def test_cli_errors_are_one_line(tmp_path) -> None:
    from tiersplit.cli import app

    r = runner.invoke(app, ["place", "profile-edge", str(tmp_path), "--allow-unsigned"])
    assert r.exit_code == 2
    (tmp_path / "e.yaml").write_text("kind: link\nrtt_ms: 1\nup_Bps: 1\ndown_Bps: 1\n")
    r = runner.invoke(app, ["place", "tune", "--edge-profile", str(tmp_path / "e.yaml"),
                            "--cloud-profile", str(tmp_path / "e.yaml"),
                            "--links", str(tmp_path / "e.yaml"), "--out",
                            str(tmp_path / "p.yaml")])
    assert r.exit_code == 2


@pytest.mark.slow
def test_mincut_publishes_a_new_version_with_the_extra_cut(bundle_factory, tmp_path) -> None:
    built = bundle_factory("resnet_like", max_cuts=6)
    b = _load(built)
    m = b.manifest
    n = m.cut("edge").depth
    # A slow edge (1 ms per node) and a fast cloud: the min-cut sends the first
    # activation, which no kept candidate does.
    edge = EdgeProfile(m.name, m.version, b.digest,
                       {c.id: {"depth": c.depth, "head_ms": 1.0 * c.depth,
                               "bytes": {"raw": c.bytes}} for c in m.cuts}, 40)
    cloud = CloudProfile(m.name, m.version, b.digest,
                         {c.id: {"tail_ms": {1: 0.01 * (n - c.depth) + 0.01}}
                          for c in m.cuts if c.id != "edge"})
    links = {"lan": LinkEstimate(1.25e8, 1.25e8, 0.5)}
    dry = propose_and_publish(b, edge, cloud, links, min_gain=0.01, publish=False)
    assert dry.proposals and dry.rows[0].mincut_ms <= dry.rows[0].kept_ms
    assert dry.rows[0].is_new
    report = propose_and_publish(b, edge, cloud, links, min_gain=0.01, repo=tmp_path,
                                 version="2", signing_key=built.secret_key)
    assert report.published == tmp_path / m.name / "2"
    new = Bundle.load(report.published, load_ed25519_public(built.public_key))
    sets = {tuple(sorted(t.name for t in c.tensors)): c.id for c in new.manifest.cuts}
    for p in report.proposals:
        assert tuple(sorted(p)) in sets
    assert report.new_cut_ids and all(i in new.manifest.cut_ids for i in report.new_cut_ids)


def test_link_profile_estimate() -> None:
    lp = LinkProfile("x", 3.0, 10.0, 20.0)
    assert lp.estimate == LinkEstimate(10.0, 20.0, 3.0)
