"""The openai backend's tools mode and transcript: the write_file tool, writes confined to the
attempt's directory, and the JSON-lines `.orch/agent.log`."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
from pathlib import Path
from typing import IO, Any

from orch.redact import Redactor

TOOLS_SYSTEM = (
    "You run non-interactively; nobody reads your messages. Write every output file with the "
    "write_file tool, using paths relative to your output directory (for example findings.md). "
    "When every file is written, reply with a one-line summary and call no tool."
)


WRITE_FILE_TOOL = {
    "type": "function",
    "function": {
        "name": "write_file",
        "description": "Write a UTF-8 text file into your output directory, replacing it if it exists.",
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "relative path, e.g. findings.md"},
                "content": {"type": "string", "description": "the whole file content"},
            },
            "required": ["path", "content"],
        },
    },
}


#: Sent with the tools unless `options` sets it: some servers read a missing
#: tool_choice as "none" and never call the tool. Not "required": the model
#: ends the conversation by answering without a tool call, which "required"
#: forbids, so every attempt would run to max_turns.
TOOL_CHOICE = "auto"


class PathRejected(Exception):
    """A write_file path that would leave the staging directory."""


def write_confined(root: Path, rel_path: Any, content: str) -> str:
    """Write `content` to `root/rel_path`, refusing any path that could leave `root`.

    Refused: non-strings, empty paths, absolute paths, `..`, NUL, backslashes,
    anything under orch's `.orch/`, and symlinks anywhere on the way. The
    walk opens each directory relative to its parent with O_NOFOLLOW (and the
    file with O_NOFOLLOW too), so a symlink is refused by the kernel, not by a
    check that could race. Returns the normalised relative path written.

    Raises:
        PathRejected: why the path was refused (fit to show the model).
    """
    if not isinstance(rel_path, str) or not rel_path.strip():
        raise PathRejected("path must be a non-empty relative path such as findings.md")
    if "\0" in rel_path or "\\" in rel_path:
        raise PathRejected("path must not contain NUL or backslashes")
    if rel_path.startswith("/") or (len(rel_path) > 1 and rel_path[1] == ":"):
        raise PathRejected("absolute paths are not allowed; use a path relative to your output directory")
    parts = [p for p in rel_path.split("/") if p not in ("", ".")]
    if not parts:
        raise PathRejected("path names no file")
    if ".." in parts:
        raise PathRejected("'..' is not allowed; stay inside your output directory")
    if parts[0] == ".orch":
        raise PathRejected(".orch/ belongs to orch; write your files elsewhere")
    clean = "/".join(parts)
    no_follow = getattr(os, "O_NOFOLLOW", 0)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | no_follow
    # The staging directory itself is orch's; only what lies below it is checked.
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY) if len(parts) > 1 else None
    try:
        for index, part in enumerate(parts[:-1]):
            assert dir_fd is not None
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, dir_fd=dir_fd)
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | no_follow, dir_fd=dir_fd)
            except OSError as err:
                where = "/".join(parts[: index + 1])
                raise PathRejected(f"{where} is a symlink or a file, not a directory") from err
            os.close(dir_fd)
            dir_fd = child
        name = parts[-1] if dir_fd is not None else os.path.join(root, parts[-1])
        try:
            fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.EISDIR):
                kind = "a symlink" if err.errno == errno.ELOOP else "a directory"
                raise PathRejected(f"{clean} is {kind}") from err
            raise
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
    return clean


class _Transcript:
    """JSON lines for `.orch/agent.log`: one per request, response, tool call, error.

    Lines are buffered and written by `flush` or `close`, which the backend
    runs in a worker thread (file creation costs about 0.5 ms on some disks,
    too long for the event loop at 100-way concurrency). The file is created
    and the request line written while that request is in flight, so a long
    request's log can be read as it runs. A lock keeps a late flush from a
    timed-out attempt from interleaving with the final close.
    """

    def __init__(self, path: Path, redactor: Redactor | None = None) -> None:
        self.path = path
        self._redactor = redactor or Redactor()
        self._lines: list[str] = []
        self._handle: IO[str] | None = None
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        """Buffer one line: `{"orch": event, **fields}`, every secret redacted."""
        line = json.dumps({"orch": event, **fields}, ensure_ascii=False, default=str)
        self._lines.append(self._redactor.text(line) + "\n")

    def flush(self) -> None:
        """Append the buffered lines to the log (blocking; creates the file the first time)."""
        with self._lock:
            lines, self._lines = self._lines, []
            if self._handle is None:
                self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)
            self._handle.write("".join(lines))
            self._handle.flush()

    @property
    def closed(self) -> bool:
        """True when every line is written and the file is closed (or was never needed)."""
        return not self._lines and self._handle is None

    def close(self) -> None:
        """Flush and close the log (blocking); the log exists afterwards even if empty."""
        self.flush()
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None


def run_tool_calls(work_dir: Path, calls: list[dict[str, Any]], transcript: _Transcript) -> list[str]:
    """Run one turn's tool calls in order (blocking); return the results the model sees."""
    return [run_tool_call(work_dir, call, transcript) for call in calls]


def run_tool_call(work_dir: Path, call: dict[str, Any], transcript: _Transcript) -> str:
    """Run one tool call; return the tool result text the model sees."""
    function = call.get("function") or {}
    name = function.get("name")
    if name != "write_file":
        transcript.write("tool_rejected", name=name, reason="unknown tool")
        return f"error: unknown tool {name!r}; the only tool is write_file(path, content)"
    try:
        args = json.loads(function.get("arguments") or "{}")
    except ValueError as err:
        transcript.write("tool_rejected", name=name, reason=f"arguments are not JSON: {err}")
        return f'error: arguments are not valid JSON ({err}); send {{"path": ..., "content": ...}}'
    if not isinstance(args, dict) or not isinstance(args.get("content"), str):
        transcript.write("tool_rejected", name=name, reason="missing path or content")
        return "error: write_file needs a string path and a string content"
    try:
        written = write_confined(work_dir, args.get("path"), args["content"])
    except PathRejected as err:
        transcript.write("tool_rejected", name=name, path=args.get("path"), reason=str(err))
        return f"error: path {args.get('path')!r} rejected: {err}"
    except OSError as err:
        transcript.write("tool_rejected", name=name, path=args.get("path"), reason=str(err))
        return f"error: could not write {args.get('path')!r}: {err.strerror}"
    size = len(args["content"].encode("utf-8"))
    transcript.write("wrote", path=written, bytes=size)
    return f"wrote {written} ({size} bytes)"
