"""`tiersplit edge run` / `edge status` as real processes: READY line, tritonclient,
SIGTERM stops cleanly (exit 0), config errors are one line and exit 2."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from tests.edge.conftest import base_config
from tiersplit.devtools.bundles import EDGE_CNN_INPUT as INPUT
from tiersplit.devtools.bundles import EDGE_CNN_OUTPUT as OUTPUT
from tiersplit.devtools.bundles import EDGE_CNN_SHAPE as IN_SHAPE


def _edge(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tiersplit.cli", "edge", *args],
                          capture_output=True, text=True, timeout=120, **kw)


def test_run_serves_until_sigterm(edge_bundle, tmp_path) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    cfg_path = tmp_path / "edge.yaml"
    cfg_path.write_text(yaml.safe_dump(base_config(edge_bundle)))
    proc = subprocess.Popen([sys.executable, "-m", "tiersplit.cli", "edge", "run", "--config",
                             str(cfg_path), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        line = ""
        deadline = time.monotonic() + 120
        while not line.startswith("READY") and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            if sel.select(0.5):
                line = proc.stdout.readline()
        assert line.startswith("READY"), "no READY line"
        fields = dict(p.split("=", 1) for p in line.split()[1:])
        assert fields["model"] == "edge_cnn" and fields["version"] == "1"
        url = fields["http"]
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        try:
            x = np.zeros((1, *IN_SHAPE), np.float32)
            inp = httpclient.InferInput(INPUT, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            assert client.infer("edge_cnn", [inp]).as_numpy(OUTPUT).shape == (1, 10)
        finally:
            client.close()
        st = _edge("status", "--url", url, "--json")
        assert st.returncode == 0, st.stderr
        doc = json.loads(st.stdout)
        assert doc["counts"] == {"device": 1} and doc["bundle"]["version"] == "1"
        table = _edge("status", "--url", url, env={**os.environ, "COLUMNS": "200"})
        assert table.returncode == 0 and "current cut" in table.stdout
        assert "device=1" in table.stdout
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "STOPPED" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_run_config_errors_are_one_line(edge_bundle, tmp_path) -> None:
    cfg = base_config(edge_bundle, policy={"explore_fraction": "lots"})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = _edge("run", "--config", str(path))
    assert r.returncode == 2
    assert "policy.explore_fraction" in " ".join(r.stderr.split())
    assert "Traceback" not in r.stderr
    r = _edge("status", "--url", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert r.returncode == 2 and "cannot read" in r.stderr
