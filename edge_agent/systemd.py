"""The agent under systemd: readiness notification and credentials.

``Type=notify`` units learn that a service is up from a datagram on ``$NOTIFY_SOCKET``
(``READY=1``) rather than from the process having started, so ``systemctl start`` returns
once the agent serves, and units ordered after it start only then. Writing that datagram
takes a few lines of :mod:`socket`; no libsystemd binding is needed.

``LoadCredential=`` hands secrets to the service in ``$CREDENTIALS_DIRECTORY`` (a private,
read-only directory only the service's user can read); the files under
``/etc/tiersplit/keys`` then stay root-only. :func:`apply_credentials` points each secret
path of the config (Curve secret key, client key, password and token files) at the
credential of the same name when one was passed.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from edge_agent.config import EdgeConfig

__all__ = ["CREDENTIALS_ENV", "NOTIFY_ENV", "SECRET_FIELDS", "apply_credentials", "notify"]

log = logging.getLogger(__name__)

NOTIFY_ENV = "NOTIFY_SOCKET"
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
#: Path-valued config fields holding secrets (the installer keeps them 0600).
SECRET_FIELDS = frozenset({"secret_key", "client_key", "password_file", "token_file"})


def notify(state: str) -> bool:
    """Send ``state`` (``READY=1``, ``STOPPING=1``, ``STATUS=...``) to systemd.

    Returns whether a notification socket was configured and the datagram went out;
    outside systemd this does nothing. A failure is logged, never raised: the agent
    serves whether or not its supervisor listens.
    """
    address = os.environ.get(NOTIFY_ENV)
    if not address:
        return False
    if address.startswith("@"):  # an abstract-namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as e:
        log.warning("systemd notification %s not sent: %s", state.split("=")[0], e)
        return False
    return True


def apply_credentials(cfg: EdgeConfig, directory: Path | str | None = None) -> EdgeConfig:
    """``cfg`` with each secret path replaced by ``<directory>/<its file name>`` when that
    credential exists (``directory``: default ``$CREDENTIALS_DIRECTORY``; unset, ``cfg``
    is returned unchanged)."""
    where = directory if directory is not None else os.environ.get(CREDENTIALS_ENV)
    if not where:
        return cfg
    creds = Path(where)
    doc = cfg.model_dump(mode="python")
    used: list[str] = []

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key in SECRET_FIELDS and isinstance(value, str | Path) and value:
                    cred = creds / Path(value).name
                    if cred.is_file():
                        used.append(cred.name)
                        value = cred
                out[key] = walk(value)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    doc = walk(doc)
    if not used:
        return cfg
    log.info("secrets from systemd credentials: %s", ", ".join(sorted(used)))
    return EdgeConfig.model_validate(doc)
