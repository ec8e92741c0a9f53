"""The ``mqtt`` overlay's broker configuration on a real Mosquitto: the rendered
``mosquitto.conf`` and ACL (only the pod's mount paths moved into a scratch directory and
the listener onto a free loopback port), a core started from the overlay's rendered
``cloud.yaml``, and agents logging in with their agent id. A request travels agent ->
broker -> core -> broker -> agent; an agent publishing on another agent's request topic
is dropped by the ACL and never reaches a core."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

import transport
from contract.bundle import Bundle
from contract.deadline import Deadline
from tests.deploy import render, stack
from tiersplit.devtools.mosquitto import find_mosquitto
from transport import keys
from transport.config import MqttBrokerConfig, MqttClientConfig
from transport.errors import LinkTimeout
from transport.messages import Request, Status

pytestmark = [pytest.mark.integration, pytest.mark.mqtt]

#: The broker's in-pod directories and where this test puts them.
POD_DIRS = ("/mosquitto/certs", "/mosquitto/config")


@pytest.fixture(scope="module", autouse=True)
def _need_tools() -> None:
    if shutil.which("kubectl") is None:
        print("SKIP mqtt overlay: kubectl not installed")
        pytest.skip("kubectl not installed")
    if find_mosquitto() is None:
        print("SKIP mqtt overlay: mosquitto not installed")
        pytest.skip("mosquitto / mosquitto_passwd not installed")


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer.subject if issuer else name).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None),
                        critical=True))
    if issuer is not None:
        b = b.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pki(certs: Path) -> None:
    """A CA and a server certificate in the file names the overlay's Secret uses."""
    pem = serialization.Encoding.PEM
    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca = _cert("tiersplit test CA", ca_key, None, ca_key)
    (certs / "ca.pem").write_bytes(ca.public_bytes(pem))
    (certs / "server.crt").write_bytes(_cert("localhost", srv_key, ca, ca_key).public_bytes(pem))
    keys.write_secret(certs / "server.key", srv_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def _passwords(passwd_exe: str, path: Path, users: dict[str, str]) -> None:
    for i, (user, password) in enumerate(users.items()):
        subprocess.run([passwd_exe, "-b", *(["-c"] if i == 0 else []), str(path), user,
                        password], check=True, capture_output=True, timeout=60)
    os.chmod(path, 0o600)


@contextlib.contextmanager
def _mosquitto(conf_text: str, acl_text: str, work: Path, users: dict[str, str]
               ) -> Iterator[int]:
    exe, passwd_exe = find_mosquitto()  # type: ignore[misc]
    certs, config = work / "certs", work / "config"
    certs.mkdir(parents=True)
    config.mkdir()
    _pki(certs)
    _passwords(passwd_exe, certs / "passwd", users)
    (config / "acl").write_text(acl_text)
    port = stack.free_port()
    lines = []
    for line in conf_text.splitlines():
        for pod, here in zip(POD_DIRS, (certs, config), strict=True):
            line = line.replace(pod, str(here))
        if line.startswith("listener "):
            line = f"listener {port} 127.0.0.1"
        lines.append(line)
    if os.geteuid() == 0:
        lines.append("user root")  # else mosquitto drops to a user that cannot read work/
    (config / "mosquitto.conf").write_text("\n".join(lines) + "\n")
    log = (work / "mosquitto.log").open("w")
    proc = subprocess.Popen([exe, "-c", str(config / "mosquitto.conf")], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def listening() -> bool:
            assert proc.poll() is None, (work / "mosquitto.log").read_text()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        stack.wait_until(listening, 30, "mosquitto to listen")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _core_config(doc: dict[str, Any], fleet: stack.Fleet, work: Path, port: int,
                 cloud_pass: Path) -> dict[str, Any]:
    """The overlay's cloud.yaml with paths moved here: the MQTT link as deployed (host and
    port aside), the ZeroMQ one on a free loopback port."""
    out = stack.local_cloud_config(doc, fleet)
    mqtt = next(t for t in doc["transports"] if t["kind"] == "mqtt")
    broker = dict(mqtt["broker"], host="127.0.0.1", port=port,
                  ca_file=str(work / "certs" / "ca.pem"), password_file=str(cloud_pass))
    kdir = fleet.root / "keys"
    out["transports"] = [dict(mqtt, broker=broker, secret_key=str(kdir / "cloud-x.key"),
                              allowed_keys_dir=str(kdir / "agents-x25519")),
                         *out["transports"]]
    return out


def _agent_link(fleet: stack.Fleet, agent: str, login: str, password: str, port: int,
                work: Path, prefix: str) -> transport.ClientLink:
    kdir = fleet.root / "keys"
    broker = MqttBrokerConfig(host="127.0.0.1", port=port, tls=True,
                              ca_file=work / "certs" / "ca.pem", username=login,
                              password=password)
    cfg = MqttClientConfig(broker=broker, prefix=prefix, secret_key=kdir / f"{agent}-x.key",
                           server_public_key=kdir / "cloud-x.pub")
    return transport.make_client_link(cfg, agent)


def test_rendered_broker_config_carries_requests_and_enforces_the_acl(tmp_path: Path) -> None:
    tree = render.copy_tree(tmp_path)
    r = render.Rendered("mqtt", render.kustomize(tree, "overlays/mqtt"), tree)
    conf = r.one("ConfigMap", "tiersplit-mosquitto-config")["data"]
    doc = yaml.safe_load(r.one("ConfigMap", "tiersplit-cloud-config")["data"]["cloud.yaml"])
    mqtt = next(t for t in doc["transports"] if t["kind"] == "mqtt")
    fleet = stack.Fleet.make(tmp_path / "fleet")
    kdir = fleet.root / "keys"
    keys.generate("x25519", kdir, "cloud-x")
    (kdir / "agents-x25519").mkdir()
    agents = ("edge-1", "edge-2")
    for agent in agents:
        keys.generate("x25519", kdir, f"{agent}-x")
        shutil.copy(kdir / f"{agent}-x.pub", kdir / "agents-x25519" / f"{agent}.pub")
    users = {mqtt["broker"]["username"]: secrets.token_urlsafe(12),
             **{a: secrets.token_urlsafe(12) for a in agents}}
    cloud_pass = kdir / "broker.pass"
    keys.write_secret(cloud_pass, users[mqtt["broker"]["username"]].encode())
    work = tmp_path / "broker"
    with _mosquitto(conf["mosquitto.conf"], conf["acl"], work, users) as port:
        core_doc = _core_config(doc, fleet, work, port, cloud_pass)
        core = stack.start_cloud(tmp_path, core_doc)
        links: list[transport.ClientLink] = []
        try:
            assert core.ready.get("mqtt"), core.ready
            good = _agent_link(fleet, "edge-1", "edge-1", users["edge-1"], port, work,
                               mqtt["prefix"])
            # edge-2's key, but logged in as edge-1: publishes on tiersplit/req/edge-2,
            # which the ACL gives only to the user edge-2.
            spoof = _agent_link(fleet, "edge-2", "edge-1", users["edge-1"], port, work,
                                mqtt["prefix"])
            links += [good, spoof]
            stack.wait_until(lambda: good.connected, 60, "edge-1 to see a core")
            bundle = Bundle.load(fleet.repo / stack.MODEL / "1",
                                 keys.load_ed25519_public(fleet.signing_pub), role="cloud")
            reply = good.submit(_request("ok-1", "edge-1", bundle)).result(30)
            assert reply.status == Status.OK, reply.error
            assert reply.tensors["y"].shape == (2, 10)
            with pytest.raises(LinkTimeout):
                spoof.submit(_request("spoof-1", "edge-2", bundle, 3000)).result(15)
            # Dropped at the broker, not merely unanswered: the core computed one request.
            reply = good.submit(_request("ok-2", "edge-1", bundle)).result(30)
            assert reply.status == Status.OK, reply.error
            served = _counter(core.ready["http"], "tiersplit_cloud_requests_total")
            assert served == {"OK": 2.0}, served
        finally:
            for link in links:
                link.close()
            core.stop(grace=20)


def _request(rid: str, agent: str, bundle: Bundle, budget_ms: float = 20_000) -> Request:
    return Request(request_id=rid, agent_id=agent, model=bundle.name, version=bundle.version,
                   digest=bundle.digest, cut="h1", deadline=Deadline.after_ms(budget_ms),
                   tensors={"h1": np.ones((2, 32), np.float32)})


def _counter(http: str, name: str) -> dict[str, float]:
    """Samples of ``name`` by status from a core's /metrics."""
    text = httpx.get(http + "/metrics", timeout=30).text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == name:
                status = smp.labels.get("status", "")
                out[status] = out.get(status, 0.0) + smp.value
    return out
