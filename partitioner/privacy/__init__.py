"""Privacy audit: what an honest-but-curious cloud can recover from each cut.

``audit_bundle`` runs the attacks (learned decoder, white-box inversion through the head,
nearest-embedding token recovery) per cut and codec; ``record_audit`` publishes the bundle
as a new signed version whose manifest carries the audit; ``write_report`` /
``plot_audit`` give the table and the picture. Heavy imports happen on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["AuditConfig", "AuditError", "audit_bundle", "load_audit_data", "plot_audit",
           "record_audit", "write_report"]

_WHERE = {
    "AuditConfig": "partitioner.privacy.audit",
    "audit_bundle": "partitioner.privacy.audit",
    "AuditError": "partitioner.privacy.errors",
    "load_audit_data": "partitioner.privacy.data",
    "plot_audit": "partitioner.privacy.report",
    "write_report": "partitioner.privacy.report",
    "record_audit": "partitioner.privacy.record",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'partitioner.privacy' has no attribute {name!r}")
