"""The shared bundle fixture other areas build on: signed, loadable, one root."""

from __future__ import annotations

from contract.bundle import Bundle
from transport.keys import load_ed25519_public


def test_digits_bundle_loads_signed(digits_bundle) -> None:
    b = Bundle.load(digits_bundle.path, load_ed25519_public(digits_bundle.public_key))
    assert b.signed
    assert b.manifest.cut_ids[0] == "cloud" and b.manifest.cut_ids[-1] == "edge"
    assert len(b.manifest.cuts) == 4
    assert digits_bundle.path == digits_bundle.root / "digits_cnn" / "1"


def test_factory_caches_and_shares_root(bundle_factory, digits_bundle) -> None:
    assert bundle_factory("digits_cnn") is digits_bundle
    v2 = bundle_factory("digits_cnn", version="2")
    assert v2.root == digits_bundle.root
    assert v2.path == digits_bundle.root / "digits_cnn" / "2"
    Bundle.load(v2.path, load_ed25519_public(v2.public_key), role="edge")
