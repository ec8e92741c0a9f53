"""The device cascade at run time: is the device's own answer sure enough to stand?

The score is ``placement.cascade.confidence`` (the function the offline tuner picked the
threshold with) or an operator's hook ``pkg.mod:fn``, loaded once at start. A hook that
fails or returns the wrong shape never fails a request: the request takes the split path
as if the device were unsure, and the failure is counted and logged.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from edge_agent.config import CASCADE_KINDS, CascadeConfig
from edge_agent.errors import ConfigError
from placement.cascade import confidence

__all__ = ["Cascade", "load_score_hook"]

log = logging.getLogger(__name__)

Score = Callable[[np.ndarray], np.ndarray]


def load_score_hook(spec: str, what: str = "policy.cascade.kind") -> Score:
    """Import the confidence hook ``pkg.mod:fn`` (one score per sample) as the agent does;
    ``what`` names the setting in the error (``place tune`` loads hooks through here too,
    so a hook it tunes is one the agent can load).

    Raises:
        ConfigError: the module or function cannot be loaded, or it is not callable.
    """
    mod_name, fn_name = spec.split(":", 1)
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{what}: cannot load {spec!r}: {e}") from e
    if not callable(fn):
        raise ConfigError(f"{what}: {spec!r} is not callable")
    return fn


class Cascade:
    """Decides whether the device's full-model outputs answer a request alone.

    Args:
        cfg: the ``policy.cascade`` section (enabled or not: the caller checks).
        outputs: the model's output names (the first holds the logits by default).

    Raises:
        ConfigError: ``output`` is not an output of the model, or the hook cannot load.
    """

    def __init__(self, cfg: CascadeConfig, outputs: Sequence[str]) -> None:
        self.cfg = cfg
        self.threshold = cfg.threshold
        if cfg.output is not None and cfg.output not in outputs:
            raise ConfigError(f"policy.cascade.output: {cfg.output!r} is not an output of "
                              f"the model; expected one of {list(outputs)}")
        self.output = cfg.output or outputs[0]
        kind = cfg.kind
        self._score: Score = ((lambda z: confidence(z, kind)) if kind in CASCADE_KINDS
                              else load_score_hook(kind))
        self._lock = threading.Lock()
        #: scores that could not be computed (hook errors, bad shapes)
        self.errors = 0

    def score(self, outputs: Mapping[str, np.ndarray]) -> float | None:
        """The least confident sample's score, or None when it could not be computed."""
        z = outputs[self.output]
        try:
            s = np.asarray(self._score(z), dtype=np.float64).reshape(-1)
            if s.size != z.shape[0] or not np.all(np.isfinite(s)):
                raise ValueError(f"expected {z.shape[0]} finite scores, got shape "
                                 f"{list(s.shape)}")
        except Exception as e:  # a hook's failure must not fail the request
            with self._lock:
                self.errors += 1
            log.warning("cascade score failed (%s: %s); taking the split path",
                        type(e).__name__, e)
            return None
        return float(s.min())

    def accepts(self, outputs: Mapping[str, np.ndarray]) -> tuple[bool, float | None]:
        """(the device's answer stands, its score): every sample must reach the
        threshold, the batch is answered as one."""
        s = self.score(outputs)
        return (s is not None and s >= self.threshold), s
