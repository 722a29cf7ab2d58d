"""Read a spec file and apply command-line overrides (``key=value``, ``~key``), as torchtune does."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from framework.errors import InputError, SpecError
from framework.redact import MASK, SECRET_KEY, STORAGE_KEY
from framework.spec.params import kind_of, tree_nodes
from framework.spec.schema import STAGE_LISTS

# The one OmegaConf parses with, so that a syntax error reads the same from either.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
EXAMPLE = "models.0.resources.batch_size"
SHAPE = "the spec must be a mapping of sections (reader, models, writer, ...)"


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
        raise InputError(f"spec file not found: {source}{_close_file(Path(path))}") from None
    except UnicodeDecodeError as exc:
        raise InputError(
            f"cannot read spec file {source}: not UTF-8 text (byte {exc.start})"
        ) from None
    except OSError as exc:
        raise InputError(f"cannot read spec file {source}: {exc.strerror}") from None
    cfg = _parse(text, source)
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


def _close_file(path: Path) -> str:
    """`` - did you mean 'x.yaml'?`` for a file beside ``path`` named much like it."""
    try:
        names = [p.name for p in path.parent.iterdir() if p.is_file()]
    except OSError:  # no such folder either, or one we may not list
        return ""
    # Names, not whole paths: the folder they share would make any two look alike.
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    return f" - did you mean {str(path.parent / close[0])!r}?" if close else ""


def _parse(text: str, source: str) -> DictConfig:
    try:
        shape = _shape_problem(text)
        if shape:
            raise SpecError([shape], source)
        # OmegaConf's loader is a yaml.SafeLoader: no tags that build Python objects.
        cfg = OmegaConf.create(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line_column = (mark.line, mark.column) if mark else _unacceptable_at(text, exc)
        where = "line {}, column {}: ".format(*(n + 1 for n in line_column)) if line_column else ""
        raise SpecError([f"{where}invalid YAML: {_yaml_problem(exc)}"], source) from None
    except OmegaConfBaseException as exc:
        data = yaml.load(text, Loader=SAFE_LOADER)
        found = [*_null_keys(data), *_bad_interpolations(data)]
        raise SpecError(found or [f"invalid spec: {_first_line(exc)}"], source) from None
    assert isinstance(cfg, DictConfig)  # _shape_problem let nothing else through
    return cfg


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # A reader error (a control character) has no problem, and a second line that gives
    # an offset into the text: libyaml's in bytes, PyYAML's in characters.
    return getattr(exc, "problem", None) or str(exc).splitlines()[0]


def _unacceptable_at(text: str, exc: yaml.YAMLError) -> tuple[int, int] | None:
    """(line, column) from 0 of the character a reader error refused: its first use, for
    such a character is refused wherever it stands."""
    code = getattr(exc, "character", None)
    if not isinstance(exc, yaml.reader.ReaderError) or code is None:
        return None
    index = text.find(chr(code) if isinstance(code, int) else code)
    if index < 0:
        return None
    before = text[:index]
    return before.count("\n"), index - (before.rfind("\n") + 1)


def _shape_problem(text: str) -> str | None:
    """Why the document is no mapping; None for a mapping or nothing (an empty spec).
    OmegaConf took a lone string for a section of that name, and failed an assertion on
    a number or a boolean."""
    root = yaml.compose(text, Loader=SAFE_LOADER)
    if root is None or isinstance(root, yaml.MappingNode):
        return None
    data = yaml.load(text, Loader=SAFE_LOADER)
    if data is None:  # `null` or `~`: as empty as an empty file
        return None
    shown = "" if isinstance(data, list) else f" {data!r}"
    return f"{SHAPE}, got {kind_of(data)}{shown}"


def _null_keys(data: Any) -> Iterator[str]:
    """Each mapping with a null key, which OmegaConf refuses without saying where."""
    for path, node in tree_nodes(data):
        if isinstance(node, dict) and None in node:
            yield f"{path or 'the spec'}: a key is null (null: or ~:) - keys are names"


def _bad_interpolations(data: Any) -> Iterator[str]:
    """Each string OmegaConf cannot parse as an interpolation, by its key: OmegaConf stops
    at the first, over several lines."""
    for path, node in tree_nodes(data):
        if isinstance(node, str) and "${" in node:
            try:
                OmegaConf.create({"value": node})
            except OmegaConfBaseException as exc:
                yield f"{path}: invalid interpolation {node!r}: {_first_line(exc)}"


def apply_override(cfg: DictConfig, item: str) -> str | None:
    """Apply one ``key=value`` or ``~key``; the problem as a line, or None."""
    key, sep, raw = item.partition("=")
    if item.startswith("~"):
        key, sep = item[1:], "~"
    if not sep or not key:
        return f"override {item!r}: expected key=value or ~key"
    shown = _shown(item, key) if sep == "=" else item
    if "" in key.split("."):  # OmegaConf made a key '' of it: silent under vars
        return f"override {shown!r}: a key part is empty - keys are dotted names, e.g. {EXAMPLE}"
    if sep == "~":
        return _delete(cfg, key)
    section, _, rest = key.partition(".")
    # OmegaConf would make a mapping {"0": ...} of a list the spec does not have.
    index = rest.split(".")[0]
    if section in STAGE_LISTS and index.isdigit():
        stages = OmegaConf.select(cfg, section, throw_on_resolution_failure=False)
        if stages is None:
            return (
                f"override {shown!r}: the spec has no {section} to index - set the whole "
                f"list: '{section}=[{{type: ...}}]'"
            )
        if isinstance(stages, ListConfig) and int(index) >= len(stages):
            # OmegaConf said only "list index out of range"; a stage is added with the list.
            n = len(stages)
            held = {0: "is empty", 1: f"has 1 stage ({section}.0)"}.get(
                n, f"has {n} stages ({section}.0 to {section}.{n - 1})"
            )
            return (
                f"override {shown!r}: {section} {held} - to add one, set the whole list: "
                f"'{section}=[{{type: ...}}, ...]'"
            )
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
        return f"override {shown!r}: invalid YAML value: {_yaml_problem(exc)}{hint}"
    except (OmegaConfBaseException, IndexError, ValueError, TypeError) as exc:
        return f"override {shown!r}: {_first_line(exc)}"
    return None


def _shown(item: str, key: str) -> str:
    """``key=value`` as a problem quotes it: the value masked under a secret-looking key
    (``storage.secret_access_key=...``), as ``--print-spec`` masks it."""
    parts = key.split(".")
    secret = any(SECRET_KEY.search(p) or p == STORAGE_KEY for p in parts)
    return f"{key}={MASK}" if secret else item


def _parse_value(raw: str) -> Any:
    # OmegaConf's own dotlist grammar, so `x=[1,2]`, `x=null` and `x=${y}` mean what they do in YAML.
    return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]))["v"]


def _delete(cfg: DictConfig, key: str) -> str | None:
    parent_key, _, last = key.rpartition(".")
    if key.endswith("]"):  # models[0], the form problems name list items in
        parent_key, _, last = key[:-1].rpartition("[")
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
