"""Run a journey's commands in a temporary copy of the repository, the way a user would.

Each command runs in its own ``bash -euo pipefail`` from the copy's root, so a failing
step of a pipeline fails the command. Commands that serve (``cloud serve``, ``edge run``)
start in the background through :class:`tiersplit.devtools.services.Service`, which waits
a bounded time for their ``READY`` line; :meth:`JourneyRunner.close` stops each of them by
PID (SIGTERM, then SIGKILL), also when a step failed.

Every command's wall time is kept (:attr:`JourneyRunner.timings`); a failure message ends
with the time each command so far took, and :meth:`JourneyRunner.timing_table` gives the
whole list, slowest first, to see where a journey's time goes.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.journeys.readme import Command, PortMap, adapt
from tiersplit.devtools.services import Service, ServiceError

__all__ = ["JourneyFailure", "JourneyRunner", "copy_repository"]

#: What a copy of the repository leaves out: environments, caches, earlier outputs.
_SKIP = (".git", ".venv", ".venv-*", "out", "__pycache__", ".hypothesis", ".pytest_cache",
         ".ruff_cache", "*.egg-info", "build", "dist", ".cache", ".whl", ".gl")


class JourneyFailure(AssertionError):
    """A journey command failed; the message names the README line and its output."""


def copy_repository(repo: Path, dest: Path) -> Path:
    """Copy ``repo``'s sources (no environments, caches or ``out/``) to ``dest``."""
    shutil.copytree(repo, dest, ignore=shutil.ignore_patterns(*_SKIP), symlinks=True)
    return dest


class JourneyRunner:
    """Runs commands in ``workdir``; keeps the services it started until :meth:`close`.

    Args:
        workdir: the repository copy the commands run in.
        root: the temporary root that ``sudo ... --prefix /`` commands install into.
        ports: the port map applied to every command (the copy's configs already have it).
        ready_timeout: seconds a service may take to print ``READY``.
        command_timeout: seconds one command may run before it counts as hung.
    """

    def __init__(self, workdir: Path, root: Path, ports: PortMap | None = None, *,
                 ready_timeout: float = 300.0, command_timeout: float = 900.0) -> None:
        self.workdir = workdir
        self.root = root
        self.ports = ports or PortMap({})
        self.ready_timeout = ready_timeout
        self.command_timeout = command_timeout
        self.services: list[tuple[Command, Service]] = []
        self.outputs: list[tuple[Command, str]] = []
        self.timings: list[tuple[Command, float]] = []
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="120")
        # The interpreter running the tests provides `tiersplit` and `python`, venv or not.
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env['PATH']}"
        self.logs = workdir / "out" / "journey-logs"

    def run(self, cmd: Command) -> str:
        """Run one command (in the background if it serves); returns its output.

        Raises:
            JourneyFailure: it exited non-zero, hung, or (a service) never printed READY.
        """
        started = time.perf_counter()
        try:
            out = self._run(cmd)
        except JourneyFailure as e:
            self.timings.append((cmd, time.perf_counter() - started))
            raise JourneyFailure(f"{e}\n{self.timing_table()}") from e
        self.timings.append((cmd, time.perf_counter() - started))
        return out

    def timing_table(self) -> str:
        """Seconds per command run so far (the last one included), slowest first."""
        rows = sorted(self.timings, key=lambda t: -t[1])
        total = sum(s for _, s in rows)
        lines = [f"{'seconds':>8}  README line: command  (total {total:.1f} s)"]
        lines += [f"{s:8.1f}  {c.line}: {c.text.splitlines()[0][:90]}" for c, s in rows]
        return "\n".join(lines)

    def _run(self, cmd: Command) -> str:
        text = self.ports.apply(adapt(cmd, self.root))
        where = f"README line {cmd.line} ({cmd.section}): `{cmd.text}`"
        if cmd.is_service:
            self.logs.mkdir(parents=True, exist_ok=True)
            svc = Service(cmd.words()[1], ["bash", "-c", f"cd {shlex.quote(str(self.workdir))}"
                                           f" && exec {text}"],
                          log_path=self.logs / f"line{cmd.line}.log",
                          env={k: v for k, v in self.env.items()
                               if k != "PYTHONUNBUFFERED"})
            try:
                svc.start(timeout=self.ready_timeout)
            except ServiceError as e:
                raise JourneyFailure(f"{where} did not serve: {e}") from e
            self.services.append((cmd, svc))
            out = " ".join(f"{k}={v}" for k, v in svc.ready.items())
        else:
            rc, out = self._run_shell(text, where)
            if rc != 0:
                raise JourneyFailure(f"{where} exited {rc}; ran `{text}`:\n{out[-4000:]}")
        self.outputs.append((cmd, out))
        self.check_services()
        return out

    def _run_shell(self, text: str, where: str) -> tuple[int, str]:
        """Run ``text`` in its own process group; a hung command's whole group is killed
        (by that group's id) so nothing it started outlives the test."""
        proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", text], cwd=self.workdir,
                                env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=self.command_timeout)
        except subprocess.TimeoutExpired as e:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise JourneyFailure(f"{where} still running after "
                                 f"{self.command_timeout:.0f} s") from e
        return proc.returncode, out

    def check_services(self) -> None:
        """Raise if a service started earlier has exited since."""
        for cmd, svc in self.services:
            if not svc.alive():
                raise JourneyFailure(f"README line {cmd.line}: `{cmd.text}` exited with code "
                                     f"{svc.proc.returncode if svc.proc else '?'} while the "
                                     f"journeys ran:\n{svc.output_tail()}")

    @property
    def pids(self) -> list[int]:
        return [svc.pid for _, svc in self.services]

    def close(self) -> None:
        """Stop every service this runner started, newest first, by PID."""
        for _, svc in reversed(self.services):
            svc.stop(grace=20)

    def __enter__(self) -> JourneyRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
