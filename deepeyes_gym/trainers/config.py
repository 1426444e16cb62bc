"""Trainer configs: dataclasses (a docstring under every field), loaded from YAML, overridden by
``--set key=value`` (dotted keys reach nested dataclasses; values are parsed as YAML)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

__all__ = ["load_config", "config_to_dict", "field_docs", "apply_overrides"]

C = TypeVar("C")


def _yaml():
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - pyyaml comes with the train extra
        raise ImportError("reading a config needs PyYAML (pip install pyyaml, or the 'train' extra)") from exc
    return yaml


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (CleanRL style), by field name."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for prev, node in zip(body, body[1:]):
        if (isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name) and isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


def _build(cls: type[C], data: Mapping[str, Any], where: str) -> C:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where or 'config'}: unknown key(s) {unknown}; {cls.__name__} has {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        sub = hints.get(name)
        if dataclasses.is_dataclass(sub) and isinstance(value, Mapping):
            value = _build(sub, value, f"{where}{name}.")
        kwargs[name] = _coerce(value, sub, f"{where}{name}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """YAML 1.1 reads ``1e-6`` (no dot) as a string: numbers given as text become numbers where
    the field is numeric; anything else that does not fit is an error naming the field."""
    if not isinstance(value, str) or hint is None:
        return value
    allowed = set(typing.get_args(hint)) if typing.get_origin(hint) in (typing.Union, types.UnionType) else {hint}
    if str in allowed or Any in allowed:
        return value
    for kind in (int, float):
        if kind in allowed:
            try:
                return kind(value)
            except ValueError:
                continue
    if allowed & {int, float, bool}:
        raise ValueError(f"{where}: expected a number, got {value!r}")
    return value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``["rl.lr=1e-6", "seed=3"]`` into a nested dict (values parsed as YAML)."""
    yaml = _yaml()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(cls: type[C], path: str | Path | None = None, overrides: Sequence[str] = ()) -> C:
    """Defaults of ``cls``, then the YAML file, then the overrides. Unknown keys are errors."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = _yaml().safe_load(Path(path).read_text())
        data = dict(loaded or {})
    return _build(cls, apply_overrides(data, overrides), "")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
