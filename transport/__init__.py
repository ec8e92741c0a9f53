"""transport: the bottom floor. Moves tensors between edge agents and cloud cores,
encrypted and authenticated; knows nothing of models and imports nothing of ours.

Modules: ``wire`` (frames, pure), ``codecs`` (pure), ``aead`` (MQTT payload crypto, pure),
``zmq`` (CurveZMQ ROUTER/DEALER), ``mqtt`` (paho v5 + AEAD), ``keys``, ``config``,
``linkemu`` (a TCP link emulator for tests and benchmarks).
"""

from __future__ import annotations

from transport.base import ClientLink, PingResult, Responder, ServerHandler, ServerLink
from transport.config import (
    ClientLinkConfig,
    MqttBrokerConfig,
    MqttClientConfig,
    MqttServerConfig,
    ServerLinkConfig,
    ZmqClientConfig,
    ZmqServerConfig,
)
from transport.messages import LoadReport, Message, Ping, Pong, Reply, Request, Status

__all__ = [
    "ClientLink",
    "ClientLinkConfig",
    "LoadReport",
    "Message",
    "MqttBrokerConfig",
    "MqttClientConfig",
    "MqttServerConfig",
    "Ping",
    "PingResult",
    "Pong",
    "Reply",
    "Request",
    "Responder",
    "ServerHandler",
    "ServerLink",
    "ServerLinkConfig",
    "Status",
    "ZmqClientConfig",
    "ZmqServerConfig",
    "make_client_link",
    "make_server_link",
]


def make_server_link(cfg: ZmqServerConfig | MqttServerConfig) -> ServerLink:
    """The cloud-side link a config describes (keys are loaded and checked here).

    Raises:
        KeyFileError: a key file is missing, malformed or readable by group/others.
    """
    if isinstance(cfg, ZmqServerConfig):
        from transport.zmq import ZmqServerLink

        return ZmqServerLink(cfg)
    if isinstance(cfg, MqttServerConfig):
        from transport.mqtt import MqttServerLink

        return MqttServerLink(cfg)
    raise TypeError(f"not a server link config: {type(cfg).__name__}")


def make_client_link(cfg: ZmqClientConfig | MqttClientConfig, agent_id: str) -> ClientLink:
    """The edge-side link a config describes, for agent ``agent_id``.

    The link connects in the background; ``connected`` says when it is up.

    Raises:
        KeyFileError: a key file is missing, malformed or readable by group/others.
    """
    if isinstance(cfg, ZmqClientConfig):
        from transport.zmq import ZmqClientLink

        return ZmqClientLink(cfg, agent_id)
    if isinstance(cfg, MqttClientConfig):
        from transport.mqtt import MqttClientLink

        return MqttClientLink(cfg, agent_id)
    raise TypeError(f"not a client link config: {type(cfg).__name__}")
