"""The image recipes in ``deploy/docker``, checked without a container daemon.

The edge image's install steps run for real: the Dockerfile's ``COPY`` lines are replayed
into a scratch directory and its ``RUN pip install`` line runs there in a fresh venv
(same package registries as this machine), then ``edge_agent`` is imported and the
``ENTRYPOINT`` answers ``--help``, and torch must be absent: the edge image stays slim.
The cloud image's install line is resolved with ``pip install --dry-run --report``
(installing torch and Triton's client into a second venv would cost minutes and a
gigabyte for no extra certainty): it must resolve, with torch at exactly 2.13.0.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"


@dataclass
class Recipe:
    """The parts of a Dockerfile this test replays."""

    copies: list[tuple[list[str], str]] = field(default_factory=list)
    workdir: str = "/"
    pip_install: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        op, _, args = line.partition(" ")
        out.append((op.upper(), args.strip()))
    return out


def parse(path: Path) -> Recipe:
    r = Recipe()
    for op, args in _instructions(path.read_text()):
        if op == "WORKDIR" and not r.pip_install:
            r.workdir = args
        elif op == "COPY":
            parts = shlex.split(args)
            assert not any(p.startswith("--") for p in parts), f"unsupported COPY: {args}"
            r.copies.append((parts[:-1], parts[-1]))
        elif op == "RUN" and args.startswith("pip install"):
            assert not r.pip_install, "one pip install line per image"
            r.pip_install = shlex.split(args)
        elif op == "ENTRYPOINT":
            r.entrypoint = json.loads(args)
        elif op == "CMD":
            r.cmd = json.loads(args)
        elif op == "ENV":
            for part in shlex.split(args):
                k, _, v = part.partition("=")
                r.env[k] = v
    assert r.pip_install, f"{path.name} has no `RUN pip install` line"
    return r


def replay_copies(recipe: Recipe, dest: Path) -> Path:
    """Lay out the build context's COPY sources under ``dest`` as Docker does: a
    directory's contents go into the target; files go into it when it ends with ``/``."""
    work = dest / recipe.workdir.lstrip("/")
    work.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for sources, target in recipe.copies:
        tdir = dest / target.lstrip("/") if target.startswith("/") else work / target
        for src in sources:
            s = REPO / src
            assert s.exists(), f"COPY source {src} is not in the repository"
            if s.is_dir():
                shutil.copytree(s, tdir, dirs_exist_ok=True, ignore=ignore)
            elif target.endswith("/"):
                tdir.mkdir(parents=True, exist_ok=True)
                shutil.copy2(s, tdir / s.name)
            else:
                tdir.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(s, tdir)
    return work


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    return path / "bin" / "python"


def _pip_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    return env


def test_recipes_parse_and_pin_torch() -> None:
    edge, cloud = parse(DOCKER / "edge.Dockerfile"), parse(DOCKER / "cloud.Dockerfile")
    assert '".[edge]"' not in " ".join(edge.pip_install)  # shlex removed the quotes
    assert ".[edge]" in edge.pip_install and not any("torch" in a for a in edge.pip_install)
    assert ".[cloud]" in cloud.pip_install and "torch==2.13.0" in cloud.pip_install
    assert edge.entrypoint == ["tiersplit"] and edge.cmd[:2] == ["edge", "run"]
    assert cloud.entrypoint == ["tiersplit"] and cloud.cmd[:2] == ["cloud", "serve"]
    # The config path the image expects is where the Deployment mounts the ConfigMap.
    assert cloud.cmd[cloud.cmd.index("--config") + 1] == "/etc/tiersplit/config/cloud.yaml"


@pytest.mark.slow
def test_edge_image_install_steps_give_a_torch_free_agent(tmp_path: Path) -> None:
    recipe = parse(DOCKER / "edge.Dockerfile")
    work = replay_copies(recipe, tmp_path / "image")
    python = _venv(tmp_path / "venv")
    cmd = [str(python), "-m", *recipe.pip_install]
    r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=_pip_env(),
                       timeout=3600)
    assert r.returncode == 0, f"{shlex.join(recipe.pip_install)} failed:\n{r.stderr[-4000:]}"
    probe = ("import importlib.util, edge_agent, edge_agent.api, edge_agent.grpc_api, "
             "edge_agent.runtime, contract.tracing, opentelemetry.sdk.trace, "
             "transport.zmq, transport.mqtt, onnxruntime\n"
             "assert importlib.util.find_spec('torch') is None, 'torch in the edge image'\n"
             "print(edge_agent.__file__)")
    r = subprocess.run([str(python), "-c", probe], cwd=tmp_path, capture_output=True,
                       text=True, env=_pip_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    # Imported from the installed package, not from the scratch source tree.
    assert str(tmp_path / "venv") in r.stdout
    exe = tmp_path / "venv" / "bin" / recipe.entrypoint[0]
    r = subprocess.run([str(exe), *recipe.cmd[:2], "--help"], capture_output=True, text=True,
                       env=_pip_env(), timeout=300)
    assert r.returncode == 0 and "--config" in r.stdout, r.stdout + r.stderr


@pytest.mark.slow
def test_cloud_image_requirements_resolve_with_torch_2_13(tmp_path: Path) -> None:
    recipe = parse(DOCKER / "cloud.Dockerfile")
    work = replay_copies(recipe, tmp_path / "image")
    python = _venv(tmp_path / "venv")
    report = tmp_path / "report.json"
    args = [*recipe.pip_install[:2], "--dry-run", "--quiet", "--report", str(report),
            *recipe.pip_install[2:]]
    r = subprocess.run([str(python), "-m", *args], cwd=work, capture_output=True, text=True,
                       env=_pip_env(), timeout=3600)
    assert r.returncode == 0, f"{shlex.join(args)} did not resolve:\n{r.stderr[-4000:]}"
    resolved = {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"]
                for i in json.loads(report.read_text())["install"]}
    assert resolved["torch"].split("+")[0] == "2.13.0", resolved["torch"]
    for need in ("tiersplit", "onnxruntime", "tritonclient", "onnx", "pyzmq",
                 "prometheus-client", "uvicorn"):
        assert need in resolved, f"{need} missing from the cloud image"
