"""Key generation and loading: CurveZMQ, X25519 (MQTT payload AEAD), Ed25519 (bundles).

Secret keys are written 0600 and a loader refuses a secret key file that group or others
can read. Nothing here logs or formats key material into error messages.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from transport.errors import KeyFileError

KeyKind = Literal["curve", "x25519", "ed25519"]

__all__ = [
    "KeyKind",
    "check_secret_permissions",
    "generate",
    "load_curve_public",
    "load_curve_secret",
    "load_ed25519_private",
    "load_ed25519_public",
    "load_x25519_private",
    "load_x25519_public",
    "write_secret",
]


def check_secret_permissions(path: Path) -> None:
    """Refuse a secret key file readable by group or others (like ssh does)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as e:
        raise KeyFileError(f"secret key file not found: {path}") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"secret key file {path} is accessible by group/others "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )


def write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the first byte on (no window of exposure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o644)


def generate(kind: KeyKind, out_dir: Path, name: str) -> tuple[Path, Path]:
    """Generate a key pair of ``kind`` as ``out_dir/name.key`` (0600) and ``name.pub``.

    Curve keys use pyzmq's Z85 certificate format (``zmq.auth`` can read them); X25519 and
    Ed25519 keys are PEM (PKCS8 / SubjectPublicKeyInfo).

    Returns:
        (secret_path, public_path)
    """
    out_dir = Path(out_dir)
    secret_path, public_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    if secret_path.exists() or public_path.exists():
        raise KeyFileError(f"refusing to overwrite existing key {secret_path} / {public_path}")
    if kind == "curve":
        import zmq

        public, secret = zmq.curve_keypair()
        header = "#   ZeroMQ CURVE certificate (tiersplit)\n"
        write_secret(secret_path, (
            f"{header}metadata\ncurve\n    public-key = \"{public.decode()}\"\n"
            f"    secret-key = \"{secret.decode()}\"\n").encode())
        _write_public(public_path, (
            f"{header}metadata\ncurve\n    public-key = \"{public.decode()}\"\n").encode())
    elif kind in ("x25519", "ed25519"):
        priv = X25519PrivateKey.generate() if kind == "x25519" else Ed25519PrivateKey.generate()
        write_secret(secret_path, priv.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        _write_public(public_path, priv.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    else:
        raise ValueError(f"unknown key kind {kind!r}; expected curve, x25519 or ed25519")
    return secret_path, public_path


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as e:
        raise KeyFileError(f"key file not found: {path}") from e


def load_curve_public(path: Path) -> bytes:
    """Z85 public key from a ``.pub`` or ``.key`` certificate file."""
    import zmq.auth

    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise KeyFileError(f"not a Curve certificate: {path}") from e
    return public


def load_curve_secret(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key`` certificate file (must be 0600)."""
    import zmq.auth

    check_secret_permissions(Path(path))
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise KeyFileError(f"not a Curve certificate: {path}") from e
    if not secret:
        raise KeyFileError(f"{path} holds no secret key (is it the .pub file?)")
    return public, secret


def _load_private(path: Path, cls: type) -> object:
    check_secret_permissions(Path(path))
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except ValueError as e:
        raise KeyFileError(f"not a PEM private key: {path}") from e
    if not isinstance(key, cls):
        raise KeyFileError(f"{path} is not a {cls.__name__.replace('PrivateKey', '')} key")
    return key


def _load_public(path: Path, cls: type) -> object:
    try:
        key = serialization.load_pem_public_key(_read(path))
    except ValueError as e:
        raise KeyFileError(f"not a PEM public key: {path}") from e
    if not isinstance(key, cls):
        raise KeyFileError(f"{path} is not a {cls.__name__.replace('PublicKey', '')} key")
    return key


def load_ed25519_private(path: Path) -> Ed25519PrivateKey:
    return _load_private(path, Ed25519PrivateKey)  # type: ignore[return-value]


def load_ed25519_public(path: Path) -> Ed25519PublicKey:
    return _load_public(path, Ed25519PublicKey)  # type: ignore[return-value]


def load_x25519_private(path: Path) -> X25519PrivateKey:
    return _load_private(path, X25519PrivateKey)  # type: ignore[return-value]


def load_x25519_public(path: Path) -> X25519PublicKey:
    return _load_public(path, X25519PublicKey)  # type: ignore[return-value]
