"""Put an audit into a signed manifest without mutating a bundle.

Bundles are immutable and the manifest's signature covers every byte, so an audit cannot
be added in place. :func:`record_audit` publishes the same files as a new version whose
manifest carries the audit and is signed again (with the operator's key): devices that
pin the old digest keep working, and a device that updates gets a manifest whose audit
figures are as trustworthy as its hashes.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from contract.bundle import MANIFEST, SIGNATURE, Bundle, write_bundle
from contract.privacy import PrivacyAudit

log = logging.getLogger(__name__)

__all__ = ["AUDIT_SUFFIX", "record_audit", "target_path"]

AUDIT_SUFFIX = ".audit"


def record_audit(bundle: Bundle, audit: PrivacyAudit, *, repo: Path | str | None = None,
                 version: str | None = None, signing_key: Any = None) -> Path:
    """Publish ``bundle``'s files as ``repo/<name>/<version>`` with ``audit`` recorded.

    Args:
        bundle: the audited bundle (every listed file must be present).
        audit: the audit to record.
        repo: bundle repository (default: the bundle's own, two levels up).
        version: new version (default: the current one + ``.audit``).
        signing_key: Ed25519 private key or PEM path; None publishes unsigned.

    Returns:
        The new bundle directory.

    Raises:
        BundleExists: that version exists (bundles are immutable).
        BundleError: a listed file is missing from the source bundle.
    """
    from contract.errors import BundleError

    target = target_path(bundle, repo, version)
    root, new_version = target.parent.parent, target.name
    key = _key(signing_key)
    missing = [rel for rel in bundle.manifest.files if not (bundle.path / rel).exists()]
    if missing:
        raise BundleError(f"cannot re-publish {bundle.path}: missing {missing[:3]}")
    with write_bundle(root, bundle.name, new_version, key) as stage:
        for rel in bundle.manifest.files:
            if rel in (MANIFEST, SIGNATURE):
                continue
            dst = stage.dir / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle.path / rel, dst)
        stage.set_manifest(bundle.manifest.model_copy(
            update={"version": new_version, "privacy_audit": audit, "files": {}}))
    final = root / bundle.name / new_version
    log.info("recorded privacy audit of %s %s as %s", bundle.name, bundle.version, final)
    return final


def target_path(bundle: Bundle, repo: Path | str | None = None, version: str | None = None,
                ) -> Path:
    """Where :func:`record_audit` will publish; refuses a version that exists, so a
    caller can check before spending minutes on the audit.

    Raises:
        BundleExists: that version exists (bundles are immutable).
    """
    from contract.errors import BundleExists

    root = Path(repo) if repo is not None else bundle.path.parent.parent
    path = root / bundle.name / (version or f"{bundle.version}{AUDIT_SUFFIX}")
    if path.exists():
        raise BundleExists(f"bundle {path} already exists; bundles are immutable — "
                           "choose a new --version")
    return path


def _key(key: Any):
    if key is None:
        return None
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if isinstance(key, Ed25519PrivateKey):
        return key
    from transport.keys import load_ed25519_private

    return load_ed25519_private(Path(key))
