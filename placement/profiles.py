"""Profile files: what was measured, where and when, and how it becomes ``CutProfile``s.

Three kinds, one file each, YAML (``.yaml``/``.yml``) or JSON (anything else)::

    kind: edge            # head latency per cut on one device
    created: 2026-11-28T12:00:00Z
    machine: {hostname: ..., cpu_count: 4, threads: 2, onnxruntime: 1.20, ...}
    model: digits_cnn     # bundle name, version and digest it was measured on
    version: "1"
    digest: 3f2a...
    reply_bytes: 40       # per-sample bytes of the model outputs
    cuts:
      k3: {depth: 3, head_ms: 0.41, head_p90_ms: 0.45, accuracy: 0.999,
           bytes: {raw: 4096, fp16: 2048, int8+lz4: 900}, encode_ms: {fp16: 0.02},
           edge_memory_mb: 1.2}
      edge: {depth: 9, head_ms: 0.95, ...}

    kind: cloud           # tail latency per cut by batch size on one backend
    backend: onnxruntime-cpu
    cuts:
      k3: {tail_ms: {1: 0.3, 2: 0.4, 4: 0.6, 8: 1.0}, decode_ms: {fp16: 0.01}}

    kind: link            # probes against a running cloud core
    endpoint: tcp://10.0.0.2:5555
    rtt_ms: 21.0
    up_Bps: 1.2e6
    down_Bps: 5.0e6
    probes: [{payload_bytes: 0, reply_bytes: 0, rtt_ms: 21.1}, ...]

Pure stdlib + pyyaml: the edge agent may read profiles too.
"""

from __future__ import annotations

import json
import math
import platform
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from placement.costmodel import CutProfile, LinkEstimate

__all__ = [
    "CloudProfile",
    "EdgeProfile",
    "LinkProfile",
    "cut_profiles",
    "link_conditions",
    "load_profile",
    "machine_description",
    "now_iso",
    "save_profile",
]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def machine_description(**extra: Any) -> dict[str, Any]:
    """Where a profile was measured: enough to tell two devices apart later."""
    import os

    desc: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    desc["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    desc.update(extra)
    return desc


@dataclass(frozen=True)
class EdgeProfile:
    """Edge measurements of one bundle. ``cuts`` maps cut id to its fields (see module)."""

    model: str
    version: str
    digest: str
    cuts: Mapping[str, Mapping[str, Any]]
    reply_bytes: int = 0
    machine: Mapping[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=now_iso)
    kind: Literal["edge"] = "edge"

    def using(self, statistic: Literal["median", "mean", "p90"]) -> EdgeProfile:
        """The profile with ``head_ms`` taken from another recorded statistic
        (``head_mean_ms``, ``head_p90_ms``); cuts without it keep their median."""
        key = {"median": "head_ms", "mean": "head_mean_ms", "p90": "head_p90_ms"}[statistic]
        return self._with_head(lambda v: float(v.get(key, v.get("head_ms", 0.0))),
                               statistic=statistic)

    def scaled(self, factor: float) -> EdgeProfile:
        """The same device ``factor`` times slower (what-if for slower hardware)."""
        return self._with_head(lambda v: float(v.get("head_ms", 0.0)) * factor, scaled=factor)

    def _with_head(self, head_ms: Callable[[Mapping[str, Any]], float],
                   **machine: Any) -> EdgeProfile:
        """This profile with every cut's ``head_ms`` replaced and ``machine`` noted."""
        cuts = {k: {**v, "head_ms": head_ms(v)} for k, v in self.cuts.items()}
        return EdgeProfile(self.model, self.version, self.digest, cuts, self.reply_bytes,
                           {**self.machine, **machine}, self.created)


@dataclass(frozen=True)
class CloudProfile:
    """Cloud measurements of one bundle: ``cuts[id]["tail_ms"]`` maps batch -> ms."""

    model: str
    version: str
    digest: str
    cuts: Mapping[str, Mapping[str, Any]]
    backend: str = "onnxruntime"
    machine: Mapping[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=now_iso)
    kind: Literal["cloud"] = "cloud"


@dataclass(frozen=True)
class LinkProfile:
    """Measured link: RTT and bandwidths fitted from probes of several sizes."""

    endpoint: str
    rtt_ms: float
    up_Bps: float
    down_Bps: float
    probes: Sequence[Mapping[str, float]] = ()
    machine: Mapping[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=now_iso)
    kind: Literal["link"] = "link"

    @property
    def estimate(self) -> LinkEstimate:
        return LinkEstimate(self.up_Bps, self.down_Bps, self.rtt_ms)


Profile = EdgeProfile | CloudProfile | LinkProfile


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {(str(k) if not isinstance(k, int) else k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    return obj


def _as_dict(p: Profile) -> dict[str, Any]:
    if isinstance(p, EdgeProfile):
        d = {"kind": "edge", "created": p.created, "machine": p.machine, "model": p.model,
             "version": p.version, "digest": p.digest, "reply_bytes": p.reply_bytes,
             "cuts": p.cuts}
    elif isinstance(p, CloudProfile):
        d = {"kind": "cloud", "created": p.created, "machine": p.machine, "model": p.model,
             "version": p.version, "digest": p.digest, "backend": p.backend, "cuts": p.cuts}
    else:
        d = {"kind": "link", "created": p.created, "machine": p.machine,
             "endpoint": p.endpoint, "rtt_ms": p.rtt_ms, "up_Bps": p.up_Bps,
             "down_Bps": p.down_Bps, "probes": list(p.probes)}
    return _plain(d)


def save_profile(profile: Profile, path: Path | str) -> Path:
    """Write a profile as YAML (``.yaml``/``.yml``) or JSON (any other suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    d = _as_dict(profile)
    if path.suffix in (".yaml", ".yml"):
        # JSON-style keys for batch sizes stay ints in YAML; JSON needs strings.
        path.write_text(yaml.safe_dump(d, sort_keys=False))
    else:
        path.write_text(json.dumps(d, indent=1))
    return path


def _tail_map(raw: Mapping[Any, Any]) -> dict[int, float]:
    return {int(k): float(v) for k, v in raw.items()}


def load_profile(path: Path | str) -> Profile:
    """Read a profile file written by :func:`save_profile` (or by hand).

    Raises:
        ValueError: unreadable file, unknown ``kind`` or missing fields (names the file).
    """
    path = Path(path)
    try:
        text = path.read_text()
        d = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (OSError, yaml.YAMLError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read profile {path}: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"profile {path} is not a mapping")
    kind = d.get("kind")
    try:
        if kind == "edge":
            return EdgeProfile(str(d["model"]), str(d.get("version", "")),
                               str(d.get("digest", "")),
                               {str(k): dict(v) for k, v in d["cuts"].items()},
                               int(d.get("reply_bytes", 0)), d.get("machine") or {},
                               str(d.get("created", "")))
        if kind == "cloud":
            cuts = {str(k): {**v, "tail_ms": _tail_map(v.get("tail_ms", {}))}
                    for k, v in d["cuts"].items()}
            return CloudProfile(str(d["model"]), str(d.get("version", "")),
                                str(d.get("digest", "")), cuts, str(d.get("backend", "")),
                                d.get("machine") or {}, str(d.get("created", "")))
        if kind == "link":
            return LinkProfile(str(d.get("endpoint", "")), float(d["rtt_ms"]),
                               float(d["up_Bps"]), float(d["down_Bps"]),
                               tuple(d.get("probes") or ()), d.get("machine") or {},
                               str(d.get("created", "")))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"profile {path} ({kind}) is missing or has a bad field: {e}") from e
    raise ValueError(f"profile {path}: unknown kind {kind!r} (edge, cloud or link)")


def cut_profiles(edge: EdgeProfile, cloud: CloudProfile | None = None, *,
                 edge_speed: float = 1.0, cloud_speed: float = 1.0) -> list[CutProfile]:
    """Join edge and cloud measurements into the cost model's ``CutProfile``s.

    A cut measured on the edge but missing from the cloud profile keeps an empty tail
    curve (its tail is then predicted as free, so warn-worthy); the "edge" cut needs no
    cloud data. ``edge_speed``/``cloud_speed`` > 1 model slower hardware.

    Raises:
        ValueError: the two profiles are for different bundle digests.
    """
    if cloud is not None and edge.digest and cloud.digest and edge.digest != cloud.digest:
        raise ValueError(f"edge profile is for {edge.model} {edge.version} "
                         f"({edge.digest[:12]}) but cloud profile is for {cloud.model} "
                         f"{cloud.version} ({cloud.digest[:12]}); profile the same bundle")
    out = []
    for cid, e in edge.cuts.items():
        c = (cloud.cuts.get(cid, {}) if cloud is not None else {}) if cid != "edge" else {}
        tail = {int(b): float(t) * cloud_speed for b, t in c.get("tail_ms", {}).items()}
        out.append(CutProfile(
            cut_id=cid,
            depth=int(e.get("depth", 0)),
            head_ms=float(e.get("head_ms", 0.0)) * edge_speed,
            tail_ms=tail,
            bytes={str(k): int(v) for k, v in (e.get("bytes") or {}).items()},
            reply_bytes=0 if cid == "edge" else int(e.get("reply_bytes", edge.reply_bytes)),
            encode_ms={str(k): float(v) * edge_speed
                       for k, v in (e.get("encode_ms") or {}).items()},
            decode_ms={str(k): float(v) for k, v in
                       (c.get("decode_ms") or e.get("decode_ms") or {}).items()},
            accuracy=float(e.get("accuracy", 1.0)),
            edge_memory_mb=float(e.get("edge_memory_mb", 0.0)),
        ))
    if cloud is not None and "cloud" in cloud.cuts and "cloud" not in edge.cuts:
        c = cloud.cuts["cloud"]
        out.append(CutProfile("cloud", 0, 0.0,
                              {int(b): float(t) * cloud_speed for b, t in c["tail_ms"].items()},
                              {str(k): int(v) for k, v in (c.get("bytes") or {}).items()},
                              edge.reply_bytes))
    out.sort(key=lambda c: (c.is_edge, c.depth))
    return out


_UNITS = {"bps": 1 / 8, "kbps": 1e3 / 8, "kbit": 1e3 / 8, "mbps": 1e6 / 8, "mbit": 1e6 / 8,
          "gbps": 1e9 / 8, "gbit": 1e9 / 8, "bps_bytes": 1.0, "b/s": 1.0, "kb/s": 1e3,
          "mb/s": 1e6, "gb/s": 1e9}


def _rate(v: Any) -> float:
    """Bytes/s from a number (bytes/s) or a string with a unit ("10mbit", "2 MB/s")."""
    if isinstance(v, (int, float)):
        return float(v)
    s = str(v).strip().lower().replace(" ", "")
    for unit in sorted(_UNITS, key=len, reverse=True):
        if s.endswith(unit):
            return float(s[: -len(unit)]) * _UNITS[unit]
    return float(s)


def _first(d: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return None


def link_conditions(doc: Mapping[str, Any]) -> dict[str, LinkEstimate]:
    """Link conditions (name -> estimate) from a ``links.yaml`` document.

    Accepts ``{profiles: {name: {...}}}``, ``{links: ...}`` or a bare mapping. Each
    entry gives bandwidth as bytes/s (``up_Bps``/``down_Bps``/``rate_Bps``), as bits
    (``up_mbit``, ``rate_mbit``, ``rate_kbit``, ``rate: "10mbit"``) and the RTT as
    ``rtt_ms`` or a one-way ``delay_ms`` (doubled).

    Raises:
        ValueError: an entry without bandwidth or delay.
    """
    body = doc
    for key in ("profiles", "links"):
        if isinstance(doc.get(key), Mapping):
            body = doc[key]
            break
    out: dict[str, LinkEstimate] = {}
    for name, e in body.items():
        if not isinstance(e, Mapping):
            continue
        up = _first(e, ["up_Bps", "uplink_Bps", "rate_Bps"])
        down = _first(e, ["down_Bps", "downlink_Bps", "rate_Bps"])
        for unit, scale in (("mbit", 1e6 / 8), ("kbit", 1e3 / 8), ("mbps", 1e6 / 8),
                            ("kbps", 1e3 / 8)):
            if up is None and _first(e, [f"up_{unit}", f"uplink_{unit}", f"rate_{unit}"]):
                up = float(_first(e, [f"up_{unit}", f"uplink_{unit}", f"rate_{unit}"])) * scale
            if down is None and _first(e, [f"down_{unit}", f"downlink_{unit}",
                                           f"rate_{unit}"]):
                down = float(_first(e, [f"down_{unit}", f"downlink_{unit}",
                                        f"rate_{unit}"])) * scale
        if up is None and _first(e, ["up", "uplink", "rate"]) is not None:
            up = _rate(_first(e, ["up", "uplink", "rate"]))
        if down is None and _first(e, ["down", "downlink", "rate"]) is not None:
            down = _rate(_first(e, ["down", "downlink", "rate"]))
        rtt = _first(e, ["rtt_ms"])
        if rtt is None and _first(e, ["delay_ms", "latency_ms"]) is not None:
            rtt = 2 * float(_first(e, ["delay_ms", "latency_ms"]))
        if up is None or rtt is None:
            raise ValueError(f"link {name!r}: need a bandwidth and rtt_ms/delay_ms, got "
                             f"{sorted(e)}")
        up = _rate(up)
        out[str(name)] = LinkEstimate(up, _rate(down) if down is not None else up, float(rtt))
    if not out:
        raise ValueError("no link conditions found (expected a 'profiles' mapping)")
    return out
