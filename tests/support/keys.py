"""Fresh keys per test (like pyzmq's auth tests): never reuse secrets across tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from transport import keys


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    d.mkdir()
    return d


@pytest.fixture
def signing_keypair(key_dir: Path) -> tuple[Path, Path]:
    """(secret, public) Ed25519 bundle-signing key files."""
    return keys.generate("ed25519", key_dir, "signing")
