"""edge_agent: the daemon on each edge device (no torch: ONNX Runtime, numpy, links).

``EdgeAgent(config).start()`` serves a bundle's heads and int8 full model, places each
request at the cut the runtime policy predicts fastest, and never loses a request
(failover to the next cloud endpoint, else local execution). See ``configs/edge.yaml``.
"""

from edge_agent.agent import EdgeAgent
from edge_agent.config import EdgeConfig, load_config, parse_config
from edge_agent.errors import (
    AgentNotReady,
    BundleRefused,
    ConfigError,
    EdgeError,
    InferenceFailed,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    Unauthorized,
)
from edge_agent.result import (
    DEVICE_PATH,
    FALLBACK_PATH,
    REMOTE_PATH,
    Attempt,
    InferResult,
    RequestHandle,
)

__all__ = [
    "DEVICE_PATH",
    "FALLBACK_PATH",
    "REMOTE_PATH",
    "AgentNotReady",
    "Attempt",
    "BundleRefused",
    "ConfigError",
    "EdgeAgent",
    "EdgeConfig",
    "EdgeError",
    "InferResult",
    "InferenceFailed",
    "InvalidInput",
    "ModelNotFound",
    "Overloaded",
    "RequestHandle",
    "Unauthorized",
    "load_config",
    "parse_config",
]
