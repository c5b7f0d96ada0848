"""Check a partition directory against its stage's expect rules.

Rules (DESIGN.md §3): a file or a glob with a minimum count; non-empty;
`min_bytes`; required Markdown headings; valid JSON; a JSON Schema. No
symlink may point outside the partition directory.
"""

from __future__ import annotations

import codecs
import json
import os
import stat
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orch.config.stages import ExpectRule
from orch.errors import ConfigError

META_DIR = ".orch"
#: json and schema checks refuse larger files as a finding: json.loads holds the
#: whole document (several times its size) in memory.
MAX_JSON_BYTES = 64 << 20
#: Lines longer than this cannot be headings; they are skipped, not buffered.
MAX_HEADING_LINE = 4096
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Finding:
    """One way a partition's outputs fail a rule.

    Attributes:
        file: The file (or glob) relative to the partition directory.
        rule: `exists`, `non_empty`, `min_bytes`, `headings`, `json`, `schema`,
            `glob` or `symlink`.
        detail: What exactly is wrong, in one line.
    """

    file: str
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.file}: {self.detail} ({self.rule})"


class SchemaStore:
    """JSON Schema validators loaded once per project from project-relative paths.

    Safe to share between threads: the scheduler checks outputs in worker threads.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._validators: dict[str, Any] = {}
        self._digests: dict[str, str] = {}
        self._lock = threading.Lock()
        #: Project-relative paths of every schema file read, `$ref` targets included.
        self.files: set[str] = set()

    def validator(self, rel: str) -> Any:
        """Return a jsonschema validator for `root/rel`.

        Raises:
            ConfigError: the schema is missing, not JSON, or not a valid schema.
        """
        validator = self._validators.get(rel)
        if validator is not None:
            return validator
        with self._lock:  # one load per schema; warnings.catch_warnings is process-wide
            if rel not in self._validators:
                self._validators[rel] = self._load(rel)
        return self._validators[rel]

    def _load(self, rel: str) -> Any:
        """Read, check and compile the schema at `root/rel` (see `validator`).

        Its `$ref`s are resolved here, once, to JSON files inside the project
        only (see `orch.config.schema_refs`); the validator never retrieves anything.
        """
        import jsonschema
        from referencing.jsonschema import DRAFT202012, specification_with

        from orch.config.documents import MAX_DEPTH, json_depth, read_text
        from orch.config.schema_refs import local_registry

        path = self.root / rel
        if os.path.isabs(rel) or "\x00" in rel or not _is_within(self.root.resolve(), path.resolve()):
            raise ConfigError(
                f"{rel}: schema file must be inside the project (named by an expect rule in orch.yaml)",
                "use a path relative to the project root, e.g. references/schemas/x.json",
            )
        try:
            text = read_text(path, rel)
        except ConfigError as err:
            if err.message.endswith("file not found"):
                raise ConfigError(
                    f"{rel}: schema file not found (named by an expect rule in orch.yaml)"
                ) from None
            raise
        try:
            schema = json.loads(text)
        except ValueError as err:
            raise ConfigError(f"{rel}: cannot read JSON schema: {err}") from err
        except RecursionError:
            schema = None
            text = ""
        if not text or json_depth(schema) > MAX_DEPTH:
            raise ConfigError(
                f"{rel}: cannot read JSON schema: it nests deeper than {MAX_DEPTH} levels",
                f"orch reads at most {MAX_DEPTH} levels of nesting",
            )
        if not isinstance(schema, dict | bool | list):
            raise ConfigError(f"{rel}: invalid JSON Schema: expected an object, got {type(schema).__name__}")
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            try:
                cls = jsonschema.validators.validator_for(schema)
            except DeprecationWarning:
                raise ConfigError(
                    f"{rel}: invalid JSON Schema: unknown $schema "
                    f"{schema.get('$schema') if isinstance(schema, dict) else None!r}",
                    "use https://json-schema.org/draft/2020-12/schema, or omit $schema",
                ) from None
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as err:
            raise ConfigError(f"{rel}: invalid JSON Schema: {err.message}") from err
        spec = specification_with(cls.ID_OF(cls.META_SCHEMA) or "", default=DRAFT202012)
        self.files.add(os.path.normpath(rel))
        return cls(schema, registry=local_registry(self.root, rel, schema, spec, self.files))

    def schema(self, rel: str) -> Any:
        """Return the parsed schema document at `rel`."""
        return self.validator(rel).schema


def _is_within(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


def _rule_files(directory: Path | str, rule: ExpectRule) -> tuple[list[str], Finding | None]:
    if rule.file is not None:
        return [rule.file], None
    directory = Path(directory)
    try:
        matches = sorted(
            str(p.relative_to(directory))
            for p in directory.glob(str(rule.glob))
            if META_DIR not in p.relative_to(directory).parts
        )
    except OSError as err:  # e.g. a tree too deep for path names
        return [], Finding(str(rule.glob), "glob", f"cannot list: {err.strerror}")
    if len(matches) < rule.min_count:
        return matches, Finding(
            str(rule.glob), "glob", f"{len(matches)} files match, at least {rule.min_count} expected"
        )
    return matches, None


def check_outputs(
    directory: Path | str,
    rules: tuple[ExpectRule, ...],
    schemas: SchemaStore,
    known: Mapping[str, tuple[int, int]] | None = None,
) -> list[Finding]:
    """Return every way `directory` fails `rules` (empty list: all pass).

    Args:
        directory: A partition or staging directory.
        rules: The stage's expect rules.
        schemas: Where schema validators come from.
        known: `file -> (size, mtime_ns)` of outputs already checked in full
            at promotion; a file whose stat still matches skips the content
            checks (the same trust make places in mtimes). None checks all and
            also walks the directory for symlinks leaving it.

    Raises:
        ConfigError: a rule names a missing or invalid schema file.
    """
    findings: list[Finding] = []
    for rule in rules:
        names, glob_finding = _rule_files(directory, rule)
        if glob_finding:
            findings.append(glob_finding)
        for name in names:
            findings.extend(_check_file(directory, name, rule, schemas, known))
    if known is None:
        seen = {(f.file, f.rule) for f in findings}
        findings.extend(f for f in _check_symlinks(Path(directory)) if (f.file, f.rule) not in seen)
    return findings


def _check_file(
    directory: Path | str,
    name: str,
    rule: ExpectRule,
    schemas: SchemaStore,
    known: Mapping[str, tuple[int, int]] | None,
) -> list[Finding]:
    path = f"{directory}/{name}"
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            target = os.path.realpath(path)
            if not _inside(directory, target):
                return [Finding(name, "symlink", f"symlink points outside the partition: {target}")]
            st = os.stat(path)
    except FileNotFoundError:
        return [Finding(name, "exists", "missing")]
    except OSError as err:
        return [Finding(name, "exists", f"cannot stat: {err.strerror}")]
    if not stat.S_ISREG(st.st_mode):
        return [Finding(name, "exists", "not a regular file")]
    if (rule.non_empty or rule.json) and st.st_size == 0:
        return [Finding(name, "non_empty", "empty file")]
    if st.st_size < rule.min_bytes:
        return [Finding(name, "min_bytes", f"{st.st_size} bytes, at least {rule.min_bytes} expected")]
    if not (rule.headings or rule.json):
        return []
    if known is not None and known.get(name) == (st.st_size, st.st_mtime_ns):
        return []
    if rule.json and st.st_size > MAX_JSON_BYTES:
        return [
            Finding(
                name, "json", f"{st.st_size} bytes, above the {MAX_JSON_BYTES} byte limit for JSON checks"
            )
        ]
    try:
        fd = open_regular(path)
    except OSError as err:
        return [Finding(name, "exists", f"cannot read: {err.strerror}")]
    findings = []
    with os.fdopen(fd, "rb") as handle:
        try:
            if rule.headings:
                missing = _missing_headings(handle, rule.headings, st.st_size)
                if missing:
                    shown = ", ".join(repr(h) for h in missing)
                    findings.append(Finding(name, "headings", f"missing heading {shown}"))
            if rule.json:
                handle.seek(0)
                text = handle.read(MAX_JSON_BYTES + 1).decode("utf-8")
                findings.extend(_check_json(name, text, rule, schemas))
        except (OSError, UnicodeDecodeError) as err:
            return [Finding(name, "exists", f"cannot read as UTF-8 text: {err}")]
    return findings


def open_regular(path: str | Path, dir_fd: int | None = None, follow: bool = True) -> int:
    """Open a regular file for reading and return its fd; never block on a FIFO or device.

    O_NONBLOCK makes opening a FIFO return at once; the fd is then checked to
    be a regular file (no race with a swap after a stat).

    Args:
        path: The file (relative to `dir_fd` if given).
        dir_fd: A directory fd `path` is relative to, or None.
        follow: False adds O_NOFOLLOW: a symlink is refused (ELOOP).

    Raises:
        OSError: cannot open, or not a regular file (EINVAL).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(22, "not a regular file", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _missing_headings(handle: Any, headings: tuple[str, ...], size: int) -> list[str]:
    """Scan a binary file line by line (1 MiB reads) for lines equal to `headings`
    (trailing whitespace ignored); return those never seen, in rule order.

    Memory stays bounded whatever the file: a line longer than MAX_HEADING_LINE
    characters is skipped, not kept. Raises UnicodeDecodeError on invalid UTF-8.
    A file of at most one read (`size`, bytes) is taken in one piece.
    """
    if size <= _CHUNK_BYTES:
        present = {line.rstrip() for line in handle.read(_CHUNK_BYTES).decode("utf-8").splitlines()}
        if not handle.read(1):  # else it grew meanwhile: stream it from the start
            return [h for h in headings if h not in present]
        handle.seek(0)
    wanted = set(headings)
    decoder = codecs.getincrementaldecoder("utf-8")()
    carry, skipping = "", False
    final = False
    while not final:
        chunk = handle.read(_CHUNK_BYTES)
        final = not chunk
        text = decoder.decode(chunk, final=final)
        lines = text.split("\n")
        for line in lines[:-1]:
            if not skipping:
                wanted.difference_update(part.rstrip() for part in (carry + line).splitlines())
            carry, skipping = "", False
        carry += lines[-1]
        if len(carry) > MAX_HEADING_LINE:
            carry, skipping = "", True
    if not skipping:
        wanted.difference_update(part.rstrip() for part in carry.splitlines())
    return [h for h in headings if h in wanted]


def _check_json(name: str, text: str, rule: ExpectRule, schemas: SchemaStore) -> list[Finding]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        return [Finding(name, "json", f"invalid JSON at line {err.lineno}: {err.msg}")]
    except RecursionError:
        return [Finding(name, "json", "JSON nested too deeply to check")]
    if rule.schema is None:
        return []
    try:
        error = next(iter(schemas.validator(rule.schema).iter_errors(document)), None)
    except RecursionError:
        return [Finding(name, "schema", "JSON nested too deeply to check")]
    if error is None:
        return []
    at = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return [Finding(name, "schema", f"{rule.schema}: at {at}: {error.message}")]


def _check_symlinks(directory: Path) -> list[Finding]:
    """Find symlinks anywhere under `directory` that resolve outside it (scandir: no stat
    per entry)."""
    findings = []
    pending = [str(directory)]
    while pending:
        base = pending.pop()
        try:
            entries = os.scandir(base)
        except OSError as err:  # removed meanwhile, or a tree too deep for path names
            rel = os.path.relpath(base, directory)[:200]
            findings.append(Finding(rel, "exists", f"cannot list: {err.strerror}"))
            continue
        with entries:
            for entry in entries:
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if not _inside(directory, target):
                        rel = os.path.relpath(entry.path, directory)
                        findings.append(
                            Finding(rel, "symlink", f"symlink points outside the partition: {target}")
                        )
                elif entry.is_dir():
                    pending.append(entry.path)
    return sorted(findings, key=lambda f: f.file)


def _inside(directory: Path | str, target: str) -> bool:
    base = os.path.realpath(directory)
    return target == base or target.startswith(base + os.sep)
