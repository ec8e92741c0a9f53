"""What a request leaves behind: one record per cloud attempt, one result per request.

Both are frozen values built by the step that did the work and returned to its caller,
so a request's story (which endpoint was tried, with which cut, how it ended, what it
cost) is a list the caller keeps rather than dicts filled in along the way.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["DEVICE_PATH", "FALLBACK_PATH", "PATHS", "REMOTE_PATH", "Attempt", "InferResult",
           "RequestHandle"]

#: ``InferResult.path``: a cloud core answered.
REMOTE_PATH = "remote"
#: ``InferResult.path``: the policy chose to run the whole request on the device.
DEVICE_PATH = "device"
#: ``InferResult.path``: the cloud attempt failed (or its head did) and the device
#: finished the request with the int8 full model.
FALLBACK_PATH = "fallback"
PATHS = (REMOTE_PATH, DEVICE_PATH, FALLBACK_PATH)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One step of a request towards the cloud and how it ended.

    Attributes:
        endpoint: the endpoint tried; None when the step never reached one (the head
            failed on the device).
        cut: the cut whose tensors were (or would have been) sent.
        outcome: ``ok``; a failure (``timeout``, ``peer lost``, ``transport: <reason>``,
            ``status: <reply status>``, ``head failed: <error>``); or a skip
            (``skipped: unavailable``, ``skipped: no time left``).
        detail: the error text behind a failure (at most 200 characters).
        bytes: bytes the link moved for this attempt (0 when nothing was sent).
        timings: milliseconds: ``encode`` (handing the request to the link), ``remote``
            (send to reply), ``queue`` and ``compute`` (cloud-reported, on success).
    """

    endpoint: str | None
    cut: str
    outcome: str
    detail: str = ""
    bytes: int = 0
    timings: Mapping[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def skipped(self) -> bool:
        return self.outcome.startswith("skipped")


@dataclass(frozen=True, slots=True)
class InferResult:
    """Outputs of one request and how they were produced.

    Attributes:
        path: ``remote`` (a cloud core answered), ``device`` (the policy ran everything
            on the device) or ``fallback`` (the cloud attempt failed and the device
            finished the request).
        cut: the cut the request used: ``cloud`` (raw inputs sent), a split cut such as
            ``k3``, or ``edge`` (all on the device). After a fallback it is the cut whose
            cloud attempt failed.
        endpoint: the endpoint that answered (None on the device).
        timings: milliseconds: ``head``, and from the answering attempt ``encode``,
            ``remote``, ``queue``, ``compute``; ``local`` (the full model on the
            device); ``total``.
        attempts: every cloud attempt, in order.
        deadline_missed: outputs arrived after the deadline (local fallback still
            answers: a late answer beats a lost request).
        explored: the policy chose this cut to refresh its estimates.
        bytes_sent: bytes the answering attempt moved to the cloud (0 on the device).
        cascade: ``local`` (the device's answer was confident enough to stand alone),
            ``split`` (it was not: the request went on down the split path), or None
            (no cascade ran).
        confidence: the cascade's score of the device's answer (None without one).
        fallback: after a failed cloud attempt, what finished the request: ``device_tail``
            (the rest of the model from the tensors the head computed), ``cascade``
            (the device's answer the cascade already had) or ``full`` (the int8 full
            model from the inputs); None otherwise.
        version: the bundle version that produced the outputs (head and tail, or the
            device's model): the one the request started on, even across an update.
    """

    request_id: str
    outputs: dict[str, np.ndarray]
    path: str
    cut: str
    endpoint: str | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    attempts: tuple[Attempt, ...] = ()
    deadline_missed: bool = False
    explored: bool = False
    bytes_sent: int = 0
    cascade: str | None = None
    confidence: float | None = None
    fallback: str | None = None
    version: str = ""


class RequestHandle:
    """Work in flight: an id now, the outcome with :meth:`result` later."""

    def __init__(self, request_id: str, future: cf.Future[InferResult]) -> None:
        self.request_id = request_id
        self.future = future

    def result(self, timeout: float | None = None) -> InferResult:
        """Block until the request ends.

        Raises:
            InferenceFailed: neither the cloud nor the device produced outputs.
            TimeoutError: ``timeout`` passed first (the request keeps running).
        """
        try:
            return self.future.result(timeout)
        except cf.TimeoutError as e:
            raise TimeoutError(f"request {self.request_id} still running after {timeout}s") \
                from e

    def done(self) -> bool:
        return self.future.done()

    def add_done_callback(self, fn: Callable[[RequestHandle], Any]) -> None:
        self.future.add_done_callback(lambda _f: fn(self))
