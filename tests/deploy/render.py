"""Render the kustomize tree in ``deploy/k8s`` the way an operator does: key material
made by the real key tools into the (git-ignored) ``secrets/`` folders, then
``kubectl kustomize`` on each overlay. Works on a copy, so the checkout stays clean."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from transport import keys

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu-triton", "mqtt")
AGENT = "edge-1"


@dataclass(frozen=True)
class Rendered:
    """One rendered kustomization: its objects and the key files that went in."""

    name: str
    docs: list[dict[str, Any]]
    secrets_dir: Path

    def find(self, kind: str, name: str | None = None) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind
                and (name is None or d["metadata"]["name"] == name
                     or d["metadata"]["name"].startswith(name + "-"))]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.find(kind, name)
                 if d["metadata"]["name"] == name or _hashed(d["metadata"]["name"], name)]
        assert len(found) == 1, f"{self.name}: expected one {kind} {name}, got {len(found)}"
        return found[0]


def _hashed(full: str, name: str) -> bool:
    """kustomize's generated names: ``<name>-<10-char hash>``."""
    rest = full[len(name) + 1:]
    return full.startswith(name + "-") and len(rest) == 10 and rest.isalnum()


def make_secrets(tree: Path) -> None:
    """The files the secretGenerators read, made as docs/deploy.md tells operators to."""
    base = tree / "base" / "secrets"
    (base / "agents").mkdir(parents=True)
    keys.generate("curve", base, "cloud")
    _, signing_pub = keys.generate("ed25519", base, "signing")
    _, agent_pub = keys.generate("curve", base / "agents", AGENT)
    (base / "agents" / f"{AGENT}.key").unlink()
    (base / "cloud.pub").unlink()
    (base / "signing.key").unlink()
    assert signing_pub.name == "signing.pub" and agent_pub.name == f"{AGENT}.pub"
    keys.write_secret(base / "admin.token", secrets.token_urlsafe(32).encode())
    mqtt = tree / "overlays" / "mqtt" / "secrets"
    (mqtt / "agents-x25519").mkdir(parents=True)
    keys.generate("x25519", mqtt, "cloud-x25519")
    (mqtt / "cloud-x25519.pub").unlink()
    keys.generate("x25519", mqtt / "agents-x25519", AGENT)
    (mqtt / "agents-x25519" / f"{AGENT}.key").unlink()
    keys.write_secret(mqtt / "broker.pass", secrets.token_urlsafe(16).encode())
    # Broker PKI: any PEM does for rendering; the content is checked to arrive unchanged.
    for name in ("broker-ca.pem", "broker.crt", "broker.key", "broker.passwd"):
        keys.write_secret(mqtt / name, f"{name} {secrets.token_hex(8)}\n".encode())


def copy_tree(dest: Path) -> Path:
    tree = dest / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("secrets"))
    make_secrets(tree)
    return tree


def kustomize(tree: Path, path: str) -> list[dict[str, Any]]:
    """``kubectl kustomize <tree>/<path>``, parsed; a failure shows kubectl's message."""
    r = subprocess.run(["kubectl", "kustomize", str(tree / path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"kubectl kustomize {path} failed:\n{r.stderr}"
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def with_component(tree: Path, overlay: str, component: str) -> str:
    """A kustomization (inside ``tree``) of ``overlay`` with ``component`` swapped in for
    the KEDA one: how an operator picks the HPA instead."""
    src = yaml.safe_load((tree / "overlays" / overlay / "kustomization.yaml").read_text())
    src["components"] = [f"../../components/{component}"]
    variant = tree / "overlays" / f"{overlay}-{component}"
    shutil.copytree(tree / "overlays" / overlay, variant)
    (variant / "kustomization.yaml").write_text(yaml.safe_dump(src))
    return f"overlays/{overlay}-{component}"
