"""Experiment configs: YAML files and presets -> validated pydantic models.

Data flow (DESIGN.md): YAML (preset or user file) -> dict -> dotted ``key=value`` overrides ->
the pydantic model of the experiment's ``kind`` (a registered recipe) -> the recipe. Every problem
becomes one `ConfigError` line naming the file and the field.

Presets are YAML files shipped in ``madapt/configs`` and addressed by their relative path without
the suffix (``mtil/zscl_order1``). A config may start from another with ``base: <preset>``; keys
given in the file win over the base (deep merge).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from madapt.errors import ConfigError, UnknownNameError, closest
from madapt.registry import get, register


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


@dataclass(frozen=True)
class Recipe:
    """An experiment kind (what ``kind:`` selects), registered with one `register_recipe` line.

    ``prepare(cfg)`` builds everything that can fail on user input (data, weights) before the run
    folder is touched; ``run(cfg, prepared, run_folder, console)`` does the work and returns the
    results dict; ``report(results, run_folder, console)`` prints the table and writes report.md.
    ``multiprocess``: ``run`` shares its work among the processes of ``accelerate launch``.
    """

    name: str
    config: type[Strict]
    prepare: Callable[[Any], Any]
    run: Callable[..., dict[str, Any]]
    report: Callable[..., None]
    multiprocess: bool = False


def register_recipe(recipe: Recipe) -> Recipe:
    return register("recipe", recipe.name)(recipe)


# ---------------------------------------------------------------------------------------------
# Presets


def presets_dir() -> Path:
    return Path(str(resources.files("madapt") / "configs"))


def preset_names() -> list[str]:
    root = presets_dir()
    return sorted(
        str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml") if not p.name.startswith("_")
    )


def resolve(name_or_path: str) -> Path:
    """A user path if it exists, else the preset of that name; a clear error otherwise."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = presets_dir() / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    if path.suffix in {".yaml", ".yml"}:
        if path.exists():
            raise ConfigError(str(path), "is not a file", "a YAML config file")
        raise ConfigError(str(path), "no such config file", "an existing YAML file or a preset name")
    raise UnknownNameError(
        f"preset '{name_or_path}'",
        "is neither a file nor a known preset" + closest(name_or_path, preset_names()),
        "a YAML path or a name from `madapt list presets`",
    )


# ---------------------------------------------------------------------------------------------
# YAML and overrides


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse one YAML mapping; malformed YAML is reported with its line number."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(str(path), "is not UTF-8 text", "a YAML file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f"line {mark.line + 1}" if mark is not None else "unknown line"
        problem = getattr(err, "problem", None) or "malformed YAML"
        raise ConfigError(
            f"{path}:{line.split()[-1]}", f"malformed YAML at {line} ({problem})", "valid YAML"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), f"top level is a {type(data).__name__}", "a mapping of keys to values")
    return data


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_raw(name_or_path: str, _seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], Path]:
    """The raw dict of a config with its ``base:`` chain resolved."""
    path = resolve(name_or_path)
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base", f"found {base!r}", "a preset name or YAML path")
        if base in _seen:
            raise ConfigError(f"{path}: base", f"'{base}' includes itself", "a chain without cycles")
        parent, _ = load_raw(base, (*_seen, base))
        data = deep_merge(parent, data)
    return data, path


def _parse_value(text: str) -> Any:
    """YAML scalars and lists, plus ``1e-5`` (YAML 1.1 reads exponents without a dot as strings)."""
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, list):
        return [_parse_value(v) if isinstance(v, str) else v for v in value]
    return value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML scalars/lists (``lr=1e-5``)."""
    out = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}'", "has no '=' or no key", "key=value, e.g. train.lr=1e-5")
        key, text = item.split("=", 1)
        value = _parse_value(text)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(
                    f"override '{item}'", f"'{part}' is a value, not a section", "a section key"
                )
            node = child
        node[parts[-1]] = value
    return out


# ---------------------------------------------------------------------------------------------
# Validation


def _model_at(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The nested pydantic model that owns the field at ``loc`` (for name suggestions)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = field.annotation
        # unwrap Optional[X], list[X], dict[str, X]
        while get_origin(current) is not None:
            args = [a for a in get_args(current) if isinstance(a, type) and issubclass(a, BaseModel)]
            current = args[0] if args else None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _one_line(err: ValidationError, model: type[BaseModel], source: str) -> ConfigError:
    first = err.errors()[0]
    loc = [p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    field = ".".join(str(p) for p in loc) or "(top level)"
    where = f"{source}: {field}"
    if first["type"] == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        valid = sorted(owner.model_fields) if owner else []
        return ConfigError(
            where,
            "unknown key" + closest(str(loc[-1]), valid),
            "one of: " + ", ".join(valid) if valid else "no extra keys",
        )
    if first["type"] == "missing":
        return ConfigError(where, "is missing", "a value for this required key")
    found = first.get("input")
    found_text = json.dumps(found, default=str) if not isinstance(found, dict) else "a mapping"
    if len(found_text) > 60:
        found_text = found_text[:57] + "..."
    return ConfigError(where, f"found {found_text}", first["msg"].replace("\n", " "))


def validate(data: dict[str, Any], source: str) -> Strict:
    """The validated config model for ``data['kind']``."""
    kind = data.get("kind")
    if kind is None:
        raise ConfigError(f"{source}: kind", "is missing", "an experiment kind, e.g. 'continual'")
    recipe: Recipe = get("recipe", str(kind))
    try:
        return recipe.config.model_validate(data)
    except ValidationError as err:
        raise _one_line(err, recipe.config, source) from None


def load_config(name_or_path: str, overrides: Sequence[str] = ()) -> Strict:
    """Resolve, read, merge bases, apply overrides and validate one experiment config."""
    data, path = load_raw(name_or_path)
    data = apply_overrides(data, overrides)
    return validate(
        data, str(path) if not str(path).startswith(str(presets_dir())) else f"preset {name_or_path}"
    )


def to_yaml(cfg: BaseModel) -> str:
    """The fully resolved config as YAML (saved into every run folder)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
