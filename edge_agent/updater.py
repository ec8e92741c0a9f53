"""Model updates on the device: report, fetch, verify, stage, switch.

Every ``report_interval_s`` the :class:`Updater` tells a cloud core (on the agent's own
authenticated link) which version it runs and how its requests went; the answer is the
version the fleet's rollout plan wants here. When that differs from what runs, the
:class:`Downloader` brings the version's edge files (manifest, signature, heads, device
tails, int8 full model) from the core, one chunk at a time under a token-bucket rate cap
so inference keeps the link, into ``<state_dir>/staging/<model>/<version>/``. A partial
file is resumed from its size after any interruption. The manifest must hash to the
digest the cloud named and carry a valid signature of the configured key before any
other file is fetched; every file must match the manifest's hash before it is renamed
into place (fsynced); the whole directory is verified once more and then renamed
atomically into ``<state_dir>/versions/<model>/<version>/``. Only then is the version
loaded, warmed, and switched to between requests. Anything that fails leaves the running
version serving, is counted by reason and shows in ``status``; a bad file is deleted and
fetched again on the next try. The last ``keep`` versions stay on disk, so a rollback
needs no download.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from cryptography.exceptions import InvalidSignature

from contract.bundle import MANIFEST, SIGNATURE, Bundle, Manifest, sha256_file
from contract.deadline import Deadline
from contract.errors import BundleError
from edge_agent.config import UpdateConfig
from edge_agent.errors import UpdateFailed
from transport.base import ClientLink
from transport.errors import TransportError
from transport.messages import Chunk, Directive, Fetch, Report

__all__ = ["Downloader", "TokenBucket", "UpdateHost", "Updater"]

log = logging.getLogger(__name__)

_CALL_TIMEOUT_S = 10.0
_MAX_RETRY_S = 30.0
_DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_NICE = 10


class TokenBucket:
    """``rate`` bytes per second with a burst of ``burst`` bytes (thread-safe)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._tokens = burst
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int, stop: threading.Event | None = None) -> None:
        """Wait until ``n`` bytes may be sent (a request above the burst waits for it)."""
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
                self._at = now
                if self._tokens >= min(n, self.burst):
                    self._tokens -= n
                    return
                wait = (min(n, self.burst) - self._tokens) / self.rate
            if stop is not None and stop.wait(wait):
                return
            if stop is None:
                time.sleep(wait)


def _call(link: ClientLink, msg: Fetch | Report) -> Any:
    """Send a control message on ``link`` and wait for its answer.

    Raises:
        UpdateFailed: (``transport``) no answer, or an error answer.
    """
    try:
        # Links send and match any message with a request id and a deadline this way.
        reply = link.submit(msg).result(_CALL_TIMEOUT_S + 1)  # type: ignore[arg-type]
    except (TransportError, TimeoutError) as e:
        raise UpdateFailed("transport", f"no answer from the cloud: {e}") from None
    if not getattr(reply, "ok", False):
        status = getattr(reply, "status", None)
        name = status.name if status is not None else "?"
        raise UpdateFailed("transport", f"the cloud refused: {name} {reply.error}")
    return reply


def _disk(e: OSError, what: str) -> UpdateFailed:
    reason = "disk" if e.errno in _DISK_ERRNOS else "io"
    return UpdateFailed(reason, f"{what}: {e.strerror or e}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _edge_files(m: Manifest) -> list[str]:
    need = {m.full_int8, *(c.head for c in m.cuts if c.head),
            *(c.device_tail for c in m.cuts if c.device_tail)}
    return sorted(need)


@dataclass
class Progress:
    """What the downloader is doing (for ``status``)."""

    version: str = ""
    done_bytes: int = 0
    files: int = 0


class Downloader:
    """Fetches, verifies and installs bundle versions under ``state_dir``.

    Args:
        cfg: the ``update`` section.
        public_key: the Ed25519 key bundles must be signed with (None: unsigned allowed).
        agent_id: this agent (sent with every fetch; the cloud uses its authenticated id).
        on_bytes: called with the size of every chunk received (metrics).
    """

    def __init__(self, cfg: UpdateConfig, public_key: Any, agent_id: str,
                 on_bytes: Callable[[int], None] | None = None,
                 stop: threading.Event | None = None) -> None:
        assert cfg.state_dir is not None
        self.cfg = cfg
        self.root = Path(cfg.state_dir)
        self._key = public_key
        self._agent_id = agent_id
        self._bucket = TokenBucket(cfg.max_rate_bytes_per_s, cfg.chunk_bytes)
        self._on_bytes = on_bytes or (lambda n: None)
        self._stop = stop or threading.Event()
        self.progress = Progress()

    def installed(self, model: str, version: str) -> Path:
        return self.root / "versions" / model / version

    def kept(self, model: str) -> list[str]:
        """Versions of ``model`` installed here, oldest first."""
        d = self.root / "versions" / model
        if not d.is_dir():
            return []
        return [p.name for p in sorted(d.iterdir(), key=lambda p: p.stat().st_mtime)
                if p.is_dir() and (p / MANIFEST).exists()]

    def load(self, path: Path, digest: str) -> Bundle:
        """Verify a bundle directory (signature, every edge file's hash, the digest).

        Raises:
            UpdateFailed: (``verify``) anything does not match.
        """
        try:
            bundle = Bundle.load(path, self._key, require_signature=self._key is not None,
                                 role="edge")
        except BundleError as e:
            raise UpdateFailed("verify", str(e)) from None
        if bundle.digest != digest:
            raise UpdateFailed("verify", f"{path} has digest {bundle.digest[:12]}…, the cloud "
                                         f"named {digest[:12]}…")
        return bundle

    def obtain(self, link: ClientLink, model: str, version: str, digest: str) -> Bundle:
        """The verified bundle of ``model:version``: from disk when kept, else downloaded.

        Raises:
            UpdateFailed: the version could not be fetched, verified or stored; nothing
                half-installed is left behind (a partial download is kept to resume).
        """
        final = self.installed(model, version)
        if (final / MANIFEST).exists():
            try:
                bundle = self.load(final, digest)
                os.utime(final)  # most recently used: pruned last
                return bundle
            except UpdateFailed as e:
                log.warning("kept version %s:%s no longer verifies (%s); fetching again",
                            model, version, e)
                shutil.rmtree(final, ignore_errors=True)
        stage = self.root / "staging" / model / version
        self.progress = Progress(version=version)
        try:
            stage.mkdir(parents=True, exist_ok=True)
            raw = self._file(link, model, version, MANIFEST, stage)
            if hashlib.sha256(raw.read_bytes()).hexdigest() != digest:
                raw.unlink()
                raise UpdateFailed("verify", f"the manifest of {model}:{version} does not "
                                             f"hash to the digest {digest[:12]}… named")
            sig = self._file(link, model, version, SIGNATURE, stage) if self._key else None
            manifest = self._check_manifest(raw, sig)
            for rel in _edge_files(manifest):
                self._file(link, model, version, rel, stage, manifest.files.get(rel))
            bundle = self.load(stage, digest)
            _fsync_dir(stage)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage, final)
            _fsync_dir(final.parent)
        except OSError as e:
            raise _disk(e, f"storing {model}:{version}") from None
        finally:
            self.progress = Progress()
        log.info("installed %s:%s in %s", model, version, final)
        return Bundle(path=final, manifest=bundle.manifest, digest=bundle.digest,
                      signed=bundle.signed)

    def _check_manifest(self, raw: Path, sig: Path | None) -> Manifest:
        data = raw.read_bytes()
        if self._key is not None:
            assert sig is not None
            try:
                self._key.verify(sig.read_bytes(), data)
            except InvalidSignature:
                sig.unlink()
                raise UpdateFailed("verify", f"bad signature on {raw}: modified in transit "
                                             "or signed with another key") from None
        try:
            return Manifest.model_validate(yaml.safe_load(data))
        except Exception as e:  # a signed but unreadable manifest: refuse it
            raise UpdateFailed("verify", f"malformed manifest: {type(e).__name__}") from None

    def _file(self, link: ClientLink, model: str, version: str, rel: str, stage: Path,
              sha256: str | None = None) -> Path:
        """One file into ``stage`` (resumed from a partial one), hash-checked, fsynced."""
        dst = (stage / rel).resolve()
        if stage.resolve() not in dst.parents:
            raise UpdateFailed("verify", f"manifest names a file outside the bundle: {rel!r}")
        if dst.exists() and (sha256 is None or sha256_file(dst) == sha256):
            return dst
        part = dst.with_name(dst.name + ".part")
        dst.parent.mkdir(parents=True, exist_ok=True)
        offset = part.stat().st_size if part.exists() else 0
        h = hashlib.sha256()
        with open(part, "ab") as f:
            if offset:  # resume: hash what is already there
                with open(part, "rb") as old:
                    for block in iter(lambda: old.read(1 << 20), b""):
                        h.update(block)
            while not self._stop.is_set():
                self._bucket.take(self.cfg.chunk_bytes, self._stop)
                chunk: Chunk = _call(link, Fetch(
                    request_id=uuid.uuid4().hex, agent_id=self._agent_id, model=model,
                    version=version, file=rel, offset=offset, length=self.cfg.chunk_bytes,
                    deadline=Deadline.after_ms(_CALL_TIMEOUT_S * 1e3)))
                if chunk.offset != offset or offset + len(chunk.data) > chunk.total:
                    raise UpdateFailed("transport", f"chunk of {rel} at {chunk.offset}, "
                                                    f"asked for {offset}")
                f.write(chunk.data)
                h.update(chunk.data)
                offset += len(chunk.data)
                self.progress.done_bytes += len(chunk.data)
                self._on_bytes(len(chunk.data))
                if offset >= chunk.total:
                    break
                if not chunk.data:
                    raise UpdateFailed("transport", f"empty chunk of {rel} at {offset}")
            f.flush()
            os.fsync(f.fileno())
        if self._stop.is_set():
            raise UpdateFailed("transport", "agent stopping")
        if sha256 is not None and h.hexdigest() != sha256:
            part.unlink()
            raise UpdateFailed("verify", f"{rel} of {model}:{version} arrived with sha256 "
                                         f"{h.hexdigest()[:12]}…, the signed manifest says "
                                         f"{sha256[:12]}…; refused, will fetch it again")
        os.replace(part, dst)
        self.progress.files += 1
        return dst

    def prune(self, model: str, protect: set[str]) -> list[str]:
        """Delete installed versions beyond the last ``keep`` (never one in ``protect``)."""
        kept = self.kept(model)
        removed = []
        for v in kept[:max(0, len(kept) - self.cfg.keep)]:
            if v not in protect:
                shutil.rmtree(self.installed(model, v), ignore_errors=True)
                removed.append(v)
        return removed


class UpdateHost(Protocol):
    """What the updater needs from the agent."""

    def links(self) -> list[ClientLink]: ...

    def current_bundle(self) -> Bundle: ...

    def switch(self, bundle: Bundle) -> None: ...

    def request_counts(self) -> tuple[int, int, int, float, float]: ...


class Updater:
    """The report/update loop of one agent (a daemon thread).

    Args:
        host: the agent.
        cfg: the ``update`` section (``state_dir`` set).
        public_key: the bundle signing key (None: unsigned bundles allowed).
        agent_id: this agent.
        initial: the bundle the agent started with (``bundle.path``; a rollback to it
            needs no download).
        metrics: the agent's metrics (``update_bytes``, ``update_failures``).
    """

    def __init__(self, host: UpdateHost, cfg: UpdateConfig, public_key: Any, agent_id: str,
                 initial: Bundle, metrics: Any = None) -> None:
        self.host, self.cfg, self.agent_id = host, cfg, agent_id
        self._metrics = metrics
        self._stop = threading.Event()
        self.downloader = Downloader(
            cfg, public_key, agent_id, stop=self._stop,
            on_bytes=metrics.update_bytes.inc if metrics is not None else None)
        self._initial = initial
        self.previous = ""
        self.error = ""
        self.switches = 0
        self._failed: dict[str, tuple[float, float]] = {}  # digest -> (retry at, wait)
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"edge-updater-{agent_id}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=_CALL_TIMEOUT_S + 5)

    def status(self) -> dict[str, Any]:
        cur = self.host.current_bundle()
        p = self.downloader.progress
        return {"current": cur.version, "staged": p.version,
                "staged_bytes": p.done_bytes, "previous": self.previous,
                "kept": self.downloader.kept(cur.name), "error": self.error,
                "switches": self.switches}

    def _loop(self) -> None:
        # Hashing, session building and warm-up run on this thread: at a lower CPU
        # priority (Linux threads are tasks), so they yield to requests.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _NICE)
        while not self._stop.wait(self.cfg.report_interval_s):
            try:
                self.step()
            except Exception:  # the loop must outlive any bug in one step
                log.exception("update step failed unexpectedly")

    def step(self) -> bool:
        """Report once and act on the answer; True when the agent switched versions."""
        links = [link for link in self.host.links() if link.connected]
        if not links:
            return False
        cur = self.host.current_bundle()
        requests, cloud, errors, p50, p99 = self.host.request_counts()
        try:
            d: Directive = _call(links[0], Report(
                request_id=uuid.uuid4().hex, agent_id=self.agent_id, model=cur.name,
                version=cur.version, digest=cur.digest,
                deadline=Deadline.after_ms(_CALL_TIMEOUT_S * 1e3),
                staged=self.downloader.progress.version, previous=self.previous,
                labels=list(self.cfg.labels), requests=requests, cloud=cloud, errors=errors,
                p50_ms=p50, p99_ms=p99, update_error=self.error))
        except UpdateFailed as e:
            log.debug("report not answered: %s", e)
            return False
        t = d.target
        if t is None or t["model"] != cur.name or t["digest"] == cur.digest:
            return False
        retry = self._failed.get(t["digest"])
        if retry is not None and time.monotonic() < retry[0]:
            return False
        try:
            bundle = self._obtain(links[0], t)
            self.host.switch(bundle)
        except UpdateFailed as e:
            self._fail(t, e)
            return False
        self._failed.pop(t["digest"], None)
        self.previous, self.error = cur.version, ""
        self.switches += 1
        self.downloader.prune(cur.name, {bundle.version, cur.version})
        log.info("agent %s now runs %s:%s (was %s)", self.agent_id, bundle.name,
                 bundle.version, cur.version)
        return True

    def _obtain(self, link: ClientLink, t: dict[str, str]) -> Bundle:
        if t["digest"] == self._initial.digest:
            return self._initial
        return self.downloader.obtain(link, t["model"], t["version"], t["digest"])

    def _fail(self, t: dict[str, str], e: UpdateFailed) -> None:
        _, wait = self._failed.get(t["digest"], (0.0, self.cfg.retry_s / 2))
        wait = min(_MAX_RETRY_S, wait * 2)
        self._failed[t["digest"]] = (time.monotonic() + wait, wait)
        self.error = f"{e.reason}: {e}"[:300]
        if self._metrics is not None:
            self._metrics.update_failures.labels(e.reason).inc()
        log.warning("update to %s:%s failed (%s); still serving %s; retry in %.1f s",
                    t["model"], t["version"], self.error,
                    self.host.current_bundle().version, wait)
