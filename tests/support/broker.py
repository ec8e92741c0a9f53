"""Shared fixtures: a real Mosquitto broker on a free loopback port, TLS (a CA and
certificates generated with ``cryptography``), password auth and a client certificate.

The object yielded has ``host``, ``port``, ``ca_file``, ``username``, ``password``,
``password_file``, ``client_cert``, ``client_key``, ``restart()`` and ``stop()``, plus
``broker_config()`` giving a ready :class:`transport.MqttBrokerConfig`. The broker process
is killed by PID on teardown. Tests skip, printing why, where mosquitto is not installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tiersplit.devtools.mosquitto import MosquittoBroker, find_mosquitto
from transport.config import MqttBrokerConfig

__all__ = ["BrokerHandle", "mosquitto_broker", "mosquitto_broker_session"]


class BrokerHandle:
    """What the fixtures yield: the broker plus a config factory."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self._b = broker

    def __getattr__(self, name: str):  # host, port, ca_file, restart(), stop()...
        return getattr(self._b, name)

    def broker_config(self, *, client_cert: bool = True, **over: object) -> MqttBrokerConfig:
        """A TLS + password (+ client certificate) config for this broker."""
        b = self._b
        fields: dict[str, object] = dict(
            host=b.host, port=b.port, tls=True, ca_file=b.ca_file, username=b.username,
            password_file=b.password_file, keepalive_s=5, reconnect_min_s=1,
            reconnect_max_s=1)
        if client_cert:
            fields.update(client_cert=b.client_cert, client_key=b.client_key)
        fields.update(over)
        return MqttBrokerConfig(**fields)


def _start(tmp: Path, require_client_cert: bool) -> MosquittoBroker:
    if find_mosquitto() is None:
        print("SKIP reason: mosquitto/mosquitto_passwd not installed")
        pytest.skip("mosquitto not installed (Debian: apt-get install mosquitto)")
    return MosquittoBroker.start_new(tmp, require_client_cert=require_client_cert)


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[BrokerHandle]:
    """A fresh broker for one test (TLS, password, client certificate required)."""
    broker = _start(tmp_path / "mosquitto", require_client_cert=True)
    try:
        yield BrokerHandle(broker)
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def mosquitto_broker_session(tmp_path_factory: pytest.TempPathFactory
                             ) -> Iterator[BrokerHandle]:
    """One broker shared by a session (do not stop or restart it in a test)."""
    broker = _start(tmp_path_factory.mktemp("mosquitto"), require_client_cert=True)
    try:
        yield BrokerHandle(broker)
    finally:
        broker.stop()
