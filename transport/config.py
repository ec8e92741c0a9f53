"""Link configuration (pydantic v2), embedded in the cloud's and the edge's YAML configs.

A link config is a discriminated union on ``kind``::

    link:
      kind: zmq
      endpoints: ["tcp://0.0.0.0:5555"]
      secret_key: keys/cloud.key          # Curve certificate (tiersplit keys gen --kind curve)
      allowed_keys_dir: keys/agents       # <agent_id>.pub Curve certificates

    link:
      kind: mqtt
      broker: {host: broker.lan, port: 8883, ca_file: ca.pem, username: cloud,
               password_file: broker.pass}
      secret_key: keys/cloud-x25519.key   # X25519 (tiersplit keys gen --kind x25519)
      allowed_keys_dir: keys/agents-x25519

Key fields are file paths (:data:`contract.config.ConfigPath`: relative ones resolve
against the folder of the YAML file they came from); they are read by
:mod:`transport.keys` when the link is made (refusing group/world-readable secrets),
never stored in the model. A link's constructor takes its config model itself.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, model_validator

from contract.config import ConfigPath, StrictModel

__all__ = [
    "ClientLinkConfig",
    "MqttBrokerConfig",
    "MqttClientConfig",
    "MqttServerConfig",
    "ServerLinkConfig",
    "WireLimits",
    "ZmqClientConfig",
    "ZmqServerConfig",
]


class WireLimits(StrictModel):
    """Bounds a decoder (:func:`transport.wire.decode`) enforces before allocating.

    Attributes:
        max_header_bytes: size of frame 0 (version, kind, JSON header).
        max_tensors: tensors in one message.
        max_tensor_bytes: decoded size of one tensor (and of its uncompressed payload).
        max_total_bytes: decoded size of all tensors (or a ping payload/padding) together.
        max_ndim: rank of one tensor.
    """

    max_header_bytes: int = Field(64 * 1024, gt=0)
    max_tensors: int = Field(64, gt=0)
    max_tensor_bytes: int = Field(64 * 1024 * 1024, gt=0)
    max_total_bytes: int = Field(64 * 1024 * 1024, gt=0)
    max_ndim: int = Field(8, gt=0)


class _ZmqCommon(StrictModel):
    kind: Literal["zmq"] = "zmq"
    insecure: bool = Field(False, description="Plaintext, no authentication. Tests/demos only.")
    heartbeat_ivl_ms: int = Field(1000, gt=0, description="ZMQ_HEARTBEAT_IVL")
    heartbeat_timeout_ms: int = Field(3000, gt=0,
                                      description="ZMQ_HEARTBEAT_TIMEOUT: peer lost after")
    heartbeat_ttl_ms: int = Field(6000, gt=0, description="ZMQ_HEARTBEAT_TTL")
    limits: WireLimits = WireLimits()


class ZmqServerConfig(_ZmqCommon):
    """Cloud side: a ROUTER bound to one or more endpoints (port 0 picks a free port)."""

    endpoints: list[str] = Field(default_factory=lambda: ["tcp://127.0.0.1:5555"],
                                 min_length=1)
    secret_key: ConfigPath | None = Field(None, description="Curve certificate with secret key")
    allowed_keys_dir: ConfigPath | None = Field(
        None, description="Directory of <agent_id>.pub Curve certificates (the allow-list)")

    @model_validator(mode="after")
    def _keys_unless_insecure(self) -> ZmqServerConfig:
        if not self.insecure and (self.secret_key is None or self.allowed_keys_dir is None):
            raise ValueError("zmq server needs secret_key and allowed_keys_dir "
                             "(or insecure: true for plaintext)")
        return self


class ZmqClientConfig(_ZmqCommon):
    """Edge side: a DEALER connected to one cloud endpoint."""

    endpoint: str = "tcp://127.0.0.1:5555"
    secret_key: ConfigPath | None = Field(None, description="The agent's Curve certificate")
    server_public_key: ConfigPath | None = Field(None, description="The cloud's Curve .pub")
    reconnect_ivl_ms: int = Field(100, gt=0)
    reconnect_ivl_max_ms: int = Field(2000, ge=0)

    @model_validator(mode="after")
    def _keys_unless_insecure(self) -> ZmqClientConfig:
        if not self.insecure and (self.secret_key is None or self.server_public_key is None):
            raise ValueError("zmq client needs secret_key and server_public_key "
                             "(or insecure: true for plaintext)")
        return self


class MqttBrokerConfig(StrictModel):
    """How to reach the broker: TLS (on by default) and username/password or client cert."""

    host: str = "127.0.0.1"
    port: int = Field(8883, gt=0, lt=65536)
    tls: bool = True
    ca_file: ConfigPath | None = None
    client_cert: ConfigPath | None = None
    client_key: ConfigPath | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: ConfigPath | None = Field(None, description="File holding the password (0600)")
    keepalive_s: int = Field(10, gt=0)
    reconnect_min_s: float = Field(0.2, gt=0)
    reconnect_max_s: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _one_password(self) -> MqttBrokerConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")
        return self


class _MqttCommon(StrictModel):
    kind: Literal["mqtt"] = "mqtt"
    broker: MqttBrokerConfig = MqttBrokerConfig()
    prefix: str = Field("tiersplit", pattern=r"^[A-Za-z0-9_\-/]+$")
    aead: Literal["chacha20poly1305", "aes256gcm"] = "chacha20poly1305"
    replay_window: int = Field(4096, gt=0, description="sequence numbers remembered per peer")
    max_skew_s: float = Field(120.0, gt=0,
                              description="refuse payloads stamped further than this from now")
    limits: WireLimits = WireLimits()


class MqttServerConfig(_MqttCommon):
    """Cloud side: consumes ``$share/<group>/<prefix>/req/+`` (replicas share the load)."""

    group: str = Field("tiersplit-cloud", pattern=r"^[A-Za-z0-9_\-]+$")
    client_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_\-.]{1,100}$")
    secret_key: ConfigPath = Field(description="The cloud's X25519 private key (PEM, 0600)")
    allowed_keys_dir: ConfigPath = Field(description="Directory of <agent_id>.pub X25519 keys")


class MqttClientConfig(_MqttCommon):
    """Edge side: publishes to ``<prefix>/req/<agent_id>``, reads ``<prefix>/rep/<agent_id>``."""

    secret_key: ConfigPath = Field(description="The agent's X25519 private key (PEM, 0600)")
    server_public_key: ConfigPath = Field(description="The cloud's X25519 public key")


ServerLinkConfig = Annotated[ZmqServerConfig | MqttServerConfig, Field(discriminator="kind")]
ClientLinkConfig = Annotated[ZmqClientConfig | MqttClientConfig, Field(discriminator="kind")]
