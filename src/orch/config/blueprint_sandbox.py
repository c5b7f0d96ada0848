"""The sandboxed Jinja2 environment blueprints render in, and its bounds.

Blueprints are user input: they render in jinja2's ImmutableSandboxedEnvironment
(no dunder or internal attributes, no mutation of values, no unsafe callables),
and every render is bounded so a blueprint can neither run code nor exhaust
memory or time:

- MAX_OUTPUT_CHARS characters written in all, counting every `{{ }}` and text
  chunk (including text captured by `{% set %}` blocks and macros);
- MAX_LOOP_ITERATIONS `{% for %}` iterations in all, summed over every loop;
- no intermediate value (string, list, number) larger than MAX_OUTPUT_CHARS
  characters or items, checked on operators, `~`, filters and method calls;
- `range()` at most 100,000 items (jinja2's sandbox bound);
- `{% include %}`, `{% import %}` and `{% extends %}` reach only files under
  the project's `agents/` directory (symlinks resolved).
"""

from __future__ import annotations

import contextvars
import functools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jinja2
import jinja2.nodes as nodes
import jinja2.sandbox
from jinja2.utils import pass_context

#: Characters a render may write in all (prompt plus captured blocks): 16 MiB.
MAX_OUTPUT_CHARS = 16 * 1024 * 1024
#: `{% for %}` iterations a render may make in all loops together.
MAX_LOOP_ITERATIONS = 1_000_000
#: Largest integer argument a filter or method call may take (a width, a count).
MAX_INT_ARG = 1_000_000
#: Largest integer a blueprint may compute, in bits.
MAX_INT_BITS = 4096

_LOOP_FILTER = "_orch_loop"
_SIZE_FILTER = "_orch_sized"
_OUTPUT_FILTER = "_orch_output"
_SPEND_FILTER = "_orch_spend"
_FORMAT_WIDTH = re.compile(r"(?:%[-#0 +]*|[:<>=^+\- #0,_.]|\.)(\d{7,})")


class BlueprintLimitError(jinja2.TemplateError):
    """A blueprint render went past one of the sandbox bounds."""


class _Budget:
    """What one render has spent so far."""

    __slots__ = ("chars", "iterations")

    def __init__(self) -> None:
        self.chars = 0
        self.iterations = 0


# A context variable, not state on the environment: one Blueprint (and its
# environment) is rendered from several scheduler threads at once, and an
# include renders in a fresh jinja2 Context that must spend the same budget.
_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "orch_blueprint_budget", default=None
)


def bounded_render(template: jinja2.Template, values: Mapping[str, Any]) -> str:
    """Render `template` with `values` within the bounds of this module.

    Raises:
        BlueprintLimitError: a bound was passed (the message states it).
        jinja2.TemplateError, TypeError, ...: as `Template.render`.
    """
    token = _budget.set(_Budget())
    try:
        return template.render(values)
    finally:
        _budget.reset(token)


def _size(value: Any) -> int:
    if isinstance(value, str | bytes | list | tuple | dict | set | frozenset):
        return len(value)
    return 0


def _check_size(value: Any, what: str) -> Any:
    if _size(value) > MAX_OUTPUT_CHARS:
        raise BlueprintLimitError(
            f"{what} is larger than the blueprint bound of {MAX_OUTPUT_CHARS:,} characters or items"
        )
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise BlueprintLimitError(
            f"{what} is a number larger than the blueprint bound of {MAX_INT_BITS} bits"
        )
    return value


def _check_args(args: Iterable[Any], what: str) -> None:
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_INT_ARG:
            raise BlueprintLimitError(
                f"{what}: argument {arg} is larger than the blueprint bound of {MAX_INT_ARG:,}"
            )


def _check_format(text: Any, what: str) -> None:
    if isinstance(text, str) and _FORMAT_WIDTH.search(text):
        raise BlueprintLimitError(f"{what}: a format width or precision above 999,999 is not allowed")


def _check_replace(text: Any, old: Any, new: Any, what: str) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        count = len(text) + 1 if old == "" else text.count(old)
        _check_size_estimate(len(text) + count * max(0, len(new) - len(old)), what)


def _check_size_estimate(size: int, what: str) -> None:
    if size > MAX_OUTPUT_CHARS:
        raise BlueprintLimitError(
            f"{what} would be larger than the blueprint bound of {MAX_OUTPUT_CHARS:,} characters or items"
        )


def _spend_chars(count: int) -> None:
    budget = _budget.get()
    if budget is not None:
        budget.chars += count
        if budget.chars > MAX_OUTPUT_CHARS:
            raise BlueprintLimitError(
                f"the rendered text is longer than the blueprint bound of {MAX_OUTPUT_CHARS:,} characters"
            )


@pass_context
def _output_filter(context: Any, value: Any) -> str:
    text = str(value)
    _spend_chars(len(text))
    return text


@pass_context
def _spend_filter(context: Any, value: str, count: int) -> str:
    _spend_chars(count)
    return value


@pass_context
def _sized_filter(context: Any, value: Any) -> Any:
    return _check_size(value, "a joined (~) value")


@pass_context
def _loop_filter(context: Any, iterable: Any) -> Iterator[Any]:
    budget = _budget.get()
    if budget is None:
        yield from iterable
        return
    for item in iterable:
        budget.iterations += 1
        if budget.iterations > MAX_LOOP_ITERATIONS:
            raise BlueprintLimitError(
                f"loops ran more than the blueprint bound of {MAX_LOOP_ITERATIONS:,} iterations"
            )
        yield item


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        what = f"filter '{name}'"
        _check_args([*args, *kwargs.values()], what)
        if name == "replace" and len(args) >= 3:
            text = [a for a in args if isinstance(a, str)]
            if len(text) >= 3:
                _check_replace(text[-3], text[-2], text[-1], what)
        if name == "format" and args:
            _check_format(next((a for a in args if isinstance(a, str)), None), what)
        return _check_size(func(*args, **kwargs), f"the result of {what}")

    return wrapper


class _BoundingTransform:
    """Rewrite a parsed template so loops, output and `~` pass through the bounds."""

    def __init__(self, environment: jinja2.Environment) -> None:
        self.environment = environment

    def apply(self, tree: nodes.Template) -> nodes.Template:
        for loop in tree.find_all(nodes.For):
            loop.iter = self._filter(loop.iter, _LOOP_FILTER)
        for concat in list(tree.find_all(nodes.Concat)):
            self._replace(tree, concat, lambda node: self._filter(node, _SIZE_FILTER))
        for output in tree.find_all(nodes.Output):
            # Literal text stays constant (jinja2 merges it at compile time):
            # its length is spent by one extra node per output statement.
            literal = sum(len(c.data) for c in output.nodes if isinstance(c, nodes.TemplateData))
            output.nodes = [
                c if isinstance(c, nodes.TemplateData) else self._filter(c, _OUTPUT_FILTER)
                for c in output.nodes
            ]
            if literal:
                spend = nodes.Filter(
                    nodes.Const(""),
                    _SPEND_FILTER,
                    [nodes.Const(literal)],
                    [],
                    None,
                    None,
                    lineno=output.lineno,
                )
                spend.set_environment(self.environment)
                output.nodes.insert(0, spend)
        return tree

    def _filter(self, node: nodes.Node, name: str) -> nodes.Expr:
        wrapped = nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)
        wrapped.set_environment(self.environment)
        return wrapped

    @staticmethod
    def _replace(tree: nodes.Node, target: nodes.Node, make: Callable[[Any], nodes.Node]) -> None:
        for parent in [tree, *tree.find_all(nodes.Node)]:
            for field, value in parent.iter_fields():
                if value is target:
                    setattr(parent, field, make(target))
                    return
                if isinstance(value, list):
                    for index, item in enumerate(value):
                        if item is target:
                            value[index] = make(target)
                            return


class AgentsLoader(jinja2.BaseLoader):
    """Load `{% include %}`/`import`/`extends` targets from `agents/` only.

    Names are relative to `agents/` (`partials/intro.md`); `..`, absolute
    paths and symlinks leading out of `agents/` are refused, as are files that
    are not regular files.
    """

    def __init__(self, agents_dir: Path, convert: Callable[[str], str] = str) -> None:
        self.agents_dir = agents_dir
        self.convert = convert

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        """Return the source of `agents/<template>`.

        Raises:
            jinja2.TemplateNotFound: the file is missing or lies outside agents/.
        """
        from orch.config.documents import read_text
        from orch.errors import ConfigError

        parts = template.replace("\\", "/").split("/")
        if not template or "\x00" in template or template.startswith("/") or ".." in parts:
            raise jinja2.TemplateNotFound(f"{template} (only files under agents/ can be included)")
        base = self.agents_dir.resolve()
        path = (base / template).resolve()
        if base not in path.parents:
            raise jinja2.TemplateNotFound(f"{template} (only files under agents/ can be included)")
        try:
            source = read_text(path, f"agents/{template}")
        except ConfigError as err:
            raise jinja2.TemplateNotFound(f"{template} ({err.message})") from err
        return self.convert(source), str(path), lambda: False


class BlueprintEnvironment(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment with the bounds of this module (see its docstring)."""

    intercepted_binops = frozenset(["*", "**", "+", "%", "//"])

    def __init__(self, agents_dir: Path | None = None, convert: Callable[[str], str] = str) -> None:
        super().__init__(
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            autoescape=False,
            loader=AgentsLoader(agents_dir, convert) if agents_dir is not None else None,
        )
        self.filters = {name: _bounded_filter(name, func) for name, func in self.filters.items()}
        self.filters[_LOOP_FILTER] = _loop_filter
        self.filters[_SIZE_FILTER] = _sized_filter
        self.filters[_OUTPUT_FILTER] = _output_filter
        self.filters[_SPEND_FILTER] = _spend_filter

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        return _BoundingTransform(self).apply(super()._parse(source, name, filename))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """Refuse `str.format` with a huge width before jinja2 sandboxes the call."""
        owner = getattr(value, "__self__", None)
        if isinstance(owner, str) and getattr(value, "__name__", "") in ("format", "format_map"):
            _check_format(owner, f"calling {value.__name__}()")
        return super().wrap_str_format(value)

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        """Apply an intercepted operator after checking it cannot blow up."""
        what = f"the operator {operator_}"
        if operator_ == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(times, int) and _size(seq):
                    _check_size_estimate(_size(seq) * max(times, 0), f"the result of {what}")
        elif operator_ == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
            if max(abs(left), 2).bit_length() * right > MAX_INT_BITS:
                raise BlueprintLimitError(
                    f"{what} would give a number larger than the blueprint bound of {MAX_INT_BITS} bits"
                )
        elif operator_ == "%":
            _check_format(left, what)
        return _check_size(self.binop_table[operator_](left, right), f"the result of {what}")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Call `__obj` from a blueprint: sandbox rules, then the size bounds."""
        what = f"calling {getattr(__obj, '__name__', type(__obj).__name__)}()"
        _check_args([*args, *kwargs.values()], what)
        name = getattr(__obj, "__name__", "")
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            if name == "replace" and len(args) >= 2:
                _check_replace(owner, args[0], args[1], what)
            elif name == "join" and isinstance(args[0] if args else None, list | tuple):
                _check_size_estimate(sum(_size(a) for a in args[0]), f"the result of {what}")
        result = super().call(__context, __obj, *args, **kwargs)
        return _check_size(result, f"the result of {what}")
