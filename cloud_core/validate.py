"""Request validation against the manifest: the contract at the cut.

Pure: takes a decoded request and the repository, returns what the batcher needs or
raises a typed error that says expected vs actual. Nothing here computes; an invalid
request costs a few dictionary lookups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cloud_core.errors import CutNotFound, DeadlineExceeded, InvalidInput
from cloud_core.repository import LoadedVersion, Repository
from contract.bundle import CutSpec
from transport.messages import Request

__all__ = ["Validated", "validate_request"]


@dataclass(frozen=True, slots=True)
class Validated:
    """A request that may be queued: its version, cut and batch size (samples)."""

    version: LoadedVersion
    cut: CutSpec
    items: int


def validate_request(request: Request, repo: Repository, *, now: float,
                     max_request_bytes: int, max_batch: int) -> Validated:
    """Check everything about ``request`` that can be checked before queueing.

    Order: deadline, model/version/digest, cut, size, tensor names, dtypes, shapes, batch.

    Raises:
        DeadlineExceeded, ModelNotFound, VersionMismatch, CutNotFound, InvalidInput.
    """
    if request.deadline <= now:
        raise DeadlineExceeded(f"deadline already passed {now - request.deadline:.3f} s "
                               "before the request was validated")
    lv = repo.resolve(request.model, request.version, request.digest)
    try:
        cut = lv.cut(request.cut)
    except KeyError:
        raise CutNotFound(f"{lv.name}:{lv.version} has no cut {request.cut!r} "
                          f"(cloud cuts: {sorted(lv.tails)})") from None
    if cut.id not in lv.tails:
        raise CutNotFound(f"cut {cut.id!r} of {lv.name}:{lv.version} runs entirely on the "
                          f"edge; cloud cuts: {sorted(lv.tails)}")
    tensors = request.tensors
    total = sum(int(a.nbytes) for a in tensors.values())
    if total > max_request_bytes:
        raise InvalidInput(f"request carries {total} tensor bytes, over the limit of "
                           f"{max_request_bytes}", reason="oversize")
    expected = [t.name for t in cut.tensors]
    if set(tensors) != set(expected):
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        raise InvalidInput(f"cut {cut.id!r} expects tensors {expected}; missing {missing}, "
                           f"unexpected {extra}", reason="names")
    items = -1
    for spec in cut.tensors:
        arr = tensors[spec.name]
        if not isinstance(arr, np.ndarray):
            raise InvalidInput(f"tensor {spec.name!r} is not an array", reason="dtype")
        if arr.dtype != np.dtype(spec.dtype):
            raise InvalidInput(f"tensor {spec.name!r}: expected dtype {spec.dtype}, got "
                               f"{arr.dtype}", reason="dtype")
        want = spec.shape
        ok = arr.ndim == len(want) and arr.ndim >= 1 and all(
            w < 0 or w == a for w, a in zip(want[1:], arr.shape[1:], strict=True))
        if not ok:
            shown = ["N" if d < 0 else str(d) for d in want]
            raise InvalidInput(f"tensor {spec.name!r}: expected shape [{', '.join(shown)}], "
                               f"got {list(arr.shape)}", reason="shape")
        if want[0] >= 0 and arr.shape[0] != want[0]:
            raise InvalidInput(f"tensor {spec.name!r}: batch dimension is fixed at {want[0]}, "
                               f"got {arr.shape[0]}", reason="shape")
        if items < 0:
            items = int(arr.shape[0])
        elif arr.shape[0] != items:
            raise InvalidInput(f"tensor {spec.name!r} has batch {arr.shape[0]} but the others "
                               f"have {items}", reason="shape")
    if items < 1:
        raise InvalidInput("empty batch: tensors have batch dimension 0", reason="shape")
    if items > max_batch:
        raise InvalidInput(f"request batch of {items} exceeds max_batch {max_batch}; "
                           "split it", reason="batch")
    return Validated(version=lv, cut=cut, items=items)
