"""Serve the edge side of bundle versions to agents, in chunks, over their own links.

An agent that is told to run another version downloads its manifest, signature, heads,
device tails and int8 full model from the core it already talks to: the request arrives
on the agent's authenticated link (ZeroMQ allow-list, per-agent AEAD on MQTT), so a
revoked or unknown agent cannot download anything. Tails and the fp32 full model never
leave the cloud: a file is served only when the version's manifest names it as an edge
file. Any version on disk can be served, loaded or not (rollback needs no load).

Reads happen on the caller's thread (the core runs them on its control pool, never on
the inference batcher). Every refusal is counted by reason.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import yaml
from pydantic import ValidationError

from contract.bundle import MANIFEST, SIGNATURE, Manifest, sha256_file
from transport.messages import Chunk, Fetch, Status

__all__ = ["MAX_CHUNK", "Distributor", "edge_files"]

log = logging.getLogger(__name__)

#: the largest chunk served at once: small enough that a chunk never holds the link long
MAX_CHUNK = 256 * 1024


def edge_files(manifest: Manifest) -> set[str]:
    """Files of a bundle an edge device needs (what may leave the cloud)."""
    need = {manifest.full_int8}
    need.update(c.head for c in manifest.cuts if c.head)
    need.update(c.device_tail for c in manifest.cuts if c.device_tail)
    return {f for f in need if f in manifest.files}


class _Refused(Exception):
    def __init__(self, status: Status, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


class Distributor:
    """Chunks of edge files of ``root/<model>/<version>/``.

    Args:
        root: the repository directory.
        on_refused: called with a reason label for every refused fetch (metrics).
        on_served: called with the bytes of every chunk served (metrics).
    """

    def __init__(self, root: Path, on_refused: object = None, on_served: object = None) -> None:
        self.root = Path(root)
        self._on_refused = on_refused
        self._on_served = on_served
        self._lock = threading.Lock()
        self._meta: dict[tuple[str, str], tuple[bytes, set[str], dict[str, str]]] = {}

    def _version(self, model: str, version: str) -> tuple[bytes, set[str], dict[str, str]]:
        """(manifest bytes, servable files, sha256 by file) of a version on disk."""
        key = (model, version)
        with self._lock:
            if key in self._meta:
                return self._meta[key]
        for part in (model, version):
            if not part or part.startswith(".") or "/" in part or "\\" in part:
                raise _Refused(Status.MODEL_NOT_FOUND, "bad_name",
                               f"invalid model/version {model!r}:{version!r}")
        path = self.root / model / version / MANIFEST
        try:
            raw = path.read_bytes()
        except OSError:
            raise _Refused(Status.MODEL_NOT_FOUND, "unknown_version",
                           f"no bundle {model}:{version} on this core") from None
        try:
            manifest = Manifest.model_validate(yaml.safe_load(raw))
        except (yaml.YAMLError, ValidationError, TypeError):
            raise _Refused(Status.INTERNAL, "bad_manifest",
                           f"the manifest of {model}:{version} is unreadable here") from None
        allowed = edge_files(manifest)
        hashes = {f: manifest.files[f] for f in allowed}
        hashes[MANIFEST] = hashlib.sha256(raw).hexdigest()
        allowed |= {MANIFEST, SIGNATURE}
        meta = (raw, allowed, hashes)
        with self._lock:
            self._meta[key] = meta
        return meta

    def serve(self, fetch: Fetch) -> Chunk:
        """The chunk ``fetch`` asks for, or a Chunk with an error status (never raises)."""
        try:
            return self._serve(fetch)
        except _Refused as e:
            log.info("fetch %s:%s/%s by %s refused: %s", fetch.model, fetch.version,
                     fetch.file, fetch.agent_id, e)
            if callable(self._on_refused):
                self._on_refused(e.reason)
            return Chunk(request_id=fetch.request_id, status=e.status, error=str(e),
                         file=fetch.file)

    def _serve(self, fetch: Fetch) -> Chunk:
        _, allowed, hashes = self._version(fetch.model, fetch.version)
        if fetch.file not in allowed:
            raise _Refused(Status.INVALID_INPUT, "not_edge_file",
                           f"{fetch.file!r} is not an edge file of {fetch.model}:"
                           f"{fetch.version}; only heads, device tails, the int8 full "
                           "model, the manifest and its signature are served")
        path = self.root / fetch.model / fetch.version / fetch.file
        try:
            with open(path, "rb") as f:
                total = f.seek(0, 2)
                if fetch.offset > total:
                    raise _Refused(Status.INVALID_INPUT, "bad_offset",
                                   f"offset {fetch.offset} past the end of {fetch.file} "
                                   f"({total} bytes)")
                f.seek(fetch.offset)
                data = f.read(max(0, min(fetch.length, MAX_CHUNK)))
        except OSError as e:
            raise _Refused(Status.MODEL_NOT_FOUND, "missing_file",
                           f"{fetch.model}:{fetch.version}/{fetch.file} unreadable: "
                           f"{e.strerror}") from None
        sha = hashes.get(fetch.file) or sha256_file(path)
        if callable(self._on_served):
            self._on_served(len(data))
        return Chunk(request_id=fetch.request_id, file=fetch.file, offset=fetch.offset,
                     total=total, sha256=sha, data=data)
