"""On-disk cache of a partition run's expensive, deterministic results.

A re-run that changes only what is judged (the accuracy floor) redoes nothing that the
floor cannot change: the calibration ranges, each quantized head and each candidate's
error figures on the held-back samples are looked up by a digest of everything they
were computed from (the exact model or head bytes, the quantization settings, the nodes
left in float, the calibration or held-back data). A different floor then only re-judges
those figures; held-back evaluation is never skipped by a hit, because a hit *is* the
held-back evaluation of the very same bytes on the very same held-back data.

Layout: ``<root>/<model sha256>/<kind>-<key>.<ext>``, written atomically (temp file +
rename) so a killed run never leaves a half-written entry that a later run would trust.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from partitioner import stages

log = logging.getLogger(__name__)

__all__ = ["PartitionCache", "current", "default_root", "digest_arrays", "digest_model",
           "key_of", "memoized_json", "memoized_model"]


def default_root() -> Path:
    """``$XDG_CACHE_HOME/tiersplit/partition`` (``~/.cache/tiersplit/partition``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tiersplit" / "partition"


def digest_model(model: onnx.ModelProto) -> str:
    """sha256 of the serialized model."""
    return hashlib.sha256(model.SerializeToString()).hexdigest()


def digest_arrays(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes of a dict of arrays."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@functools.cache
def _versions() -> tuple[str, str, str]:
    import onnxruntime

    return onnxruntime.__version__, onnx.__version__, _code_digest()


def _code_digest() -> str:
    """Digest of the code that computes what the cache keeps (this package and the wire
    codecs it measures): a changed recipe, screen or codec must not be answered from a
    result the old code computed, and a version number bumped by hand would be forgotten."""
    from transport import codecs

    h = hashlib.sha256()
    files = [*sorted(Path(__file__).parent.glob("*.py")), Path(codecs.__file__)]
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def key_of(*parts: Any) -> str:
    """A short stable key from JSON-able parts, the onnx/ONNX Runtime versions (another
    quantizer may produce other heads from the same inputs) and the digest of the code
    that computes the entries."""
    raw = json.dumps([_versions(), *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


class PartitionCache:
    """Entries of one source model under ``root/<model digest>/``."""

    def __init__(self, root: Path | str, model_digest: str) -> None:
        self.dir = Path(root) / model_digest
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, kind: str, key: str, ext: str) -> Path:
        return self.dir / f"{kind}-{key}.{ext}"

    def _hit(self, kind: str, found: bool) -> None:
        stages.current().count(f"cache {'hits' if found else 'misses'}: {kind}")

    def get_model(self, kind: str, key: str) -> onnx.ModelProto | None:
        p = self.path(kind, key, "onnx")
        if not p.is_file():
            self._hit(kind, False)
            return None
        try:
            model = onnx.load(str(p))
        except Exception as e:  # a damaged entry is a miss, never an error
            log.warning("cache entry %s unreadable (%s); recomputing", p.name, e)
            self._hit(kind, False)
            return None
        self._hit(kind, True)
        return model

    def put_model(self, kind: str, key: str, model: onnx.ModelProto) -> None:
        self._atomic(self.path(kind, key, "onnx"), model.SerializeToString())

    def get_json(self, kind: str, key: str) -> Any | None:
        p = self.path(kind, key, "json")
        try:
            value = json.loads(p.read_text())
        except (OSError, ValueError):
            self._hit(kind, False)
            return None
        self._hit(kind, True)
        return value

    def put_json(self, kind: str, key: str, value: Any) -> None:
        self._atomic(self.path(kind, key, "json"), json.dumps(value).encode())

    def _atomic(self, dst: Path, data: bytes) -> None:
        try:
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, dst)
        except OSError as e:  # a full disk loses the cache, not the run
            log.warning("cannot write cache entry %s: %s", dst.name, e)


_CURRENT: contextvars.ContextVar[PartitionCache | None] = contextvars.ContextVar(
    "tiersplit_partition_cache", default=None)


def current() -> PartitionCache | None:
    """The cache of the partition running in this context, None when caching is off."""
    return _CURRENT.get()


@contextmanager
def bound(cache: PartitionCache | None) -> Iterator[PartitionCache | None]:
    """Make ``cache`` the current one for the duration of a run."""
    token = _CURRENT.set(cache)
    try:
        yield cache
    finally:
        _CURRENT.reset(token)


def memoized_model(kind: str, key: Callable[[], str],
                   compute: Callable[[], onnx.ModelProto]) -> onnx.ModelProto:
    """``compute()``, answered from the current cache under ``key()`` when it is there
    (and stored there when not). ``key`` is called only when caching is on: a key may
    digest a large model."""
    cache = current()
    if cache is None:
        return compute()
    k = key()
    hit = cache.get_model(kind, k)
    if hit is not None:
        return hit
    out = compute()
    cache.put_model(kind, k, out)
    return out


def memoized_json(kind: str, key: Callable[[], str], compute: Callable[[], Any],
                  valid: Callable[[Any], bool]) -> Any:
    """As :func:`memoized_model` for a JSON value; a stored value that ``valid`` refuses
    (damaged, or written by other code) is computed again."""
    cache = current()
    if cache is None:
        return compute()
    k = key()
    hit = cache.get_json(kind, k)
    if hit is not None and valid(hit):
        return hit
    out = compute()
    cache.put_json(kind, k, out)
    return out
