"""Errors of the edge agent: one small hierarchy, mapped to HTTP status in one place.

Like KServe's errors, each class says in its docstring (and ``http_status``) what the
local API answers. Messages name what was expected and what arrived; they never contain
keys or tensor contents.
"""

from __future__ import annotations

from contract.errors import ConfigError as _ContractConfigError

__all__ = [
    "AgentNotReady",
    "BundleRefused",
    "ConfigError",
    "EdgeError",
    "InferenceFailed",
    "InvalidInput",
    "ModelNotFound",
    "Overloaded",
    "Unauthorized",
    "UpdateFailed",
]


class EdgeError(Exception):
    """Base of every edge agent failure. The API answers ``http_status``."""

    http_status: int = 500


class ConfigError(EdgeError, _ContractConfigError):
    """The edge config file is missing, malformed, or names an unknown key (startup only).

    Also a ``contract.errors.ConfigError`` (and a ``ValueError``): code that handles any
    tier's config errors catches it too."""


class BundleRefused(EdgeError):
    """The bundle is unsigned, tampered, or signed with another key: the agent won't start."""


class InvalidInput(EdgeError):
    """The request's tensors do not match the model's inputs. HTTP 400."""

    http_status = 400


class ModelNotFound(EdgeError):
    """The request names a model (or version) this agent does not serve. HTTP 404."""

    http_status = 404


class Unauthorized(EdgeError):
    """Missing or wrong bearer token. HTTP 401."""

    http_status = 401


class AgentNotReady(EdgeError):
    """The agent is starting or stopping. HTTP 503."""

    http_status = 503


class Overloaded(EdgeError):
    """Too many requests already queued on this device; retry later. HTTP 503."""

    http_status = 503


class InferenceFailed(EdgeError):
    """Neither a cloud endpoint nor local execution produced outputs. HTTP 500.

    Raised only when the local int8 model itself fails: the explicit error the app gets
    instead of a silently dropped request.
    """

    http_status = 500


class UpdateFailed(EdgeError):
    """A model update could not be fetched, verified, stored or loaded; the agent keeps
    serving the version it runs. ``reason`` labels the failure in
    ``tiersplit_edge_update_failures_total``: ``transport`` (the cloud did not answer or
    refused), ``verify`` (a hash or the signature did not match: nothing is installed),
    ``disk`` (no space, or the file size limit), ``load`` (ONNX Runtime refused it)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
