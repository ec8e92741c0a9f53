"""The admin plane's rules without sockets: token check and rotation, the per-source
failure limit, audit records, and the config rule that a non-loopback admin listener
needs credentials."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloud_core.admin import AuditLog, Authenticator, FailureLimiter, TokenStore, token_id
from cloud_core.errors import ConfigError
from tests.cloud.conftest import config_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _token(tmp_path: Path, value: str) -> Path:
    p = tmp_path / "admin.token"
    p.write_text(value + "\n")
    p.chmod(0o600)
    return p


def test_token_check_and_rotation(tmp_path: Path) -> None:
    path = _token(tmp_path, "first")
    store = TokenStore(path)
    assert store.check("first") == token_id("first")
    assert store.check("firs") is None and store.check("") is None
    path.write_text("second\n")
    assert store.check("first") is not None  # not re-read until reload
    store.reload()
    assert store.check("first") is None
    assert store.check("second") == token_id("second")


def test_token_file_errors_keep_previous_token(tmp_path: Path) -> None:
    path = _token(tmp_path, "first")
    store = TokenStore(path)
    path.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        store.reload()
    assert store.check("first") is not None
    with pytest.raises(ConfigError, match="unreadable"):
        TokenStore(tmp_path / "missing")


def test_token_id_hides_the_token() -> None:
    tid = token_id("s3cret-value")
    assert "s3cret" not in tid and tid.startswith("tok-") and tid == token_id("s3cret-value")


def test_authenticator_without_credentials_refuses_everything() -> None:
    auth = Authenticator(None, FailureLimiter(100))
    assert auth.authenticate("1.2.3.4", None).result == "unauthorized"
    assert auth.authenticate("1.2.3.4", "Bearer anything").result == "unauthorized"
    assert auth.authenticate("1.2.3.4", None, cert_subject="CN=x").result == "unauthorized"


def test_authenticator_bearer_and_mtls(tmp_path: Path) -> None:
    auth = Authenticator(TokenStore(_token(tmp_path, "tok")), FailureLimiter(100), mtls=True)
    ok = auth.authenticate("a", "Bearer tok")
    assert ok.allowed and ok.principal == token_id("tok")
    assert auth.authenticate("a", "bearer tok").allowed
    assert not auth.authenticate("a", "Basic tok").allowed
    assert not auth.authenticate("a", "Bearer wrong").allowed
    cert = auth.authenticate("a", None, cert_subject="commonName=ops")
    assert cert.allowed and cert.principal == "cert:commonName=ops"


def test_failures_are_limited_per_source(tmp_path: Path) -> None:
    clock = Clock()
    auth = Authenticator(TokenStore(_token(tmp_path, "tok")), FailureLimiter(3, clock))
    for _ in range(3):
        assert auth.authenticate("evil", "Bearer guess").result == "unauthorized"
    # the right token no longer helps this source within the window...
    assert auth.authenticate("evil", "Bearer tok").result == "rate_limited"
    # ...other sources are unaffected...
    assert auth.authenticate("good", "Bearer tok").allowed
    # ...and the window slides.
    clock.now += 60.0
    assert auth.authenticate("evil", "Bearer tok").allowed


def test_audit_log_writes_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "admin.jsonl"
    audit = AuditLog(path, clock=lambda: 1234.5)
    audit.record(who="tok-abc", source="10.0.0.1", action="unload", target="mlp/2",
                 result="ok", status=200)
    audit.record(who=None, source="10.0.0.2", action="rollback", target="mlp",
                 result="unauthorized", status=401)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines == [
        {"ts": 1234.5, "who": "tok-abc", "source": "10.0.0.1", "action": "unload",
         "target": "mlp/2", "result": "ok", "status": 200},
        {"ts": 1234.5, "who": None, "source": "10.0.0.2", "action": "rollback",
         "target": "mlp", "result": "unauthorized", "status": 401}]


def test_audit_log_defaults_to_logger(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="tiersplit.audit")
    AuditLog().record(who="x", source="s", action="pin", target="m/1", result="ok", status=200)
    rec = [r for r in caplog.records if r.name == "tiersplit.audit"]
    assert len(rec) == 1 and json.loads(rec[0].getMessage())["action"] == "pin"


def test_non_loopback_admin_without_credentials_is_a_config_error(cloud_repo,
                                                                   tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"admin\.host.*admin\.token_file"):
        config_for(cloud_repo, admin={"host": "0.0.0.0"})
    token = _token(tmp_path, "tok")
    cfg = config_for(cloud_repo, admin={"host": "0.0.0.0", "token_file": str(token)})
    assert cfg.admin.host == "0.0.0.0"
    assert config_for(cloud_repo, admin={"host": "127.0.0.1"}).admin.token_file is None
    with pytest.raises(ConfigError, match="server_cert"):
        config_for(cloud_repo, admin={"client_ca": str(token)})
