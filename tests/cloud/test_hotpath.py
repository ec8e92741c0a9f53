"""The core's per-request shortcuts keep every check: a request whose names, dtypes and
shapes were checked before skips only those checks (deadline, size and batch limit still
apply, and anything that differs is checked in full), and the queue-depth gauge, read
from the batcher's queues when scraped, still shows what waits."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

from cloud_core import CloudCore
from cloud_core.errors import DeadlineExceeded, InvalidInput
from cloud_core.validate import check_request, resolve_target

from .conftest import make_request, metric, queue_behind_a_batch


@pytest.fixture
def core(core_factory: Callable[..., CloudCore]) -> CloudCore:
    return core_factory()


def test_a_checked_signature_still_gets_every_other_check(core: CloudCore) -> None:
    lv = core.repository.active("mlp")
    good = make_request(lv, "h1", {"h1": np.ones((2, 32), np.float32)})
    target = resolve_target(good, core.repository)
    assert resolve_target(good, core.repository) is target  # resolved once, reused
    first = check_request(good, target, max_request_bytes=1 << 20, max_batch=8)
    again = check_request(make_request(lv, "h1", {"h1": np.zeros((2, 32), np.float32)}),
                          target, max_request_bytes=1 << 20, max_batch=8)
    assert (again.items, again.sample_shapes) == (first.items, first.sample_shapes) == (
        2, ((32,),))

    late = make_request(lv, "h1", {"h1": np.ones((2, 32), np.float32)}, deadline_s=-1.0)
    with pytest.raises(DeadlineExceeded):
        check_request(late, target, max_request_bytes=1 << 20, max_batch=8)
    with pytest.raises(InvalidInput) as e:
        check_request(good, target, max_request_bytes=64, max_batch=8)
    assert e.value.reason == "oversize"
    with pytest.raises(InvalidInput) as e:  # same signature, a smaller batch limit
        check_request(good, target, max_request_bytes=1 << 20, max_batch=1)
    assert e.value.reason == "batch"
    wrong_dtype = make_request(lv, "h1", {"h1": np.ones((2, 32), np.float64)})
    with pytest.raises(InvalidInput) as e:
        check_request(wrong_dtype, target, max_request_bytes=1 << 20, max_batch=8)
    assert e.value.reason == "dtype"
    wrong_shape = make_request(lv, "h1", {"h1": np.ones((2, 31), np.float32)})
    with pytest.raises(InvalidInput) as e:
        check_request(wrong_shape, target, max_request_bytes=1 << 20, max_batch=8)
    assert e.value.reason == "shape"


def test_queue_depth_gauge_shows_what_waits(core_factory: Callable[..., CloudCore]) -> None:
    core = core_factory(batching={"max_batch": 1}, executor_workers=1,
                        debug={"tail_delay_ms": 300})
    inbox, reqs = queue_behind_a_batch(core, 4)
    labels = {"model": "mlp", "version": reqs[0].version, "cut": "h1"}
    waiting = metric(core, "tiersplit_cloud_queue_depth", **labels)
    assert 1 <= waiting <= 3, waiting  # one runs, the others wait
    inbox.wait([r.request_id for r in reqs])
    end = time.monotonic() + 30
    while metric(core, "tiersplit_cloud_queue_depth", **labels) != 0:
        assert time.monotonic() < end, "queue depth never went back to 0"
        time.sleep(0.01)


def test_an_unloaded_version_is_not_kept_by_the_caches(core: CloudCore) -> None:
    from cloud_core import validate

    versions = core.repository.loaded_versions("mlp")
    assert len(versions) >= 2
    active = core.repository.active("mlp")
    lv = next(x for x in core.repository.all_loaded()
              if x.name == "mlp" and x.version != active.version)
    req = make_request(lv, "h1", {"h1": np.ones((1, 32), np.float32)})
    check_request(req, resolve_target(req, core.repository), max_request_bytes=1 << 20,
                  max_batch=8)
    assert any(t.version is lv for t in validate._TARGETS.values())
    assert any(v.target.version is lv for v in validate._CHECKED.values())
    core.unload_model("mlp", lv.version)
    assert not any(t.version is lv for t in validate._TARGETS.values())
    assert not any(v.target.version is lv for v in validate._CHECKED.values())
