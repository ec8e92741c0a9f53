"""Built bundles shared by every area's tests (session scope: each is built once).

``bundle_factory(model="digits_cnn", version="1", max_cuts=4)`` partitions ``zoo:<model>``
into ONE shared repository root, signed with a session Ed25519 key, so a cloud core can
load several models and versions from the same root. ``max_cuts`` counts the "cloud" and
"edge" cuts too (4 = two split cuts: quick to build).

If the same (model, version) is asked for with a different ``max_cuts``, that bundle gets
the version ``<version>-k<max_cuts>`` (bundles are immutable: one directory cannot hold
both); ``BuiltBundle.version`` says which. ``BuiltBundle`` is the one record of
:mod:`tiersplit.devtools.bundles`, which also builds the small hand-made bundles.

Every test partition of a model the suite builds more than once goes through one session
:func:`partition_cache` (the partitioner's own on-disk cache, keyed by the exact model bytes
and settings): a second build of the same model re-runs graph analysis, cutting, bundle
writing and verification, and looks up only the calibration ranges, quantized heads and
their held-back figures that the first build computed from the very same inputs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tiersplit.devtools.bundles import BuiltBundle, load_built

__all__ = ["BuiltBundle", "BundleFactory", "bundle_factory", "bundle_root",
           "bundle_signing_keys", "cache_env", "digits_bundle", "partition_cache"]

BundleFactory = Callable[..., BuiltBundle]


@pytest.fixture(scope="session")
def bundle_signing_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(secret, public) Ed25519 key files that sign every session bundle."""
    from transport import keys

    return keys.generate("ed25519", tmp_path_factory.mktemp("bundle-keys"), "bundles")


@pytest.fixture(scope="session")
def partition_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's partition cache directory (``partition(..., cache_dir=...)``).

    Laid out as ``<base>/tiersplit/partition`` so that a ``tiersplit`` process started with
    :func:`cache_env` (``XDG_CACHE_HOME=<base>``) uses the very same directory as its
    default. Tests of the cache itself keep their own directories; this one is only for
    fixtures and commands that build the same model with the same settings more than once
    per session."""
    path = tmp_path_factory.mktemp("cache") / "tiersplit" / "partition"
    path.mkdir(parents=True)
    return path


def cache_env(partition_cache: Path) -> dict[str, str]:
    """Environment for a child process whose default partition cache is the session one."""
    return {"XDG_CACHE_HOME": str(partition_cache.parents[1])}


@pytest.fixture(scope="session")
def bundle_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one repository root all session bundles are written to."""
    return tmp_path_factory.mktemp("bundle-repo")


@pytest.fixture(scope="session")
def bundle_factory(bundle_root: Path, bundle_signing_keys: tuple[Path, Path],
                   partition_cache: Path) -> BundleFactory:
    """``(model="digits_cnn", version="1", max_cuts=4) -> BuiltBundle``, cached per session."""
    from partitioner import partition

    secret, public = bundle_signing_keys
    built: dict[tuple[str, str, int], BuiltBundle] = {}
    taken: dict[tuple[str, str], int] = {}
    lock = threading.Lock()

    def make(model: str = "digits_cnn", version: str = "1", max_cuts: int = 4) -> BuiltBundle:
        with lock:
            key = (model, version, max_cuts)
            if key in built:
                return built[key]
            actual_version = version
            if taken.get((model, version), max_cuts) != max_cuts:
                actual_version = f"{version}-k{max_cuts}"
            path = partition(f"zoo:{model}", None, bundle_root, name=model,
                             version=actual_version, max_cuts=max_cuts, signing_key=secret,
                             progress=False, cache_dir=partition_cache)
            taken.setdefault((model, version), max_cuts)
            built[key] = load_built(path, bundle_root, secret, public)
            return built[key]

    return make


@pytest.fixture(scope="session")
def digits_bundle(bundle_factory: BundleFactory) -> BuiltBundle:
    """``zoo:digits_cnn`` version "1", 4 cuts (cloud, two splits, edge), signed."""
    return bundle_factory("digits_cnn")
