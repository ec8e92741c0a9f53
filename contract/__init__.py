"""What both tiers and the wire agree on: torch-free and small.

* :mod:`contract.bundle` — the bundle format: manifest, file hashes, Ed25519 signing and
  verification, the edge/cloud cut ids;
* :mod:`contract.dtypes` — the one dtype table (numpy, KServe v2, Triton, ONNX names);
* :mod:`contract.deadline` — a deadline as one value (monotonic here, a budget on the wire);
* :mod:`contract.config` — the config toolkit (strict models, paths, YAML loading);
* :mod:`contract.errors` — the bundle's and the configuration's errors.

The edge agent, the cloud core, placement and the partitioner all import this package;
it imports none of them (nor transport, nor torch): it is the bottom floor, below
transport, because the wire needs its dtype table and config toolkit.
"""

from __future__ import annotations

__all__ = ["bundle", "config", "deadline", "dtypes", "errors"]
