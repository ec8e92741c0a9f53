"""The house's floors: every import points down, the device path imports no torch, and
nothing outside a package reaches into its private (``_name``) modules.

Two kinds of check. A static one reads every import statement (module level and inside
functions alike) with :mod:`ast`, so a lazy import cannot hide a wrong arrow; the guard
itself is tested on a deliberately broken tree. A dynamic one imports each torch-free
module in a fresh interpreter, so other tests' imports cannot hide a leak.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: What each top-level package may import of ours. Floors, bottom to top: ``contract``
#: (the bundle format, dtypes, deadlines, config toolkit), ``transport`` (bytes and links),
#: ``placement`` (cost model), then the offline ``partitioner`` and the two services, and
#: ``tiersplit`` (CLI, demo, devtools) on top. ``tests`` and ``bench`` are not product.
ALLOWED: dict[str, set[str]] = {
    "contract": set(),
    "transport": {"contract"},
    "placement": {"contract"},
    "partitioner": {"contract", "transport", "placement"},
    "cloud_core": {"contract", "transport", "placement"},
    "edge_agent": {"contract", "transport", "placement"},
    "tiersplit": {"contract", "transport", "placement", "partitioner", "cloud_core",
                  "edge_agent"},
    "bench": {"contract", "transport", "placement", "partitioner", "cloud_core",
              "edge_agent", "tiersplit"},
    "tests": {"contract", "transport", "placement", "partitioner", "cloud_core",
              "edge_agent", "tiersplit", "tests"},
}
OURS = set(ALLOWED)

#: Modules that must never pull torch in, even lazily at import time.
TORCH_FREE = [
    "contract",
    "contract.bundle",
    "transport",
    "transport.wire",
    "transport.zmq",
    "transport.mqtt",
    "transport.keys",
    "placement",
    "edge_agent",
    "edge_agent.runtime",
    "edge_agent.policy",
    "edge_agent.client",
    "edge_agent.api",
]


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: imports {self.imported} ({self.rule})"


def _imports(tree: ast.AST, module: str) -> Iterable[tuple[int, str]]:
    """(line, absolute dotted name) of every import, relative ones resolved."""
    pkg = module.rsplit(".", 1)[0] if "." in module else module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                up = parts[: len(parts) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}" if base else alias.name


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def check_tree(root: Path, allowed: dict[str, set[str]] = ALLOWED) -> list[Violation]:
    """Every rule broken under ``root``: wrong-way arrows, private modules reached from
    outside their package, product code importing ``tests``."""
    found: list[Violation] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        top = rel.parts[0]
        if top not in allowed or any(p.startswith(".") for p in rel.parts):
            continue
        module = _module_name(path, root)
        try:
            tree = ast.parse(path.read_text(), str(path))
        except SyntaxError as e:  # pragma: no cover - ruff catches these first
            found.append(Violation(str(rel), e.lineno or 0, "?", "syntax error"))
            continue
        for line, name in _imports(tree, module):
            target = name.split(".")[0]
            if target not in allowed:
                continue
            if target != top and target not in allowed[top]:
                rule = ("product code imports tests" if target == "tests"
                        else f"{top} may not import {target}")
                found.append(Violation(str(rel), line, name, rule))
            # A private module (``pkg/_x.py``) is for its own package only.
            parts = name.split(".")
            for i, part in enumerate(parts[1:], start=1):
                if part.startswith("_") and not part.startswith("__"):
                    owner = ".".join(parts[:i])
                    if (root / Path(*parts[: i + 1])).with_suffix(".py").exists() and \
                            not module.startswith(owner + ".") and module != owner:
                        found.append(Violation(str(rel), line, name,
                                               f"private module of {owner}"))
                    break
    return found


def test_the_house_keeps_its_floors() -> None:
    bad = check_tree(REPO)
    assert not bad, "layering broken:\n" + "\n".join(map(str, bad))


def test_guard_catches_each_kind_of_violation(tmp_path: Path) -> None:
    def write(rel: str, text: str) -> None:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    for pkg in ("contract", "transport", "edge_agent", "cloud_core", "partitioner", "tests"):
        write(f"{pkg}/__init__.py", "")
    write("transport/_common.py", "X = 1\n")
    write("transport/zmq.py", "from transport._common import X\n")  # fine: own package
    write("contract/ok.py", "import yaml\n")  # fine: not ours
    write("edge_agent/runtime.py", "def f():\n    from partitioner import zoo\n")  # lazy
    write("cloud_core/server.py", "import edge_agent.policy\n")
    write("transport/wire.py", "from contract import dtypes\nfrom cloud_core import x\n")
    write("cloud_core/util.py", "from tests.support import keys\n")
    write("edge_agent/link.py", "from transport._common import X\n")
    write("tests/test_x.py", "from transport._common import X\n")
    write("contract/rel.py", "from ..partitioner import zoo\n")
    bad = {(v.file, v.rule) for v in check_tree(tmp_path)}
    assert bad == {
        ("edge_agent/runtime.py", "edge_agent may not import partitioner"),
        ("cloud_core/server.py", "cloud_core may not import edge_agent"),
        ("transport/wire.py", "transport may not import cloud_core"),
        ("cloud_core/util.py", "product code imports tests"),
        ("edge_agent/link.py", "private module of transport"),
        ("tests/test_x.py", "private module of transport"),
        ("contract/rel.py", "contract may not import partitioner"),
    }


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_does_not_import_torch(module: str) -> None:
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print(','.join(bad[:5]))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{module} imported torch: {r.stdout} {r.stderr[-2000:]}"


def test_runtime_floors_load_nothing_above_them() -> None:
    """What actually gets loaded, lazily or not, when the device path starts."""
    code = (
        "import sys, contract.bundle, transport, transport.wire, transport.zmq, "
        "transport.mqtt, placement, edge_agent, edge_agent.runtime\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('partitioner', 'cloud_core', 'tiersplit', 'tests', 'onnx', 'torch'))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"device path loads upper floors: {r.stdout} {r.stderr[-2000:]}"
