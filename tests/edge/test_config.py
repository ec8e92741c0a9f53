"""Config validation: unknown keys and wrong types are errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edge_agent import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]


def minimal(**extra: object) -> dict:
    cfg = {"agent_id": "cam-1",
           "bundle": {"path": "/b/m/1", "public_key": "/k/signing.pub"}}
    cfg.update(extra)
    return cfg


def test_minimal_config_gets_documented_defaults() -> None:
    cfg = parse_config(minimal())
    assert cfg.policy.privacy_floor.min_depth == 1
    assert not cfg.policy.privacy_floor.risk_stated
    assert cfg.policy.estimator == "robust" and not cfg.policy.cascade.enabled
    assert cfg.api.host == "127.0.0.1"
    assert parse_config(minimal(api={"host": "0.0.0.0", "token": "t"})).api.host == "0.0.0.0"
    assert cfg.endpoints == [] and cfg.allowed_regions is None
    assert cfg.codec == "int8+lz4"


@pytest.mark.parametrize(("patch", "key"), [
    ({"bogus": 1}, "bogus: unknown key"),
    ({"policy": {"explore_fraction": 2}}, "policy.explore_fraction"),
    ({"policy": {"privacy_flor": 1}}, "policy.privacy_flor: unknown key"),
    ({"api": {"port": "eighty"}}, "api.port"),
    ({"policy": {"estimator": "newest"}}, "policy.estimator"),
    ({"policy": {"cascade": {"kind": "entropy"}}}, "policy.cascade.kind"),
    ({"policy": {"cascade": {"threshold": -1}}}, "policy.cascade.threshold"),
    ({"policy": {"privacy_floor": {"max_reconstruction": 2}}},
     "policy.privacy_floor.max_reconstruction"),
    ({"policy": {"privacy_floor": {"max_ssim": 0.3}}}, "policy.privacy_floor.max_ssim"),
    ({"api": {"token": "a", "token_file": "/t"}}, "api: Value error, set token or token_file"),
    ({"api": {"host": "0.0.0.0"}}, "api.host '0.0.0.0' is not loopback"),
    ({"runtime": {"intra_op_threads": 0}}, "runtime.intra_op_threads"),
    ({"deadlines": {"default_ms": -5}}, "deadlines.default_ms"),
    ({"agent_id": "bad id!"}, "agent_id"),
    ({"endpoints": [{"name": "a", "link": {"kind": "carrier-pigeon"}}]}, "endpoints.0.link"),
    ({"endpoints": [{"name": "a", "link": {"kind": "zmq", "endpoint": "tcp://h:1",
                                           "insecure": True, "colour": "red"}}]},
     "endpoints.0.link.zmq.colour: unknown key"),
    ({"endpoints": [{"name": "a", "link": {"kind": "zmq", "insecure": True}},
                    {"name": "a", "link": {"kind": "zmq", "insecure": True}}]},
     "endpoint names must be unique"),
])
def test_errors_name_the_key(patch: dict, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(minimal(**patch))
    assert key in str(e.value)


def test_privacy_floor_accepts_a_depth_or_a_risk() -> None:
    assert parse_config(minimal(policy={"privacy_floor": 3})).policy.privacy_floor.min_depth == 3
    floor = parse_config(minimal(policy={"privacy_floor": {
        "max_reconstruction": 0.3, "unaudited": "depth_only"}})).policy.privacy_floor
    assert floor.risk_stated and floor.max_reconstruction == 0.3
    assert floor.unaudited == "depth_only"
    hook = parse_config(minimal(policy={"cascade": {"enabled": True, "kind": "pkg.mod:fn"}}))
    assert hook.policy.cascade.kind == "pkg.mod:fn"


def test_unsigned_bundles_need_an_explicit_opt_out() -> None:
    with pytest.raises(ConfigError, match="bundle: Value error, public_key is required"):
        parse_config(minimal(bundle={"path": "/b"}))
    assert parse_config(minimal(bundle={"path": "/b", "allow_unsigned": True}))


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent_id: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


@pytest.mark.parametrize("name", ["edge.yaml", "edge-mqtt.yaml"])
def test_example_configs_validate(name: str) -> None:
    cfg = load_config(REPO / "configs" / name)
    assert cfg.endpoints, "the examples show cloud endpoints"
    kinds = {e.link.kind for e in cfg.endpoints}
    assert kinds == ({"zmq"} if name == "edge.yaml" else {"mqtt"})
    raw = yaml.safe_load((REPO / "configs" / name).read_text())
    assert raw["policy"]["privacy_floor"] >= 1


def test_residency_filters_endpoints() -> None:
    link = {"kind": "zmq", "insecure": True}
    cfg = parse_config(minimal(
        allowed_regions=["eu"],
        endpoints=[{"name": "a", "region": "eu", "link": link},
                   {"name": "b", "region": "us", "link": link}]))
    assert [e.name for e in cfg.resident_endpoints] == ["a"]


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    """Every path-valued setting (the agent's own and its links') is relative to the file,
    whatever the working directory."""
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "edge.yaml").write_text(yaml.safe_dump(minimal(
        bundle={"path": "bundles/m/1", "public_key": "../keys/signing.pub"},
        api={"token_file": "api.token"}, placement_prior="placement.yaml",
        endpoints=[{"name": "a", "link": {"kind": "zmq", "endpoint": "tcp://h:1",
                                          "secret_key": "keys/edge.key",
                                          "server_public_key": "/abs/cloud.pub"}}])))
    cfg = load_config(folder / "edge.yaml")
    assert cfg.bundle.path == folder / "bundles/m/1"
    assert cfg.bundle.public_key == folder / "../keys/signing.pub"
    assert cfg.api.token_file == folder / "api.token"
    assert cfg.placement_prior == folder / "placement.yaml"
    link = cfg.endpoints[0].link
    assert link.secret_key == folder / "keys/edge.key"
    assert str(link.server_public_key) == "/abs/cloud.pub"
    # parsed in-process: relative to the base given, else left as written
    assert parse_config(minimal(bundle={"path": "b", "public_key": "k"}),
                        base=folder).bundle.path == folder / "b"
