"""Errors of the privacy audit (a partitioner failure, so the CLI prints one line)."""

from __future__ import annotations

from partitioner.errors import PartitionError

__all__ = ["AuditError"]


class AuditError(PartitionError):
    """The audit cannot run as asked: unusable data, an unsupported model or bundle."""
