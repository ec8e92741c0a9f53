"""Request validation against the manifest: the contract at the cut.

Pure: takes a decoded request and the repository, returns what the batcher needs or
raises a typed error that says expected vs actual. Nothing here computes; an invalid
request costs a few dictionary lookups.

Two steps, each done once where the request enters: :func:`resolve_target` checks the
model, version, digest and cut id (the only place the cloud checks a cut id) and
:func:`check_request` checks the deadline and the tensors against that target. Later
stages (batcher, backend, metrics) take the checked :class:`Validated` value and never
look the cut up again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cloud_core.backends.base import Backend
from cloud_core.errors import CutNotFound, DeadlineExceeded, InvalidInput
from cloud_core.repository import LoadedVersion, Repository
from contract.bundle import CutSpec, TensorSpec
from contract.dtypes import UnknownDType, numpy_dtype
from transport.messages import Request

__all__ = ["Target", "Validated", "check_request", "forget_version", "is_dynamic",
           "resolve_target", "validate_request"]


def is_dynamic(dim: object) -> bool:
    """Whether a manifest shape entry accepts any size by itself: ``None``, a symbolic
    name (``"seq"``) or a negative number (``-1``, the batch dimension)."""
    return dim is None or isinstance(dim, str) or (isinstance(dim, int) and dim < 0)


def _dynamic_axes(spec: TensorSpec) -> frozenset[int]:
    """Axes of ``spec`` that accept any size: those its ``dynamic`` list names (their
    ``shape`` entry is only the size seen when the model was partitioned) and those whose
    shape entry is itself dynamic."""
    listed = getattr(spec, "dynamic", None) or ()
    return frozenset(listed) | {i for i, d in enumerate(spec.shape) if is_dynamic(d)}


def _show(shape: list, dynamic: frozenset[int]) -> str:
    """``[N, 3, seq]``: fixed sizes as numbers, dynamic ones by name (N, ? if unnamed)."""
    out = []
    for axis, d in enumerate(shape):
        if axis not in dynamic:
            out.append(str(d))
        elif isinstance(d, str):
            out.append(d)
        else:
            out.append("N" if axis == 0 else "?")
    return "[" + ", ".join(out) + "]"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes: a loaded version and one of its cloud-runnable cuts."""

    version: LoadedVersion
    cut: CutSpec
    backend: Backend


@dataclass(frozen=True, slots=True)
class Validated:
    """A request that may be queued.

    Immutable, so one value serves every request with the same target and tensor
    signature (see :func:`check_request`).

    Attributes:
        target: its version, cut and backend.
        items: batch size (samples).
        sample_shapes: per-sample shape of each crossing tensor, in manifest order.
        batch_key: the batcher queue this request joins: (model, version, cut, sample
            shapes). Requests are concatenated along the batch dimension only, so two
            requests whose other dimensions differ (text of 8 vs 32 tokens for a dynamic
            sequence axis) must never share a batch: the sample shapes are part of it.
    """

    target: Target
    items: int
    sample_shapes: tuple[tuple[int, ...], ...]
    batch_key: tuple[str, str, str, tuple[tuple[int, ...], ...]] = field(init=False)

    def __post_init__(self) -> None:
        lv = self.target.version
        object.__setattr__(self, "batch_key",
                           (lv.name, lv.version, self.target.cut.id, self.sample_shapes))

    @property
    def version(self) -> LoadedVersion:
        return self.target.version

    @property
    def cut(self) -> CutSpec:
        return self.target.cut


def resolve_target(request: Request, repo: Repository) -> Target:
    """Model, version, digest and cut id of ``request``: the one place they are checked.

    Raises:
        ModelNotFound, VersionMismatch: from the repository.
        CutNotFound: the manifest has no such cut, or it runs entirely on the edge.
    """
    lv = repo.resolve(request.model, request.version, request.digest)
    hit = _TARGETS.get((id(lv), request.cut))
    if hit is not None and hit.version is lv:
        return hit
    backend = lv.tails.get(request.cut)
    if backend is None:
        cloud = sorted(lv.tails)
        if request.cut in lv.bundle.manifest.cut_ids:
            raise CutNotFound(f"cut {request.cut!r} of {lv.name}:{lv.version} runs entirely "
                              f"on the edge; cloud cuts: {cloud}")
        raise CutNotFound(f"{lv.name}:{lv.version} has no cut {request.cut[:64]!r} "
                          f"(cloud cuts: {cloud})")
    target = Target(version=lv, cut=lv.bundle.manifest.cut(request.cut), backend=backend)
    _remember(_TARGETS, (id(lv), request.cut), target)
    return target


# Checked answers, reused by the requests that follow (a stream of requests names the
# same target with the same shapes). Keyed by object id; every hit is confirmed by
# identity with the object it was computed for (held in the value, so its id cannot be
# reused while cached). Only answers that passed are kept, a bounded number of them.
_TARGETS: dict[tuple[int, str], Target] = {}
_CHECKED: dict[tuple[int, int, tuple], Validated] = {}
_CACHE_MAX = 1024


def forget_version(lv: LoadedVersion) -> None:
    """Drop what is remembered about ``lv`` (an unloaded version is not kept alive by
    these caches)."""
    for k in [k for k, t in list(_TARGETS.items()) if t.version is lv]:
        _TARGETS.pop(k, None)
    for k in [k for k, v in list(_CHECKED.items()) if v.target.version is lv]:
        _CHECKED.pop(k, None)


def _remember(cache: dict, key: object, value: object) -> None:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value


def _check_shape(spec: TensorSpec, got: tuple[int, ...]) -> None:
    want, dynamic = list(spec.shape), _dynamic_axes(spec)
    if len(got) != len(want) or len(got) < 1:
        raise InvalidInput(f"tensor {spec.name!r}: expected shape {_show(want, dynamic)} "
                           f"(rank {len(want)}), got {list(got)}", reason="shape")
    for axis, (w, g) in enumerate(zip(want, got, strict=True)):
        if axis in dynamic or w == g:
            continue
        what = "batch dimension" if axis == 0 else f"dimension {axis}"
        raise InvalidInput(f"tensor {spec.name!r}: {what} is fixed at {w}, got {g} (expected "
                           f"shape {_show(want, dynamic)}, got {list(got)})", reason="shape")


def check_request(request: Request, target: Target, *, max_request_bytes: int,
                  max_batch: int, now: float | None = None) -> Validated:
    """Check the deadline and the tensors of ``request`` against ``target``.

    Order: deadline, size, tensor names, dtypes, shapes, batch. Dimensions the manifest
    declares dynamic (listed in a tensor's ``dynamic``, or a shape entry that is ``None``,
    a name or negative) accept any size; fixed ones must match.

    Args:
        now: monotonic time to check the deadline against (default: this instant).

    Raises:
        DeadlineExceeded, InvalidInput.
    """
    if request.deadline.expired(now):
        raise DeadlineExceeded(f"deadline already passed "
                               f"{-request.deadline.remaining_ms(now):.1f} ms before the "
                               "request was validated")
    cut = target.cut
    tensors = request.tensors
    total = sum(int(a.nbytes) for a in tensors.values())
    if total > max_request_bytes:
        raise InvalidInput(f"request carries {total} tensor bytes, over the limit of "
                           f"{max_request_bytes}", reason="oversize")
    sig = _signature(tensors)
    if sig is not None:
        hit = _CHECKED.get((id(target), max_batch, sig))
        if hit is not None and hit.target is target:
            return hit
    expected = [t.name for t in cut.tensors]
    if set(tensors) != set(expected):
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        raise InvalidInput(f"cut {cut.id!r} expects tensors {expected}; missing {missing}, "
                           f"unexpected {extra}", reason="names")
    items = -1
    shapes = []
    for spec in cut.tensors:
        arr = tensors[spec.name]
        if not isinstance(arr, np.ndarray):
            raise InvalidInput(f"tensor {spec.name!r} is not an array", reason="dtype")
        try:
            want_dtype = numpy_dtype(spec.dtype)
        except UnknownDType as e:
            raise InvalidInput(f"tensor {spec.name!r}: manifest dtype: {e}",
                               reason="dtype") from None
        if arr.dtype != want_dtype:
            raise InvalidInput(f"tensor {spec.name!r}: expected dtype {spec.dtype}, got "
                               f"{arr.dtype}", reason="dtype")
        _check_shape(spec, arr.shape)
        if items < 0:
            items = int(arr.shape[0])
        elif arr.shape[0] != items:
            raise InvalidInput(f"tensor {spec.name!r} has batch {arr.shape[0]} but the others "
                               f"have {items}", reason="shape")
        shapes.append(tuple(int(d) for d in arr.shape[1:]))
    if items < 1:
        raise InvalidInput("empty batch: tensors have batch dimension 0", reason="shape")
    if items > max_batch:
        raise InvalidInput(f"request batch of {items} exceeds max_batch {max_batch}; "
                           "split it", reason="batch")
    valid = Validated(target=target, items=items, sample_shapes=tuple(shapes))
    if sig is not None:
        _remember(_CHECKED, (id(target), max_batch, sig), valid)
    return valid


def _signature(tensors: dict[str, object]) -> tuple | None:
    """What the name, dtype and shape checks look at, as a key (None unless every
    tensor is a plain ndarray)."""
    sig = []
    for name, arr in tensors.items():
        if arr.__class__ is not np.ndarray:
            return None
        sig.append((name, arr.dtype, arr.shape))
    return tuple(sig)


def validate_request(request: Request, repo: Repository, *, max_request_bytes: int,
                     max_batch: int, now: float | None = None) -> Validated:
    """:func:`resolve_target` then :func:`check_request`.

    Raises:
        ModelNotFound, VersionMismatch, CutNotFound, DeadlineExceeded, InvalidInput.
    """
    return check_request(request, resolve_target(request, repo),
                         max_request_bytes=max_request_bytes, max_batch=max_batch, now=now)
