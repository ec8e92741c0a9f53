"""Child processes for the demo, benchmarks and integration tests.

A service started here (``tiersplit cloud serve`` / ``tiersplit edge run``) prints one
``READY key=value ...`` line on stdout when it serves; :class:`Service` waits for it,
keeps draining the pipes in a named thread (so a chatty child never blocks on a full
pipe) and stops the child by PID: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Service", "ServiceError", "tiersplit_cmd"]


class ServiceError(RuntimeError):
    """A child service failed to start; the message carries the tail of its output."""


def tiersplit_cmd(*args: str) -> list[str]:
    """The ``tiersplit`` CLI run with this interpreter (works without the venv on PATH)."""
    return [sys.executable, "-m", "tiersplit.cli", *args]


class Service:
    """One child process that announces readiness with a ``READY`` line."""

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.ready: dict[str, str] = {}
        self._ready_event = threading.Event()
        self._tail: collections.deque[str] = collections.deque(maxlen=40)
        self._threads: list[threading.Thread] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None, "service not started"
        return self.proc.pid

    def start(self, timeout: float = 120.0) -> Service:
        """Start the child and wait for its READY line.

        Raises:
            ServiceError: the child exited or stayed silent for ``timeout`` seconds.
        """
        if self.proc is not None:
            raise RuntimeError(f"{self.name} already started")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(self.env or {}))
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, env=env,
                                     start_new_session=True)
        log = open(self.log_path, "a") if self.log_path else None  # noqa: SIM115
        for stream, label in ((self.proc.stdout, "out"), (self.proc.stderr, "err")):
            t = threading.Thread(target=self._drain, args=(stream, label, log),
                                 name=f"{self.name}-{label}", daemon=True)
            t.start()
            self._threads.append(t)
        deadline = time.monotonic() + timeout
        while not self._ready_event.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                what = (f"exited with code {self.proc.returncode}"
                        if self.proc.poll() is not None else f"not ready after {timeout:.0f} s")
                self.kill()
                raise ServiceError(f"{self.name} {what}; last output:\n" + self.output_tail())
        return self

    def _drain(self, stream, label: str, log) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            self._tail.append(line.rstrip("\n"))
            if log is not None:
                log.write(f"[{label}] {line}")
                log.flush()
            if label == "out" and line.startswith("READY") and not self._ready_event.is_set():
                for part in line.split()[1:]:
                    k, _, v = part.partition("=")
                    self.ready[k] = v
                self._ready_event.set()

    def output_tail(self) -> str:
        return "\n".join(self._tail)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL now (a crash, for fault demos and tests)."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, wait ``grace`` seconds, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for t in self._threads:
            t.join(timeout=2)
        return self.proc.returncode

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
