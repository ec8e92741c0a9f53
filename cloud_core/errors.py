"""Typed errors of the cloud core, and the one place that maps them to reply statuses.

Core code (repository, validation, batcher, backends) raises these and knows nothing of
replies; :func:`status_for` turns any of them into the :class:`transport.messages.Status`
an agent receives. Each class's docstring names that status. ``reason`` is the short
label counted in ``tiersplit_cloud_rejected_total{reason}``. Messages say expected vs
actual and never contain tensor contents or key material.
"""

from __future__ import annotations

from contract.errors import ConfigError as _ContractConfigError
from transport.messages import Status

__all__ = [
    "BackendError",
    "CloudError",
    "ConfigError",
    "CutNotFound",
    "DeadlineExceeded",
    "InvalidInput",
    "ModelNotFound",
    "Overloaded",
    "RepositoryError",
    "RolloutError",
    "Unavailable",
    "VersionMismatch",
    "status_for",
]


class CloudError(Exception):
    """Base of every cloud core failure. Reply: INTERNAL unless a subclass says otherwise."""

    reason: str = "internal"


class InvalidInput(CloudError):
    """Tensor names, shapes, dtypes, sizes or batch do not match the manifest. INVALID_INPUT."""

    reason = "invalid_input"

    def __init__(self, message: str, reason: str = "invalid_input") -> None:
        super().__init__(message)
        self.reason = reason


class ModelNotFound(CloudError):
    """No bundle of that model name is loaded. MODEL_NOT_FOUND."""

    reason = "model_not_found"


class VersionMismatch(CloudError):
    """The request's bundle digest (or version) is not a loaded version. VERSION_MISMATCH."""

    reason = "version_mismatch"


class CutNotFound(CloudError):
    """The cut id is not in the manifest, or has no tail to run. CUT_NOT_FOUND."""

    reason = "cut_not_found"


class DeadlineExceeded(CloudError):
    """The deadline passed before compute started. DEADLINE_EXCEEDED."""

    reason = "deadline"


class Overloaded(CloudError):
    """The queue for this model/version/cut is full: back-pressure. OVERLOADED."""

    reason = "overloaded"


class Unavailable(CloudError):
    """The core is draining for shutdown, or the version was unloaded. UNAVAILABLE."""

    reason = "unavailable"


class BackendError(CloudError):
    """The backend failed to load or run a tail. INTERNAL (retryable elsewhere)."""

    reason = "backend"


class RepositoryError(CloudError):
    """A bundle cannot be loaded, unloaded, pinned or rolled back as asked (admin API 4xx)."""

    reason = "repository"


class RolloutError(CloudError):
    """A rollout plan operation that cannot apply (unknown model or version, a plan
    already running, a transition the plan's state does not allow). Admin API: 409."""

    reason = "rollout"


class ConfigError(CloudError, _ContractConfigError):
    """``cloud.yaml`` is invalid; the message names the key. Start-up only, never a reply.

    Also a ``contract.errors.ConfigError`` (and a ``ValueError``), like every tier's
    config error, so callers can handle any of them in one place."""

    reason = "config"


_STATUS: dict[type[CloudError], Status] = {
    InvalidInput: Status.INVALID_INPUT,
    ModelNotFound: Status.MODEL_NOT_FOUND,
    VersionMismatch: Status.VERSION_MISMATCH,
    CutNotFound: Status.CUT_NOT_FOUND,
    DeadlineExceeded: Status.DEADLINE_EXCEEDED,
    Overloaded: Status.OVERLOADED,
    Unavailable: Status.UNAVAILABLE,
    BackendError: Status.INTERNAL,
}


def status_for(error: BaseException) -> Status:
    """The reply status for ``error``: the single mapping from typed errors to statuses.

    Anything that is not a :class:`CloudError` is a bug in the core or a backend and is
    answered INTERNAL (the agent may retry elsewhere or run locally).
    """
    for cls in type(error).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]  # type: ignore[index]
    return Status.INTERNAL
