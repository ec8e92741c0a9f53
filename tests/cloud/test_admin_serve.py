"""The admin plane of a real `tiersplit cloud serve`: closed without credentials, bearer
tokens rotated by SIGHUP, mutual TLS against a client CA, probes and metrics open, and
every call in the audit log."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import signal
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tiersplit.devtools.services import Service, tiersplit_cmd

pytestmark = [pytest.mark.integration]

CALLS = [("GET", "/v1/models"), ("GET", "/v1/load"),
         ("POST", "/v1/models/mlp/versions/2/unload"), ("POST", "/v1/models/mlp/versions/1/pin"),
         ("POST", "/v1/models/mlp/unpin"), ("POST", "/v1/models/mlp/rollback"),
         ("POST", "/v1/models/mlp/versions/2/load"), ("POST", "/v1/keys/reload")]


def _serve(tmp_path: Path, cloud_repo: Any, admin: dict[str, Any]) -> Service:
    cfg = {"repository": str(cloud_repo.root), "signing_public_key": str(cloud_repo.public_key),
           "models": [{"name": "mlp", "versions": ["all"]}, {"name": "cnn"}],
           "transports": [], "http": {"port": 0}, "grace_s": 2,
           "admin": {"port": 0, "audit_log": str(tmp_path / "audit.jsonl"), **admin}}
    path = tmp_path / "cloud.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return Service("cloud", tiersplit_cmd("cloud", "serve", "--config", str(path)),
                   log_path=tmp_path / "cloud.log")


def _metric(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix))


def _audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_without_credentials_every_admin_call_is_refused(tmp_path: Path, cloud_repo) -> None:
    limit = 2 * len(CALLS)
    with _serve(tmp_path, cloud_repo, {"auth_failures_per_minute": limit}) as svc:
        http, admin = svc.ready["http"], svc.ready["admin"]
        assert admin.startswith("http://127.0.0.1:") and admin != http
        before = httpx.get(f"{http}/metrics").text
        for method, path in CALLS:
            for headers in ({}, {"Authorization": "Bearer guess"}):
                r = httpx.request(method, admin + path, headers=headers)
                assert r.status_code == 401, (path, r.text)
        r = httpx.get(f"{admin}/v1/models")  # one failure past the per-source limit
        assert r.status_code == 429
        assert httpx.get(f"{http}/health/live").status_code == 200
        assert httpx.get(f"{http}/health/ready").status_code == 200
        after = httpx.get(f"{http}/metrics").text
        for name in ("tiersplit_cloud_models_loaded", "tiersplit_cloud_requests_total",
                     "tiersplit_cloud_backend_calls_total"):
            assert _metric(after, name) == _metric(before, name), name
        assert _metric(after, "tiersplit_cloud_models_loaded") == 3
        assert _metric(after, "tiersplit_cloud_admin_auth_failures_total") == limit + 1
        assert _metric(after, 'tiersplit_cloud_admin_requests_total{action="unload",result="ok"'
                       ) == 0
    audit = _audit(tmp_path)
    assert len(audit) == limit + 1
    assert [a["result"] for a in audit] == ["unauthorized"] * limit + ["rate_limited"]
    assert all(a["who"] is None and a["source"] == "127.0.0.1" for a in audit)
    assert [a["action"] for a in audit[:2]] == ["list", "list"]


def test_wrong_and_rotated_tokens_are_refused(tmp_path: Path, cloud_repo) -> None:
    token = tmp_path / "admin.token"
    token.write_text("first-token\n")
    token.chmod(0o600)
    with _serve(tmp_path, cloud_repo, {"token_file": str(token),
                                       "auth_failures_per_minute": 1000}) as svc:
        admin = svc.ready["admin"]

        def call(tok: str, path: str = "/v1/models/mlp/versions/2/unload") -> int:
            return httpx.post(admin + path, headers={"Authorization": f"Bearer {tok}"}
                              ).status_code

        assert call("wrong-token") == 401
        assert httpx.get(f"{admin}/v1/models", headers={"Authorization": "Bearer wrong"}
                         ).status_code == 401
        assert call("first-token") == 200
        token.write_text("second-token\n")
        svc.signal(signal.SIGHUP)
        for _ in range(2000):  # the reload runs on a thread of the child
            if call("first-token", "/v1/models/mlp/versions/2/load") == 401:
                break
        assert call("first-token", "/v1/models/mlp/versions/2/load") == 401
        assert call("second-token", "/v1/models/mlp/versions/2/load") == 200
        models = httpx.get(f"{admin}/v1/models",
                           headers={"Authorization": "Bearer second-token"}).json()["models"]
        assert {(m["name"], m["version"]) for m in models} >= {("mlp", "1"), ("mlp", "2")}
    audit = _audit(tmp_path)
    ok = [a for a in audit if a["result"] == "ok"]
    assert [a["action"] for a in ok] == ["unload", "load", "list"]
    assert ok[0]["target"] == "mlp/2" and ok[0]["who"].startswith("tok-")
    assert ok[0]["who"] != ok[1]["who"]  # the rotated token has another id
    assert all("token" not in json.dumps(a) for a in audit)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
          issuer_key: ec.EllipticCurvePrivateKey, ca: bool = False,
          ip: str | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(
            ipaddress.ip_address(ip))]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(tmp_path: Path, stem: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    c, k = tmp_path / f"{stem}.crt", tmp_path / f"{stem}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    k.chmod(0o600)
    return c, k


def test_mtls_client_certificates(tmp_path: Path, cloud_repo) -> None:
    keys = {n: ec.generate_private_key(ec.SECP256R1())
            for n in ("ca", "other-ca", "server", "ops", "intruder")}
    ca = _cert("tiersplit-admin-ca", keys["ca"], "tiersplit-admin-ca", keys["ca"], ca=True)
    other = _cert("other-ca", keys["other-ca"], "other-ca", keys["other-ca"], ca=True)
    ca_pem, _ = _write(tmp_path, "ca", ca, keys["ca"])
    server = _write(tmp_path, "server", _cert("cloud", keys["server"], "tiersplit-admin-ca",
                                              keys["ca"], ip="127.0.0.1"), keys["server"])
    ops = _write(tmp_path, "ops", _cert("ops", keys["ops"], "tiersplit-admin-ca", keys["ca"]),
                 keys["ops"])
    intruder = _write(tmp_path, "intruder", _cert("ops", keys["intruder"], "other-ca",
                                                  keys["other-ca"]), keys["intruder"])
    _write(tmp_path, "other-ca", other, keys["other-ca"])
    with _serve(tmp_path, cloud_repo, {"client_ca": str(ca_pem), "server_cert": str(server[0]),
                                       "server_key": str(server[1])}) as svc:
        admin = svc.ready["admin"]
        assert admin.startswith("https://127.0.0.1:")

        def client(cert: tuple[Path, Path] | None) -> httpx.Client:
            ctx = ssl.create_default_context(cafile=str(ca_pem))
            if cert is not None:
                ctx.load_cert_chain(str(cert[0]), str(cert[1]))
            return httpx.Client(verify=ctx)

        with client(ops) as c:
            r = c.post(f"{admin}/v1/models/mlp/versions/2/unload")
            assert r.status_code == 200, r.text
        for cert in (intruder, None):
            with client(cert) as c, pytest.raises(httpx.HTTPError):
                c.post(f"{admin}/v1/models/mlp/versions/1/unload")
        with client(ops) as c:
            models = c.get(f"{admin}/v1/models").json()["models"]
        assert {(m["name"], m["version"]) for m in models} == {("mlp", "1"), ("cnn", "1")}
        assert httpx.get(f"{svc.ready['http']}/metrics").status_code == 200
    ok = [a for a in _audit(tmp_path) if a["result"] == "ok"]
    assert [a["action"] for a in ok] == ["unload", "list"]
    assert ok[0]["who"] == "cert:commonName=ops"
