"""Frozen, validated experiment configs, read from YAML with line-accurate errors.

Precedence: command line > YAML file > dataclass defaults. A YAML key that is not a field, or a value of
the wrong type, is an error naming the file and line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from econlm.errors import UserError, did_you_mean

T = TypeVar("T")


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, annotation: Any, where: str, name: str) -> Any:
    """Check/convert a YAML value to the field's type; errors say where."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], where, name)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise UserError(f"{where}: '{name}' must be a list")
        return tuple(_coerce(v, args[0], where, name) for v in items)
    if annotation is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: '{name}' must be true or false, not {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: '{name}' must be a whole number, not {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise UserError(f"{where}: '{name}' must be a number, not {value!r}")
        try:
            return float(value)  # YAML reads 1e-4 (no dot) as a string
        except ValueError:
            raise UserError(f"{where}: '{name}' must be a number, not {value!r}") from None
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise UserError(f"{where}: '{name}' must be a string")
        return str(value)
    return value


def read_yaml_mapping(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Read a YAML mapping; returns (values, line number of each key)."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise UserError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a YAML file (not UTF-8 text); pass the .yaml file with the settings") from None
    except OSError as error:
        raise UserError(f"config file {path} cannot be read ({error.strerror})") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(error, "problem", None) or error).split())  # the CLI prints one line
        raise UserError(f"{path}{line}: not valid YAML ({problem})") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise UserError(f"{path}:1: the config must be a mapping of keys to values")
    lines = {key_node.value: key_node.start_mark.line + 1 for key_node, _ in node.value}
    return data, lines


def key_lines(path: str | Path) -> dict[str, int]:
    """Line of every mapping key in a YAML file, by dotted path (``"base.lam"``, ``"grid.cost"``)."""
    import yaml

    lines: dict[str, int] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                name = f"{prefix}{key_node.value}"
                lines[name] = key_node.start_mark.line + 1
                walk(value_node, name + ".")
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines.setdefault(f"{prefix}{i}", item.start_mark.line + 1)
                walk(item, f"{prefix}{i}.")

    walk(yaml.compose(Path(path).read_text(encoding="utf-8")), "")
    return lines


def check_value(cls, name: str, value: Any, where: str) -> Any:
    """Check/convert one value of field ``name`` of dataclass ``cls`` as a YAML value is; errors start with ``where``."""
    return _coerce(value, _field_types(cls)[name], where, name)


def check_mapping(cls, data: dict[str, Any], lines: dict[str, int], path: str | Path, skip=()) -> dict[str, Any]:
    """Validate keys and value types of ``data`` against dataclass ``cls``; returns coerced values."""
    types_ = _field_types(cls)
    out = {}
    for key, value in data.items():
        where = f"{path}:{lines.get(key, 1)}"
        if key in skip:
            continue
        if key not in types_:
            valid = sorted(types_)
            raise UserError(f"{where}: unknown key '{key}'; valid keys: {', '.join(valid)}.{did_you_mean(key, valid)}")
        out[key] = _coerce(value, types_[key], where, key)
    return out


def build(cls: type[T], yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Defaults, then the YAML file, then ``overrides`` (entries that are None are not given)."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        data, lines = read_yaml_mapping(yaml_path)
        if not data:
            # An empty file is almost always a mistake (wrong file, truncated copy); running the defaults
            # instead would cost a full training run before anyone noticed.
            raise UserError(f"{yaml_path}: the config file sets nothing; add settings (key: value) or drop --config")
        values.update(check_mapping(cls, data, lines, yaml_path))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return cls(**values)


def to_dict(config) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}


def check_max_length(max_length: int) -> None:
    """The one rule for ``--max-length`` (training and probing alike).

    Two tokens is the least a language model can be trained or scored on (one of context, one to predict);
    probe and train share the rule so a setting one accepts the other does not refuse.
    """
    if not max_length >= 2:
        raise UserError(f"--max-length must be at least 2, not {max_length}")


def model_context(model_config) -> int | None:
    """The longest sequence a model's position encoding is meant for (``max_position_embeddings``; GPT-2's
    ``n_positions`` answers to that name too), or None when its config does not say."""
    context = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    return int(context) if context else None


def check_context(max_length: int, model_config) -> None:
    """The one rule for ``--max-length`` against a model's context (language modelling in train, probe and
    compact): a block or window longer than the model's positions would index past its position embeddings
    (GPT-2: an error deep inside the model) or run RoPE at positions it never saw (a silently worse score).
    """
    context = model_context(model_config)
    if context is not None and max_length > context:
        raise UserError(
            f"--max-length {max_length} is above the model's context of {context} tokens; "
            f"use --max-length {context} or less"
        )
