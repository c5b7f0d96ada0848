"""Parse Markdown blueprints and render their `<PARAM>` placeholders (jinja2).

A blueprint is Markdown with optional YAML front matter (`description`,
`params`). `<NAME>` (NAME = `[A-Z][A-Z0-9_]*`) is sugar for `{{ NAME }}`;
`\\<NAME>` is a literal `<NAME>`. Full Jinja2 works too. Rendering is strict:
a name with no value is an error naming `file:line` and the nearest name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jinja2
import jinja2.meta
import jinja2.sandbox

from orch.config.blueprint_sandbox import (
    MAX_LOOP_ITERATIONS,
    MAX_OUTPUT_CHARS,
    BlueprintEnvironment,
    BlueprintLimitError,
    bounded_render,
)
from orch.config.documents import parse_yaml, read_text
from orch.errors import BlueprintError, ConfigError, did_you_mean

PLACEHOLDER = re.compile(r"(\\?)<([A-Z][A-Z0-9_]*)>")
_FRONT_MATTER_KEYS = ("description", "params")
#: Names orch provides itself; never reported as undeclared.
PROVIDED = frozenset({"INPUTS"})


@dataclass(frozen=True)
class Blueprint:
    """A parsed, compiled blueprint.

    Attributes:
        path: Path relative to the project root (used in every message).
        description: The front matter's one-line description ("" if none).
        params: Declared params: name -> description (front matter order).
        body: The Markdown body after the front matter, unconverted.
        body_line: File line number of the body's first line.
        used: Top-level names the body uses (placeholders and Jinja names).
        template: The compiled jinja2 template.
        digest_source: The whole file text (its hash says "blueprint changed").
    """

    path: str
    description: str
    params: Mapping[str, str]
    body: str
    body_line: int
    used: frozenset[str]
    template: jinja2.Template
    digest_source: str

    def line_of(self, name: str) -> int:
        """Return the file line where `name` is first used (the body's first line if unseen)."""
        pattern = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])")
        for offset, text in enumerate(self.body.splitlines()):
            if pattern.search(text):
                return self.body_line + offset
        return self.body_line


def _environment(agents_dir: Path | None = None) -> jinja2.Environment:
    return BlueprintEnvironment(agents_dir, convert_placeholders)


def convert_placeholders(text: str) -> str:
    """Turn `<NAME>` into `{{ NAME }}` and `\\<NAME>` into a literal `<NAME>`.

    Lines are preserved one for one, so Jinja line numbers stay true.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group(1):
            return "{{ '<" + match.group(2) + ">' }}"
        return "{{ " + match.group(2) + " }}"

    return PLACEHOLDER.sub(replace, text)


def parse_blueprint(text: str, label: str, agents_dir: Path | None = None) -> Blueprint:
    """Parse and compile blueprint `text`; `label` is its project-relative path.

    The template renders sandboxed and bounded (see `orch.config.blueprint_sandbox`);
    `{% include %}`, `import` and `extends` reach only files under
    `agents_dir` (none at all when it is None).

    Raises:
        BlueprintError: bad front matter or Jinja syntax, with `label:line`.
    """
    description, params, body, body_line = _split_front_matter(text, label)
    converted = convert_placeholders(body)
    env = _environment(agents_dir)
    try:
        tree = env.parse(converted, name=label, filename=label)
        code = env.compile(tree, name=label, filename=label)
    except jinja2.TemplateSyntaxError as err:
        line = body_line + (err.lineno or 1) - 1
        source_line = body.splitlines()[(err.lineno or 1) - 1] if body else ""
        hint = "fix the Jinja2 tag at that line; write \\<NAME> for a literal <NAME>"
        if re.search(r"\{[{%][^}]*<[A-Z][A-Z0-9_]*>", source_line):
            hint = "inside {{ }} and {% %} write the bare name (NAME), not <NAME>"
        raise BlueprintError(f"{label}:{line}: blueprint syntax error: {err.message}", hint) from err
    # A plain dict, not jinja's ChainMap: every render copies the globals, and
    # copying a ChainMap costs ~17 µs a partition (measured at 10k partitions).
    template = env.template_class.from_code(env, code, dict(env.make_globals(None)), None)
    used = frozenset(jinja2.meta.find_undeclared_variables(tree))
    return Blueprint(
        path=label,
        description=description,
        params=MappingProxyType(params),
        body=body,
        body_line=body_line,
        used=used,
        template=template,
        digest_source=text,
    )


def load_blueprint(root: Path, rel: str) -> Blueprint:
    """Read and parse the blueprint at `root/rel`.

    Raises:
        ConfigError: the file is missing, unreadable, not a regular file or
            outside the project (symlinks resolved).
        BlueprintError: the blueprint does not parse.
    """
    check_blueprint_path(root, rel)
    return parse_blueprint(read_text(root / rel, rel), rel, root / "agents")


def check_blueprint_path(root: Path, rel: str) -> None:
    """Refuse a blueprint path outside the project (symlinks resolved) or with a NUL byte.

    Raises:
        ConfigError: `rel: blueprint file must be inside the project`.
    """
    if "\x00" in rel or Path(rel).is_absolute() or root.resolve() not in (root / rel).resolve().parents:
        raise ConfigError(
            f"{rel}: blueprint file must be inside the project",
            "name a Markdown file under the project directory, e.g. agents/01.research.md",
        )


def _split_front_matter(text: str, label: str) -> tuple[str, dict[str, str], str, int]:
    if not (text.startswith("---\n") or text.startswith("---\r\n")):
        return "", {}, text, 1
    lines = text.splitlines(keepends=True)
    for index in range(1, len(lines)):
        if lines[index].rstrip("\r\n") == "---":
            break
    else:
        raise BlueprintError(
            f"{label}:1: front matter opened with '---' is never closed",
            "end the front matter with a line of exactly '---'",
        )
    try:
        meta = parse_yaml("".join(lines[1:index]), label, line_offset=1) or {}
    except ConfigError as err:
        raise BlueprintError(err.message, err.hint) from err
    if not isinstance(meta, dict):
        raise BlueprintError(f"{label}:2: front matter must be a mapping with description, params")
    for key in meta:
        if key not in _FRONT_MATTER_KEYS:
            line = 1 + meta.line_of(key) if hasattr(meta, "line_of") else 2
            raise BlueprintError(
                f"{label}:{line}: unknown front matter key '{key}'"
                f"{did_you_mean(str(key), _FRONT_MATTER_KEYS)}",
                "front matter takes 'description' and 'params'",
            )
    description = meta.get("description") or ""
    raw_params = meta.get("params") or {}
    if not isinstance(description, str) or not isinstance(raw_params, dict):
        raise BlueprintError(
            f"{label}:2: front matter: description must be text and params a mapping NAME: description"
        )
    params = {}
    for name, text_ in raw_params.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
            line = 1 + raw_params.line_of(name) if hasattr(raw_params, "line_of") else 2
            raise BlueprintError(f"{label}:{line}: param name {name!r} must match [A-Z][A-Z0-9_]*")
        params[name] = "" if text_ is None else str(text_)
    body = "".join(lines[index + 1 :])
    return description.strip(), params, body, index + 2


def render_blueprint(blueprint: Blueprint, values: Mapping[str, Any], context: str = "") -> str:
    """Render `blueprint` with `values` (partition params over vars, plus INPUTS).

    Args:
        blueprint: A parsed blueprint.
        values: Name -> value; lists and mappings are usable from Jinja.
        context: Appended to errors, e.g. "stage deep_research, partition 1.1_x".

    Rendering is sandboxed: no access to internal attributes (`__class__`,
    `__globals__`, ...) or unsafe callables, at most MAX_OUTPUT_CHARS (16 Mi)
    characters written and MAX_LOOP_ITERATIONS (1,000,000) loop iterations.

    Raises:
        BlueprintError: a name without value (`file:line: unknown placeholder
            <NAME>; did you mean <NEAR>?`), a sandbox violation or bound, or any
            other rendering error.
    """
    try:
        return bounded_render(blueprint.template, values)
    except jinja2.UndefinedError as err:
        raise _undefined_error(blueprint, values, err, context) from err
    except (
        jinja2.TemplateError,
        TypeError,
        ValueError,
        KeyError,
        AttributeError,
        ArithmeticError,
        RecursionError,
        MemoryError,
    ) as err:
        if isinstance(err, ConfigError):
            raise
        line = _template_line(blueprint, err)
        where = f" ({context})" if context else ""
        hint = "fix the expression at that line"
        if isinstance(err, jinja2.sandbox.SecurityError):
            hint = (
                "blueprints render sandboxed: they may read values and call safe methods, "
                "not reach Python internals"
            )
        elif isinstance(err, BlueprintLimitError | RecursionError | MemoryError | OverflowError):
            hint = (
                f"a blueprint may write at most {MAX_OUTPUT_CHARS:,} characters and run at most "
                f"{MAX_LOOP_ITERATIONS:,} loop iterations; make the loops and values smaller"
            )
        elif isinstance(err, jinja2.TemplateNotFound):
            hint = "include, import and extend only files under agents/, by their path there"
        missing = re.search(r"has no attribute '([^']+)'", str(err))
        if missing:
            hint = (
                f"'{missing.group(1)}' is not a field there; for INPUTS use child.id, "
                "child.params.NAME, child.out_dir, child.files or child.read('file')"
            )
        detail = str(err) or f"{type(err).__name__} (macros nest too deeply, or out of memory)"
        raise BlueprintError(f"{blueprint.path}:{line}: cannot render: {detail}{where}", hint) from err


def _template_line(blueprint: Blueprint, err: BaseException) -> int:
    tb = err.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == blueprint.path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return blueprint.body_line + line - 1 if line else blueprint.body_line


def _undefined_error(
    blueprint: Blueprint, values: Mapping[str, Any], err: jinja2.UndefinedError, context: str
) -> BlueprintError:
    match = re.match(r"'([^']+)' is undefined", str(err.message or ""))
    where = f" ({context})" if context else ""
    if not match:
        line = _template_line(blueprint, err)
        return BlueprintError(f"{blueprint.path}:{line}: {err.message}{where}")
    name = match.group(1)
    line = _template_line(blueprint, err)
    if line == blueprint.body_line:
        line = blueprint.line_of(name)
    near = did_you_mean(name, [k for k in values if isinstance(k, str)])
    near = near.replace("'", "<", 1).replace("'?", ">?") if near else ""
    return BlueprintError(
        f"{blueprint.path}:{line}: unknown placeholder <{name}>{near}{where}",
        f"give {name} a value (a field of the partition rows, or vars in orch.yaml), "
        "or fix the name; write \\<NAME> for a literal",
    )


def fill_placeholders(template: str, values: Mapping[str, Any], where: str) -> str:
    """Substitute `<NAME>` in a short template such as an output directory.

    Raises:
        ConfigError: `where: unknown placeholder <NAME>; did you mean <NEAR>?`.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group(1):
            return f"<{match.group(2)}>"
        name = match.group(2)
        try:
            return str(values[name])
        except KeyError:
            near = did_you_mean(name, values)
            near = near.replace("'", "<", 1).replace("'?", ">?") if near else ""
            raise ConfigError(
                f"{where} unknown placeholder <{name}>{near}",
                f"known names: {', '.join(sorted(map(str, values)))}",
            ) from None

    return PLACEHOLDER.sub(replace, template)


def check_params(blueprint: Blueprint) -> list[str]:
    """Return warnings: declared params never used, used names never declared.

    Names orch provides (INPUTS) are not reported as undeclared. Blueprints with
    no `params:` in front matter declare nothing, so nothing is reported as
    undeclared for them.
    """
    warnings = []
    for name in blueprint.params:
        if name not in blueprint.used:
            warnings.append(
                f"{blueprint.path}:{_param_line(blueprint, name)}: param {name} is declared but never used"
            )
    if blueprint.params:
        for name in sorted(blueprint.used - set(blueprint.params) - PROVIDED):
            warnings.append(
                f"{blueprint.path}:{blueprint.line_of(name)}: <{name}> is used but not "
                "declared in the front matter params"
            )
    return warnings


def _param_line(blueprint: Blueprint, name: str) -> int:
    for number, text in enumerate(blueprint.digest_source.splitlines()[: blueprint.body_line], 1):
        if re.match(rf"\s+{re.escape(name)}\s*:", text):
            return number
    return 1


def list_blueprint_files(root: Path, extra: Iterable[str] = ()) -> list[str]:
    """Return project-relative paths of `agents/*.md` plus `extra`, sorted, unique."""
    found = {str(p.relative_to(root)) for p in (root / "agents").glob("*.md")}
    return sorted(found | set(extra))
