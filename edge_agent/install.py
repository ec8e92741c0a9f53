"""``tiersplit edge install``: a systemd service, its config, keys and bundle.

Planning is pure (:func:`plan_install` returns the files it would write, with modes);
:func:`apply_plan` writes them. Layout under ``--prefix`` (``/`` on a real device)::

    etc/systemd/system/tiersplit-edge.service   the unit (0644)
    etc/tiersplit/edge.yaml                     the config, paths rewritten (0600)
    etc/tiersplit/keys/<file>                   secrets 0600, public keys 0644
    var/lib/tiersplit/bundles/<model>/<version> a copy of the bundle (read-only)

The unit runs as an unprivileged user (``--user``, default ``tiersplit``; a real install,
``--prefix /`` as root, creates it with ``useradd --system`` when it is missing), restarts
on failure, and is hardened (NoNewPrivileges, ProtectSystem=strict, no capabilities,
loopback/inet sockets only). It is ``Type=notify``: the agent tells systemd when it
serves, so ``systemctl start`` returns then. Secrets stay root-only (0600 root) and reach
the service through ``LoadCredential=`` (one credential per secret file, named after
it); the agent reads them from ``$CREDENTIALS_DIRECTORY``.
"""

from __future__ import annotations

import logging
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from edge_agent.config import EdgeConfig, load_config
from edge_agent.errors import ConfigError
from edge_agent.systemd import SECRET_FIELDS

log = logging.getLogger(__name__)

__all__ = ["SERVICE_NAME", "InstallPlan", "PlannedFile", "apply_plan", "ensure_user",
           "plan_install", "render_unit"]

SERVICE_NAME = "tiersplit-edge.service"
ETC = PurePosixPath("/etc/tiersplit")
KEYS = ETC / "keys"
BUNDLES = PurePosixPath("/var/lib/tiersplit/bundles")
UNIT_DIR = PurePosixPath("/etc/systemd/system")

# Path-valued config fields that hold secrets (0600); other path fields are public (0644).
_SECRET_FIELDS = SECRET_FIELDS


@dataclass(frozen=True)
class PlannedFile:
    """One file to write. ``target`` is where it lives on the device (absolute)."""

    target: PurePosixPath
    mode: int
    content: bytes | None = None  # None: copy ``source``
    source: Path | None = None
    kind: str = "file"  # unit | config | secret | public | bundle

    def describe(self) -> str:
        size = len(self.content) if self.content is not None else (
            self.source.stat().st_size if self.source else 0)
        return f"{self.mode:04o}  {self.kind:<7} {self.target}  ({size} bytes)"


@dataclass(frozen=True)
class InstallPlan:
    files: tuple[PlannedFile, ...]
    user: str
    unit: str
    config: str

    def describe(self) -> list[str]:
        return [f.describe() for f in self.files]


def render_unit(config_path: PurePosixPath, user: str, exec_argv: list[str],
                credentials: tuple[PurePosixPath, ...] = ()) -> str:
    """The systemd unit text; each of ``credentials`` (secret files) is loaded with
    ``LoadCredential=<file name>:<path>``."""
    cmd = " ".join(shlex.quote(a) for a in
                   [*exec_argv, "edge", "run", "--config", str(config_path)])
    creds = "".join(f"LoadCredential={p.name}:{p}\n" for p in credentials)
    return f"""[Unit]
Description=tiersplit edge agent (split inference: int8 heads here, tails in the cloud)
Documentation=file://{ETC}/edge.yaml
After=network-online.target
Wants=network-online.target

[Service]
# the agent sends READY=1 once it serves (and STOPPING=1 as it drains)
Type=notify
NotifyAccess=main
TimeoutStartSec=120
User={user}
Group={user}
ExecStart={cmd}
# secrets: read by systemd (root), given to the service in $CREDENTIALS_DIRECTORY
{creds}
Restart=on-failure
RestartSec=2
# SIGTERM: stop accepting, drain requests in flight, close links
KillSignal=SIGTERM
TimeoutStopSec=30
Environment=PYTHONUNBUFFERED=1
UMask=0077
# hardening: an inference daemon needs no privilege, no writable system, no devices
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
CapabilityBoundingSet=
AmbientCapabilities=
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
SystemCallArchitectures=native
ReadOnlyPaths={ETC} {BUNDLES.parent}

[Install]
WantedBy=multi-user.target
"""


def _is_secret(field: str) -> bool:
    return field in _SECRET_FIELDS


class _Collector:
    """Walks the config dump, maps every file path into the install layout."""

    def __init__(self) -> None:
        self.files: list[PlannedFile] = []
        self._names: dict[Path, PurePosixPath] = {}

    def key_file(self, field: str, value: str) -> str:
        src = Path(value).expanduser().resolve()
        if src in self._names:
            return str(self._names[src])
        if not src.is_file():
            raise ConfigError(f"{field}: file {src} does not exist; cannot install it")
        name = src.name
        taken = {t.name for t in self._names.values()}
        i = 1
        while name in taken:
            name = f"{src.stem}-{i}{src.suffix}"
            i += 1
        target = KEYS / name
        self._names[src] = target
        secret = _is_secret(field.rsplit(".", 1)[-1])
        self.files.append(PlannedFile(target, 0o600 if secret else 0o644, source=src,
                                      kind="secret" if secret else "public"))
        return str(target)

    def walk(self, node: Any, path: str = "") -> Any:
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                sub = f"{path}.{k}" if path else k
                if isinstance(v, str) and (k in _SECRET_FIELDS or k.endswith("_key")
                                           or k.endswith("_file") or k == "client_cert"):
                    out[k] = self.key_file(sub, v)
                else:
                    out[k] = self.walk(v, sub)
            return out
        if isinstance(node, list):
            return [self.walk(v, f"{path}.{i}") for i, v in enumerate(node)]
        return node


def _edge_files(bundle: Path) -> list[str]:
    """The bundle files a device needs: manifest, signature, int8 heads and full model
    (fp32 tails stay in the cloud)."""
    from contract.bundle import MANIFEST, SIGNATURE, Manifest

    try:
        manifest = Manifest.model_validate(yaml.safe_load((bundle / MANIFEST).read_bytes()))
    except Exception as e:
        raise ConfigError(f"bundle.path: cannot read {bundle / MANIFEST}: {e}") from e
    need = {MANIFEST, manifest.full_int8, *(c.head for c in manifest.cuts if c.head)}
    if (bundle / SIGNATURE).exists():
        need.add(SIGNATURE)
    if "profile.json" in manifest.files:
        need.add("profile.json")
    return sorted(n for n in need if (bundle / n).is_file())


def plan_install(config: Path | str | EdgeConfig, *, user: str = "tiersplit",
                 exec_argv: list[str] | None = None) -> InstallPlan:
    """Everything ``tiersplit edge install`` would write, without writing anything.

    Raises:
        ConfigError: the config is invalid or names a key/bundle file that is missing.
    """
    cfg = config if isinstance(config, EdgeConfig) else load_config(config)
    if not user or user == "root" or not user.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"--user {user!r}: the service must run as an unprivileged user")
    doc = cfg.model_dump(mode="json", exclude_none=True)
    col = _Collector()
    bundle_src = Path(cfg.bundle.path).resolve()
    if not (bundle_src / "manifest.yaml").is_file():
        raise ConfigError(f"bundle.path: {bundle_src} is not a bundle directory")
    bundle_target = BUNDLES / bundle_src.parent.name / bundle_src.name
    bundle_files = [PlannedFile(bundle_target / rel, 0o444, source=bundle_src / rel,
                                kind="bundle") for rel in _edge_files(bundle_src)]
    doc["bundle"]["path"] = str(bundle_target)
    for section in ("bundle", "api", "endpoints"):
        if section in doc:
            doc[section] = col.walk(doc[section], section)
    if "api" in doc and "token" in doc["api"]:
        doc["api"]["token"] = cfg.api.token.get_secret_value() if cfg.api.token else None
    if cfg.placement_prior is not None and Path(cfg.placement_prior).is_file():
        target = ETC / "placement.yaml"
        col.files.append(PlannedFile(target, 0o644, source=Path(cfg.placement_prior).resolve(),
                                     kind="public"))
        doc["placement_prior"] = str(target)
    else:
        doc.pop("placement_prior", None)
    doc["api"]["host"] = cfg.api.host
    config_text = ("# written by `tiersplit edge install`; see configs/edge.yaml for "
                   "every setting\n" + yaml.safe_dump(doc, sort_keys=False))
    argv = exec_argv or [sys.executable, "-m", "tiersplit.cli"]
    secrets = tuple(f.target for f in col.files if f.kind == "secret")
    unit = render_unit(ETC / "edge.yaml", user, argv, secrets)
    files = [
        PlannedFile(UNIT_DIR / SERVICE_NAME, 0o644, unit.encode(), kind="unit"),
        PlannedFile(ETC / "edge.yaml", 0o600, config_text.encode(), kind="config"),
        *col.files,
        *bundle_files,
    ]
    return InstallPlan(tuple(files), user, unit, config_text)


def ensure_user(user: str, prefix: Path | str) -> bool:
    """Create the service's system user when this is a real install (``prefix`` is
    ``/``, run as root) and it does not exist yet. Returns whether it was created."""
    if Path(prefix).resolve() != Path("/") or os.geteuid() != 0:
        return False
    try:
        pwd.getpwnam(user)
        return False
    except KeyError:
        pass
    tool = shutil.which("useradd")
    if tool is None:
        raise ConfigError(f"user {user!r} does not exist and useradd is not installed; "
                          "create the user, then install again")
    nologin = shutil.which("nologin") or "/usr/sbin/nologin"
    r = subprocess.run([tool, "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", nologin, user], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise ConfigError(f"useradd {user} failed: {r.stderr.strip()}")
    log.info("created system user %s", user)
    return True


def _chown(path: Path, user: str) -> bool:
    if os.geteuid() != 0:
        return False
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return False
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return True


def apply_plan(plan: InstallPlan, prefix: Path | str = "/") -> list[Path]:
    """Write the planned files under ``prefix`` (secrets created 0600 from the start).

    On a real install (``prefix`` ``/``, as root) the service user is created if missing
    (:func:`ensure_user`). The config is chowned to it when run as root;
    secrets stay root's (the unit hands them over with ``LoadCredential=``). Returns the
    written paths.
    """
    root = Path(prefix)
    ensure_user(plan.user, root)
    written = []
    for f in plan.files:
        dest = root / f.target.relative_to("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = f.content if f.content is not None else f.source.read_bytes()  # type: ignore[union-attr]
        if dest.exists():
            os.chmod(dest, 0o600)  # a read-only file from an earlier install
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.chmod(dest, f.mode)
        if f.kind == "config":
            _chown(dest, plan.user)
        written.append(dest)
    for d in {root / f.target.relative_to("/").parent for f in plan.files if f.kind == "bundle"}:
        os.chmod(d, 0o755)
    return written
