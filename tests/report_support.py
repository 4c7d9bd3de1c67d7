"""Real report dicts for renderer tests, built from typed records through build_report (no model run)."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from medvlm.models.base import ModelInfo
from medvlm.records import (
    Evidence,
    Finding,
    FiredRule,
    ImageInput,
    ModelOutput,
    Prompt,
    RiskGrade,
    Study,
    StudyContext,
    StudyRef,
)
from medvlm.report.build import build_report
from medvlm.report.write import thumbnail_png

XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = "<img src=x onerror=alert(1)>"
H = "ab" * 32


def chest_image(size: int = 640) -> Image.Image:
    """A soft gradient with two dark 'lungs': enough structure to see that windowing was applied."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = 200 - 90 * np.exp(-(((x - 0.3) / 0.13) ** 2 + ((y - 0.5) / 0.28) ** 2))
    img -= 90 * np.exp(-(((x - 0.7) / 0.13) ** 2 + ((y - 0.5) / 0.28) ** 2))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return Image.fromarray(img, mode="L").convert("RGB")


def finding_in(text: str, phrase: str, code: str, status: str, **kw) -> Finding:
    start = text.index(phrase)
    s_start = text.rfind(".", 0, start) + 1
    while s_start < start and text[s_start] == " ":
        s_start += 1
    s_end = text.find(".", start)
    s_end = len(text) if s_end < 0 else s_end + 1
    ev = Evidence(phrase, start, start + len(phrase), text[s_start:s_end], s_start, s_end)
    return Finding(code=code, label=kw.pop("label", code.replace("_", " ")), status=status, evidence=ev, **kw)


def make_report(
    *,
    text: str = "Small left pleural effusion. No pneumothorax. Possible consolidation in the right lower lobe.",
    study_description: str | None = "CHEST PA",
    random_weights: bool = True,
    phantom: bool = False,
    level: str = "moderate",
    n_images: int = 1,
    phi: dict[str, str] | None = None,
    key: str = "study-0001",
) -> tuple[dict, dict[str, bytes]]:
    """(report dict, thumbnails by name) exactly as the pipeline would write them."""
    images = tuple(
        ImageInput(
            source=f"{key}/img{i + 1}.dcm",
            sha256=hashlib.sha256(f"{key}{i}".encode()).hexdigest(),
            image=chest_image(),
            kind="dicom",
            original_shape=(2048, 2048),
            photometric="MONOCHROME2",
            windowing="WC/WW 2047/4095 from header",
            frames="frame 1 of 1",
            view="PA",
        )
        for i in range(n_images)
    )
    study = Study(
        ref=StudyRef(key=key, source=key, files=()),
        images=images,
        context=StudyContext(age_years=61, sex="F", view="PA", study_description=study_description, dicom_modality="DX"),
        notes=("read without preamble (force=True)",),
        phi=phi or {},
    )
    found = []
    for phrase, code, status in (
        ("pleural effusion", "pleural_effusion", "present"),
        ("pneumothorax", "pneumothorax", "absent"),
        ("consolidation", "consolidation", "uncertain"),
    ):
        if phrase in text:
            extra = {"laterality": "left", "severity": "small"} if code == "pleural_effusion" else {}
            found.append(finding_in(text, phrase, code, status, critical=code == "pneumothorax", **extra))
    rules = tuple(
        FiredRule("effusion-present", level, "pleural effusion present", "pleural_effusion", "present", f.evidence.sentence)
        for f in found
        if f.code == "pleural_effusion"
    )
    grade = RiskGrade(level=level, rules_fired=rules, rules_id="chest_xray-rules", rules_hash=H)
    thumbs = {f"image-{i + 1}.png": thumbnail_png(img.image) for i, img in enumerate(images)}
    doc = build_report(
        study=study,
        modality="chest_xray",
        prompt=Prompt("chest_xray", "chest_xray", H, "You are a radiology research assistant.", "Describe the findings."),
        output=ModelOutput(text=text, answer_status="complete", prompt_tokens=300, new_tokens=40, seconds=1.0),
        findings=found,
        grade=grade,
        model=ModelInfo("phantom" if phantom else "demo", "local", None, None, random_weights, "float32", "none", "cpu",
                        weights_digest=H, phantom=phantom),
        vocabulary={"id": "chest_xray-vocab", "sha256": H, "path": None},
        cues={"id": "en", "sha256": H, "path": None},
        rules={"id": "chest_xray-rules", "sha256": H, "path": None},
        stage_seconds={"decode": 0.01, "model": 1.0},
        started_at="2025-01-01T00:00:00.000+00:00",
        generation={"max_new_tokens": 48, "do_sample": False},
        thumbnails=list(thumbs),
        include_phi=bool(phi),
    )
    return doc, thumbs
