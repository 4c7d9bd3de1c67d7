"""The audit side of a batch: lock, resume decisions and the run ledger (first version: no-ops)."""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..records import StudyRef


class RunAudit:
    """Opened once per batch by run_batch; every study attempt goes through it."""

    def __init__(self, out: Path, config: RunConfig):
        self.out = Path(out)
        self.config = config

    def __enter__(self) -> "RunAudit":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def completed_row(self, ref: StudyRef) -> dict | None:
        """The summary row of an earlier attempt that can be reused as is (resume), else None."""
        return None

    def record(self, row: dict, ref: StudyRef) -> None:
        """Append one study attempt (ok, error or skipped) to the ledger."""
        return None


def open_run(out: Path, config: RunConfig) -> RunAudit:
    return RunAudit(out, config)
