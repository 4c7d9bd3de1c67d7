"""Radiology report text for a phantom study, written from its truth: the phantom model's training targets.

FINDINGS has one sentence per structure (lungs, pleura, heart and mediastinum, bones) with
laterality and severity; IMPRESSION lists what is present, or says the study is normal. Pertinent
negatives are stated. Phrasing varies with the generator passed in. The wording is chosen so that
medvlm's findings extractor reads exactly the truth back (tests/test_phantoms.py checks this over
thousands of studies): no words that name findings outside the phantom set ("opacity", "collapse",
"lesion"), and negatives that the extractor's negation scope covers.
"""

from __future__ import annotations

import numpy as np

from .spec import Finding, PhantomStudy

LOBES = {
    ("right", "upper"): "right upper lobe",
    ("right", "middle"): "right middle lobe",
    ("right", "lower"): "right lower lobe",
    ("left", "upper"): "left upper lobe",
    ("left", "middle"): "lingula",
    ("left", "lower"): "left lower lobe",
}
ZONES = {"upper": "upper", "middle": "mid", "lower": "lower"}


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _effusion(f: Finding, rng) -> tuple[str, str]:
    sev = f.severity
    if f.side == "bilateral":
        finding = _pick(rng, (
            f"{sev} bilateral pleural effusions with blunting of both costophrenic angles",
            f"there are {sev} bilateral pleural effusions",
            f"{sev} pleural effusions are present bilaterally",
        ))
        return finding, f"{sev} bilateral pleural effusions"
    side = f.side
    if sev == "small":
        finding = _pick(rng, (
            f"small {side} pleural effusion blunting the {side} costophrenic angle",
            f"there is a small {side} pleural effusion",
            f"blunting of the {side} costophrenic angle consistent with a small {side} pleural effusion",
        ))
    else:
        finding = _pick(rng, (
            f"{sev} {side} pleural effusion with a meniscus",
            f"there is a {sev} {side} pleural effusion",
            f"a {sev} {side} pleural effusion layers at the {side} base",
        ))
    return finding, f"{sev} {side} pleural effusion"


def _pneumothorax(f: Finding, rng) -> tuple[str, str]:
    sev, side = f.severity, f.side
    finding = _pick(rng, (
        f"{sev} {side} pneumothorax with a visible visceral pleural line and absent lung markings peripherally",
        f"there is a {sev} {side} pneumothorax",
        f"a {sev} {side} pneumothorax is present, with no lung markings beyond the pleural line",
    ))
    return finding, f"{sev} {side} pneumothorax"


def _consolidation(f: Finding, rng) -> tuple[str, str]:
    lobe = LOBES[(f.side, f.zone)]
    if f.kind == "lobar":
        finding = _pick(rng, (
            f"dense consolidation of the {lobe} with air bronchograms",
            f"lobar consolidation in the {lobe}",
            f"there is consolidation throughout the {lobe}",
        ))
    else:
        finding = _pick(rng, (
            f"patchy consolidation in the {lobe}",
            f"there is patchy consolidation in the {lobe}",
            f"focal consolidation in the {lobe}",
        ))
    return finding, f"{lobe} consolidation"


def _edema(f: Finding, rng) -> tuple[str, str]:
    sev = f.severity
    if sev == "mild":
        finding = _pick(rng, (
            "mild interstitial pulmonary edema with Kerley B lines",
            "mild pulmonary edema with septal lines at the bases",
            "there is mild interstitial edema",
        ))
    elif sev == "moderate":
        finding = _pick(rng, (
            "moderate pulmonary edema with perihilar haziness",
            "there is moderate pulmonary edema",
            "moderate bilateral pulmonary edema with indistinct vessels",
        ))
    else:
        finding = _pick(rng, (
            "severe alveolar pulmonary edema in a perihilar distribution",
            "there is severe bilateral pulmonary edema",
            "severe pulmonary edema with perihilar haziness",
        ))
    return finding, f"{sev} pulmonary edema"


def _atelectasis(f: Finding, rng) -> tuple[str, str]:
    if f.kind == "plate":
        if f.side == "bilateral":
            finding = _pick(rng, ("bibasilar plate-like atelectasis", "plate-like atelectasis at both lung bases",
                                  "linear atelectasis at both bases"))
            return finding, "bibasilar atelectasis"
        finding = _pick(rng, (f"plate-like atelectasis at the {f.side} lung base",
                              f"linear atelectasis in the {f.side} lower zone",
                              f"there is plate-like atelectasis at the {f.side} base"))
        return finding, f"{f.side} basilar atelectasis"
    lobe = LOBES[(f.side, f.zone)]
    if f.zone == "upper":
        finding = _pick(rng, (f"{lobe} atelectasis with elevation of the horizontal fissure",
                              f"atelectasis of the {lobe} with volume loss"))
    else:
        finding = _pick(rng, (f"{lobe} atelectasis with volume loss",
                              f"atelectasis of the {lobe}",
                              f"there is {lobe} atelectasis"))
    return finding, f"{lobe} atelectasis"


def _nodule(f: Finding, rng) -> tuple[str, str]:
    where = f"{f.side} {ZONES[f.zone]} zone"
    size = f"{f.size_cm:.1f} cm"
    finding = _pick(rng, (
        f"a {size} nodule in the {where}",
        f"there is a well-circumscribed {size} nodule in the {where}",
        f"{size} pulmonary nodule projecting over the {where}",
    ))
    return finding, f"{size} {f.side} {ZONES[f.zone]} zone nodule"


def _mass(f: Finding, rng) -> tuple[str, str]:
    where = f"{f.side} {ZONES[f.zone]} zone"
    size = f"{f.size_cm:.1f} cm"
    finding = _pick(rng, (
        f"a {size} lobulated mass in the {where}",
        f"there is a {size} mass in the {where}",
        f"large {size} mass with lobulated margins in the {where}",
    ))
    return finding, f"{size} {f.side} {ZONES[f.zone]} zone mass"


def _heart(f: Finding | None, ctr: float, rng) -> tuple[str, str | None]:
    if f is None:
        return _pick(rng, (
            "the heart size is normal",
            "heart size is within normal limits",
            "the cardiomediastinal silhouette is within normal limits",
            "normal heart size",
        )), None
    adverb = {"mild": "mildly", "moderate": "moderately", "severe": "markedly"}[f.severity]
    finding = _pick(rng, (
        f"{f.severity} cardiomegaly, cardiothoracic ratio about {ctr:.2f}",
        f"the heart is {adverb} enlarged",
        f"the cardiac silhouette is {adverb} enlarged, cardiothoracic ratio {ctr:.2f}",
    ))
    return finding, f"{f.severity} cardiomegaly"


_LUNG_WRITERS = {"consolidation": _consolidation, "edema": _edema, "atelectasis": _atelectasis, "mass": _mass,
                 "nodule": _nodule}


def report_text(study: PhantomStudy, rng: np.random.Generator) -> str:
    """FINDINGS and IMPRESSION for the study's truth; the phrasing follows `rng`."""
    find = {f.code: f for f in study.findings}
    sentences: list[str] = []
    impressions: list[str] = []

    lung_parts = []
    for code in ("consolidation", "edema", "atelectasis", "mass", "nodule"):
        if code in find:
            text, imp = _LUNG_WRITERS[code](find[code], rng)
            lung_parts.append(text)
            impressions.append(imp)
    if lung_parts:
        sentences += [_cap(p) + "." for p in lung_parts]
        if "consolidation" not in find and rng.random() < 0.5:
            sentences.append("No focal consolidation.")
    elif study.findings:  # "the lungs are clear" would read as a normal study to the extractor
        sentences.append(_pick(rng, ("No focal consolidation.", "No focal consolidation or pulmonary edema.")))
    else:
        sentences.append(_pick(rng, ("The lungs are clear.", "Both lungs are clear.", "The lungs are clear bilaterally.",
                                     "No focal consolidation.")))

    pleura_imps: list[str] = []
    pleura = []
    for code, writer in (("pneumothorax", _pneumothorax), ("pleural_effusion", _effusion)):
        if code in find:
            text, imp = writer(find[code], rng)
            pleura.append(_cap(text) + ".")
            pleura_imps.append(imp)
    if not pleura:
        pleura.append(_pick(rng, ("No pleural effusion or pneumothorax.", "There is no pleural effusion or pneumothorax.",
                                  "No pneumothorax or pleural effusion.")))
    elif "pneumothorax" not in find:
        pleura.append("No pneumothorax.")
    elif "pleural_effusion" not in find:
        pleura.append(_pick(rng, ("No pleural effusion.", "No effusion.")))
    sentences += pleura
    impressions = pleura_imps + impressions

    heart, heart_imp = _heart(find.get("cardiomegaly"), study.anatomy.ctr, rng)
    sentences.append(_cap(heart) + ".")
    if heart_imp:
        impressions.append(heart_imp)
    if "cardiomediastinal" not in heart:
        sentences.append(_pick(rng, ("The mediastinal contours are unremarkable.", "Mediastinal contours are normal.",
                                     "The mediastinum is not widened.")))
    sentences.append(_pick(rng, ("No acute osseous abnormality.", "The osseous structures are intact.",
                                 "Visualized bones are unremarkable.")))

    if not impressions:
        impression = _pick(rng, ("No acute cardiopulmonary abnormality.", "No acute cardiopulmonary process.",
                                 "Normal chest radiograph."))
    elif len(impressions) == 1:
        impression = _cap(impressions[0]) + "."
        if "pneumothorax" not in find and rng.random() < 0.4:
            impression += " No pneumothorax."
    else:
        impression = " ".join(f"{i}. {_cap(text)}." for i, text in enumerate(impressions, start=1))
    return "FINDINGS: " + " ".join(sentences) + "\nIMPRESSION: " + impression
