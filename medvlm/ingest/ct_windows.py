"""The CT window table: three fixed Hounsfield windows per body region, packed into R, G and B.

One image then carries lung, soft tissue and bone contrast (the MedGemma convention for CT slices)
without shrinking the slices into a montage of windows:

    region    R                      G                       B
    head      bone  W2800 L600       subdural W215 L75       brain W80 L40
    chest     lung  W1500 L-600      mediastinum W400 L40    bone W1800 L400
    abdomen   bone  W1800 L400       soft tissue W400 L40    liver W160 L60
    other     wide  W2048 L0         soft tissue W350 L40    brain W80 L40

The region comes from BodyPartExamined, then the study/series descriptions and the protocol name.
"""

from __future__ import annotations

CT_WINDOWS: dict[str, tuple[tuple[str, float, float], ...]] = {
    # region: ((name, width, level) for R, G, B)
    "head": (("bone", 2800, 600), ("subdural", 215, 75), ("brain", 80, 40)),
    "chest": (("lung", 1500, -600), ("mediastinum", 400, 40), ("bone", 1800, 400)),
    "abdomen": (("bone", 1800, 400), ("soft tissue", 400, 40), ("liver", 160, 60)),
    "other": (("wide", 2048, 0), ("soft tissue", 350, 40), ("brain", 80, 40)),
}
REGION_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("head", ("HEAD", "BRAIN", "SKULL", "CRANI", "CEREB", "NEURO", "SINUS", "ORBIT", "FACE")),
    ("chest", ("CHEST", "THORAX", "LUNG", "THOR", "PULM", "CTPA", "HEART", "CARDIAC")),
    ("abdomen", ("ABDOMEN", "ABD", "PELVIS", "LIVER", "KIDNEY", "RENAL", "PANCREA", "COLON")),
)
REGION_KEYWORDS = ("BodyPartExamined", "StudyDescription", "SeriesDescription", "ProtocolName")


def ct_region(header) -> str:
    """head / chest / abdomen / other, from BodyPartExamined then descriptions (Dataset or HeaderSummary)."""
    texts = [str(header.get(k, "") or "").upper() for k in REGION_KEYWORDS]
    for text in texts:
        if not text:
            continue
        for region, words in REGION_WORDS:
            if any(w in text for w in words):
                return region
    return "other"


def ct_description(region: str) -> str:
    """How the windows of a region are reported, e.g. 'CT head: R=bone W2800 L600, G=..., B=...'."""
    wins = CT_WINDOWS[region]
    return f"CT {region}: " + ", ".join(f"{ch}={name} W{w} L{lv}" for ch, (name, w, lv) in zip("RGB", wins))
