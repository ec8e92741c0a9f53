"""Pure parts of the cloud core, no sockets, no threads: batching plan, config, error
mapping, Triton export (parsed with Triton's own protobuf schema)."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import pytest

from cloud_core.batcher import Entry, WaitAdvisor, ready_at, take_batch
from cloud_core.config import load_config, parse_config
from cloud_core.errors import (
    BackendError,
    ConfigError,
    CutNotFound,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    Unavailable,
    VersionMismatch,
    status_for,
)
from cloud_core.triton_export import export_triton, triton_model_name, triton_model_version
from contract.bundle import Bundle
from contract.deadline import Deadline
from transport.messages import Status

REPO_ROOT = Path(__file__).resolve().parents[2]


def _q(*items: int, deadline: float = 1e12, t0: float = 100.0) -> deque[Entry]:
    return deque(Entry(items=n, deadline=Deadline(deadline), payload=i, enqueued=t0 + i)
                 for i, n in enumerate(items))


class TestTakeBatch:
    def test_fills_up_to_max_batch_whole_requests(self) -> None:
        q = _q(3, 3, 3)
        batch, expired = take_batch(q, now=0, max_batch=8)
        assert [e.payload for e in batch] == [0, 1] and not expired
        assert [e.payload for e in q] == [2]

    def test_single_request_larger_than_room_goes_alone(self) -> None:
        q = _q(8, 1)
        batch, _ = take_batch(q, now=0, max_batch=8)
        assert [e.payload for e in batch] == [0]

    def test_expired_entries_are_dropped_not_batched(self) -> None:
        q = deque([Entry(1, Deadline(5.0), "old"), Entry(1, Deadline(50.0), "ok"),
                   Entry(1, Deadline(4.0), "old2")])
        batch, expired = take_batch(q, now=10.0, max_batch=8)
        assert [e.payload for e in batch] == ["ok"]
        assert [e.payload for e in expired] == ["old", "old2"]
        assert not q

    def test_fifo_order_kept(self) -> None:
        q = _q(1, 1, 1, 1, 1)
        batch, _ = take_batch(q, now=0, max_batch=3)
        assert [e.payload for e in batch] == [0, 1, 2]


class TestReadyAt:
    def test_full_batch_is_ready_now(self) -> None:
        assert ready_at(_q(4, 4), max_batch=8, max_delay=1.0) == 0.0

    def test_partial_batch_waits_from_oldest_arrival(self) -> None:
        assert ready_at(_q(1, 1, t0=50.0), max_batch=8, max_delay=0.5) == pytest.approx(50.5)

    def test_idle_gap_sends_once_the_burst_is_over(self) -> None:
        q = _q(1, 1, t0=50.0)  # arrivals at 50.0 and 51.0
        assert ready_at(q, max_batch=8, max_delay=5.0, idle_gap=0.5) == pytest.approx(51.5)
        assert ready_at(q, max_batch=8, max_delay=1.2, idle_gap=0.5) == pytest.approx(51.2)

    def test_idle_gap_config_default_and_disable(self) -> None:
        b = parse_config({"repository": "r", "allow_unsigned": True,
                          "batching": {"max_queue_delay_ms": 4}}).batching
        assert b.idle_gap_s == pytest.approx(0.001)
        b = parse_config({"repository": "r", "allow_unsigned": True,
                          "batching": {"disable_idle_gap": True}}).batching
        assert b.idle_gap_s is None

    def test_empty_queue_never(self) -> None:
        assert ready_at(deque(), 8, 1.0) == float("inf")


class TestWaitAdvisor:
    def test_stops_waiting_when_waits_gain_nothing_but_probes(self) -> None:
        a = WaitAdvisor(threshold=0.1, probe_every=16)
        decisions = []
        for _ in range(64):
            w = a.should_wait()
            decisions.append(w)
            if w:
                a.record(gained=False)
        assert all(decisions[:5])  # starts optimistic
        assert sum(decisions[32:]) == 2  # then only the probes (every 16th batch)

    def test_keeps_waiting_while_waits_gather_company(self) -> None:
        a = WaitAdvisor()
        for _ in range(50):
            assert a.should_wait()
            a.record(gained=True)


class TestStatusMapping:
    @pytest.mark.parametrize(("error", "status"), [
        (InvalidInput("x"), Status.INVALID_INPUT),
        (ModelNotFound("x"), Status.MODEL_NOT_FOUND),
        (VersionMismatch("x"), Status.VERSION_MISMATCH),
        (CutNotFound("x"), Status.CUT_NOT_FOUND),
        (DeadlineExceeded("x"), Status.DEADLINE_EXCEEDED),
        (Overloaded("x"), Status.OVERLOADED),
        (Unavailable("x"), Status.UNAVAILABLE),
        (BackendError("x"), Status.INTERNAL),
        (RuntimeError("bug"), Status.INTERNAL),
    ])
    def test_one_place_maps_errors(self, error: Exception, status: Status) -> None:
        assert status_for(error) == status

    def test_invalid_input_keeps_its_reason(self) -> None:
        assert InvalidInput("too big", reason="oversize").reason == "oversize"


class TestConfig:
    def test_example_configs_validate(self) -> None:
        for name in ("cloud.yaml", "cloud-mqtt.yaml"):
            cfg = load_config(REPO_ROOT / "configs" / name)
            assert cfg.transports, name
            assert cfg.repository.is_absolute()

    def test_unknown_key_is_named(self) -> None:
        with pytest.raises(ConfigError, match=r"batching\.max_batchh"):
            parse_config({"repository": "r", "allow_unsigned": True,
                          "batching": {"max_batchh": 3}})

    def test_signing_key_required_unless_unsigned_allowed(self) -> None:
        with pytest.raises(ConfigError, match="signing_public_key"):
            parse_config({"repository": "r"})
        assert parse_config({"repository": "r", "allow_unsigned": True}).allow_unsigned

    def test_bad_transport_names_the_key(self) -> None:
        with pytest.raises(ConfigError, match=r"transports\.0"):
            parse_config({"repository": "r", "allow_unsigned": True,
                          "transports": [{"kind": "zmq", "endpoints": ["tcp://x:1"]}]})

    def test_relative_paths_resolve_against_the_file(self, tmp_path: Path) -> None:
        f = tmp_path / "sub" / "cloud.yaml"
        f.parent.mkdir()
        f.write_text("repository: bundles\nsigning_public_key: keys/s.pub\n"
                     "transports:\n  - kind: zmq\n    secret_key: keys/c.key\n"
                     "    allowed_keys_dir: agents\n")
        cfg = load_config(f)
        assert cfg.repository == f.parent / "bundles"
        assert cfg.transports[0].secret_key == f.parent / "keys" / "c.key"

    def test_bad_yaml_and_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="cloud config not found"):
            load_config(tmp_path / "nope.yaml")
        (tmp_path / "bad.yaml").write_text("a: [")
        with pytest.raises(ConfigError, match="not valid YAML"):
            load_config(tmp_path / "bad.yaml")


class TestTritonExport:
    def test_repository_parses_with_tritons_schema(self, cloud_repo, tmp_path: Path) -> None:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2

        from transport import keys

        b = Bundle.load(cloud_repo.root / "cnn" / "1", keys.load_ed25519_public(
            cloud_repo.public_key), role="cloud")
        done = export_triton(b, tmp_path / "repo", max_batch=32, max_queue_delay_us=1500,
                             instances=2)
        assert sorted(m.name for m in done) == ["cnn__c1", "cnn__cloud", "cnn__p1"]
        for m in done:
            cfg = model_config_pb2.ModelConfig()
            text_format.Parse((m.path / "config.pbtxt").read_text(), cfg)
            cut = b.manifest.cut(m.name.split("__")[1])
            assert cfg.name == m.name and cfg.platform == "onnxruntime_onnx"
            assert cfg.max_batch_size == 32
            assert cfg.dynamic_batching.max_queue_delay_microseconds == 1500
            assert cfg.instance_group[0].count == 2
            assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
            assert [i.name for i in cfg.input] == [t.name for t in cut.tensors]
            assert [list(i.dims) for i in cfg.input] == [t.shape[1:] for t in cut.tensors]
            assert [o.name for o in cfg.output] == ["y"]
            assert list(cfg.output[0].dims) == [10]
            assert cfg.input[0].data_type == model_config_pb2.TYPE_FP32
            assert cfg.parameters["tiersplit_digest"].string_value == b.digest
            assert (m.path / "1" / "model.onnx").stat().st_size > 0
        # Versions are immutable, like bundles.
        with pytest.raises(ValueError, match="already exists"):
            export_triton(b, tmp_path / "repo")

    def test_names(self) -> None:
        assert triton_model_name("mlp", "h1") == "mlp__h1"
        assert triton_model_version("3") == 3
        assert triton_model_version("v2") == 1


def test_deadline_in_entries_is_monotonic() -> None:
    q = deque([Entry(1, Deadline.after_ms(-1000), "late"), Entry(1, Deadline.after_ms(60e3), "ok")])
    batch, expired = take_batch(q, now=time.monotonic(), max_batch=4)
    assert [e.payload for e in batch] == ["ok"] and expired[0].payload == "late"
