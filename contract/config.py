"""One config toolkit for every tier: a strict base model, one path type, one loader.

* :class:`StrictModel` — frozen, unknown keys refused: a typo is an error, not a default.
* :data:`ConfigPath` — a path-valued setting; relative paths are resolved against the
  folder of the file they were read from (``load_yaml`` passes it as validation context),
  so a config means the same thing from any working directory.
* :func:`load_yaml` / :func:`parse` — read and validate, with one error format: one
  ``key.path: problem`` item per error, and the source named once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, ValidationInfo

from contract.errors import ConfigError

__all__ = ["ConfigError", "ConfigPath", "StrictModel", "format_validation_error", "load_yaml",
           "parse"]

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config section: immutable, and unknown keys are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _resolve(value: Any, info: ValidationInfo) -> Any:
    if not isinstance(value, str | Path):
        return value
    p = Path(value).expanduser()
    base = (info.context or {}).get("base") if info.context is not None else None
    if base is not None and not p.is_absolute():
        p = Path(base) / p
    return p


#: A filesystem path; relative values are resolved against the config file's folder.
ConfigPath = Annotated[Path, BeforeValidator(_resolve)]


def format_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One ``key.path: problem`` item per error, joined by ``; ``."""
    lines = []
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        if prefix:
            loc = f"{prefix}.{loc}" if loc else prefix
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{loc or '<root>'}: {msg}")
    return "; ".join(lines)


def parse(model: type[M], data: Any, *, source: str = "<config>",
          base: Path | str | None = None) -> M:
    """Validate an already-parsed mapping; relative :data:`ConfigPath` values resolve
    against ``base`` (default: the working directory).

    Raises:
        ConfigError: naming ``source`` and each offending key.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a mapping of settings, got "
                          f"{type(data).__name__}")
    try:
        return model.model_validate(data, context={"base": Path(base) if base else None})
    except ValidationError as e:
        raise ConfigError(f"invalid {source}: {format_validation_error(e)}") from None


def load_yaml(path: Path | str, model: type[M], *, what: str = "config") -> M:
    """Read ``path`` as YAML and validate it as ``model``.

    Args:
        path: the file.
        model: the config model to validate against.
        what: how errors name the file (``"edge config"``).

    Raises:
        ConfigError: the file is missing, not YAML, or invalid; the message names the
            offending keys.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"{what} not found: {path}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from e
    return parse(model, data, source=f"{what} {path}", base=path.resolve().parent)
