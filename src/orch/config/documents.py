"""Read YAML, JSON and CSV documents, keeping the line each value came from.

YAML mappings and lists load as `LineDict` / `LineList`, which remember the
1-based line of the node and of each key, so errors can say `file:line`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import yaml

from orch import __version__
from orch.errors import ConfigError


class LineDict(dict[Any, Any]):
    """A dict from YAML that knows its own line and each key's line (1-based)."""

    line: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines: dict[Any, int] = {}

    def line_of(self, key: Any) -> int:
        """Return the line of `key`, or of the mapping itself when unknown."""
        return self.key_lines.get(key, self.line)


class LineList(list[Any]):
    """A list from YAML that knows its own line and each item's line (1-based)."""

    line: int = 0

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.item_lines: list[int] = []

    def line_of(self, index: int) -> int:
        """Return the line of item `index`, or of the list itself when unknown."""
        return self.item_lines[index] if index < len(self.item_lines) else self.line


_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _LineLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """SafeLoader (libyaml's when available: ~10x faster on big references files)
    whose mappings and sequences carry line numbers."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    mapping = LineDict()
    mapping.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[key] = key_node.start_mark.line + 1
    return mapping


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> LineList:
    items = LineList(loader.construct_object(child, deep=True) for child in node.value)
    items.line = node.start_mark.line + 1
    items.item_lines = [child.start_mark.line + 1 for child in node.value]
    return items


def _construct_int(loader: _LineLoader, node: yaml.ScalarNode) -> int | str:
    """Keep zero-padded numbers such as ids `010` as text: YAML 1.1 reads 010 as octal 8."""
    text = loader.construct_scalar(node)
    digits = str(text).lstrip("+-")
    if len(digits) > 1 and digits.startswith("0") and digits[1:2].isdigit():
        return str(text)
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_LineLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


#: Deepest nesting of lists and mappings accepted in YAML and JSON input.
MAX_DEPTH = 100
#: Nodes that aliases (`*name`) may add to a YAML document when expanded:
#: a "billion laughs" document is refused before it is built.
MAX_ALIAS_NODES = 1_000_000


class _BoundError(yaml.YAMLError):
    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


def _check_yaml_bounds(text: str) -> None:
    """Walk the parser's events (no document is built) and refuse input past
    MAX_DEPTH nesting or MAX_ALIAS_NODES alias-expanded nodes.

    libyaml's composer recurses in C, so deep nesting must be refused before
    composing: at ~100,000 levels it crashes the interpreter.
    """
    try:
        _walk_yaml_events(text)
    except _BoundError:
        raise
    except yaml.YAMLError as err:
        # libyaml >= 0.2.6 (PyYAML 6.0.4 wheels) refuses deep nesting itself, with
        # its own words; say it as the bound orch enforces everywhere else
        if "maximum nesting depth" in str(getattr(err, "problem", "") or err):
            raise _BoundError(
                f"lists and mappings nest deeper than {MAX_DEPTH} levels", getattr(err, "problem_mark", None)
            ) from err
        raise


def _walk_yaml_events(text: str) -> None:
    """The walk of `_check_yaml_bounds`: raise _BoundError past a bound."""
    start_events = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
    end_events = (yaml.SequenceEndEvent, yaml.MappingEndEvent)
    # Per open collection: [nodes inside (expanded), deepest level inside, anchor]
    stack: list[list[Any]] = [[0, 0, None]]
    sizes: dict[str, tuple[int, int]] = {}
    expanded = 0
    for event in yaml.parse(text, Loader=_BaseLoader):
        kind = type(event)
        if kind is yaml.ScalarEvent:
            stack[-1][0] += 1
            if getattr(event, "anchor", None):
                sizes[event.anchor] = (1, 0)  # type: ignore[attr-defined]
        elif kind in start_events:
            stack.append([0, 0, getattr(event, "anchor", None)])
            if len(stack) - 1 > MAX_DEPTH:
                raise _BoundError(f"lists and mappings nest deeper than {MAX_DEPTH} levels", event.start_mark)
        elif kind in end_events:
            size, depth, anchor = stack.pop()
            if anchor:
                sizes[anchor] = (size + 1, depth + 1)
            stack[-1][0] += size + 1
            stack[-1][1] = max(stack[-1][1], depth + 1)
        elif kind is yaml.AliasEvent:
            size, depth = sizes.get(getattr(event, "anchor", ""), (1, 0))
            expanded += size
            stack[-1][0] += size
            stack[-1][1] = max(stack[-1][1], depth)
            if expanded > MAX_ALIAS_NODES:
                raise _BoundError(
                    f"aliases expand to more than {MAX_ALIAS_NODES:,} nodes (an alias bomb?)",
                    event.start_mark,
                )
            if len(stack) - 1 + depth > MAX_DEPTH:
                raise _BoundError(
                    f"lists and mappings nest deeper than {MAX_DEPTH} levels (through an alias)",
                    event.start_mark,
                )


def parse_yaml(text: str, label: str, line_offset: int = 0) -> Any:
    """Parse YAML text into LineDict/LineList values.

    Input is bounded: at most MAX_DEPTH (100) levels of nesting and
    MAX_ALIAS_NODES (1,000,000) nodes added by alias expansion.

    Args:
        text: The YAML source.
        label: The file name used in error messages (relative to the project).
        line_offset: Added to reported lines (front matter starts past line 1).

    Raises:
        ConfigError: `label:line: invalid YAML: ...` for any parser error or
            bound passed.
    """
    try:
        _check_yaml_bounds(text)
        return yaml.load(text, Loader=_LineLoader)
    except RecursionError as err:
        raise ConfigError(f"{label}: invalid YAML: nested too deeply", "flatten the structure") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{label}:{mark.line + 1 + line_offset}" if mark else label
        problem = getattr(err, "problem", None) or str(err)
        hint = "fix the syntax at that line"
        if isinstance(err, _BoundError):
            hint = (
                f"orch reads at most {MAX_DEPTH} levels of nesting "
                f"and {MAX_ALIAS_NODES:,} alias-expanded nodes"
            )
        lines = text.splitlines()
        if mark is not None and mark.line < len(lines) and "\t" in lines[mark.line]:
            hint = "that line contains a tab: YAML indents with spaces only"
        raise ConfigError(f"{where}: invalid YAML: {problem}", hint) from err


#: Largest config, blueprint, references or schema file orch reads: 1 GiB.
MAX_FILE_BYTES = 1024**3


def read_text(path: Path, label: str) -> str:
    """Read a UTF-8 regular file, turning OS and decoding errors into ConfigError.

    The file is opened non-blocking and checked to be a regular file of at
    most MAX_FILE_BYTES before reading, so a FIFO, socket or device is an
    error, never a hang.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise ConfigError(f"{label}: file not found") from err
    except ValueError as err:  # an embedded NUL byte
        raise ConfigError(f"{label}: cannot read: the path contains a NUL byte") from err
    except OSError as err:
        raise ConfigError(f"{label}: cannot read: {err}") from err
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(21, "Is a directory", str(path))
        if not stat.S_ISREG(mode):
            raise ConfigError(
                f"{label}: cannot read: not a regular file (a FIFO, socket or device)",
                "replace it with a regular file",
            )
        size = os.fstat(fd).st_size
        if size <= MAX_FILE_BYTES:
            with os.fdopen(fd, "rb") as file:
                fd = -1
                # read(n) allocates n bytes first: ask for the size (+1 to see it grow), not the limit
                data = file.read(size + 1)
                if len(data) > size:  # it grew since fstat
                    data += file.read(MAX_FILE_BYTES + 1 - len(data))
        if size > MAX_FILE_BYTES or len(data) > MAX_FILE_BYTES:
            raise ConfigError(
                f"{label}: cannot read: larger than {MAX_FILE_BYTES:,} bytes",
                "split the file, or keep only what the stages need in it",
            )
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the data;
        # newlines translated as text mode does (universal newlines)
        return data.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{label}: cannot read: {err}") from err
    finally:
        if fd >= 0:
            os.close(fd)


#: YAML files at least this big are cached parsed (pickle) under the cache dir:
#: building 10k rows with line numbers costs ~0.5 s, unpickling them ~0.05 s.
CACHE_MIN_BYTES = 256 * 1024
_CACHE_VERSION = b"orch-references-1"


def load_document(path: Path, label: str, cache_dir: Path | None = None) -> Any:
    """Load a references document by its suffix: .yaml/.yml, .json or .csv.

    CSV loads as a list of row dicts (header row gives the keys); each row
    dict is a LineDict whose `line` is its line in the file.

    Args:
        path: The file.
        label: Its name in messages (project-relative).
        cache_dir: Where big YAML files (>= CACHE_MIN_BYTES) keep a parsed
            copy, keyed by path, size, mtime, ctime and inode; None: no cache.

    Raises:
        ConfigError: unknown suffix, unreadable file, or malformed content,
            naming the file and the line where the parser gives one.
    """
    suffix = path.suffix.lower()
    if cache_dir is not None and suffix in (".yaml", ".yml"):
        return _load_cached(path, label, cache_dir)
    return _parse_document(path, label, suffix)


def _load_cached(path: Path, label: str, cache_dir: Path) -> Any:
    try:
        st = os.stat(path)
    except OSError:
        return _parse_document(path, label, path.suffix.lower())
    if st.st_size < CACHE_MIN_BYTES:
        return _parse_document(path, label, path.suffix.lower())
    key = hashlib.sha256(
        b"|".join(
            [
                _CACHE_VERSION,
                __version__.encode(),
                os.fsencode(os.path.abspath(path)),
                *(str(v).encode() for v in (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)),
            ]
        )
    ).hexdigest()
    cache = cache_dir / f"{key}.pickle"
    # our own cache file, written below; anything wrong with it (torn, written by
    # another orch whose classes moved: ModuleNotFoundError) is a cache miss
    with contextlib.suppress(Exception):
        return pickle.loads(cache.read_bytes())
    data = _parse_document(path, label, path.suffix.lower())
    with contextlib.suppress(OSError):
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_bytes(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(tmp, cache)
    return data


def _parse_document(path: Path, label: str, suffix: str) -> Any:
    text = read_text(path, label)
    if suffix in (".yaml", ".yml"):
        return parse_yaml(text, label)
    if suffix == ".json":
        if not text.strip():
            return None
        return parse_json(text, label)
    if suffix == ".csv":
        return _parse_csv(text, label)
    raise ConfigError(
        f"{label}: unsupported references format '{suffix}'",
        "use a .yaml, .yml, .json or .csv file",
    )


def parse_json(text: str, label: str) -> Any:
    """Parse JSON text, refusing nesting deeper than MAX_DEPTH levels.

    Raises:
        ConfigError: `label:line: invalid JSON: ...`, naming the line where
            the syntax breaks or the nesting passes the bound.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{label}:{err.lineno}: invalid JSON: {err.msg} (column {err.colno})",
            "fix the syntax at that line",
        ) from err
    except RecursionError:
        data = None
    else:
        if text.count("[") + text.count("{") <= MAX_DEPTH or json_depth(data) <= MAX_DEPTH:
            return data
    raise ConfigError(
        f"{label}:{_json_deep_line(text)}: invalid JSON: "
        f"arrays and objects nest deeper than {MAX_DEPTH} levels",
        f"orch reads at most {MAX_DEPTH} levels of nesting",
    )


def json_depth(data: Any) -> int:
    """Return how deeply lists and dicts nest in `data` (stops counting past MAX_DEPTH)."""
    deepest, todo = 0, [(data, 1)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                break
            todo.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def _json_deep_line(text: str) -> int:
    """Return the line where JSON nesting first passes MAX_DEPTH (strings skipped)."""
    depth, line, in_string, escaped = 0, 1, False, False
    for char in text:
        if char == "\n":
            line += 1
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return line
        elif char in "]}":
            depth -= 1
    return line


def _parse_csv(text: str, label: str) -> LineList:
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True)
    rows = LineList()
    rows.line = 1
    try:
        header = next(reader, None)
        if header is None:
            return rows
        header = [h.strip() for h in header]
        if len(set(header)) != len(header) or any(not h for h in header):
            raise ConfigError(
                f"{label}:1: invalid CSV header: column names must be non-empty and unique",
                "name every column once in the first row",
            )
        start = reader.line_num + 1
        for record in reader:
            # a quoted field may span lines: a row's line is where it starts
            line, start = start, reader.line_num + 1
            if not record or all(not cell.strip() for cell in record):
                continue
            if len(record) != len(header):
                raise ConfigError(
                    f"{label}:{line}: invalid CSV: row has {len(record)} fields, header has {len(header)}",
                    "quote fields that contain commas, and give every row every column",
                )
            row = LineDict(zip(header, record, strict=True))
            row.line = line
            rows.append(row)
            rows.item_lines.append(line)
    except csv.Error as err:
        raise ConfigError(
            f"{label}:{reader.line_num}: invalid CSV: {err}", "fix the quoting at that line"
        ) from err
    return rows
