"""Read a spec file and apply command-line overrides (``key=value``, ``~key``), as torchtune does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from framework.errors import InputError, SpecError


def load_spec(
    path: str | Path, overrides: Sequence[str] = (), pending: list[str] | None = None
) -> DictConfig:
    """The spec at ``path`` with ``overrides`` applied in order; interpolations stay unresolved.

    Overrides that cannot be applied raise one ``SpecError``, or with ``pending`` are added
    to it, so that validation can report them with every other problem of the spec.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"spec file not found: {source}") from None
    except UnicodeDecodeError as exc:
        raise InputError(
            f"cannot read spec file {source}: not UTF-8 text (byte {exc.start})"
        ) from None
    except OSError as exc:
        raise InputError(f"cannot read spec file {source}: {exc.strerror}") from None
    try:
        # OmegaConf's loader is a yaml.SafeLoader: no tags that build Python objects.
        cfg = OmegaConf.create(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([f"{where}invalid YAML: {problem}"], source) from None
    except OmegaConfBaseException as exc:
        raise SpecError([f"invalid spec: {exc}"], source) from None
    if cfg is None or not isinstance(cfg, DictConfig):
        raise SpecError(
            ["the spec must be a mapping of sections (reader, models, writer, ...)"], source
        )
    problems: list[str] = []
    for item in overrides:
        problem = apply_override(cfg, item)
        if problem:
            problems.append(problem)
    if pending is not None:
        pending.extend(problems)
    elif problems:
        raise SpecError(problems, source)
    return cfg


def apply_override(cfg: DictConfig, item: str) -> str | None:
    """Apply one ``key=value`` or ``~key``; the problem as a line, or None."""
    if item.startswith("~"):
        return _delete(cfg, item[1:])
    key, sep, raw = item.partition("=")
    if not sep or not key:
        return f"override {item!r}: expected key=value or ~key"
    try:
        value = _parse_value(raw)
        # A whole node in flow form (`models.0={...}`) replaces the old one, as README says:
        # merged, the old node's keys stayed (a torchvision `weights:` under a timm model).
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    except yaml.YAMLError as exc:
        hint = (
            ' - quote an interpolation inside [...] or {...}: "${...}"'
            if "${" in raw and raw.lstrip()[:1] in "[{"
            else ""
        )
        why = getattr(exc, "problem", None) or exc
        return f"override {item!r}: invalid YAML value: {why}{hint}"
    except (OmegaConfBaseException, IndexError, ValueError, TypeError) as exc:
        return f"override {item!r}: {_first_line(exc)}"
    return None


def _parse_value(raw: str) -> Any:
    # OmegaConf's own dotlist grammar, so `x=[1,2]`, `x=null` and `x=${y}` mean what they do in YAML.
    return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]))["v"]


def _delete(cfg: DictConfig, key: str) -> str | None:
    parent_key, _, last = key.rpartition(".")
    try:
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if isinstance(parent, ListConfig):
            del parent[int(last)]
        elif isinstance(parent, DictConfig) and last in parent:
            del parent[last]
        else:
            return f"override '~{key}': no such key in the spec"
    except (OmegaConfBaseException, ValueError, IndexError, TypeError):
        return f"override '~{key}': no such key in the spec"
    return None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
