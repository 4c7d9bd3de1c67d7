"""Ledger records for work on an existing run that loads no model (regrade): the attempt records of
rewritten reports, and the check that refuses to rewrite a report altered outside medvlm."""

from __future__ import annotations

import copy
from pathlib import Path

from ..clock import utc_now
from ..fileio import sha256_file
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

    def edits(self, key: str) -> dict[str, dict]:
        """Files of the study that differ from what its latest attempt recorded: {path: {recorded, found}}.

        A report with no recorded attempt counts as edited (recorded None): nothing proves medvlm wrote
        it. `found` is None for a recorded file that is gone. Regrading such a study would write the
        new hashes into the ledger and `verify` would no longer see the edit: it needs --adopt-edits.
        """
        latest = self.latest.get(key)
        report_rel = f"{key}/report.json"
        if latest is None or not latest.get("report"):
            path = self.out / report_rel
            return {report_rel: {"recorded": None, "found": sha256_file(path) if path.is_file() else None}}
        out: dict[str, dict] = {}
        recorded = {latest["report"].get("path", report_rel): latest["report"], **(latest.get("files") or {})}
        for rel, meta in sorted(recorded.items()):
            path = self.out / rel
            found = sha256_file(path) if path.is_file() else None
            if found != meta.get("sha256"):
                out[rel] = {"recorded": meta.get("sha256"), "found": found}
        return out

    def adopt(self, key: str, edits: dict[str, dict]) -> dict:
        """Record that the user adopted files altered outside medvlm (regrade --adopt-edits) before they are rewritten."""
        latest = self.latest.get(key) or {}
        return self.append({"kind": "adopt", "run_id": self.run_id, "purpose": self.purpose, "time": utc_now(),
                            "study_key": key, "attempt_seq": latest.get("seq"), "files": edits,
                            "reason": "edited outside medvlm; adopted with --adopt-edits"})
