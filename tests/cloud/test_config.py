"""The config toolkit as the cloud uses it: environment overrides and one error format."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_core.config import CloudConfig, load_config
from cloud_core.errors import ConfigError
from contract import config as kit
from contract.errors import ConfigError as ContractConfigError

_YAML = """\
repository: bundles
allow_unsigned: true
batching: {max_batch: 8}
transports:
  - kind: zmq
    insecure: true
    endpoints: ["tcp://127.0.0.1:0"]
"""


@pytest.fixture
def cloud_yaml(tmp_path: Path) -> Path:
    f = tmp_path / "cloud.yaml"
    f.write_text(_YAML)
    return f


def test_environment_overrides_nested_keys_before_validation(cloud_yaml: Path) -> None:
    env = {"TIERSPLIT_BATCHING__MAX_BATCH": "32",  # a YAML scalar: the number 32
           "TIERSPLIT_HTTP__ENABLED": "false",  # a section the file does not have
           "TIERSPLIT_GRACE_S": "2.5",  # a top-level key
           "TIERSPLIT_TRANSPORTS__0__HEARTBEAT_IVL_MS": "250",  # a list item
           "TIERSPLIT_REPOSITORY": "elsewhere",  # paths still resolve against the file
           "TIERSPLIT_CACHE_DIR": "/tmp/x",  # not a cloud setting: left alone
           "HOME": "/root"}
    cfg = kit.load_yaml(cloud_yaml, CloudConfig, what="cloud config", environ=env)
    assert cfg.batching.max_batch == 32
    assert cfg.http.enabled is False
    assert cfg.grace_s == 2.5
    assert cfg.transports[0].heartbeat_ivl_ms == 250
    assert cfg.repository == cloud_yaml.parent / "elsewhere"
    plain = kit.load_yaml(cloud_yaml, CloudConfig, what="cloud config", environ={})
    assert plain.batching.max_batch == 8 and plain.http.enabled and plain.grace_s == 10.0


def test_load_config_reads_the_process_environment(cloud_yaml: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERSPLIT_BATCHING__MAX_QUEUE", "7")
    assert load_config(cloud_yaml).batching.max_queue == 7


@pytest.mark.parametrize(("env", "match"), [
    ({"TIERSPLIT_BATCHING__MAX_BATCHH": "3"}, r"batching\.max_batchh: unknown key"),
    ({"TIERSPLIT_BATCHING__MAX_BATCH": "lots"}, r"batching\.max_batch: .*integer"),
    ({"TIERSPLIT_BATCHING__MAX_BATCH__X": "1"}, r"MAX_BATCH__X: batching.max_batch is a value"),
    ({"TIERSPLIT_TRANSPORTS__5__INSECURE": "true"}, r"not an index of the 1-item list"),
    ({"TIERSPLIT_BATCHING__MAX_BATCH": "[1"}, r"TIERSPLIT_BATCHING__MAX_BATCH: not a YAML"),
])
def test_bad_override_is_refused_naming_it(cloud_yaml: Path, env: dict[str, str],
                                           match: str) -> None:
    with pytest.raises(ContractConfigError, match=match) as info:
        kit.load_yaml(cloud_yaml, CloudConfig, what="cloud config", environ=env)
    if "unknown key" in match:
        assert "environment overrides TIERSPLIT_BATCHING__MAX_BATCHH" in str(info.value)


def test_cloud_errors_come_from_the_toolkit(tmp_path: Path) -> None:
    f = tmp_path / "cloud.yaml"
    f.write_text("repository: r\nallow_unsigned: true\nbatching: {max_batchh: 3}\n")
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert isinstance(info.value, ContractConfigError)  # one family across tiers
    assert str(info.value) == f"invalid cloud config {f}: batching.max_batchh: unknown key"
