"""What a planner lists on disk once per command: partition directories and their
staging neighbours, and archived attempts.

`Planner` (orch.engine.plan) inherits these; one listing per directory, one
per stage's `wip/attempts/`, so partitions that never failed cost no system call.
"""

from __future__ import annotations

import os
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orch.config.partitions import Partition
from orch.config.workspace import Workspace
from orch.store.layout import STAGING_NAME, list_attempts, read_error, stage_attempts_dir
from orch.store.manifest import Manifest


@dataclass
class Listing:
    """One directory holding partition directories, as listed once by a planner.

    Attributes:
        names: Every name but staging directories'.
        staging: Partition directory name -> attempt numbers of its staging directories.
        links: The names that are symlinks.
    """

    names: set[str]
    staging: dict[str, list[str]]
    links: set[str]


class DiskListings:
    """Directory listings and archived attempts, read once per planner."""

    ws: Workspace
    root: str
    _listings: dict[str, Listing]
    _attempted: dict[str, set[str]]

    def _listing(self, parent: str) -> Listing:
        """The names in directory `parent`, read once (one scandir: no stat per name)."""
        if parent not in self._listings:
            listing = Listing(set(), {}, set())
            try:
                with os.scandir(parent) as entries:
                    for entry in entries:
                        match = STAGING_NAME.match(entry.name)
                        if match:
                            listing.staging.setdefault(match.group("pid"), []).append(match.group("n"))
                            continue
                        listing.names.add(entry.name)
                        if entry.is_symlink():
                            listing.links.add(entry.name)
            except (FileNotFoundError, NotADirectoryError):
                pass
            self._listings[parent] = listing
        return self._listings[parent]

    def listing_of_parent(self, parent: str) -> Listing:
        """The listing of project-relative directory `parent` (read once)."""
        return self._listing(f"{self.root}/{parent}")

    def staging_numbers(self, partition: Partition) -> list[int]:
        """Attempt numbers of the partition's staging dirs seen when first looked at."""
        parent, name = os.path.split(os.path.join(self.ws.root, partition.out_dir))
        return sorted(int(n) for n in self._listing(parent).staging.get(name, []))

    def last_attempt_number(
        self, partition: Partition, manifest: Manifest | None, removed: Set[int] = frozenset()
    ) -> int:
        """The highest attempt number on disk: the manifest's, archived, or staging.

        `removed`: staging numbers deleted since the directory was listed.
        """
        seen = [manifest.attempt] if manifest else []
        seen += [n for n, _ in self.archived(partition)]
        seen += [n for n in self.staging_numbers(partition) if n not in removed]
        return max(seen, default=0)

    def has_staging(self, partition: Partition) -> bool:
        """True if a staging directory of the partition was seen on disk."""
        parent, name = os.path.split(os.path.join(self.ws.root, partition.out_dir))
        return name in self._listing(parent).staging

    def archived(self, partition: Partition) -> list[tuple[int, str]]:
        """Return `(n, path)` of the partition's attempts kept in wip/attempts/, oldest first.

        Lists `wip/attempts/<stage>/` once per stage, so partitions that never
        failed cost no system call.
        """
        if not self.has_archived(partition.stage, partition.id):
            return []
        return [(n, str(path)) for n, path in list_attempts(self.ws.root, partition.stage, partition.id)]

    def has_archived(self, stage: str, partition_id: str) -> bool:
        """True if `wip/attempts/<stage>/<id>/` exists (one listing per stage)."""
        if stage not in self._attempted:
            base = stage_attempts_dir(self.ws.root, stage)
            try:
                self._attempted[stage] = set(os.listdir(base))
            except (FileNotFoundError, NotADirectoryError):
                self._attempted[stage] = set()
        return partition_id in self._attempted[stage]

    def last_error(self, partition: Partition) -> dict[str, Any] | None:
        """Return the error record of the partition's latest failed attempt, if any."""
        for _, path in reversed(self.archived(partition)):
            error = read_error(Path(path))
            if error is not None:
                return error
        return None
