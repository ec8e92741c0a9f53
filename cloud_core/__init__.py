"""cloud_core: the service that runs tails for a fleet of edge agents.

``CloudCore(config)`` validates decoded requests against the bundle manifests, batches
them per (model, version, cut), runs them on a backend (onnxruntime, torch or triton) and
answers each with its outputs and queue/compute times. ``tiersplit cloud serve`` wraps it.
"""

from __future__ import annotations

from cloud_core.config import CloudConfig, load_config, parse_config
from cloud_core.errors import (
    BackendError,
    CloudError,
    ConfigError,
    CutNotFound,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    RepositoryError,
    Unavailable,
    VersionMismatch,
    status_for,
)
from cloud_core.repository import Repository
from cloud_core.server import CloudCore

__all__ = [
    "BackendError",
    "CloudConfig",
    "CloudCore",
    "CloudError",
    "ConfigError",
    "CutNotFound",
    "DeadlineExceeded",
    "InvalidInput",
    "ModelNotFound",
    "Overloaded",
    "Repository",
    "RepositoryError",
    "Unavailable",
    "VersionMismatch",
    "load_config",
    "parse_config",
    "status_for",
]
