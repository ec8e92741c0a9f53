"""HTTP face of a cloud core: Prometheus ``/metrics``, health probes and the admin API.

Starlette app served by uvicorn in one named thread on a socket we bind ourselves (so
``port: 0`` works and the URL is known before the thread runs). Admin endpoints call the
core's blocking methods; Starlette runs sync endpoints in its thread pool, so a bundle
load never stalls ``/metrics``.

Routes::

    GET  /metrics                                   Prometheus text format
    GET  /health/live                               200 while the process serves HTTP
    GET  /health/ready                              200 when models are loaded and links bound
    GET  /v1/load                                   the LoadReport agents get in pongs
    GET  /v1/models                                 loaded versions (active, pinned, digest)
    POST /v1/models/{name}/versions/{version}/load
    POST /v1/models/{name}/versions/{version}/unload
    POST /v1/models/{name}/versions/{version}/pin
    POST /v1/models/{name}/unpin
    POST /v1/models/{name}/rollback
    POST /v1/keys/reload                            re-read the links' agent allow-lists

With ``http.admin_token_file`` set, ``/v1/*`` needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import logging
import socket
import threading
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cloud_core.config import HttpConfig
from cloud_core.errors import CloudError, RepositoryError

if TYPE_CHECKING:
    from cloud_core.server import CloudCore

__all__ = ["HttpServer", "make_app"]

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 10.0


def make_app(core: CloudCore, token: str | None = None) -> Starlette:
    """The Starlette app for ``core`` (no I/O of its own; testable with a TestClient)."""

    def authorized(request: Request) -> bool:
        if token is None:
            return True
        got = request.headers.get("authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {token}".encode())

    def admin(fn: Any) -> Any:
        def endpoint(request: Request) -> Response:
            if not authorized(request):
                return JSONResponse({"error": "admin token required"}, status_code=401)
            try:
                return JSONResponse(fn(request, **request.path_params))
            except RepositoryError as e:
                code = 404 if "not loaded" in str(e) or "no bundle" in str(e) else 409
                return JSONResponse({"error": str(e)}, status_code=code)
            except CloudError as e:
                return JSONResponse({"error": str(e)}, status_code=400)
        return endpoint

    def metrics(request: Request) -> Response:
        return Response(core.metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    def live(request: Request) -> Response:
        return JSONResponse({"status": "live", "state": core.state})

    def ready(request: Request) -> Response:
        ok = core.ready
        return JSONResponse({"status": "ready" if ok else "not ready", "state": core.state},
                            status_code=200 if ok else 503)

    routes = [
        Route("/metrics", metrics),
        Route("/health/live", live),
        Route("/health/ready", ready),
        Route("/v1/load", admin(lambda r: asdict(core.load()))),
        Route("/v1/models", admin(lambda r: {"models": core.models()})),
        Route("/v1/models/{name}/versions/{version}/load", methods=["POST"],
              endpoint=admin(lambda r, name, version: core.load_model(name, version))),
        Route("/v1/models/{name}/versions/{version}/unload", methods=["POST"],
              endpoint=admin(lambda r, name, version: (core.unload_model(name, version),
                                                       {"unloaded": f"{name}:{version}"})[1])),
        Route("/v1/models/{name}/versions/{version}/pin", methods=["POST"],
              endpoint=admin(lambda r, name, version: (core.pin_model(name, version),
                                                       {"pinned": f"{name}:{version}"})[1])),
        Route("/v1/models/{name}/unpin", methods=["POST"],
              endpoint=admin(lambda r, name: (core.repository.unpin(name),
                                              {"unpinned": name})[1])),
        Route("/v1/models/{name}/rollback", methods=["POST"],
              endpoint=admin(lambda r, name: {"active": core.rollback_model(name)})),
        Route("/v1/keys/reload", methods=["POST"],
              endpoint=admin(lambda r: {"allowed": core.reload_keys()})),
    ]
    return Starlette(routes=routes)


class HttpServer:
    """uvicorn in a named daemon thread; ``start`` waits until it serves, ``stop`` joins."""

    def __init__(self, core: CloudCore, cfg: HttpConfig) -> None:
        token = None
        if cfg.admin_token_file is not None:
            try:
                token = cfg.admin_token_file.read_text().strip()
            except OSError as e:
                raise RepositoryError(f"http.admin_token_file unreadable: {e.strerror}") from e
        self._app = make_app(core, token)
        self._cfg = cfg
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("HttpServer already started")
        family = socket.AF_INET6 if ":" in self._cfg.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._cfg.host, self._cfg.port))
        sock.listen(128)
        self._sock = sock
        port = sock.getsockname()[1]
        host = f"[{self._cfg.host}]" if family == socket.AF_INET6 else self._cfg.host
        self.url = f"http://{host}:{port}"
        config = uvicorn.Config(self._app, log_level="warning", lifespan="off",
                                access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="cloud-http", daemon=True)
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
        log.info("http on %s", self.url)

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)
        if self._sock is not None:
            self._sock.close()
