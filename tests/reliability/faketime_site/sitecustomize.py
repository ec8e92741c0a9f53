"""Loaded (as ``sitecustomize``) only by child processes whose clock libfaketime skews.

libfaketime 0.9.10 with ``FAKETIME_DONT_FAKE_MONOTONIC=1`` makes
``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`` fail with EINVAL, which is how
Python 3.11+ implements ``time.sleep``; every other wait (select, locks, conditions) is
unaffected. This replaces ``time.sleep`` with a select-based sleep on the (unfaked)
monotonic clock, so the process under test runs its real code with a skewed wall clock.
"""

import select
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        select.select([], [], [], left)


time.sleep = _sleep
