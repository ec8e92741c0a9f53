"""The model repository: verified bundles by (model, version) and by digest.

Several models and versions are loaded at once. A request names its bundle by digest and
runs on exactly that version or is refused (VERSION_MISMATCH naming what is loaded): a
core never mixes versions. Each model has an *active* version (the newest loaded, or the
pinned one) that the admin API reports and agents should move to.

- ``load``: verify signature and hashes (``role="cloud"``), then make one backend per
  cloud-runnable cut and warm it up. Loading a newer version makes it active unless the
  model is pinned.
- ``unload``: forget a version; requests naming it get VERSION_MISMATCH from then on.
- ``pin``: make a version active and keep it active when newer versions load.
- ``rollback``: re-activate (and pin) the previously active version, loading it again
  from disk if needed, and unload the version rolled back from so no agent keeps
  running the bad version.

Pure bookkeeping plus file reads; no sockets, no threads of its own. Thread-safe.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloud_core.backends import Backend, BackendFactory
from cloud_core.errors import BackendError, ModelNotFound, RepositoryError, VersionMismatch
from contract.bundle import MANIFEST, SIGNATURE, Bundle, CutSpec
from contract.dtypes import numpy_dtype
from contract.errors import BundleError

__all__ = ["LoadedVersion", "Repository", "version_key"]

log = logging.getLogger(__name__)


def version_key(version: str) -> tuple[int, int, str]:
    """Order versions numerically when they are integers, else lexically (after ints)."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


@dataclass
class LoadedVersion:
    """One loaded bundle version with a ready backend per cloud-runnable cut."""

    bundle: Bundle
    tails: dict[str, Backend]
    loaded_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def digest(self) -> str:
        return self.bundle.digest

    def cut(self, cut_id: str) -> CutSpec:
        return self.bundle.manifest.cut(cut_id)

    def close(self) -> None:
        for b in self.tails.values():
            b.close()


def _warm_size(dim: object) -> int:
    """A size to warm a dimension up with: fixed sizes as declared, dynamic ones (``-1``,
    ``None`` or a symbolic name) as 1."""
    return dim if isinstance(dim, int) and dim > 0 else 1


def _warm_up(backend: Backend, cut: CutSpec) -> None:
    feeds = {t.name: np.zeros((1, *[_warm_size(d) for d in t.shape[1:]]),
                              dtype=numpy_dtype(t.dtype))
             for t in cut.tensors}
    backend.run(feeds)


class Repository:
    """Bundles under ``root/<model>/<version>/``, loaded on demand."""

    def __init__(self, root: Path, public_key: Any, *, allow_unsigned: bool,
                 backend_factory: BackendFactory) -> None:
        self.root = Path(root)
        self._key = public_key
        self._allow_unsigned = allow_unsigned
        self._factory = backend_factory
        self._lock = threading.RLock()
        self._models: dict[str, dict[str, LoadedVersion]] = {}
        self._by_digest: dict[str, LoadedVersion] = {}
        self._active: dict[str, str] = {}
        self._pinned: set[str] = set()
        self._history: dict[str, list[str]] = {}

    # -- what is on disk -------------------------------------------------------------
    def on_disk(self, name: str) -> list[str]:
        """Bundle versions of ``name`` present in the repository directory, oldest first."""
        d = self.root / name
        if not d.is_dir():
            return []
        return sorted((p.name for p in d.iterdir()
                       if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).exists()),
                      key=version_key)

    def expand(self, name: str, versions: list[str]) -> list[str]:
        """Resolve ``latest``/``all`` in a config's version list against the disk."""
        found = self.on_disk(name)
        out: list[str] = []
        for v in versions:
            if v in ("latest", "all"):
                if not found:
                    raise RepositoryError(f"no bundles of model {name!r} under {self.root}")
                out += found[-1:] if v == "latest" else found
            else:
                out.append(v)
        return list(dict.fromkeys(out))

    # -- load / unload ---------------------------------------------------------------
    def _read_bundle(self, path: Path) -> Bundle:
        try:
            if self._allow_unsigned and not (path / SIGNATURE).exists():
                log.warning("loading UNSIGNED bundle %s (allow_unsigned is set)", path)
                return Bundle.load(path, None, require_signature=False, role="cloud")
            return Bundle.load(path, self._key, require_signature=not self._allow_unsigned,
                               role="cloud")
        except BundleError as e:
            raise RepositoryError(f"refusing bundle {path}: {e}") from e

    def load(self, name: str, version: str) -> LoadedVersion:
        """Verify and load one bundle version (idempotent).

        Raises:
            RepositoryError: missing, unsigned, tampered bundle, or a tail the backend
                cannot load (message says which and what to do).
        """
        with self._lock:
            existing = self._models.get(name, {}).get(version)
            if existing is not None:
                return existing
        path = self.root / name / version
        if not (path / MANIFEST).exists():
            have = self.on_disk(name)
            raise RepositoryError(f"no bundle {name}:{version} under {self.root} "
                                  f"(versions on disk: {have or 'none'})")
        bundle = self._read_bundle(path)
        if (bundle.name, bundle.version) != (name, version):
            raise RepositoryError(f"{path} holds {bundle.name}:{bundle.version}, not "
                                  f"{name}:{version}; bundles must sit at <model>/<version>")
        tails: dict[str, Backend] = {}
        try:
            for cut in bundle.manifest.cuts:
                if cut.is_edge:
                    continue
                backend = self._factory()
                tails[cut.id] = backend
                backend.load(bundle, cut)
                _warm_up(backend, cut)
        except BackendError as e:
            for b in tails.values():
                b.close()
            raise RepositoryError(f"cannot load {name}:{version}: {e}") from e
        lv = LoadedVersion(bundle=bundle, tails=tails)
        with self._lock:
            if version in self._models.get(name, {}):  # lost a race with another load
                lv.close()
                return self._models[name][version]
            self._models.setdefault(name, {})[version] = lv
            self._by_digest[bundle.digest] = lv
            current = self._active.get(name)
            if current is None or (name not in self._pinned
                                   and version_key(version) > version_key(current)):
                self._activate(name, version)
        log.info("loaded %s:%s (digest %s…, %d tails, signed=%s)", name, version,
                 bundle.digest[:12], len(tails), bundle.signed)
        return lv

    def _activate(self, name: str, version: str) -> None:
        current = self._active.get(name)
        if current is not None and current != version:
            self._history.setdefault(name, []).append(current)
        self._active[name] = version

    def unload(self, name: str, version: str) -> LoadedVersion:
        """Forget a loaded version and return it (the caller drains then closes it).

        Raises:
            RepositoryError: that version is not loaded.
        """
        with self._lock:
            lv = self._models.get(name, {}).pop(version, None)
            if lv is None:
                raise RepositoryError(f"{name}:{version} is not loaded "
                                      f"(loaded: {self.loaded_versions(name) or 'none'})")
            self._by_digest.pop(lv.digest, None)
            if not self._models[name]:
                del self._models[name]
                self._active.pop(name, None)
                self._pinned.discard(name)
            elif self._active.get(name) == version:
                self._active[name] = max(self._models[name], key=version_key)
                self._pinned.discard(name)
            hist = self._history.get(name, [])
            self._history[name] = [v for v in hist if v != version]
        log.info("unloaded %s:%s", name, version)
        return lv

    def pin(self, name: str, version: str) -> None:
        """Make ``version`` active and keep it active while newer versions load."""
        with self._lock:
            if version not in self._models.get(name, {}):
                raise RepositoryError(f"cannot pin {name}:{version}: not loaded "
                                      f"(loaded: {self.loaded_versions(name) or 'none'})")
            self._activate(name, version)
            self._pinned.add(name)
        log.info("pinned %s:%s", name, version)

    def unpin(self, name: str) -> None:
        with self._lock:
            self._pinned.discard(name)

    def rollback(self, name: str) -> tuple[str, LoadedVersion]:
        """Re-activate the previous version and unload the current one.

        Returns:
            (the version now active, the unloaded version for the caller to drain/close).

        Raises:
            RepositoryError: nothing to roll back to.
        """
        with self._lock:
            current = self._active.get(name)
            if current is None:
                raise RepositoryError(f"model {name!r} is not loaded")
            previous = next((v for v in reversed(self._history.get(name, []))
                             if v != current), None)
            if previous is None:
                older = [v for v in self.on_disk(name) if version_key(v) < version_key(current)]
                previous = older[-1] if older else None
            if previous is None:
                raise RepositoryError(f"no version of {name!r} to roll back to from {current}")
        self.load(name, previous)
        with self._lock:
            self._active[name] = previous
            self._pinned.add(name)
            old = self.unload(name, current)
            self._history[name] = [v for v in self._history.get(name, []) if v != previous]
        log.info("rolled back %s: %s -> %s", name, current, previous)
        return previous, old

    # -- lookups ---------------------------------------------------------------------
    def loaded_versions(self, name: str) -> list[str]:
        with self._lock:
            return sorted(self._models.get(name, {}), key=version_key)

    def resolve(self, model: str, version: str, digest: str) -> LoadedVersion:
        """The loaded version a request names by digest.

        Raises:
            ModelNotFound: no version of ``model`` is loaded.
            VersionMismatch: the digest is not loaded (message names the loaded
                versions and the active one), or it belongs to another model/version.
        """
        with self._lock:
            lv = self._by_digest.get(digest)
            if lv is not None and lv.name == model and (not version or version == lv.version):
                return lv
            versions = self._models.get(model)
            if not versions:
                known = sorted(self._models)
                raise ModelNotFound(f"model {model!r} is not loaded here "
                                    f"(loaded models: {known or 'none'})")
            loaded = ", ".join(f"{v} ({versions[v].digest[:12]}…)"
                               for v in sorted(versions, key=version_key))
            what = f"belongs to {lv.name}:{lv.version}" if lv is not None else "is not loaded"
            raise VersionMismatch(
                f"bundle digest {digest[:12]}… (version {version or '?'}) {what}; "
                f"{model} versions loaded: {loaded}; active: {self._active.get(model)}")

    def active(self, name: str) -> LoadedVersion | None:
        with self._lock:
            v = self._active.get(name)
            return self._models[name][v] if v is not None else None

    def all_loaded(self) -> list[LoadedVersion]:
        with self._lock:
            return [lv for vs in self._models.values() for lv in vs.values()]

    def describe(self) -> list[dict[str, Any]]:
        """What the admin API lists: one entry per loaded version."""
        with self._lock:
            out = []
            for name in sorted(self._models):
                for v in sorted(self._models[name], key=version_key):
                    lv = self._models[name][v]
                    out.append({
                        "name": name, "version": v, "digest": lv.digest,
                        "active": self._active.get(name) == v,
                        "pinned": name in self._pinned and self._active.get(name) == v,
                        "signed": lv.bundle.signed,
                        "cuts": list(lv.tails),
                        "backend": next(iter(lv.tails.values())).name if lv.tails else "",
                        "device": next(iter(lv.tails.values())).device if lv.tails else "",
                        "loaded_at": lv.loaded_at,
                    })
            return out

    def close(self) -> None:
        with self._lock:
            loaded = self.all_loaded()
            self._models.clear()
            self._by_digest.clear()
            self._active.clear()
        for lv in loaded:
            lv.close()
