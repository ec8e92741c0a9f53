"""Run a real Triton Inference Server (PyTriton, in ``.venv-triton``) on a repository
written by :func:`cloud_core.triton_export.export_triton`, for tests and benchmarks.

PyTriton pins numpy<2, so it lives in its own venv (``scripts/setup_pytriton.sh``) and
runs :mod:`tiersplit.devtools.pytriton_serve` with that venv's interpreter. Triton's
Python backend stub loads libpython through ``LD_LIBRARY_PATH``, which must point to the
interpreter's own ``LIBDIR`` or the stub loads the wrong one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TritonProcess", "TritonUnavailable", "find_triton_python", "run_triton"]

_REPO_ROOT = Path(__file__).resolve().parents[2]
_SERVE = Path(__file__).resolve().parent / "pytriton_serve.py"
#: What pytriton_serve prints once serving (searched for anywhere in a line).
_READY = "READY grpc="


class TritonUnavailable(RuntimeError):
    """No usable PyTriton venv, or the server did not start (message says why)."""


@dataclass(frozen=True)
class TritonProcess:
    proc: subprocess.Popen
    grpc_url: str
    http_url: str


def find_triton_python() -> Path:
    """The PyTriton venv's interpreter (``$TIERSPLIT_TRITON_PYTHON`` or ``.venv-triton``)."""
    env = os.environ.get("TIERSPLIT_TRITON_PYTHON")
    path = Path(env) if env else _REPO_ROOT / ".venv-triton" / "bin" / "python"
    if not path.exists():
        raise TritonUnavailable(f"no PyTriton interpreter at {path}; run "
                                "bash scripts/setup_pytriton.sh")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _libdir(python: Path) -> str:
    r = subprocess.run([str(python), "-c", "import sysconfig; "
                        "print(sysconfig.get_config_var('LIBDIR') or '')"],
                       capture_output=True, text=True, timeout=60)
    return r.stdout.strip()


@contextlib.contextmanager
def run_triton(repo: Path, *, threads: int = 0, device: str = "cpu",
               start_timeout: float = 180.0) -> Iterator[TritonProcess]:
    """Serve ``repo`` on a real Triton; stop it (SIGTERM, then kill) on exit.

    Raises:
        TritonUnavailable: no venv, or the server exited / did not get ready in time
            (with the tail of its output).
    """
    python = find_triton_python()
    ports = [_free_port() for _ in range(3)]
    env = dict(os.environ)
    libdir = _libdir(python)
    env["LD_LIBRARY_PATH"] = ":".join(x for x in (libdir, env.get("LD_LIBRARY_PATH")) if x)
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [str(python), str(_SERVE), "--repo", str(repo), "--grpc-port", str(ports[0]),
           "--http-port", str(ports[1]), "--metrics-port", str(ports[2]),
           "--threads", str(threads), "--device", device]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            text=True, start_new_session=True)
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        # Drain the server's output for its whole life (a full pipe would stall it) and
        # spot READY; a thread, because select() cannot see text readline() buffered.
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            if _READY in line:  # the server's own log can share the line (one pipe)
                ready.set()
        ready.set()

    reader = threading.Thread(target=pump, name="triton-output", daemon=True)
    reader.start()
    try:
        if not ready.wait(start_timeout):
            raise TritonUnavailable(f"Triton not ready in {start_timeout:.0f} s: "
                                    + " | ".join(lines[-8:]))
        if not any(_READY in x for x in lines):
            proc.wait(timeout=30)
            raise TritonUnavailable(f"Triton exited with {proc.returncode}: "
                                    + " | ".join(lines[-12:]))
        yield TritonProcess(proc=proc, grpc_url=f"127.0.0.1:{ports[0]}",
                            http_url=f"127.0.0.1:{ports[1]}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        reader.join(timeout=10)
