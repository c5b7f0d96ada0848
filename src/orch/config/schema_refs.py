"""Resolve a JSON Schema's `$ref`s once, locally: files inside the project only.

A schema may refer to itself (`#/$defs/x`) and to other JSON files inside the
project by relative reference (`common.json#/$defs/url`). Anything else, an
http(s) URL, a `file://` path outside the project, a file that does not exist,
is refused when the project loads, before any agent starts: jsonschema would
otherwise fetch it over the network, or fail only when outputs are checked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from orch.errors import ConfigError

#: Reference keywords of the drafts jsonschema supports.
_REF_KEYS = ("$ref", "$dynamicRef", "$recursiveRef")


def local_registry(
    root: Path, rel: str, schema: Any, specification: Any, files: set[str] | None = None
) -> Any:
    """Return a `referencing.Registry` holding every file the schema at
    `root/rel` refers to, each checked to be a JSON file inside `root`.

    Relative references resolve against the schema's directory. The registry
    retrieves nothing later: what validation needs is resolved here, once.

    Args:
        root: The project root.
        rel: The schema's path relative to the root (for messages).
        schema: The parsed schema.
        specification: Its `referencing` specification (draft).
        files: If given, gains the project-relative path of every file read.

    Raises:
        ConfigError: `rel: $ref 'x' cannot be resolved: why`, for a remote,
            outside or missing target or a pointer to nowhere.
    """
    import referencing
    import referencing.exceptions

    root_resolved = root.resolve()
    base_dir = (root / rel).parent
    retrieved: dict[str, referencing.Resource[Any]] = {}

    def retrieve(uri: str) -> referencing.Resource[Any]:
        contents = _read_local(root_resolved, base_dir, uri, files)
        resource = referencing.Resource.from_contents(contents, default_specification=specification)
        retrieved[uri] = resource
        return resource

    registry: referencing.Registry[Any] = referencing.Registry(retrieve=retrieve)  # type: ignore[call-arg]
    root_resource = referencing.Resource.from_contents(schema, default_specification=specification)
    todo: list[tuple[Any, Any]] = [(schema, registry.resolver_with_root(root_resource))]
    seen: set[int] = set()
    while todo:
        node, resolver = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for ref in _node_refs(node):
            try:
                resolved = resolver.lookup(ref)
            except (referencing.exceptions.Unresolvable, referencing.exceptions.Unretrievable) as err:
                why = _describe(err)
                raise ConfigError(
                    f"{rel}: $ref {ref!r} cannot be resolved: {why}",
                    "point $ref at a '#/...' fragment or a JSON file inside the project, by a relative path",
                ) from err
            todo.append((resolved.contents, resolved.resolver))
        children = node.values() if isinstance(node, dict) else node
        todo.extend((child, resolver) for child in children if isinstance(child, dict | list))

    def refuse(uri: str) -> referencing.Resource[Any]:
        raise _RefRefused(f"{uri} was not resolved when the project loaded")

    return referencing.Registry(retrieve=refuse).with_resources(retrieved.items())  # type: ignore[call-arg]


def _node_refs(node: Any) -> list[str]:
    if not isinstance(node, dict):
        return []
    return [node[key] for key in _REF_KEYS if isinstance(node.get(key), str)]


class _RefRefused(Exception):
    """Why a reference target is refused, in one line."""


def _read_local(root: Path, base_dir: Path, uri: str, files: set[str] | None = None) -> Any:
    parts = urlsplit(uri)
    if parts.scheme not in ("", "file") or parts.netloc:
        raise _RefRefused("only files inside the project are allowed, not URLs")
    target = Path(unquote(parts.path))
    path = (target if target.is_absolute() else base_dir / target).resolve()
    if root not in path.parents:
        raise _RefRefused(f"{path} is outside the project")
    from orch.config.documents import parse_json, read_text

    label = os.path.relpath(path, root)
    if files is not None:
        files.add(label)
    try:
        return parse_json(read_text(path, label), label)
    except ConfigError as err:
        raise _RefRefused(err.message) from err


def _describe(err: BaseException) -> str:
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, _RefRefused):
            return str(cause)
        cause = cause.__cause__ or cause.__context__
    text = str(err)
    return text.splitlines()[0] if text else type(err).__name__
