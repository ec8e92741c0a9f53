"""Shared fixtures. Area-specific fixtures live in each test folder's conftest; the ones
several areas need (a real mosquitto broker, built bundles, keys) live in tests/support."""

pytest_plugins = [
    "tests.support.keys",
    "tests.support.broker",
    "tests.support.bundles",
]
