"""Developer tooling shared by the tests, the benchmarks and the demo; not the product.

* :mod:`tiersplit.devtools.services` — start ``tiersplit`` services as child processes and
  wait for their ``READY`` line;
* :mod:`tiersplit.devtools.mosquitto` — a throw-away Mosquitto broker on a loopback port;
* :mod:`tiersplit.devtools.triton_local` — a real Triton server (PyTriton venv) on loopback;
* :mod:`tiersplit.devtools.bundles` — small, real, signed bundles built by hand.
"""

from __future__ import annotations

__all__ = ["bundles", "mosquitto", "services", "triton_local"]
