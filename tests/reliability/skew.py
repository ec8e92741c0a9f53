"""Running real processes with a skewed wall clock (libfaketime), for clock-skew tests.

libfaketime shifts what ``time.time()`` and friends return inside the process it is
preloaded into; ``FAKETIME_DONT_FAKE_MONOTONIC=1`` leaves the monotonic clock alone, as a
device whose wall clock is off (before NTP sync) would have it. That combination breaks
Python's ``time.sleep`` (EINVAL from libfaketime's ``clock_nanosleep``), so the child also
gets ``faketime_site/sitecustomize.py``, which sleeps with ``select`` instead.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["FAKETIME_LIB", "faketime_missing", "skewed_env"]


def _find_lib() -> Path | None:
    candidates = [Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
                  Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"),
                  Path("/usr/lib/faketime/libfaketime.so.1")]
    try:
        listed = subprocess.run(["dpkg", "-L", "libfaketime"], capture_output=True, text=True,
                                timeout=30, check=False).stdout.split()
        candidates = [Path(p) for p in listed if p.endswith("/libfaketime.so.1")] + candidates
    except (OSError, subprocess.SubprocessError):
        pass
    return next((p for p in candidates if p.is_file()), None)


#: The libfaketime shared object, or None when the ``faketime`` package is not installed.
FAKETIME_LIB = _find_lib()


def faketime_missing() -> str | None:
    """Why skewed-clock tests cannot run here, or None when they can."""
    if FAKETIME_LIB is None:
        return ("libfaketime not installed (apt-get install -y faketime): cannot skew a "
                "process's wall clock")
    return None


def skewed_env(offset_s: float, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process whose wall clock is ``offset_s`` seconds off
    (monotonic clock untouched)."""
    if FAKETIME_LIB is None:
        raise RuntimeError(faketime_missing())
    env = dict(os.environ if base is None else base)
    site = str(Path(__file__).resolve().parent / "faketime_site")
    path = os.environ.get("PYTHONPATH", "")
    env["PYTHONPATH"] = f"{site}{os.pathsep}{path}" if path else site
    preload = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = f"{FAKETIME_LIB}:{preload}" if preload else str(FAKETIME_LIB)
    env["FAKETIME"] = f"{offset_s:+g}s"
    env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
    env["FAKETIME_NO_CACHE"] = "1"
    return env
