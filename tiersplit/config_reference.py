"""The configuration reference in the README, generated from the pydantic config models.

``python -m tiersplit.config_reference --write`` rewrites the block between the
``config-reference`` markers of README.md; a test fails when the block is stale, so the
reference can never drift from what the loaders accept.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"

__all__ = ["render", "update_readme"]


def _doc_attributes(model: type[BaseModel]) -> dict[str, str]:
    """``Attributes:`` entries of a Google-style class docstring (continuations joined)."""
    doc = inspect.getdoc(model) or ""
    out: dict[str, str] = {}
    in_attrs, current = False, None
    for line in doc.splitlines():
        if line.strip() == "Attributes:":
            in_attrs = True
            continue
        if not in_attrs:
            continue
        if line and not line.startswith(" "):
            break
        m = re.match(r"^ {4}(\w+)(?: \([^)]*\))?: (.*)$", line)
        if m:
            current = m.group(1)
            out[current] = m.group(2).strip()
        elif current and line.startswith("        "):
            out[current] += " " + line.strip()
    return out


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(annotation)
                            if a is not type(None)) + " \\| null" * (
            type(None) in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return str(annotation).replace("typing.", "")


def _default(f: FieldInfo) -> str:
    if f.default is PydanticUndefined:
        if f.default_factory is not None:
            try:
                value = f.default_factory()  # type: ignore[call-arg]
            except TypeError:
                return "(computed)"
            if isinstance(value, BaseModel):
                return "(section)"
            return f"`{value!r}`"
        return "**required**"
    if isinstance(f.default, BaseModel):
        return "(section)"
    if hasattr(f.default, "get_secret_value"):
        return "(secret)"
    return f"`{f.default!r}`"


def _rows(model: type[BaseModel], prefix: str, seen: set[type]) -> list[str]:
    docs = _doc_attributes(model)
    rows: list[str] = []
    for name, f in model.model_fields.items():
        key = f"{prefix}{name}"
        desc = (f.description or docs.get(name, "")).replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{key}` | {_type_name(f.annotation)} | {_default(f)} | {desc} |")
        for sub in _models_in(f.annotation):
            if sub in seen:
                continue
            kind = ""
            if "kind" in sub.model_fields and len(_models_in(f.annotation)) > 1:
                kind = f"[kind={sub.model_fields['kind'].default}]"
            is_list = typing.get_origin(f.annotation) is list
            inner = f"{key}{kind}" if kind else (f"{key}[]" if is_list else key)
            rows += _rows(sub, f"{inner}.", seen | {sub})
    return rows


def render() -> str:
    """Markdown tables for the cloud, edge and link-profile configuration files."""
    from cloud_core.config import CloudConfig
    from edge_agent.config import EdgeConfig

    parts = []
    for title, model, path in (("Cloud core", CloudConfig, "configs/cloud.yaml"),
                               ("Edge agent", EdgeConfig, "configs/edge.yaml")):
        parts += [f"#### {title} (`{path}`)", "",
                  "| key | type | default | meaning |", "| --- | --- | --- | --- |",
                  *_rows(model, "", {model}), ""]
    return "\n".join(parts)


def update_readme(readme: Path, check: bool = False) -> bool:
    """Rewrite (or, with ``check``, compare) the generated block. True if up to date."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme} lacks the {START} / {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{render()}\n{END}{tail}"
    if check:
        return new == text
    readme.write_text(new)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", type=Path, default=Path(__file__).resolve().parent.parent
                    / "README.md")
    ap.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    ap.add_argument("--write", action="store_true", help="rewrite the README block")
    args = ap.parse_args(argv)
    if args.write:
        update_readme(args.readme)
        return 0
    if args.check:
        ok = update_readme(args.readme, check=True)
        if not ok:
            print("README config reference is stale: python -m tiersplit.config_reference "
                  "--write", file=sys.stderr)
        return 0 if ok else 1
    print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
