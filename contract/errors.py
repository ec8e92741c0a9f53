"""Errors of the bundle format, shared by both tiers.

A ``BundleError`` means a bundle is refused: the cloud core maps it to a refused load,
the edge agent to a start-up error, the CLI to one red line. Each message says what to try.
"""

from __future__ import annotations

__all__ = ["BundleError", "BundleExists", "ConfigError", "HashMismatch", "SignatureError"]


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the key and the fix."""


class BundleError(Exception):
    """A bundle is malformed, incomplete or untrusted."""


class BundleExists(BundleError):
    """Bundles are immutable: that model/version directory already exists."""


class HashMismatch(BundleError):
    """A file's sha256 differs from the manifest (tampered or corrupt)."""


class SignatureError(BundleError):
    """Missing, malformed or wrong Ed25519 signature of the manifest."""
