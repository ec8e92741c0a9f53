"""`tiersplit place`: measure profiles, tune the placement prior, propose min-cuts.

    tiersplit place profile-edge BUNDLE --out edge.yaml        (on the device)
    tiersplit place profile-cloud BUNDLE --out cloud.yaml      (on the cloud host)
    tiersplit place profile-link --endpoint tcp://h:5555 ...   (device -> running cloud)
    tiersplit place tune --bundle B --edge-profile E --cloud-profile C \\
        --links configs/links.yaml [--fleet configs/fleet.yaml] \\
        --out configs/placement.yaml [--plot placement.png]
    tiersplit place tune B --data held-back.npz [--target-agreement 0.99] \\
        [--confidence max-softmax|margin|pkg.mod:fn] [--write-config edge.yaml]
    tiersplit place mincut --bundle B --edge-profile E --cloud-profile C \\
        --links configs/links.yaml --repo bundles --version 2
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer
import yaml

from tiersplit.cli.common import clean_errors, console

log = logging.getLogger(__name__)

place = typer.Typer(help="Placement: profiles, tuning, min-cut candidates.",
                    no_args_is_help=True)


def _bundle(path: Path, public_key: Path | None, allow_unsigned: bool, role: str = "all"):
    from contract.bundle import Bundle

    key = None
    if public_key is not None:
        from transport.keys import load_ed25519_public

        key = load_ed25519_public(public_key)
    return Bundle.load(path, key, require_signature=not allow_unsigned, role=role)  # type: ignore[arg-type]


def _errors():
    from partitioner.errors import PartitionError
    from transport.errors import TransportError

    return (PartitionError, TransportError, ValueError, KeyError, FileNotFoundError)


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


_PUB = typer.Option(None, "--public-key", help="Ed25519 .pub the bundle must be signed with.")
_UNSIGNED = typer.Option(False, "--allow-unsigned", help="Accept an unsigned bundle.")


@place.command("profile-edge")
def profile_edge_cmd(
    bundle: Path = typer.Argument(..., help="Bundle directory <repo>/<name>/<version>."),
    out: Path = typer.Option(Path("edge-profile.yaml"), "--out", "-o",
                             help=".yaml/.yml for YAML, anything else JSON."),
    threads: int = typer.Option(1, help="ORT intra-op threads, as the edge agent runs."),
    runs: int = typer.Option(30, help="Timed runs per head (median and p90 kept)."),
    codecs: str = typer.Option("raw,fp16,int8,int8+lz4,int8c+zstd",
                               help="Wire codecs to measure bytes/encode/decode for."),
    speed: float = typer.Option(1.0, help="Also scale times by this (what-if slower)."),
    public_key: Path | None = _PUB,
    allow_unsigned: bool = _UNSIGNED,
) -> None:
    """Measure int8 head latency per cut (and the full int8 model) on this device."""
    with clean_errors(*_errors()):
        from partitioner.profile import profile_edge
        from placement import save_profile

        b = _bundle(bundle, public_key, allow_unsigned, "edge")
        prof = profile_edge(b, threads=threads, runs=runs, codecs=_csv(codecs))
        if speed != 1.0:
            prof = prof.scaled(speed)
        save_profile(prof, out)
    _print_profile(prof.cuts, "head_ms", f"edge profile of {prof.model} {prof.version}")
    console.print(f"wrote {out}")


@place.command("profile-cloud")
def profile_cloud_cmd(
    bundle: Path = typer.Argument(..., help="Bundle directory <repo>/<name>/<version>."),
    out: Path = typer.Option(Path("cloud-profile.yaml"), "--out", "-o"),
    batches: str = typer.Option("1,2,4,8", help="Batch sizes to time."),
    runs: int = typer.Option(20, help="Timed runs per (cut, batch)."),
    threads: int = typer.Option(1, help="ORT intra-op threads per backend worker."),
    public_key: Path | None = _PUB,
    allow_unsigned: bool = _UNSIGNED,
) -> None:
    """Measure fp32 tail latency per cut at batch sizes 1..N on this host."""
    with clean_errors(*_errors()):
        from partitioner.profile import profile_cloud
        from placement import save_profile

        b = _bundle(bundle, public_key, allow_unsigned, "cloud")
        prof = profile_cloud(b, batches=[int(x) for x in _csv(batches)], runs=runs,
                             threads=threads)
        save_profile(prof, out)
    from rich.table import Table

    bs = [int(x) for x in _csv(batches)]
    t = Table(title=f"cloud profile of {prof.model} {prof.version} ({prof.backend})")
    t.add_column("cut")
    for bsz in bs:
        t.add_column(f"b={bsz} ms", justify="right")
    for cid, e in prof.cuts.items():
        t.add_row(cid, *(f"{e['tail_ms'][bsz]:.3f}" for bsz in bs))
    console.print(t)
    console.print(f"wrote {out}")


def _print_profile(cuts, key: str, title: str) -> None:
    from rich.table import Table

    t = Table(title=title)
    for col in ("cut", "depth", key, "raw bytes", "accuracy"):
        t.add_column(col, justify="right" if col != "cut" else "left")
    for cid, e in cuts.items():
        t.add_row(cid, str(e.get("depth", "")), f"{e.get(key, 0.0):.3f}",
                  str((e.get("bytes") or {}).get("raw", "")), f"{e.get('accuracy', 1.0):.4f}")
    console.print(t)


@place.command("profile-link")
def profile_link_cmd(
    endpoint: str = typer.Option(None, "--endpoint", help="ZeroMQ endpoint of a cloud core."),
    link_config: Path | None = typer.Option(
        None, "--link-config", help="YAML with a 'link:' section (zmq or mqtt client)."),
    secret_key: Path | None = typer.Option(None, help="Agent Curve certificate (zmq)."),
    server_key: Path | None = typer.Option(None, help="Cloud Curve .pub (zmq)."),
    insecure: bool = typer.Option(False, help="Plaintext zmq (tests/demos only)."),
    agent_id: str = typer.Option("profiler", help="Agent id to connect as."),
    sizes: str = typer.Option("0,16384,131072,524288", help="Probe sizes in bytes."),
    repeats: int = typer.Option(5, help="Probes per size."),
    out: Path = typer.Option(Path("link-profile.yaml"), "--out", "-o"),
) -> None:
    """Measure RTT and up/down bandwidth against a running cloud core."""
    with clean_errors(*_errors()):
        import time

        from partitioner.profile import profile_link
        from placement import save_profile
        from transport import make_client_link
        from transport.config import MqttClientConfig, ZmqClientConfig

        if link_config is not None:
            doc = yaml.safe_load(link_config.read_text()) or {}
            section = doc.get("link", doc)
            cfg = (MqttClientConfig if section.get("kind") == "mqtt"
                   else ZmqClientConfig).model_validate(section)
            where = getattr(cfg, "endpoint", None) or f"mqtt:{cfg.broker.host}"
        elif endpoint:
            cfg = ZmqClientConfig(endpoint=endpoint, secret_key=secret_key,
                                  server_public_key=server_key, insecure=insecure)
            where = endpoint
        else:
            raise ValueError("give --endpoint or --link-config")
        link = make_client_link(cfg, agent_id)
        try:
            t0 = time.monotonic()
            while not link.connected and time.monotonic() - t0 < 10:
                time.sleep(0.05)
            prof = profile_link(link, sizes=[int(x) for x in _csv(sizes)], repeats=repeats,
                                endpoint=where)
        finally:
            link.close()
        save_profile(prof, out)
    console.print(f"{where}: rtt {prof.rtt_ms:.2f} ms, up {prof.up_Bps / 1e6:.3f} MB/s, "
                  f"down {prof.down_Bps / 1e6:.3f} MB/s")
    console.print(f"wrote {out}")


def _load_inputs(edge_profile: Path, cloud_profile: Path | None, links: Path):
    from placement import (
        CloudProfile,
        EdgeProfile,
        LinkProfile,
        link_conditions,
        load_profile,
    )

    edge = load_profile(edge_profile)
    if not isinstance(edge, EdgeProfile):
        raise ValueError(f"{edge_profile} is a {edge.kind} profile, not an edge profile")
    cloud = None
    if cloud_profile is not None:
        cloud = load_profile(cloud_profile)
        if not isinstance(cloud, CloudProfile):
            raise ValueError(f"{cloud_profile} is a {cloud.kind} profile, not a cloud profile")
    conds = {}
    for path in _csv(str(links)):
        p = Path(path)
        if p.suffix in (".yaml", ".yml") and "kind: link" not in p.read_text():
            conds.update(link_conditions(yaml.safe_load(p.read_text()) or {}))
        else:
            lp = load_profile(p)
            if not isinstance(lp, LinkProfile):
                raise ValueError(f"{p} is neither a links file nor a link profile")
            conds[p.stem] = lp.estimate
    return edge, cloud, conds


def _constraints(privacy_floor: int, accuracy_floor: float, edge_memory_mb: float,
                 allowed: set[str] | None = None):
    from placement import Constraints

    return Constraints(privacy_floor=privacy_floor, accuracy_floor=accuracy_floor,
                       edge_memory_mb=edge_memory_mb,
                       allowed=None if allowed is None else frozenset(allowed))


def _privacy(manifest, privacy_floor: int, max_reconstruction: float | None,
             max_dcor: float | None, codec: str):
    """The floor, and the cuts it allows (None: no risk bound, depth alone decides)."""
    from contract.privacy import PrivacyFloor, allowed_cuts

    floor = PrivacyFloor(min_depth=privacy_floor, max_reconstruction=max_reconstruction,
                         max_dcor=max_dcor)
    if not floor.risk_stated:
        return floor, None
    if manifest is None:
        raise ValueError("--max-reconstruction / --max-dcor need --bundle: the audited "
                         "manifest says each cut's risk")
    if manifest.privacy_audit is None:
        raise ValueError("the bundle has no privacy audit: run `tiersplit privacy audit "
                         "--record` and tune with the version it publishes")
    return floor, allowed_cuts(manifest, floor, codec)


def _print_privacy_costs(rows, metric: str, codec: str) -> None:
    from rich.table import Table

    if not rows:
        return
    links = list(rows[0].predicted_ms)
    t = Table(title=f"what each privacy level costs (best predicted ms per link, codec "
                    f"{codec}; level = max audited {metric} allowed)")
    t.add_column("max risk", justify="right")
    t.add_column("cuts allowed")
    for name in links:
        t.add_column(name, justify="right")
    for r in rows:
        level = "any" if r.max_risk is None else f"{r.max_risk:.3f}"
        cells = [("—" if r.chosen[n] == "—" else f"{r.predicted_ms[n]:.2f} ({r.chosen[n]})")
                 for n in links]
        t.add_row(level, ", ".join(sorted(r.allowed)), *cells)
    console.print(t)


@place.command("tune")
def tune_cmd(
    bundle_dir: Path | None = typer.Argument(
        None, help="Bundle to tune the device cascade of (with --data)."),
    edge_profile: Path | None = typer.Option(None, "--edge-profile",
                                             help="From profile-edge."),
    cloud_profile: Path | None = typer.Option(None, "--cloud-profile",
                                              help="From profile-cloud."),
    links: Path | None = typer.Option(None, "--links",
                                      help="links.yaml (named conditions) or link "
                                           "profiles, comma-separated."),
    data: Path | None = typer.Option(
        None, "--data", help="Held-back inputs (.npz, never the calibration data): tune "
                             "the device cascade's threshold instead of the placement."),
    target_agreement: float = typer.Option(
        0.99, "--target-agreement", min=0.0, max=1.0,
        help="Cascade: agreement with the fp32 model the local answers must keep."),
    confidence: str = typer.Option("max-softmax", "--confidence",
                                   help="Cascade: max-softmax, margin or a hook "
                                        "pkg.mod:fn (one score per sample)."),
    logits: str | None = typer.Option(None, "--logits-output",
                                      help="Cascade: the output holding the logits "
                                           "(default: the first)."),
    cut: str | None = typer.Option(None, "--cut",
                                   help="Cascade: the cut unanswered requests take "
                                        "(default: the shallowest the floor admits)."),
    link_ms: float = typer.Option(0.0, "--link-ms", min=0.0,
                                  help="Cascade: network + cloud ms of that path per "
                                       "request (the manifest cannot know the link)."),
    write_config: Path | None = typer.Option(
        None, "--write-config", help="Cascade: write policy.cascade into this edge "
                                     "config (other keys are kept)."),
    out: Path = typer.Option(Path("configs/placement.yaml"), "--out", "-o"),
    bundle: Path | None = typer.Option(None, "--bundle", help="Check profiles match it."),
    fleet: Path | None = typer.Option(None, "--fleet", help="fleet.yaml: joint assignment."),
    plot: Path | None = typer.Option(None, "--plot", help="PNG: latency vs cut per link."),
    codec: str = typer.Option("raw", help="Wire codec to assume."),
    privacy_floor: int = typer.Option(1, help="Minimum cut depth (0 allows raw inputs)."),
    max_reconstruction: float | None = typer.Option(
        None, "--max-reconstruction", min=0.0, max=1.0,
        help="Exclude cuts whose audited reconstruction quality (SSIM / tokens recovered) "
             "exceeds this; needs an audited --bundle."),
    max_dcor: float | None = typer.Option(None, "--max-dcor", min=0.0, max=1.0,
                                          help="Same bound on the audited distance "
                                               "correlation."),
    privacy_plot: Path | None = typer.Option(None, "--privacy-plot",
                                             help="PNG: best latency per link vs the risk "
                                                  "allowed (audited bundles)."),
    accuracy_floor: float = typer.Option(0.0, help="Exclude cuts below this accuracy."),
    edge_memory_mb: float = typer.Option(0.0, help="Exclude heads needing more (0 = no limit)."),
    queue_ms: float = typer.Option(0.0, help="Expected cloud queueing for the single-agent "
                                             "table."),
    public_key: Path | None = _PUB,
    allow_unsigned: bool = _UNSIGNED,
) -> None:
    """Print per-link predictions, write the placement prior (and a plot); with --data,
    tune the device cascade's threshold on held-back data instead."""
    from rich.table import Table

    if data is not None:
        from tiersplit.cli._cascade import tune_cascade

        tune_cascade(bundle_dir or bundle, data, target=target_agreement, kind=confidence,
                     output=logits, cut=cut, privacy_floor=privacy_floor, codec=codec,
                     link_ms=link_ms, write_config=write_config, public_key=public_key,
                     allow_unsigned=allow_unsigned)
        return
    with clean_errors(*_errors()):
        if edge_profile is None or cloud_profile is None or links is None:
            raise ValueError("give --edge-profile, --cloud-profile and --links (placement), "
                             "or BUNDLE --data HELD-BACK.npz (cascade)")
        from placement import (
            CloudEstimate,
            PlacementPrior,
            build_model_prior,
            cut_profiles,
            dump_prior,
            link_rows,
            load_fleet_spec,
            optimize_fleet,
        )
        from placement.profiles import now_iso

        edge, cloud, conds = _load_inputs(edge_profile, cloud_profile, links)
        manifest = None
        if bundle is not None:
            b = _bundle(bundle, public_key, allow_unsigned, "all")
            manifest = b.manifest
            if edge.digest and edge.digest != b.digest and not _same_files(edge.digest, b):
                raise ValueError(f"{edge_profile} was measured on another bundle version "
                                 f"({edge.digest[:12]} != {b.digest[:12]}); re-profile")
        floor, allowed = _privacy(manifest, privacy_floor, max_reconstruction, max_dcor,
                                  codec)
        cons = _constraints(privacy_floor, accuracy_floor, edge_memory_mb, allowed)
        cuts = cut_profiles(edge, cloud)
        est = CloudEstimate(queue_ms=queue_ms)
        cost_rows = None
        if manifest is not None and manifest.privacy_audit is not None:
            from placement.privacy_cost import plot_privacy_costs, privacy_costs

            audit = manifest.privacy_audit
            risks = {c.cut_id: audit.risk(c.cut_id, codec) for c in cuts}
            cost_rows = privacy_costs(cuts, risks, conds, est,
                                      _constraints(privacy_floor, accuracy_floor,
                                                   edge_memory_mb), codec)
            if privacy_plot is not None:
                plot_privacy_costs(cost_rows, privacy_plot,
                                   f"{edge.model} {edge.version}: latency vs privacy",
                                   audit.metric)
        elif privacy_plot is not None:
            raise ValueError("--privacy-plot needs an audited --bundle")
        rows = link_rows(cuts, conds, est, cons, codec)
        mp = build_model_prior(edge.model, edge.version, edge.digest, cuts, conds, est, cons,
                               codec)
        agents: dict[str, dict[str, str]] = {}
        fleet_plan = None
        if fleet is not None:
            spec = load_fleet_spec(fleet)
            fleet_agents = spec.build(conds, edge, cloud, cons)
            fleet_plan = optimize_fleet(fleet_agents, spec.capacity, spec.objective)
            agents = {a.agent_id: {"model": a.model, "cut": fleet_plan.cuts[a.agent_id]}
                      for a in fleet_agents}
        prior = PlacementPrior({edge.model: mp}, agents, codec,
                               {"privacy_floor": privacy_floor,
                                "accuracy_floor": accuracy_floor,
                                "edge_memory_mb": edge_memory_mb,
                                **({"privacy": floor.model_dump(exclude_defaults=True),
                                    "allowed_cuts": sorted(allowed)}
                                   if allowed is not None else {})}, now_iso())
        dump_prior(prior, out)
        if plot is not None:
            from placement import plot_latency

            plot_latency(rows, [c.cut_id for c in cuts], plot,
                         f"{edge.model} {edge.version}: predicted latency by cut")

    order = [c.cut_id for c in cuts]
    t = Table(title=f"{edge.model} {edge.version}: predicted latency (ms), codec {codec}")
    t.add_column("link")
    for cid in order:
        t.add_column(cid, justify="right")
    t.add_column("chosen", style="bold green")
    t.add_column("margin (runner-up)", justify="right")
    for r in rows:
        cells = []
        for cid in order:
            v = r.predicted_ms[cid]
            s = "—" if v is None else f"{v:.2f}"
            cells.append(f"[bold]{s}[/bold]" if cid == r.chosen else s)
        margin = "—" if r.runner_up is None else f"{r.margin_ms:.2f} ({r.runner_up})"
        t.add_row(r.link, *cells, r.chosen, margin)
    console.print(t)
    for table in mp.tables:
        spans = ", ".join(
            f"{_bw(rg.min_up_Bps)}–{_bw(rg.max_up_Bps)}: {rg.cut}" for rg in table.ranges)
        console.print(f"  [dim]{table.condition} (rtt {table.rtt_ms:g} ms):[/dim] {spans}")
    if fleet_plan is not None:
        ft = Table(title=f"fleet ({fleet_plan.objective}): cloud utilisation "
                         f"{fleet_plan.load.utilisation:.2f}, batch {fleet_plan.load.batch:.1f}, "
                         f"queue {fleet_plan.load.queue_ms:.2f} ms")
        for col in ("agent", "cut", "mean ms", "p95 ms"):
            ft.add_column(col, justify="left" if col in ("agent", "cut") else "right")
        for aid, cut in fleet_plan.cuts.items():
            ft.add_row(aid, cut, f"{fleet_plan.mean_ms[aid]:.2f}", f"{fleet_plan.p95_ms[aid]:.2f}")
        console.print(ft)
        console.print(f"fleet mean {fleet_plan.fleet_mean_ms:.2f} ms, p95 "
                      f"{fleet_plan.fleet_p95_ms:.2f} ms after {fleet_plan.passes} passes")
        for note in fleet_plan.notes:
            console.print(f"[yellow]note:[/yellow] {note}")
    if cost_rows is not None:
        _print_privacy_costs(cost_rows, manifest.privacy_audit.metric, codec)
    if allowed is not None:
        console.print(f"privacy floor {floor.describe()}: cuts allowed "
                      f"{', '.join(c.cut_id for c in cuts if c.cut_id in allowed)}")
    written = [str(p) for p in (out, plot, privacy_plot) if p is not None]
    console.print(f"wrote {' and '.join(written)}")


def _same_files(digest: str, bundle) -> bool:
    """True when ``digest`` names a bundle with the same model files as ``bundle``:
    ``privacy audit --record`` re-publishes identical files under a new manifest, so
    profiles measured on the unaudited version still hold."""
    from partitioner.privacy.record import AUDIT_SUFFIX

    base = bundle.path.parent / bundle.version.removesuffix(AUDIT_SUFFIX)
    if base == bundle.path or not (base / "manifest.yaml").is_file():
        return False
    import hashlib

    raw = (base / "manifest.yaml").read_bytes()
    if hashlib.sha256(raw).hexdigest() != digest:
        return False
    from contract.bundle import Bundle

    other = Bundle.load(base, require_signature=False)
    return other.manifest.files == bundle.manifest.files


def _bw(bps: float) -> str:
    if bps == float("inf"):
        return "∞"
    for unit, scale in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.3g} {unit}"
    return f"{bps:.3g} B/s"


@place.command("mincut")
def mincut_cmd(
    bundle: Path = typer.Option(..., "--bundle", help="Bundle directory to improve."),
    edge_profile: Path = typer.Option(..., "--edge-profile"),
    cloud_profile: Path = typer.Option(..., "--cloud-profile"),
    links: Path = typer.Option(..., "--links", help="links.yaml or link profiles."),
    repo: Path | None = typer.Option(None, "--repo", help="Bundle repository to publish the "
                                                          "new version into (default: the "
                                                          "bundle's own)."),
    version: str | None = typer.Option(None, "--version", help="New version (default: "
                                                               "current + '.mc')."),
    signing_key: Path | None = typer.Option(None, "--signing-key", help="Ed25519 key to "
                                                                        "sign the new bundle."),
    min_gain: float = typer.Option(0.03, help="Publish only if the min-cut beats the best kept "
                                              "candidate by this fraction on some link."),
    codec: str = typer.Option("raw", help="Wire codec to assume."),
    privacy_floor: int = typer.Option(1),
    edge_memory_mb: float = typer.Option(0.0),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report only, publish nothing."),
    public_key: Path | None = _PUB,
    allow_unsigned: bool = _UNSIGNED,
) -> None:
    """DADS min-cut over all valid cuts; publish a new bundle version with the winner."""
    from rich.table import Table

    with clean_errors(*_errors()):
        from partitioner.publish import propose_and_publish

        b = _bundle(bundle, public_key, allow_unsigned, "all")
        edge, cloud, conds = _load_inputs(edge_profile, cloud_profile, links)
        report = propose_and_publish(
            b, edge, cloud, conds, codec=codec, privacy_floor=privacy_floor,
            edge_memory_mb=edge_memory_mb, min_gain=min_gain,
            repo=repo, version=version, signing_key=signing_key, publish=not dry_run)
    t = Table(title=f"min-cut vs kept candidates: {b.name} {b.version}")
    for col in ("link", "best kept", "kept ms", "min-cut ms", "gain", "crossing tensors"):
        t.add_column(col, justify="right" if "ms" in col or col == "gain" else "left")
    for r in report.rows:
        t.add_row(r.link, r.kept_cut, f"{r.kept_ms:.3f}", f"{r.mincut_ms:.3f}",
                  f"{r.gain:+.1%}", ", ".join(r.crossing) or "(none: all edge)")
    console.print(t)
    if report.published is not None:
        console.print(f"published {report.published} with extra cut(s) "
                      f"{', '.join(report.new_cut_ids)}")
    else:
        console.print(f"nothing published: {report.reason}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.add_typer(place, name="place")
