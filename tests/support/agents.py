"""In-process edge agents for tests: a factory that starts them from config mappings and
stops every one it started when the test ends, whatever the test did."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def agent_factory(serve_http: bool) -> Iterator[Callable[..., Any]]:
    """Yield ``factory(cfg, **kw)`` -> a started ``EdgeAgent``; ``serve_http`` is the
    default for agents that do not say (their HTTP API costs a server per agent)."""
    from edge_agent import EdgeAgent, parse_config

    agents: list[EdgeAgent] = []

    def factory(cfg: dict[str, Any], **kw: Any) -> EdgeAgent:
        kw.setdefault("serve_http", serve_http)
        agent = EdgeAgent(parse_config(cfg), **kw)
        agents.append(agent)
        return agent.start()

    try:
        yield factory
    finally:
        for a in agents:
            with contextlib.suppress(Exception):
                a.stop(grace=5)
