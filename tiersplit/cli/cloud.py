"""`tiersplit cloud ...`: serve the cloud core, export Triton repositories, administer.

- ``cloud serve --config cloud.yaml``: runs a :class:`cloud_core.CloudCore` until SIGTERM
  or SIGINT, then drains within ``grace_s`` and exits 0. Prints one line
  ``READY zmq=<ep,...> mqtt=<ep,...> http=<url> admin=<url>`` on stdout once serving, so
  parents can wait for it. SIGHUP re-reads the agent allow-lists and the admin token file.
- ``cloud export-triton BUNDLE --out REPO``: a Triton model repository of the tails.
- ``cloud models list|load|unload|pin|rollback --admin URL`` and ``cloud keys reload``:
  clients of the core's admin API; the token comes from ``--token-file`` or
  ``$TIERSPLIT_ADMIN_TOKEN``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import typer

from tiersplit.cli.common import clean_errors, console

log = logging.getLogger(__name__)

_ADMIN = typer.Option("http://127.0.0.1:9301", "--admin",
                      help="The core's admin URL (admin.host/admin.port).")
_TOKEN = typer.Option(None, "--token-file",
                      help="File with the admin bearer token (else $TIERSPLIT_ADMIN_TOKEN).")
#: The admin token may come from this variable; never from the command line, where
#: ``ps`` and shell history would show it.
TOKEN_ENV = "TIERSPLIT_ADMIN_TOKEN"


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: what log shippers (Loki, Elasticsearch) ingest."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname,
               "logger": record.name, "thread": record.threadName,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class AdminError(Exception):
    """The admin API answered with an error or could not be reached."""


def _admin(url: str, method: str, path: str, token_file: Path | None) -> dict:
    import httpx

    headers = {}
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as e:
            raise AdminError(f"--token-file {token_file}: {e.strerror}") from e
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        r = httpx.request(method, url.rstrip("/") + path, headers=headers, timeout=120)
    except httpx.HTTPError as e:
        raise AdminError(f"cannot reach {url}: {e}") from e
    try:
        body = r.json()
    except ValueError:
        body = {"error": r.text.strip()[:200]}
    if r.status_code >= 400:
        raise AdminError(f"{r.status_code}: {body.get('error', body)}")
    return body


def register(app: typer.Typer) -> None:
    """Add ``cloud`` and its sub-commands to the root app."""
    cloud = typer.Typer(help="The cloud core: serve tails, export to Triton, administer.",
                        no_args_is_help=True)
    models = typer.Typer(help="Load, unload, pin and roll back model versions at run time.",
                         no_args_is_help=True)
    keys = typer.Typer(help="Agent allow-lists of a running core.", no_args_is_help=True)
    cloud.add_typer(models, name="models")
    cloud.add_typer(keys, name="keys")
    app.add_typer(cloud, name="cloud")

    @cloud.command("serve")
    def serve(config: Path = typer.Option(..., "--config", "-c", help="cloud.yaml"),
              grace: float = typer.Option(None, help="Drain seconds (default: grace_s)."),
              json_logs: bool = typer.Option(False, "--json-logs",
                                             help="Structured logs: one JSON object a line.")
              ) -> None:
        """Serve tails to edge agents until SIGTERM/SIGINT, then drain and exit 0."""
        if json_logs:
            for handler in logging.getLogger().handlers:
                handler.setFormatter(_JsonFormatter())
        from cloud_core import CloudCore, CloudError, load_config
        from transport.errors import TransportError

        with clean_errors(CloudError, TransportError, OSError, ValueError):
            cfg = load_config(config)
            core = CloudCore(cfg)
            core.start()
        stop = threading.Event()

        def on_term(signum: int, frame: object) -> None:
            stop.set()

        def reload_all() -> None:
            core.reload_keys()
            try:
                core.reload_admin_token()
            except CloudError as e:
                log.error("admin token not reloaded (the previous one stays): %s", e)

        def on_hup(signum: int, frame: object) -> None:
            threading.Thread(target=reload_all, name="keys-reload", daemon=True).start()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)
        parts = [f"{kind}={','.join(eps)}" for kind, eps in core.endpoints_by_kind.items()]
        parts.append(f"http={core.http_url or '-'}")
        parts.append(f"admin={core.admin_url or '-'}")
        sys.stdout.write("READY " + " ".join(parts) + "\n")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
        core.stop(grace)
        raise typer.Exit(0)

    @cloud.command("export-triton")
    def export_triton_cmd(
        bundle: Path = typer.Argument(..., help="Bundle directory <root>/<model>/<version>."),
        out: Path = typer.Option(..., "--out", help="Triton model repository to write."),
        public_key: Path = typer.Option(None, "--public-key",
                                        help="Ed25519 .pub that signed the bundle."),
        allow_unsigned: bool = typer.Option(False, "--allow-unsigned"),
        max_batch: int = typer.Option(16, help="max_batch_size (match batching.max_batch)."),
        max_queue_delay_us: int = typer.Option(2000, help="dynamic batching delay."),
        instances: int = typer.Option(1, help="instance_group count per tail."),
        gpu: bool = typer.Option(False, "--gpu", help="KIND_GPU instances."),
        version: int = typer.Option(None, help="Triton version (default: bundle version)."),
    ) -> None:
        """Write a Triton model repository: one model per cut tail, dynamic batching."""
        from cloud_core.triton_export import export_triton
        from contract.bundle import Bundle
        from contract.errors import BundleError
        from transport import keys as tkeys
        from transport.errors import KeyFileError

        with clean_errors(BundleError, KeyFileError, ValueError, OSError):
            if public_key is None and not allow_unsigned:
                raise ValueError("pass --public-key to verify the bundle, or --allow-unsigned")
            key = tkeys.load_ed25519_public(public_key) if public_key else None
            b = Bundle.load(bundle, key, require_signature=key is not None, role="cloud")
            done = export_triton(b, out, max_batch=max_batch,
                                 max_queue_delay_us=max_queue_delay_us, instances=instances,
                                 kind="KIND_GPU" if gpu else "KIND_CPU", version=version)
        for m in done:
            console.print(f"{m.name} v{m.version} -> {m.path}")

    @models.command("list")
    def models_list(admin: str = _ADMIN, token_file: Path = _TOKEN,
                    as_json: bool = typer.Option(False, "--json")) -> None:
        """Loaded model versions: active, pinned, digest, cuts."""
        from rich.table import Table

        with clean_errors(AdminError, OSError):
            body = _admin(admin, "GET", "/v1/models", token_file)
        if as_json:
            typer.echo(json.dumps(body, indent=2))
            return
        t = Table("model", "version", "active", "pinned", "digest", "cuts", "backend")
        for m in body["models"]:
            t.add_row(m["name"], m["version"], "yes" if m["active"] else "",
                      "yes" if m["pinned"] else "", m["digest"][:12], ",".join(m["cuts"]),
                      f"{m['backend']}/{m['device']}")
        console.print(t)

    def _version_cmd(action: str) -> None:
        @models.command(action)
        def cmd(name: str = typer.Argument(...), version: str = typer.Argument(...),
                admin: str = _ADMIN, token_file: Path = _TOKEN) -> None:
            with clean_errors(AdminError, OSError):
                body = _admin(admin, "POST", f"/v1/models/{name}/versions/{version}/{action}",
                              token_file)
            console.print(json.dumps(body))

        cmd.__doc__ = f"{action.capitalize()} one model version on a running core."

    for action in ("load", "unload", "pin"):
        _version_cmd(action)

    @models.command("rollback")
    def rollback(name: str = typer.Argument(...), admin: str = _ADMIN,
                 token_file: Path = _TOKEN) -> None:
        """Re-activate the previous version and unload the current one."""
        with clean_errors(AdminError, OSError):
            body = _admin(admin, "POST", f"/v1/models/{name}/rollback", token_file)
        console.print(json.dumps(body))

    @keys.command("reload")
    def keys_reload(admin: str = _ADMIN, token_file: Path = _TOKEN) -> None:
        """Re-read the agent allow-lists (also: send SIGHUP to `cloud serve`)."""
        with clean_errors(AdminError, OSError):
            body = _admin(admin, "POST", "/v1/keys/reload", token_file)
        console.print(json.dumps(body))
