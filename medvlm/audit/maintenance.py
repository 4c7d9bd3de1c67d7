"""Ledger records for work on an existing run that loads no model (regrade)."""

from __future__ import annotations

import copy
from pathlib import Path

from ..clock import utc_now
from .fingerprint import attempt_fingerprint, components_digest
from .session import LedgerSession, file_entries


class RegradeAudit(LedgerSession):
    """Holds the run lock and appends one `attempt` record per regraded report.

    The record's fingerprint is the earlier attempt's inputs combined with the earlier run's
    components where only this modality's vocabulary and rules hashes are replaced, so a later
    `medvlm batch` with the same vocabulary and rules resumes, and with the old ones redoes.
    """

    def __init__(self, out: Path, purpose: str = "regrade"):
        super().__init__(out)
        self.purpose = purpose

    def start_fields(self) -> dict:
        return {"components": None}

    def record(self, key: str, row: dict, written: dict[str, str], modality: str, resource_hashes: dict) -> None:
        """Append the regraded study's attempt with its new report and file hashes.

        resource_hashes: the modality's new hashes as run components store them (vocabulary, rules, cues).
        """
        previous = self.latest.get(key) or {}
        components = copy.deepcopy(self.run_components.get(previous.get("run_id")) or {})
        resources = components.get("resources", {}).get(modality)
        if isinstance(resources, dict):
            resources.update(resource_hashes)
        inputs = previous.get("inputs")
        fingerprint = attempt_fingerprint(inputs, components_digest(components)) if inputs and components else None
        report, files = file_entries(self.out, key, written)
        self.append(
            {"kind": "attempt", "run_id": previous.get("run_id", self.run_id), "purpose": self.purpose,
             "maintenance_run_id": self.run_id, "time": utc_now(), "study_key": key, "status": row.get("status"),
             "stage": None, "reason": None, "inputs": inputs, "fingerprint": fingerprint, "report": report,
             "files": files, "row": row}
        )
