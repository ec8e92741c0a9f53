"""`tiersplit edge install` into a temp root: unit, config, keys 0600, bundle copy."""

from __future__ import annotations

import configparser
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from contract.bundle import Bundle
from edge_agent import load_config
from transport import keys
from transport.keys import load_ed25519_public


@pytest.fixture
def install_config(edge_bundle, tmp_path: Path) -> Path:
    kdir = tmp_path / "keys"
    agent_key, _ = keys.generate("curve", kdir, "edge-1")
    _, cloud_pub = keys.generate("curve", kdir, "cloud")
    token = kdir / "api.token"
    token.write_text("tok")
    os.chmod(token, 0o600)
    cfg = {
        "agent_id": "edge-1",
        "bundle": {"path": str(edge_bundle.path), "public_key": str(edge_bundle.public_key)},
        "endpoints": [{"name": "c1", "region": "eu", "link": {
            "kind": "zmq", "endpoint": "tcp://10.0.0.1:5555", "secret_key": str(agent_key),
            "server_public_key": str(cloud_pub)}}],
        "api": {"port": 8000, "token_file": str(token)},
    }
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tiersplit.cli", "edge", *args],
                          capture_output=True, text=True, timeout=120)


def test_dry_run_writes_nothing(install_config: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    r = _cli("install", "--config", str(install_config), "--prefix", str(root), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "tiersplit-edge.service" in r.stdout and "0600  secret" in r.stdout
    assert "Restart=on-failure" in r.stdout
    assert not root.exists()


def test_install_into_temp_root(install_config: Path, tmp_path: Path, edge_bundle) -> None:
    root = tmp_path / "root"
    r = _cli("install", "--config", str(install_config), "--prefix", str(root),
             "--user", "tsedge")
    assert r.returncode == 0, r.stderr
    unit_path = root / "etc/systemd/system/tiersplit-edge.service"
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # keep systemd's key case
    unit.read_string(unit_path.read_text())
    svc = unit["Service"]
    assert svc["Restart"] == "on-failure"
    assert svc["User"] == "tsedge" and svc["User"] != "root"
    assert svc["NoNewPrivileges"] == "yes" and svc["ProtectSystem"] == "strict"
    assert svc["CapabilityBoundingSet"] == ""
    assert svc["ExecStart"].endswith("edge run --config /etc/tiersplit/edge.yaml")
    assert svc["Type"] == "notify" and svc["NotifyAccess"] == "main"
    # every secret reaches the service as a credential named after its file
    creds = sorted(ln.split("=", 1)[1] for ln in unit_path.read_text().splitlines()
                   if ln.startswith("LoadCredential="))
    assert creds == ["api.token:/etc/tiersplit/keys/api.token",
                     "edge-1.key:/etc/tiersplit/keys/edge-1.key"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    etc = root / "etc/tiersplit"
    assert mode(etc / "edge.yaml") == 0o600
    assert mode(etc / "keys/edge-1.key") == 0o600  # the agent's Curve secret
    assert mode(etc / "keys/api.token") == 0o600
    assert mode(etc / "keys/cloud.pub") == 0o644
    assert mode(etc / "keys/signing.pub") == 0o644
    # the written config is valid and points into the installed layout
    cfg = load_config(etc / "edge.yaml")
    assert str(cfg.bundle.path) == "/var/lib/tiersplit/bundles/edge_cnn/1"
    assert str(cfg.endpoints[0].link.secret_key) == "/etc/tiersplit/keys/edge-1.key"
    assert str(cfg.api.token_file) == "/etc/tiersplit/keys/api.token"
    # the copied bundle verifies on its own (edge files only: no fp32 tails on the device)
    copied = root / "var/lib/tiersplit/bundles/edge_cnn/1"
    b = Bundle.load(copied, load_ed25519_public(edge_bundle.public_key), role="edge")
    assert b.digest == Bundle.load(edge_bundle.path, load_ed25519_public(
        edge_bundle.public_key), role="edge").digest
    assert not list(copied.glob("tail-*"))
    # installing again (an upgrade) overwrites cleanly
    assert _cli("install", "--config", str(install_config), "--prefix", str(root)).returncode == 0


def test_unit_passes_systemd_analyze(install_config: Path, tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed; the unit was parsed in another test")
    root = tmp_path / "root"
    assert _cli("install", "--config", str(install_config), "--prefix", str(root)).returncode == 0
    unit = root / "etc/systemd/system/tiersplit-edge.service"
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines()
                if "tiersplit-edge" in ln and "User" not in ln]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


def test_install_refuses_root_and_missing_files(install_config: Path, tmp_path: Path) -> None:
    r = _cli("install", "--config", str(install_config), "--prefix", str(tmp_path / "r"),
             "--user", "root")
    assert r.returncode == 2 and "unprivileged" in " ".join(r.stderr.split())
    cfg = yaml.safe_load(install_config.read_text())
    cfg["endpoints"][0]["link"]["secret_key"] = str(tmp_path / "gone.key")
    install_config.write_text(yaml.safe_dump(cfg))
    r = _cli("install", "--config", str(install_config), "--prefix", str(tmp_path / "r"))
    err = " ".join(r.stderr.split())  # rich wraps long lines
    assert r.returncode == 2 and "endpoints.0.link.secret_key: file" in err
    assert "does not exist" in err


def test_agent_reads_secrets_from_systemd_credentials(edge_bundle, tmp_path, make_agent,
                                                      monkeypatch) -> None:
    """With $CREDENTIALS_DIRECTORY set (LoadCredential=), the token file of that name
    there is the one the API checks; the configured path is not read."""
    import httpx

    from tests.edge.conftest import base_config

    etc, creds = tmp_path / "etc", tmp_path / "creds"
    for d, token in ((etc, "from-etc"), (creds, "from-credential")):
        d.mkdir()
        (d / "api.token").write_text(token)
        os.chmod(d / "api.token", 0o400 if d is creds else 0o600)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    agent = make_agent(base_config(edge_bundle, api={
        "port": 0, "token_file": str(etc / "api.token")}))
    assert agent.config.api.token_file == creds / "api.token"
    url = f"{agent.http_url}/v2/models/edge_cnn"
    ok = {"Authorization": "Bearer from-credential"}
    assert httpx.get(url, headers=ok, timeout=10).status_code == 200
    old = {"Authorization": "Bearer from-etc"}
    assert httpx.get(url, headers=old, timeout=10).status_code == 401


def test_agent_notifies_systemd_ready_and_stopping(edge_bundle, tmp_path, make_agent,
                                                   monkeypatch) -> None:
    """READY=1 once the API serves, STOPPING=1 as the agent drains, as datagrams on the
    socket a Type=notify unit gets in $NOTIFY_SOCKET (bound here by the test)."""
    import socket

    import httpx

    from tests.edge.conftest import base_config

    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(60)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        agent = make_agent(base_config(edge_bundle))
        assert sock.recv(256) == b"READY=1"
        assert httpx.get(f"{agent.http_url}/v2/health/ready", timeout=10).status_code == 200
        agent.stop(grace=5)
        assert sock.recv(256) == b"STOPPING=1"
    finally:
        sock.close()
