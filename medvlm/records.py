"""Typed records that flow between pipeline stages (each stage maps records to records)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

FindingStatus = Literal["present", "absent", "uncertain"]
RiskLevel = Literal["normal", "low", "moderate", "high", "critical", "indeterminate"]
RISK_LEVELS: tuple[str, ...] = ("normal", "low", "moderate", "high", "critical", "indeterminate")
MODALITIES: tuple[str, ...] = ("chest_xray", "ct", "mri")
# How a model answer ended; anything but "complete" can never be graded normal.
AnswerStatus = Literal["complete", "truncated", "empty", "error"]


@dataclass(frozen=True)
class StudyRef:
    """A study found by discovery, before any pixel is decoded."""

    key: str  # de-identified study key (never a patient identifier)
    source: str  # folder or file the study came from, relative to the batch root
    files: tuple[str, ...]  # absolute paths of the files that make up the study
    uid: str | None = None  # StudyInstanceUID when known (never written out without --include-phi)
    # What loading needs from each DICOM file's header, read once by discovery (ingest.types.HeaderSummary:
    # small, picklable, no identifiers); empty for refs made elsewhere, whose headers load_study reads.
    headers: tuple[Any, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, eq=False)
class ImageInput:
    """One image as it reaches the model, with how it was derived from the file."""

    source: str  # file name relative to the batch root
    sha256: str  # SHA-256 of the file's bytes; of a multi-file series, of its sha256sum manifest (ingest.load.image_sha256)
    image: Image.Image  # RGB, 8-bit, ready for the processor
    kind: Literal["dicom", "raster"]
    original_shape: tuple[int, ...]  # (rows, cols) or (frames, rows, cols) or (rows, cols, 3)
    photometric: str | None = None  # DICOM PhotometricInterpretation, or PIL mode for rasters
    transfer_syntax: str | None = None
    windowing: str | None = None  # human-readable: "WC/WW 40/400 from header", "percentile 0.5-99.5"
    frames: str | None = None  # which frames/slices were used, e.g. "frame 1 of 1", "montage of 4 of 10"
    view: str | None = None  # PA, AP, LAT...
    series_description: str | None = None


@dataclass(frozen=True)
class StudyContext:
    """Clinical context that may be used in the prompt (no identifiers)."""

    age_years: int | None = None
    sex: str | None = None  # "M", "F", "O"
    view: str | None = None
    indication: str | None = None
    body_part: str | None = None
    study_description: str | None = None
    dicom_modality: str | None = None  # CR, DX, CT, MR ...


@dataclass(frozen=True, eq=False)
class Study:
    """A decoded study: images plus context, ready for prompting."""

    ref: StudyRef
    images: tuple[ImageInput, ...]
    context: StudyContext = field(default_factory=StudyContext)
    notes: tuple[str, ...] = ()  # ingest remarks, e.g. "read without preamble (force=True)"
    phi: dict[str, str] = field(default_factory=dict)  # kept only for --include-phi


@dataclass(frozen=True)
class Prompt:
    """The rendered prompt for one study."""

    modality: str
    template_id: str
    template_hash: str  # sha256 of the template file bytes
    system: str
    text: str


@dataclass(frozen=True)
class ModelOutput:
    """What the model said for one study."""

    text: str
    answer_status: AnswerStatus
    prompt_tokens: int
    new_tokens: int
    seconds: float = 0.0
    error: str | None = None
    # The images exactly as the backend sent them (encoded files, e.g. PNG for a remote server); the
    # report saves these bytes as image-N.png. Empty when the model took pixels in process.
    images: tuple[bytes, ...] = field(default=(), repr=False)
    # How the answer was obtained, for provenance (a remote backend: served model id, latency, usage...).
    request: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Evidence:
    """Where a finding comes from in the source text (offsets are into the full text)."""

    text: str  # the matched mention
    start: int
    end: int
    sentence: str
    sentence_start: int
    sentence_end: int


@dataclass(frozen=True)
class Finding:
    # Stable across regrades (finding_ids.py); set when the study is known, None straight from extract().
    id: str | None = field(default=None, kw_only=True)
    code: str
    label: str
    status: FindingStatus
    evidence: Evidence
    critical: bool = False
    severity: str | None = None
    laterality: str | None = None
    change: str | None = None  # new, worsening, stable, improving, resolved
    cue: str | None = None  # the negation/uncertainty trigger that decided the status


@dataclass(frozen=True)
class FiredRule:
    rule_id: str
    level: str
    description: str
    finding_code: str | None = None
    finding_status: str | None = None
    evidence: str | None = None


@dataclass(frozen=True)
class RiskGrade:
    level: str
    rules_fired: tuple[FiredRule, ...]
    rules_id: str
    rules_hash: str


@dataclass(frozen=True)
class StudyError:
    """A study that could not be processed: one line, which stage, which study."""

    ref: StudyRef
    stage: str  # discover, ingest, prompt, model, extract, grade, report
    reason: str  # one line, no traceback
    status: Literal["error", "skipped"] = "error"


@dataclass
class Timings:
    """Per-stage seconds for one study (mutable while the study moves through the pipeline)."""

    stages: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds


def to_jsonable(obj: Any) -> Any:
    """Dataclass/tuple tree to plain JSON types (images are dropped)."""
    from dataclasses import fields, is_dataclass

    if is_dataclass(obj):
        return {
            f.name: to_jsonable(getattr(obj, f.name))
            for f in fields(obj)
            if not isinstance(getattr(obj, f.name), Image.Image)
        }
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    return obj
