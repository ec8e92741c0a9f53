"""The HTTP face on a real uvicorn socket: health, metrics, admin API and the CLI that
drives it (`tiersplit cloud models ...`, `tiersplit cloud keys reload`)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
from typer.testing import CliRunner

from tests.cloud.conftest import Inbox, config_for, make_request
from tiersplit.cli import app

METRIC_NAMES = [
    "tiersplit_cloud_requests_total", "tiersplit_cloud_rejected_total",
    "tiersplit_cloud_queue_depth", "tiersplit_cloud_batch_size",
    "tiersplit_cloud_queue_seconds", "tiersplit_cloud_compute_seconds",
    "tiersplit_cloud_backend_calls_total", "tiersplit_cloud_backend_items_total",
]


def test_health_metrics_and_admin(core_factory, tmp_path: Path, monkeypatch) -> None:
    token = tmp_path / "admin.token"
    token.write_text("s3cret\n")
    token.chmod(0o600)
    core = core_factory(http={"enabled": True, "port": 0},
                        admin={"enabled": True, "port": 0, "token_file": str(token)})
    url = core.http_url
    admin = core.admin_url
    assert url and url.startswith("http://127.0.0.1:")
    assert admin and admin.startswith("http://127.0.0.1:") and admin != url
    assert httpx.get(f"{url}/v1/models").status_code == 404  # not on the open listener
    monkeypatch.setenv("TIERSPLIT_ADMIN_TOKEN", "s3cret")
    assert httpx.get(f"{url}/health/live").json()["status"] == "live"
    assert httpx.get(f"{url}/health/ready").status_code == 200
    lv = core.repository.active("mlp")
    inbox = Inbox()
    req = make_request(lv, "h1", {"h1": np.ones((2, 32), np.float32)})
    core.on_request(req, inbox)
    inbox.wait([req.request_id])
    text = httpx.get(f"{url}/metrics").text
    for name in METRIC_NAMES:
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    assert 'tiersplit_cloud_requests_total{cut="h1",model="mlp",status="OK"} 1.0' in text
    assert 'tiersplit_cloud_backend_items_total{backend="onnxruntime"} 2.0' in text
    load = httpx.get(f"{admin}/v1/load", headers={"Authorization": "Bearer s3cret"}).json()
    assert set(load) == {"queue_depth", "queue_ms", "utilisation", "inflight"}

    runner = CliRunner()
    r = runner.invoke(app, ["cloud", "models", "list", "--admin", admin, "--json"])
    assert r.exit_code == 0, r.output
    listed = json.loads(r.output)["models"]
    assert {(m["name"], m["version"], m["active"]) for m in listed} == {
        ("mlp", "1", False), ("mlp", "2", True), ("cnn", "1", True)}
    r = runner.invoke(app, ["cloud", "models", "list", "--admin", admin])
    assert r.exit_code == 0 and "mlp" in r.output
    r = runner.invoke(app, ["cloud", "models", "unload", "mlp", "2", "--admin", admin])
    assert r.exit_code == 0, r.output
    assert core.repository.loaded_versions("mlp") == ["1"]
    r = runner.invoke(app, ["cloud", "models", "unload", "mlp", "2", "--admin", admin])
    assert r.exit_code == 2 and "404" in r.output and "not loaded" in r.output
    r = runner.invoke(app, ["cloud", "models", "load", "mlp", "2", "--admin", admin])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["cloud", "models", "pin", "mlp", "1", "--admin", admin])
    assert r.exit_code == 0 and core.repository.active("mlp").version == "1"
    r = runner.invoke(app, ["cloud", "models", "rollback", "mlp", "--admin", admin])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["cloud", "models", "load", "mlp", "9", "--admin", admin])
    assert r.exit_code == 2 and "no bundle mlp:9" in r.output
    r = runner.invoke(app, ["cloud", "keys", "reload", "--admin", admin])
    assert r.exit_code == 0 and "allowed" in r.output


def test_admin_token_required(core_factory, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TIERSPLIT_ADMIN_TOKEN", raising=False)
    token = tmp_path / "admin.token"
    token.write_text("s3cret\n")
    core = core_factory(http={"enabled": True, "port": 0},
                        admin={"enabled": True, "port": 0, "token_file": str(token)})
    url, admin = core.http_url, core.admin_url
    assert httpx.get(f"{admin}/v1/models").status_code == 401
    assert httpx.get(f"{url}/metrics").status_code == 200  # scraping needs no token
    ok = httpx.get(f"{admin}/v1/models", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    r = CliRunner().invoke(app, ["cloud", "models", "list", "--admin", admin])
    assert r.exit_code == 2 and "401" in r.output
    r = CliRunner().invoke(app, ["cloud", "models", "list", "--admin", admin, "--token-file",
                                 str(token)])
    assert r.exit_code == 0, r.output
    text = httpx.get(f"{url}/metrics").text
    assert 'tiersplit_cloud_admin_requests_total{action="list",result="ok"} 2.0' in text
    assert 'tiersplit_cloud_admin_requests_total{action="list",result="unauthorized"} 2.0' in text
    assert "tiersplit_cloud_admin_auth_failures_total 2.0" in text


def test_deprecated_http_admin_token_file_moves_to_admin(cloud_repo, tmp_path: Path) -> None:
    token = tmp_path / "admin.token"
    token.write_text("s3cret\n")
    cfg = config_for(cloud_repo, http={"admin_token_file": str(token)})
    assert cfg.admin.token_file == token


def test_not_ready_once_draining(core_factory) -> None:
    core = core_factory(http={"enabled": True, "port": 0})
    url = core.http_url
    assert httpx.get(f"{url}/health/ready").status_code == 200
    core.stop(grace=1)
    assert core.state == "stopped" and not core.ready
