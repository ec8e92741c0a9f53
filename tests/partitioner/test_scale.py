"""Partitioning at scale, on small models: calibration runs once for all cuts, a re-run
with another floor reuses cached work but still judges on held-back data, a memory budget
that cannot hold the model is refused up front, and time/peak RSS are reported per stage.

Work skipped is asserted through the run's counters and stages, never through time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from contract.bundle import Bundle
from partitioner import memory, partition
from partitioner.errors import MemoryBudgetError
from partitioner.stages import Meter
from tiersplit.cli import app

MODEL = "zoo:resnet_like"
runner = CliRunner()


def _run(root: Path, version: str, meter: Meter, **kw) -> Bundle:
    path = partition(MODEL, None, root, version=version, max_cuts=4, progress=False,
                     meter=meter, **kw)
    return Bundle.load(path, require_signature=False)


def _split_cuts(b: Bundle) -> list:
    return [c for c in b.manifest.cuts if c.head and c.tail]


def test_calibration_runs_once_for_all_cuts(tmp_path: Path) -> None:
    meter = Meter()
    b = _run(tmp_path / "repo", "1", meter)
    splits = _split_cuts(b)
    assert len(splits) >= 2
    assert meter.counts["calibrations"] == 1, meter.counts
    # every static head after the full model was quantized from the shared ranges
    assert meter.stats["quantize"].calls >= len(splits)
    assert all(c.recipe.startswith("static-qdq") for c in splits)


def test_rerun_with_new_floor_reuses_cache_and_judges_on_heldback(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first, second, third = Meter(), Meter(), Meter()
    b1 = _run(tmp_path / "repo", "1", first, cache_dir=cache)
    b2 = _run(tmp_path / "repo", "2", second, cache_dir=cache, accuracy_floor=0.98)
    misses = first.counts["cache misses: quantize"]
    assert misses >= 2 and first.counts["calibrations"] == 1
    # the re-run exports, calibrates and quantizes nothing: all of it comes from the cache
    assert first.counts["cache misses: export"] == 1
    assert second.counts["cache hits: export"] == 1
    assert second.counts["calibrations"] == 0
    assert second.counts["cache hits: quantize"] == misses
    assert second.counts["cache misses: quantize"] == 0
    assert "quantize" not in second.stats and "calibrate" not in second.stats
    assert second.counts["cache hits: evaluate"] == first.counts["cache misses: evaluate"]
    # codec tables, device tails, latencies and sensitivity ranks: all re-judged, none redone
    interior = len(_split_cuts(b1))
    assert first.counts["cache misses: codecs"] == interior
    assert second.counts["cache hits: codecs"] == interior
    assert second.counts["cache misses: codecs"] == 0
    assert second.counts["cache hits: latency"] == first.counts["cache misses: latency"] > 0
    for stage in ("time latency", "rank sensitivity"):
        assert stage not in second.stats, stage
    assert second.counts["device-tail calibrations"] == 0
    assert first.counts["device-tail inputs computed"] >= 2 * interior
    assert second.counts["device-tail inputs computed"] == 0  # not even the tails' inputs
    tails1 = {c.id: (c.device_tail_recipe, c.device_tail_accuracy) for c in b1.manifest.cuts}
    tails2 = {c.id: (c.device_tail_recipe, c.device_tail_accuracy) for c in b2.manifest.cuts}
    assert tails1 == tails2
    codecs1 = {c.id: [(k.codec, k.ratio, k.cosine) for k in c.codecs] for c in b1.manifest.cuts}
    codecs2 = {c.id: [(k.codec, k.ratio, k.cosine) for k in c.codecs] for c in b2.manifest.cuts}
    assert codecs1 == codecs2
    assert b2.manifest.quantization.accuracy_floor == 0.98
    acc1 = {c.id: (c.recipe, c.accuracy.cosine) for c in b1.manifest.cuts}
    acc2 = {c.id: (c.recipe, c.accuracy.cosine) for c in b2.manifest.cuts}
    assert acc1 == acc2
    # other held-back data: the heads still come from the cache, the figures do not
    rng = np.random.default_rng(5)
    evald = {"image": rng.standard_normal((12, 3, 64, 64)).astype(np.float32)}
    b3 = _run(tmp_path / "repo", "3", third, cache_dir=cache, eval_data=evald)
    assert third.counts["cache hits: quantize"] >= 1
    assert third.counts["cache misses: evaluate"] >= len(_split_cuts(b3)) + 1
    assert third.counts["cache hits: evaluate"] == 0
    assert b3.manifest.quantization.evaluation_samples == 12


def test_damaged_cache_entry_is_recomputed(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _run(tmp_path / "repo", "1", Meter(), cache_dir=cache)
    entries = sorted(cache.rglob("quantize-*.onnx"))
    assert entries
    entries[0].write_bytes(b"not a model")
    again = Meter()
    _run(tmp_path / "repo", "2", again, cache_dir=cache)
    assert again.counts["cache misses: quantize"] == 1
    assert again.counts["cache hits: quantize"] == len(entries) - 1


def test_peak_rss_reported_per_stage(tmp_path: Path) -> None:
    meter = Meter()
    _run(tmp_path / "repo", "1", meter)
    for stage in ("export", "analyze", "reference outputs", "search full model", "calibrate",
                  "extract head/tail", "verify split", "search heads", "quantize",
                  "evaluate", "write bundle"):
        st = meter.stats[stage]
        assert st.calls >= 1 and st.seconds > 0, stage
        assert 50 * 2**20 < st.peak_rss <= meter.peak_rss, stage
    cuts = meter.stats["extract head/tail"].calls
    assert cuts == meter.stats["verify split"].calls == meter.stats["search heads"].calls


def test_verbose_cli_prints_stage_table(tmp_path: Path) -> None:
    res = runner.invoke(app, ["partition", "zoo:digits_cnn", "--max-cuts", "3", "--out",
                              str(tmp_path / "repo"), "--cache-dir", str(tmp_path / "c"),
                              "--verbose"])
    assert res.exit_code == 0, res.output
    for needle in ("peak RSS", "calibrate", "search heads", "calibrations: 1"):
        assert needle in res.stdout, res.stdout


def test_max_memory_too_small_is_refused_up_front(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    res = runner.invoke(app, ["partition", MODEL, "--out", str(out), "--max-memory", "200M",
                              "--no-cache"])
    assert res.exit_code == 2, res.output
    err = " ".join(res.stderr.split())
    assert err.startswith("error:") and err.count("error:") == 1, err
    assert "needs ~" in err and "--max-memory 200.0 MiB" in err and "nothing was written" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_bad_max_memory_is_one_line(tmp_path: Path) -> None:
    res = runner.invoke(app, ["partition", MODEL, "--out", str(tmp_path / "r"),
                              "--max-memory", "lots"])
    assert res.exit_code == 2
    assert "not a memory size" in " ".join(res.stderr.split())


def test_budget_shrinks_batches_before_refusing(tmp_path: Path) -> None:
    from partitioner import load
    from partitioner.graph import analyze

    model = load.load(MODEL, None).model
    info = analyze(model)
    weights, acts = memory.weight_bytes(model), memory.activation_bytes(info)
    every = memory.all_activation_bytes(info)
    assert weights > 0 and 0 < acts < every
    meter = Meter()
    b = _run(tmp_path / "repo", "1", meter,
             max_memory=memory.estimate(weights, acts, 4, every, 4).total + 1)
    assert _split_cuts(b)
    assert meter.facts["batch"] == 4 and meter.facts["work_batch"] == 4  # 16 -> 8 -> 4
    assert meter.facts["estimate"] <= memory.estimate(weights, acts, 4, every, 4).total
    with pytest.raises(MemoryBudgetError, match="needs ~"):
        _run(tmp_path / "repo", "2", Meter(),
             max_memory=memory.estimate(weights, acts, 1, every, 1).total - 1)
    assert not (tmp_path / "repo" / "resnet_like" / "2").exists()
    assert memory.parse_size("1.5G") == int(1.5 * 2**30)
    assert memory.parse_size("800MB") == 800 * 10**6
