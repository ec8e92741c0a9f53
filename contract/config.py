"""One config toolkit for every tier: a strict base model, one path type, one loader.

* :class:`StrictModel` — frozen, unknown keys refused: a typo is an error, not a default.
* :data:`ConfigPath` — a path-valued setting; relative paths are resolved against the
  folder of the file they were read from (``load_yaml`` passes it as validation context),
  so a config means the same thing from any working directory.
* :func:`load_yaml` / :func:`parse` — read and validate, with one error format: one
  ``key.path: problem`` item per error, and the source named once.
* Environment overrides (containers): ``load_yaml`` applies ``TIERSPLIT_<SECTION>__<KEY>``
  variables on top of the file before validation; see :func:`env_overrides`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, ValidationInfo

from contract.errors import ConfigError

__all__ = ["ENV_PREFIX", "ConfigError", "ConfigPath", "StrictModel", "apply_env_overrides",
           "env_overrides", "format_validation_error", "is_loopback", "load_yaml", "parse"]

#: Environment variables starting with this override config settings.
ENV_PREFIX = "TIERSPLIT_"

M = TypeVar("M", bound=BaseModel)


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine (127.0.0.0/8,
    ``::1``, ``localhost``); the rule for which listeners may run without credentials."""
    return host in ("::1", "localhost") or host.startswith("127.")


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
    return str(p)  # a string, which the Path validator takes in python and JSON mode alike


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


def env_overrides(model: type[BaseModel], environ: Mapping[str, str] | None = None
                  ) -> dict[str, tuple[list[str], Any]]:
    """The overrides the environment holds for ``model``: variable -> (key path, value).

    A variable ``TIERSPLIT_<SECTION>__<KEY>=value`` sets ``section.key``; a double
    underscore separates levels (``TIERSPLIT_HTTP__PORT``; with a list index,
    ``TIERSPLIT_TRANSPORTS__0__INSECURE``), a single one is part of a name
    (``TIERSPLIT_GRACE_S`` sets the top-level ``grace_s``). Names are matched in lower
    case. The value is parsed as YAML (``32`` is a number, ``true`` a boolean,
    ``[a, b]`` a list, anything else a string). Only variables whose first level is a
    top-level field of ``model`` count, so other ``TIERSPLIT_*`` variables (and another
    tier's overrides in the same environment) are left alone; a wrong key below that
    level is an error like a wrong key in the file.
    """
    env = os.environ if environ is None else environ
    out: dict[str, tuple[list[str], Any]] = {}
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or len(var) == len(ENV_PREFIX):
            continue
        keys = var[len(ENV_PREFIX):].lower().split("__")
        if keys[0] not in model.model_fields or not all(keys):
            continue
        try:
            value = yaml.safe_load(env[var])
        except yaml.YAMLError as e:
            raise ConfigError(f"{var}: not a YAML value: {str(e).splitlines()[0]}") from None
        out[var] = (keys, value)
    return out


def apply_env_overrides(data: dict[str, Any], overrides: dict[str, tuple[list[str], Any]]
                        ) -> dict[str, Any]:
    """A copy of ``data`` with each override set at its key path (sections created as
    needed; a number indexes an existing list).

    Raises:
        ConfigError: a path runs through a value that is not a section or list.
    """
    out = copy.deepcopy(data)
    for var, (keys, value) in overrides.items():
        node: Any = out
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            where = ".".join(keys[:depth + 1])
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise ConfigError(f"{var}: {where} is not an index of the "
                                      f"{len(node)}-item list at {'.'.join(keys[:depth])}")
                idx = int(key)
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                if last:
                    node[key] = value
                else:
                    node = node.setdefault(key, {})
            else:
                raise ConfigError(f"{var}: {'.'.join(keys[:depth])} is a value, not a "
                                  "section")
    return out


def load_yaml(path: Path | str, model: type[M], *, what: str = "config",
              environ: Mapping[str, str] | None = None) -> M:
    """Read ``path`` as YAML, apply environment overrides, and validate it as ``model``.

    Environment overrides (for containers, where editing the file is awkward):
    ``TIERSPLIT_<SECTION>__<KEY>=value`` sets ``section.key`` before validation, so an
    override is checked like the file itself; see :func:`env_overrides` for the rules.
    Errors caused by a bad override name the variables that were applied.

    Args:
        path: the file.
        model: the config model to validate against.
        what: how errors name the file (``"edge config"``).
        environ: where overrides come from (default: ``os.environ``; ``{}`` for none).

    Raises:
        ConfigError: the file is missing, not YAML, or invalid; the message names the
            offending keys.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"{what} not found: {path}") from e
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from e
    source = f"{what} {path}"
    overrides = env_overrides(model, environ)
    if overrides and isinstance(data, dict):
        data = apply_env_overrides(data, overrides)
        source += f" (with environment overrides {', '.join(overrides)})"
    return parse(model, data, source=source, base=path.resolve().parent)
