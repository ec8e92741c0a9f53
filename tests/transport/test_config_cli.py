"""Link configs (pydantic, discriminated on ``kind``), key files and the CLI commands."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from tiersplit.cli import app
from transport import keys
from transport.config import (
    ClientLinkConfig,
    MqttClientConfig,
    MqttServerConfig,
    ServerLinkConfig,
    ZmqServerConfig,
)
from transport.errors import KeyFileError

runner = CliRunner()


class CloudSection(BaseModel):
    """How an upper floor embeds link configs."""

    links: list[ServerLinkConfig]


class EdgeSection(BaseModel):
    link: ClientLinkConfig


def test_discriminated_union_from_yaml() -> None:
    doc = yaml.safe_load("""
links:
  - kind: zmq
    endpoints: ["tcp://127.0.0.1:0"]
    secret_key: k/cloud.key
    allowed_keys_dir: k/agents
  - kind: mqtt
    broker: {host: 127.0.0.1, port: 8883, ca_file: ca.pem, username: u, password_file: p}
    secret_key: k/cloud-x.key
    allowed_keys_dir: k/agents-x
""")
    cloud = CloudSection.model_validate(doc)
    assert isinstance(cloud.links[0], ZmqServerConfig)
    assert isinstance(cloud.links[1], MqttServerConfig)
    assert cloud.links[1].group == "tiersplit-cloud" and cloud.links[1].broker.tls
    edge = EdgeSection.model_validate({"link": {
        "kind": "mqtt", "secret_key": "a.key", "server_public_key": "c.pub"}})
    assert isinstance(edge.link, MqttClientConfig)


@pytest.mark.parametrize("bad", [
    {"kind": "zmq", "endpoints": ["tcp://x:1"], "insecure": True, "typo": 1},  # extra field
    {"kind": "zmq", "endpoints": ["tcp://x:1"]},  # no keys and not insecure
    {"kind": "carrier-pigeon"},
    {"kind": "mqtt", "secret_key": "a", "allowed_keys_dir": "b",
     "broker": {"password": "x", "password_file": "y"}},
    {"kind": "mqtt", "secret_key": "a", "allowed_keys_dir": "b", "prefix": "a/+/b"},
])
def test_bad_configs_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        CloudSection.model_validate({"links": [bad]})


def test_secret_key_loaders_refuse_loose_permissions(tmp_path: Path) -> None:
    for kind, loader in (("curve", keys.load_curve_secret),
                         ("x25519", keys.load_x25519_private),
                         ("ed25519", keys.load_ed25519_private)):
        secret, _ = keys.generate(kind, tmp_path, kind)  # type: ignore[arg-type]
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        loader(secret)
        for mode in (0o644, 0o604, 0o640):
            os.chmod(secret, mode)
            with pytest.raises(KeyFileError, match="chmod 600") as e:
                loader(secret)
            assert secret.read_text()[40:60] not in str(e.value)  # no key material
        os.chmod(secret, 0o600)
        with pytest.raises(KeyFileError):
            keys.generate(kind, tmp_path, kind)  # type: ignore[arg-type]  # no overwrite


def test_keys_gen_cli(tmp_path: Path) -> None:
    out = tmp_path / "k"
    for kind in ("curve", "x25519", "ed25519"):
        r = runner.invoke(app, ["keys", "gen", "--kind", kind, "--out", str(out),
                                "--name", f"agent-{kind}"])
        assert r.exit_code == 0, r.output
        assert stat.S_IMODE((out / f"agent-{kind}.key").stat().st_mode) == 0o600
        shown = runner.invoke(app, ["keys", "show-public", str(out / f"agent-{kind}.key")])
        assert shown.exit_code == 0 and shown.output.startswith(kind)
    assert keys.load_curve_public(out / "agent-curve.pub")
    r = runner.invoke(app, ["keys", "gen", "--kind", "rsa", "--out", str(out)])
    assert r.exit_code == 2
    r = runner.invoke(app, ["keys", "gen", "--kind", "curve", "--out", str(out),
                            "--name", "agent-curve"])
    assert r.exit_code == 2  # refuses to overwrite


def test_link_emulate_cli_runs_and_refuses_unknown_profile() -> None:
    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-m", "tiersplit.cli", "link", "emulate", "--listen",
                        "0", "--target", "127.0.0.1:9", "--profile", "wifi", "--duration",
                        "0.3"], cwd=repo, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "RTT 5 ms (one way 2.5 ms)" in r.stdout
    r = runner.invoke(app, ["link", "emulate", "--listen", "0", "--target", "127.0.0.1:9",
                            "--profile", "5g", "--profiles", str(repo / "configs/links.yaml")])
    assert r.exit_code == 2
