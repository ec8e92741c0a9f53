"""HTTP faces of a cloud core: the open listener and the admin listener.

The open listener (``http:``) serves Prometheus ``/metrics`` and the health probes; they
reveal no tensor data, so Prometheus and the kubelet reach them without credentials. The
admin API (``admin:``) has its own listener, loopback by default, and every call passes
:class:`cloud_core.admin.Authenticator` (bearer token or verified client certificate) and
lands in the audit log; without credentials every call is refused with 401.

Starlette apps served by uvicorn in named threads on sockets we bind ourselves (so
``port: 0`` works and the URL is known before the thread runs). Admin endpoints call the
core's blocking methods; Starlette runs sync endpoints in its thread pool, so a bundle
load never stalls ``/metrics``.

Routes::

    open:   GET  /metrics, /health/live, /health/ready
    admin:  GET  /v1/load                                   the LoadReport agents get in pongs
            GET  /v1/models                                 loaded versions
            POST /v1/models/{name}/versions/{version}/load
            POST /v1/models/{name}/versions/{version}/unload
            POST /v1/models/{name}/versions/{version}/pin
            POST /v1/models/{name}/unpin
            POST /v1/models/{name}/rollback
            POST /v1/keys/reload                            re-read the links' agent allow-lists
            GET  /v1/rollouts[/{name}]                      plans and per-version stats
            POST /v1/rollouts/{name}/versions/{version}     start (?canary=10%&labels=a,b
                                                            &stable=&max_error_rate=
                                                            &max_p99_ratio=&min_requests=
                                                            &min_answers=&max_parallel=)
            POST /v1/rollouts/{name}/{promote|pause|resume|rollback}
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from cloud_core.admin import AuditLog, Authenticator
from cloud_core.errors import CloudError, RepositoryError, RolloutError

if TYPE_CHECKING:
    from cloud_core.server import CloudCore

__all__ = ["HttpServer", "make_admin_app", "make_app"]

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 10.0


def make_app(core: CloudCore) -> Starlette:
    """The open app: metrics and probes (no I/O of its own; testable with a TestClient)."""

    def metrics(request: Request) -> Response:
        return Response(core.metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    def live(request: Request) -> Response:
        return JSONResponse({"status": "live", "state": core.state})

    def ready(request: Request) -> Response:
        ok = core.ready
        return JSONResponse({"status": "ready" if ok else "not ready", "state": core.state},
                            status_code=200 if ok else 503)

    return Starlette(routes=[Route("/metrics", metrics), Route("/health/live", live),
                             Route("/health/ready", ready)])


def _client_subject(request: Request) -> str | None:
    return request.scope.get("extensions", {}).get("tls", {}).get("client_subject")


def make_admin_app(core: CloudCore, auth: Authenticator, audit: AuditLog) -> Starlette:
    """The admin app: every route authenticated, counted and audited."""
    m = core.metrics

    def admin(action: str, fn: Any) -> Any:
        def endpoint(request: Request) -> Response:
            source = request.client.host if request.client else "-"
            target = "/".join(str(v) for v in request.path_params.values())
            decision = auth.authenticate(source, request.headers.get("authorization"),
                                         _client_subject(request))
            if not decision.allowed:
                m.admin_auth_failures.inc()
                m.admin_requests.labels(action, decision.result).inc()
                status = 429 if decision.result == "rate_limited" else 401
                audit.record(who=None, source=source, action=action, target=target,
                             result=decision.result, status=status)
                msg = ("too many failed authentications; wait a minute"
                       if status == 429 else "admin credentials required")
                return JSONResponse({"error": msg}, status_code=status,
                                    headers={"WWW-Authenticate": "Bearer"})
            try:
                resp = JSONResponse(fn(request, **request.path_params))
            except RepositoryError as e:
                code = 404 if "not loaded" in str(e) or "no bundle" in str(e) else 409
                resp = JSONResponse({"error": str(e)}, status_code=code)
            except RolloutError as e:
                resp = JSONResponse({"error": str(e)}, status_code=409)
            except CloudError as e:
                resp = JSONResponse({"error": str(e)}, status_code=400)
            result = "ok" if resp.status_code < 400 else "error"
            m.admin_requests.labels(action, result).inc()
            audit.record(who=decision.principal, source=source, action=action, target=target,
                         result=result, status=resp.status_code)
            return resp
        return endpoint

    routes = [
        Route("/v1/load", admin("load_report", lambda r: asdict(core.load()))),
        Route("/v1/models", admin("list", lambda r: {"models": core.models()})),
        Route("/v1/models/{name}/versions/{version}/load", methods=["POST"],
              endpoint=admin("load", lambda r, name, version: core.load_model(name, version))),
        Route("/v1/models/{name}/versions/{version}/unload", methods=["POST"],
              endpoint=admin("unload", lambda r, name, version: (
                  core.unload_model(name, version), {"unloaded": f"{name}:{version}"})[1])),
        Route("/v1/models/{name}/versions/{version}/pin", methods=["POST"],
              endpoint=admin("pin", lambda r, name, version: (
                  core.pin_model(name, version), {"pinned": f"{name}:{version}"})[1])),
        Route("/v1/models/{name}/unpin", methods=["POST"],
              endpoint=admin("unpin", lambda r, name: (core.repository.unpin(name),
                                                       {"unpinned": name})[1])),
        Route("/v1/models/{name}/rollback", methods=["POST"],
              endpoint=admin("rollback", lambda r, name: {"active": core.rollback_model(name)})),
        Route("/v1/keys/reload", methods=["POST"],
              endpoint=admin("keys_reload", lambda r: {"allowed": core.reload_keys()})),
        *_rollout_routes(core, admin),
    ]
    return Starlette(routes=routes)


def _thresholds(q: Any) -> Any:
    from cloud_core.rollout import Thresholds

    d = Thresholds()
    try:
        return Thresholds(
            max_error_rate=float(q.get("max_error_rate", d.max_error_rate)),
            max_p99_ratio=float(q.get("max_p99_ratio", d.max_p99_ratio)),
            min_requests=int(q.get("min_requests", d.min_requests)),
            min_answers=int(q.get("min_answers", d.min_answers)))
    except ValueError as e:
        raise RolloutError(f"bad threshold: {e}") from None


def _rollout_routes(core: CloudCore, admin: Any) -> list[Route]:
    """Admin routes of ``tiersplit fleet`` (rollout plans)."""
    ro = core.rollout

    def start(r: Request, name: str, version: str) -> Any:
        q = r.query_params
        labels = [x.strip() for x in q.get("labels", "").split(",") if x.strip()]
        try:
            parallel = int(q.get("max_parallel", 0))
        except ValueError:
            raise RolloutError("max_parallel must be an integer") from None
        return core.rollout_start(name, version, canary=q.get("canary", ""), labels=labels,
                                  thresholds=_thresholds(q), stable=q.get("stable") or None,
                                  max_parallel=parallel)

    def move(action: str) -> Any:
        return lambda r, name: getattr(ro, action)(name).to_json()

    routes = [Route("/v1/rollouts", admin("rollout_status", lambda r: ro.status())),
              Route("/v1/rollouts/{name}", admin("rollout_status",
                                                 lambda r, name: ro.status(name))),
              Route("/v1/rollouts/{name}/versions/{version}", methods=["POST"],
                    endpoint=admin("rollout", start))]
    routes += [Route(f"/v1/rollouts/{{name}}/{a}", methods=["POST"],
                     endpoint=admin(f"rollout_{a}", move(a)))
               for a in ("promote", "pause", "resume", "rollback")]
    return routes


class _PeerCertH11(H11Protocol):
    """h11 protocol that hands the verified client certificate's subject to the app
    (uvicorn does not put TLS details in the ASGI scope)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_obj = transport.get_extra_info("ssl_object")
        cert = ssl_obj.getpeercert() if ssl_obj is not None else None
        subject = None
        if cert:
            subject = ",".join(f"{k}={v}" for rdn in cert.get("subject", ())
                               for k, v in rdn)
        inner = self.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            ext = dict(scope.get("extensions") or {})
            ext["tls"] = {"client_subject": subject}
            await inner({**scope, "extensions": ext}, receive, send)

        self.app = app


class HttpServer:
    """One uvicorn app in a named daemon thread; ``start`` waits until it serves."""

    def __init__(self, app: Starlette, host: str, port: int, name: str = "cloud-http",
                 tls: dict[str, Any] | None = None) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._name = name
        self._tls = tls or {}
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("HttpServer already started")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        sock.listen(128)
        self._sock = sock
        port = sock.getsockname()[1]
        host = f"[{self._host}]" if family == socket.AF_INET6 else self._host
        scheme = "https" if self._tls else "http"
        self.url = f"{scheme}://{host}:{port}"
        extra: dict[str, Any] = {}
        if self._tls:
            extra = {"ssl_certfile": str(self._tls["cert"]), "ssl_keyfile": str(self._tls["key"]),
                     "http": _PeerCertH11}
            if self._tls.get("client_ca") is not None:
                extra.update(ssl_ca_certs=str(self._tls["client_ca"]),
                             ssl_cert_reqs=ssl.CERT_REQUIRED)
        config = uvicorn.Config(self._app, log_level="warning", lifespan="off",
                                access_log=False, **extra)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=self._name, daemon=True)
        self._thread.start()
        waited = 0.0
        while not self._server.started and waited < _START_TIMEOUT_S:
            if not self._thread.is_alive():
                raise RuntimeError(f"HTTP server on {self.url} exited during start-up")
            self._thread.join(0.01)
            waited += 0.01
        if not self._server.started:
            raise RuntimeError(f"HTTP server on {self.url} did not start in "
                               f"{_START_TIMEOUT_S:.0f} s")
        log.info("%s on %s", self._name, self.url)

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)
        if self._sock is not None:
            self._sock.close()
