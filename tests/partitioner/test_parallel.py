"""Interior cuts on worker processes: the same bundle as one cut after another, the
workers' progress and stage figures reach the run, and the number of workers follows
the memory budget."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contract.bundle import Bundle
from partitioner import memory, partition
from partitioner.stages import Meter
from tiersplit.cli import app

# What two runs may differ in: latencies, and where several candidates keep the floor,
# which one the (timed) latency picks; everything else must be the same.
_TIMED = {"latency_ms", "latency_fp32_ms", "device_tail_latency_ms"}
_HEAD = {"recipe", "excluded_nodes", "accuracy", "codecs"}
_TAIL = {"device_tail_recipe", "device_tail_accuracy"}


def _bundle(root: Path, version: str, jobs: int, meter: Meter) -> Bundle:
    path = partition("zoo:resnet_like", None, root, version=version, max_cuts=4,
                     progress=False, meter=meter, jobs=jobs)
    return Bundle.load(path, require_signature=False)


def _digest(b: Bundle, name: str | None) -> str | None:
    return None if name is None else hashlib.sha256(b.file(name).read_bytes()).hexdigest()


def _same_bundle(b1: Bundle, b2: Bundle) -> int:
    """Assert two bundles agree up to latency-timed picks; return the cuts whose heads
    were compared in full (same pick)."""
    full = 0
    assert [c.id for c in b1.manifest.cuts] == [c.id for c in b2.manifest.cuts]
    for c1, c2 in zip(b1.manifest.cuts, b2.manifest.cuts, strict=True):
        d1, d2 = c1.model_dump(exclude=_TIMED), c2.model_dump(exclude=_TIMED)
        for d in (d1, d2):
            for k in d.get("codecs") or []:
                k.pop("encode_ms", None)
        assert {k: v for k, v in d1.items() if k not in _HEAD | _TAIL} == \
            {k: v for k, v in d2.items() if k not in _HEAD | _TAIL}, c1.id
        for name in (c1.head_fp32, c1.tail):
            assert _digest(b1, name) == _digest(b2, name), name
        if c1.recipe == c2.recipe and c1.excluded_nodes == c2.excluded_nodes:
            assert all(d1[k] == d2[k] for k in _HEAD), c1.id
            assert _digest(b1, c1.head) == _digest(b2, c2.head), c1.id
            full += 1
        if c1.device_tail_recipe == c2.device_tail_recipe and c1.recipe == c2.recipe:
            assert all(d1[k] == d2[k] for k in _TAIL), c1.id
            assert _digest(b1, c1.device_tail) == _digest(b2, c2.device_tail), c1.id
    return full


def test_two_workers_write_the_sequential_bundle(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    one, two = Meter(), Meter()
    b1 = _bundle(tmp_path, "1", 1, one)
    with caplog.at_level(logging.DEBUG, logger="partitioner.progress"):
        b2 = _bundle(tmp_path, "2", 2, two)
    interior = [c.id for c in b2.manifest.cuts if c.head and c.tail]
    assert len(interior) == 2
    assert one.facts["jobs"] == 1 and "cut workers" not in one.counts
    assert two.facts["jobs"] == 2 and two.counts["cut workers"] == 2
    assert _same_bundle(b1, b2) >= 3  # cloud, edge and at least one interior head
    assert b1.manifest.full_accuracy == b2.manifest.full_accuracy
    # the workers' stages and counters are merged into the run's meter
    for stage in ("cut total", "verify split", "search heads", "device tail + codecs"):
        assert two.stats[stage].calls == one.stats[stage].calls == 2, stage
        assert two.stats[stage].seconds > 0 and two.stats[stage].peak_rss > 0, stage
    assert two.counts["device-tail calibrations"] == one.counts["device-tail calibrations"]
    # and their progress reached the run's progress display (the parent process)
    steps = [r.getMessage() for r in caplog.records]
    for cid in interior:
        assert f"partition step: verify {cid}" in steps, steps
        assert f"partition step: search {cid}" in steps, steps
    assert any(s.startswith("partition candidate: head of cut") for s in steps)


def test_state_workers_cannot_receive_runs_the_cuts_here(tmp_path: Path) -> None:
    meter = Meter()
    path = partition("zoo:digits_cnn", None, tmp_path, max_cuts=4, progress=False, jobs=2,
                     meter=meter, metric=lambda ref, got: 1.0, metric_floor=0.5)
    b = Bundle.load(path, require_signature=False)
    assert len([c for c in b.manifest.cuts if c.head and c.tail]) == 2
    assert meter.facts["jobs"] == 1 and "cut workers" not in meter.counts
    assert meter.stats["search heads"].calls == 2


def test_workers_fit_the_memory_budget() -> None:
    est = memory.estimate(100 * 2**20, 2**20, 16, 50 * 2**20, 2)
    parent = memory.parent_bytes(est)
    assert parent < est.total
    fits = lambda n: parent + n * est.total  # noqa: E731
    assert memory.workers(est, 10, fits(3), ncores=8) == 3
    assert memory.workers(est, 10, fits(3) - 1, ncores=8) == 2
    assert memory.workers(est, 10, fits(2) - 1, ncores=8) == 1  # one worker: no pool
    assert memory.workers(est, 10, fits(3), 2, ncores=8) == 2  # --jobs caps it
    assert memory.workers(est, 2, fits(3), ncores=8) == 2  # no more workers than cuts
    assert memory.workers(est, 10, fits(3), ncores=1) == 1  # default: one per core
    assert memory.workers(est, 10, None, ncores=4, room=fits(4)) == 4  # free memory
    assert memory.workers(est, 10, None, ncores=4, room=0) == 1
    small = memory.estimate(memory.PARALLEL_MIN_WEIGHTS - 1, 2**20, 16)
    huge = 100 * small.total
    assert memory.workers(small, 10, huge, ncores=4) == 1  # not worth a worker's start-up
    assert memory.workers(small, 10, huge, 3, ncores=4) == 3  # unless asked for


def test_jobs_below_one_is_refused(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["partition", "zoo:digits_cnn", "--jobs", "0", "--out",
                                   str(tmp_path / "r")])
    assert res.exit_code == 2 and not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="jobs"):
        partition("zoo:digits_cnn", None, tmp_path / "r", progress=False, jobs=0)
    assert not (tmp_path / "r" / "digits_cnn").exists()
