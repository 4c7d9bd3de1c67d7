"""Load YAML into plain dicts/lists that remember the source line of every key and item."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class LineDict(dict):
    """A dict that knows its own line and the line of each key (1-based)."""

    line: int = 0
    key_lines: dict[Any, int]


class LineList(list):
    """A list that knows its own line and the line of each item (1-based)."""

    line: int = 0
    item_lines: list[int]


def _build(node: yaml.Node, constructor: yaml.constructor.SafeConstructor) -> Any:
    if isinstance(node, yaml.MappingNode):
        out = LineDict()
        out.line = node.start_mark.line + 1
        out.key_lines = {}
        for key_node, value_node in node.value:
            key = _build(key_node, constructor)
            if key in out:
                raise yaml.YAMLError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
            out[key] = _build(value_node, constructor)
            out.key_lines[key] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        seq = LineList(_build(item, constructor) for item in node.value)
        seq.line = node.start_mark.line + 1
        seq.item_lines = [item.start_mark.line + 1 for item in node.value]
        return seq
    return constructor.construct_object(node, deep=True)


def read_data_file(path: Path, error: type[ValueError]) -> tuple[bytes, str]:
    """(bytes, text) of a data file; unreadable or non-UTF-8 files become `error("path:0: ...")`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}:0: cannot read file ({exc.strerror or exc})") from None
    try:
        return raw, raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}:0: not UTF-8 text (byte {exc.start})") from None


def load_marked(path: Path, error: type[ValueError], text: str | None = None) -> Any:
    """Parse a YAML file (or `text` read from it); syntax errors become `error("path:line: ...")`."""
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise error(f"{path}:0: cannot read file ({exc.strerror or exc})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise error(f"{path}:{line}: invalid YAML: {exc.problem or exc}") from None
    if node is None:
        raise error(f"{path}:1: file is empty")
    try:
        return _build(node, yaml.SafeLoader(""))
    except yaml.YAMLError as exc:
        raise error(f"{path}:{str(exc).removeprefix('line ')}") from None


def reject_unknown_keys(
    mapping: LineDict, allowed: set[str], path: Path, error: type[ValueError], what: str, where: str = ""
) -> None:
    """Raise `error("path:line: unknown <what> 'key'<where>")` for the first key not in `allowed`."""
    extra = set(mapping) - allowed
    if extra:
        key = sorted(extra, key=str)[0]
        raise error(f"{path}:{mapping.key_lines[key]}: unknown {what} {key!r}{where}")
