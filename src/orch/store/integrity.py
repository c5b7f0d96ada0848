"""Tell whether a promoted partition's outputs still match its manifest.

A promoted directory can still change behind orch's back (an analyst's
editor, a process that outlived its agent). `find_modified` compares each
output the manifest lists with the file on disk now.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from orch.store.checks import Finding
from orch.store.state import OutputFile, hash_file


def find_modified(directory: str, outputs: Iterable[OutputFile], deep: bool = False) -> list[Finding]:
    """Return one `modified` finding per output that no longer matches the manifest.

    Shallow (`orch status`, `orch plan`, the scheduler): size or mtime differ,
    one `os.stat` per output. Deep (`orch barrier`): size or sha256 differ, so
    every output is read once, in 1 MiB blocks. A missing or unreadable output
    is left to the expect checks (it is `incomplete`, DESIGN.md §5).

    Args:
        directory: The partition directory.
        outputs: The manifest's outputs (paths relative to `directory`).
        deep: Compare contents by hash instead of mtime.
    """
    findings = []
    for output in outputs:
        path = f"{directory}/{output.path}"
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            findings.append(Finding(output.path, "modified", "no longer a regular file"))
        elif st.st_size != output.bytes:
            detail = f"{st.st_size} bytes, the manifest recorded {output.bytes}"
            findings.append(Finding(output.path, "modified", detail))
        elif deep:
            try:
                digest = hash_file(Path(path))
            except OSError:
                continue
            if digest != output.sha256:
                findings.append(Finding(output.path, "modified", "sha256 differs from the manifest"))
        elif st.st_mtime_ns != output.mtime_ns:
            findings.append(Finding(output.path, "modified", "modified after promotion (mtime changed)"))
    return findings
