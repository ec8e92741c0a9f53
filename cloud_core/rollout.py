"""Rollout plans: which bundle version each agent of the fleet should run.

A split model is one model in two places, so a new version is moved to the devices by
the core that serves its tails. A :class:`Plan` names a *stable* version (what the fleet
runs) and a *target*; its state decides each agent's version:

- ``canary``: agents in the canary set run the target, the others the stable version.
  The set is either a share of the fleet chosen by a stable hash of the agent id
  (``sha256(agent_id)`` read as a fraction below the share: an agent's membership never
  changes as the fleet grows), a count (the N agents with the lowest hashes among those
  that reported), or agents carrying one of the plan's labels.
- ``promoted``: every agent runs the target.
- ``paused``: agents are told nothing new; each keeps what it runs.
- ``rolled_back``: every agent runs the stable version again (by hand, or automatically
  when the canary's error rate or p99 crosses the plan's thresholds).

Agents report in every second or so (:class:`transport.messages.Report`); the answer to
each report is that agent's target. :class:`FleetStats` turns the reports into
per-version agents, request rates, error rates and p50/p99 over a sliding window. Plans
persist as JSON (atomic write + fsync), so a restarted core resumes them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cloud_core.errors import RolloutError
from transport.messages import Report

__all__ = ["STATES", "FleetStats", "Plan", "PlanStore", "RolloutManager", "Thresholds",
           "agent_fraction"]

log = logging.getLogger(__name__)

#: plan states, with the number ``tiersplit_cloud_rollout_state`` reports for each
STATES = {"none": 0, "canary": 1, "promoted": 2, "paused": 3, "rolled_back": 4}
_EVENTS_KEPT = 50
_P99_SAMPLES = 100


def agent_fraction(agent_id: str) -> float:
    """A stable number in [0, 1) for an agent id (its canary rank)."""
    digest = hashlib.sha256(agent_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


@dataclass(frozen=True)
class Thresholds:
    """When a canary is rolled back automatically: the target's error rate (error answers
    per cloud answer, judged once it has ``min_answers``) above ``max_error_rate``, or its
    p99 above ``max_p99_ratio`` x the stable version's (judged once both versions served
    at least 100 requests in the window); either once the target has served
    ``min_requests`` in the window."""

    max_error_rate: float = 0.05
    max_p99_ratio: float = 2.0
    min_requests: int = 20
    min_answers: int = 5


@dataclass
class Plan:
    """One model's rollout (JSON-serialisable)."""

    model: str
    stable: str
    stable_digest: str
    target: str
    target_digest: str
    canary: str = ""  # "10%", "1" (agents) or "" (labels only / none)
    labels: list[str] = field(default_factory=list)
    state: str = "canary"
    thresholds: Thresholds = field(default_factory=Thresholds)
    reason: str = ""
    max_parallel: int = 0  # agents switching to the target at once (0: no limit)
    events: list[dict[str, Any]] = field(default_factory=list)

    def note(self, what: str) -> None:
        self.events.append({"at": time.time(), "state": self.state, "what": what})
        del self.events[:-_EVENTS_KEPT]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        d = dict(d)
        d["thresholds"] = Thresholds(**d.get("thresholds", {}))
        return cls(**d)


def parse_canary(spec: str) -> tuple[float | None, int | None]:
    """``"10%"`` -> (0.10, None); ``"1"`` -> (None, 1); ``""`` -> (None, None).

    Raises:
        RolloutError: anything else.
    """
    spec = spec.strip()
    if not spec:
        return None, None
    try:
        if spec.endswith("%"):
            share = float(spec[:-1]) / 100.0
            if not 0.0 <= share <= 1.0 or math.isnan(share):
                raise ValueError
            return share, None
        count = int(spec)
        if count < 0:
            raise ValueError
        return None, count
    except ValueError:
        raise RolloutError(f"--canary must be a share like 10% or a count of agents like 1, "
                           f"got {spec!r}") from None


class PlanStore:
    """Plans by model in one JSON file, written atomically (temp file, fsync, rename)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Plan]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.error("rollout plans in %s unreadable (%s); starting with none", self.path, e)
            return {}
        plans = {}
        for model, d in raw.get("plans", {}).items():
            try:
                plans[model] = Plan.from_json(d)
            except (TypeError, ValueError) as e:
                log.error("rollout plan of %s in %s unreadable: %s", model, self.path, e)
        return plans

    def stamp(self) -> int | None:
        """The file's modification time (ns), None when it does not exist yet."""
        try:
            return self.path.stat().st_mtime_ns
        except OSError:
            return None

    def save(self, plans: dict[str, Plan]) -> None:
        data = json.dumps({"plans": {m: p.to_json() for m, p in plans.items()}}, indent=1)
        # unique per writer: cores sharing the file never write the same temp file
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}"
                                  ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class _Seen:
    model: str
    version: str
    digest: str
    labels: list[str]
    p50_ms: float
    p99_ms: float
    staged: str
    previous: str
    update_error: str
    at: float
    history: deque[tuple[float, int, int, int]] = field(default_factory=deque)


class FleetStats:
    """The agents' latest reports and their counters over a sliding window."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._lock = threading.Lock()
        self._agents: dict[str, _Seen] = {}

    def record(self, r: Report, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            prev = self._agents.get(r.agent_id)
            hist = prev.history if prev is not None and prev.version == r.version else deque()
            if hist and r.requests < hist[-1][1]:  # the agent restarted: counters reset
                hist = deque()
            hist.append((now, r.requests, r.cloud, r.errors))
            while len(hist) > 2 and hist[1][0] < now - self.window_s:
                hist.popleft()
            self._agents[r.agent_id] = _Seen(r.model, r.version, r.digest, list(r.labels),
                                             r.p50_ms, r.p99_ms, r.staged, r.previous,
                                             r.update_error, now, hist)

    def agents(self, model: str, now: float | None = None) -> dict[str, _Seen]:
        """Agents of ``model`` that reported within the window."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return {a: s for a, s in self._agents.items()
                    if s.model == model and s.at >= now - self.window_s}

    def by_version(self, model: str, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Per version: agents, requests/s, error rate (error answers per cloud answer:
        a version whose tails fail shows even while breakers keep most requests on the
        devices), request-weighted p50/p99."""
        now = time.monotonic() if now is None else now
        out: dict[str, dict[str, Any]] = {}
        for agent, s in sorted(self.agents(model, now).items()):
            v = out.setdefault(s.version, {"agents": [], "requests": 0, "cloud": 0,
                                           "errors": 0, "seconds": 0.0, "_w": 0.0,
                                           "_p50": 0.0, "_p99": 0.0})
            v["agents"].append(agent)
            first, last = s.history[0], s.history[-1]
            n = last[1] - first[1]
            v["requests"] += n
            v["cloud"] += last[2] - first[2]
            v["errors"] += last[3] - first[3]
            v["seconds"] = max(v["seconds"], last[0] - first[0])
            w = max(n, 1)
            v["_w"] += w
            v["_p50"] += s.p50_ms * w
            v["_p99"] += s.p99_ms * w
        for v in out.values():
            w = v.pop("_w")
            v["p50_ms"] = round(v.pop("_p50") / w, 3)
            v["p99_ms"] = round(v.pop("_p99") / w, 3)
            v["rate_per_s"] = round(v["requests"] / v["seconds"], 3) if v["seconds"] else 0.0
            v["error_rate"] = round(v["errors"] / v["cloud"], 4) if v["cloud"] else 0.0
        return out


class RolloutManager:
    """Plans, their persistence, and each agent's target.

    Args:
        store: where plans persist.
        stats: the fleet's reports.
        digest_of: ``(model, version) -> manifest digest`` of a version this core can
            serve; raises :class:`RolloutError` when it cannot.
        loaded_digest: ``digest -> (model, version)`` of a version loaded here, or None.
        active: ``model -> version`` the core's repository calls active, or None.
        on_change: called after every state change (metrics).
        on_loaded: called with the plans read from the file when another core sharing it
            changed them (this core then loads their versions).
        refresh_s: how often (at most) the file is checked for such changes.
    """

    def __init__(self, store: PlanStore, stats: FleetStats,
                 digest_of: Callable[[str, str], str],
                 loaded_digest: Callable[[str], tuple[str, str] | None],
                 active: Callable[[str], str | None],
                 on_change: Callable[[Plan], None] | None = None,
                 on_loaded: Callable[[dict[str, Plan]], None] | None = None,
                 refresh_s: float = 1.0) -> None:
        self.store, self.stats = store, stats
        self._digest_of, self._loaded, self._active = digest_of, loaded_digest, active
        self._on_change, self._on_loaded = on_change, on_loaded
        self._refresh_s = refresh_s
        self._checked = time.monotonic()
        self._lock = threading.RLock()
        self._moving: dict[str, dict[str, float]] = {}  # model -> agent -> told at
        self._stamp = store.stamp()
        self.plans = store.load()
        for plan in self.plans.values():
            log.info("resumed rollout of %s: %s -> %s (%s)", plan.model, plan.stable,
                     plan.target, plan.state)

    # -- transitions -----------------------------------------------------------------
    def start(self, model: str, version: str, canary: str = "", labels: list[str] | None = None,
              thresholds: Thresholds | None = None, stable: str | None = None,
              max_parallel: int = 0) -> Plan:
        """A new plan in state ``canary`` (``promoted`` when the canary is 100%);
        ``max_parallel`` agents at most switch to the target at a time (0: all at once)."""
        if max_parallel < 0:
            raise RolloutError(f"max_parallel must be >= 0, got {max_parallel}")
        share, count = parse_canary(canary)
        labels = [x for x in (labels or []) if x]
        self.refresh(force=True)
        with self._lock:
            current = self.plans.get(model)
            if current is not None and current.state in ("canary", "paused"):
                raise RolloutError(f"a rollout of {model} to {current.target} is "
                                   f"{current.state}; promote or roll it back first")
            stable = stable or self._fleet_version(model, version, current)
            if stable is None:
                raise RolloutError(f"no stable version of {model} known (no agent has "
                                   "reported and none is loaded); pass --stable")
            if stable == version:
                raise RolloutError(f"{model}: the fleet already runs {version}")
            plan = Plan(model=model, stable=stable, stable_digest=self._digest_of(model, stable),
                        target=version, target_digest=self._digest_of(model, version),
                        canary=canary.strip(), labels=labels,
                        thresholds=thresholds or Thresholds(), max_parallel=max_parallel)
            if share is not None and share >= 1.0:
                plan.state = "promoted"
            if share is None and count is None and not labels:
                raise RolloutError("a rollout needs --canary (share or count) or --labels")
            plan.note(f"rollout {stable} -> {version} (canary {canary or '-'}, "
                      f"labels {labels or '-'})")
            self._commit(plan)
            return plan

    def promote(self, model: str) -> Plan:
        return self._move(model, "promoted", ("canary", "paused"), "promoted to every agent")

    def pause(self, model: str) -> Plan:
        return self._move(model, "paused", ("canary", "promoted"), "paused")

    def resume(self, model: str) -> Plan:
        return self._move(model, "canary", ("paused",), "resumed")

    def rollback(self, model: str, reason: str = "rolled back by the operator") -> Plan:
        return self._move(model, "rolled_back", ("canary", "promoted", "paused"), reason)

    def _move(self, model: str, state: str, allowed: tuple[str, ...], what: str) -> Plan:
        self.refresh(force=True)
        with self._lock:
            plan = self._plan(model)
            if plan.state not in allowed:
                raise RolloutError(f"the rollout of {model} is {plan.state}; cannot go to "
                                   f"{state} (allowed from {', '.join(allowed)})")
            plan.state = state
            if state == "rolled_back":
                plan.reason = what
            plan.note(what)
            self._commit(plan)
            log.warning("rollout of %s (%s -> %s): %s", model, plan.stable, plan.target, what)
            return plan

    def _plan(self, model: str) -> Plan:
        plan = self.plans.get(model)
        if plan is None:
            raise RolloutError(f"no rollout of {model!r} (known: {sorted(self.plans) or 'none'})")
        return plan

    def _commit(self, plan: Plan) -> None:
        self.plans[plan.model] = plan
        self.store.save(self.plans)
        self._stamp = self.store.stamp()
        if self._on_change is not None:
            self._on_change(plan)

    def refresh(self, force: bool = False) -> bool:
        """Re-read the plans if another core sharing the file changed them (checked at
        most every ``refresh_s``); True when they were re-read."""
        now = time.monotonic()
        with self._lock:
            if not force and now - self._checked < self._refresh_s:
                return False
            self._checked = now
            stamp = self.store.stamp()
            if stamp == self._stamp or stamp is None:
                return False
            self._stamp = stamp
            self.plans = self.store.load()
            plans = dict(self.plans)
        log.info("rollout plans changed on disk: %s", {m: p.state for m, p in plans.items()})
        for plan in plans.values():
            if self._on_change is not None:
                self._on_change(plan)
        if self._on_loaded is not None:
            self._on_loaded(plans)
        return True

    def _fleet_version(self, model: str, target: str, current: Plan | None) -> str | None:
        """The version most reporting agents run (else the last plan's outcome, else the
        newest loaded version other than the target)."""
        counts: dict[str, int] = {}
        for s in self.stats.agents(model).values():
            if s.version != target:
                counts[s.version] = counts.get(s.version, 0) + 1
        if counts:
            return max(counts, key=lambda v: counts[v])
        if current is not None:
            return current.target if current.state == "promoted" else current.stable
        active = self._active(model)
        return active if active != target else None

    # -- per agent -------------------------------------------------------------------
    def in_canary(self, plan: Plan, agent_id: str, labels: list[str]) -> bool:
        if plan.labels and set(plan.labels) & set(labels):
            return True
        share, count = parse_canary(plan.canary)
        if share is not None:
            return agent_fraction(agent_id) < share
        if count:
            ranked = sorted(self.stats.agents(plan.model), key=agent_fraction)
            if agent_id not in ranked:
                ranked = sorted([*ranked, agent_id], key=agent_fraction)
            return agent_id in ranked[:count]
        return False

    def on_report(self, r: Report) -> dict[str, str] | None:
        """Record a report, check the plan's thresholds, and say what the agent should
        run (None: keep what it runs)."""
        self.stats.record(r)
        self.refresh()
        with self._lock:
            plan = self.plans.get(r.model)
            if plan is not None and plan.state == "canary":
                self._check(plan)
            if plan is None:
                return self._no_plan_target(r)
            if plan.state == "paused":
                return None
            go = plan.state == "promoted" or (
                plan.state == "canary" and self.in_canary(plan, r.agent_id, r.labels))
            if go and r.version != plan.target and not self._may_move(plan, r):
                return None  # enough agents are switching now: keep what you run
            version, digest = ((plan.target, plan.target_digest) if go
                               else (plan.stable, plan.stable_digest))
            return {"model": plan.model, "version": version, "digest": digest}

    def _may_move(self, plan: Plan, r: Report) -> bool:
        """Whether ``r``'s agent may start moving to the target now: at most
        ``plan.max_parallel`` agents at a time (0: no limit) are told to move and not yet
        there. An agent whose update failed frees its slot; rollbacks are never limited."""
        if not plan.max_parallel:
            return True
        now = time.monotonic()
        moving = self._moving.setdefault(plan.model, {})
        seen = self.stats.agents(plan.model)
        for agent in list(moving):
            s = seen.get(agent)
            if (s is None or s.version == plan.target or s.update_error
                    or now - moving[agent] > self.stats.window_s):
                del moving[agent]
        if r.agent_id not in moving and len(moving) >= plan.max_parallel:
            return False
        moving.setdefault(r.agent_id, now)
        return True

    def _no_plan_target(self, r: Report) -> dict[str, str] | None:
        """Without a plan an agent keeps its version while this core serves it; one whose
        version is gone is moved to the active version (rather than mismatching)."""
        if self._loaded(r.digest) is not None:
            return None
        active = self._active(r.model)
        if active is None:
            return None
        try:
            return {"model": r.model, "version": active,
                    "digest": self._digest_of(r.model, active)}
        except RolloutError:
            return None

    def _check(self, plan: Plan) -> None:
        stats = self.stats.by_version(plan.model)
        t = stats.get(plan.target)
        th = plan.thresholds
        if t is None or t["requests"] < th.min_requests:
            return
        # errors need answers from the cloud to judge; latency needs requests
        why = ""
        if t["cloud"] >= th.min_answers and t["error_rate"] > th.max_error_rate:
            why = (f"error rate {t['error_rate']:.1%} of {plan.target} above "
                   f"{th.max_error_rate:.1%}")
        s = stats.get(plan.stable)
        enough = max(th.min_requests, _P99_SAMPLES)  # a p99 of fewer is only their maximum
        if not why and s is not None and min(s["requests"], t["requests"]) >= enough \
                and s["p99_ms"] > 0 and t["p99_ms"] > th.max_p99_ratio * s["p99_ms"]:
            why = (f"p99 {t['p99_ms']:.1f} ms of {plan.target} above {th.max_p99_ratio}x "
                   f"{plan.stable}'s {s['p99_ms']:.1f} ms")
        if why:
            self.rollback(plan.model, f"automatic rollback: {why}")

    # -- reporting -------------------------------------------------------------------
    def status(self, model: str | None = None) -> dict[str, Any]:
        self.refresh(force=True)
        with self._lock:
            models = [model] if model is not None else sorted(self.plans)
            out: dict[str, Any] = {}
            for m in models:
                plan = self.plans.get(m)
                agents = self.stats.agents(m)
                out[m] = {
                    "plan": plan.to_json() if plan is not None else None,
                    "versions": self.stats.by_version(m),
                    "agents": {a: {"version": s.version, "staged": s.staged,
                                   "previous": s.previous, "labels": s.labels,
                                   "update_error": s.update_error}
                               for a, s in sorted(agents.items())},
                }
            return out
