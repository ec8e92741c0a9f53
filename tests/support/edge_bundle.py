"""The edge CNN bundle under the names the reliability suite imports.

The builder itself is :mod:`tiersplit.devtools.bundles` (the one hand-built bundle
builder); this module only keeps ``IN_SHAPE``/``INPUT``/``OUTPUT``, ``build_bundle`` and
``reference`` importable from here.
"""

from __future__ import annotations

from tiersplit.devtools.bundles import EDGE_CNN_INPUT as INPUT
from tiersplit.devtools.bundles import EDGE_CNN_OUTPUT as OUTPUT
from tiersplit.devtools.bundles import EDGE_CNN_SHAPE as IN_SHAPE
from tiersplit.devtools.bundles import BuiltBundle
from tiersplit.devtools.bundles import build_edge_cnn as build_bundle
from tiersplit.devtools.bundles import full_reference as reference

__all__ = ["INPUT", "IN_SHAPE", "OUTPUT", "BuiltBundle", "build_bundle", "reference"]
