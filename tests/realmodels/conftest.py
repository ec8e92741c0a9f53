"""The real all-MiniLM-L6-v2 bundle, partitioned once per session and signed, shared by
the accuracy tests and the end-to-end test through a real agent and core."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from partitioner import minilm
from partitioner.text_corpus import CALIBRATION, EVALUATION
from tiersplit.devtools.bundles import BuiltBundle, load_built, signing_keys

SEQ = 32  # the length the bundle is partitioned at; requests use others too
INPUTS = [f"input_ids:1,seq={SEQ}:int64", f"attention_mask:1,seq={SEQ}:int64"]


@pytest.fixture(scope="session")
def minilm_bundle(tmp_path_factory: pytest.TempPathFactory,
                  partition_cache: Path) -> BuiltBundle:
    """MiniLM partitioned from its sentence-transformers module (device tails and codec
    table included), calibrated on ``CALIBRATION`` and judged on ``EVALUATION``.

    Built through the session ``partition_cache``: the ONNX-file test exports the same
    module to byte-identical ONNX, so its partition reuses what this one computed."""
    reason = minilm.missing()
    if reason is not None:
        pytest.skip(reason)
    from partitioner import partition

    base = tmp_path_factory.mktemp("minilm")
    (base / "keys").mkdir()
    secret, public = signing_keys(base / "keys")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT's calibration chatter, while building only
    try:
        path = partition("partitioner.minilm:make", INPUTS, base / "repo", name="minilm",
                         max_cuts=4, calib_data=minilm.tokenize(CALIBRATION, SEQ),
                         eval_data=minilm.tokenize(EVALUATION, SEQ), signing_key=secret,
                         progress=False, cache_dir=partition_cache)
    finally:
        root.setLevel(level)
    return load_built(Path(path), base / "repo", secret, public)
