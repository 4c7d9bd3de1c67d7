"""What a phantom study is: the patient's anatomy, the findings drawn, how the files are stored.

Everything here is sampled from one numpy Generator per study, so a study depends only on
(seed, index): the same seed gives the same studies whatever `n` is. Lengths are in units of the
image height (one unit = 43 cm, the long side of a 35 x 43 cm cassette).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

CM = 1.0 / 43.0  # one centimetre in image-height units

# The chest vocabulary codes a phantom can carry (medvlm/findings/vocab/chest_xray.yaml), in the
# order they are reported and listed in truth.csv.
FINDING_CODES: tuple[str, ...] = (
    "pneumothorax",
    "pleural_effusion",
    "consolidation",
    "edema",
    "atelectasis",
    "mass",
    "nodule",
    "cardiomegaly",
)

NORMAL_SHARE = 1.0 / 3.0

# Cardiothoracic ratios: normal studies stay below 0.48, cardiomegaly starts at 0.54, so truth is
# never a judgement call on the border.
CTR_NORMAL = (0.38, 0.48)
CTR_BY_SEVERITY = {"mild": (0.54, 0.58), "moderate": (0.58, 0.63), "severe": (0.63, 0.70)}

INDICATIONS = (
    "Cough",
    "Shortness of breath",
    "Chest pain",
    "Fever",
    "Preoperative assessment",
    "Follow-up",
    "Dyspnea on exertion",
    "Routine screening",
    "Trauma",
    "Weight loss",
    "Hypoxia",
    "Pre-employment screening",
)


@dataclass(frozen=True)
class Finding:
    """One drawn abnormality; the fields that do not apply to its code are None."""

    code: str
    side: str | None = None  # right, left, bilateral
    severity: str | None = None  # small/moderate/large (effusion, pneumothorax); mild/moderate/severe
    zone: str | None = None  # upper, middle, lower
    kind: str | None = None  # consolidation patchy|lobar; atelectasis plate|lobar
    size_cm: float | None = None  # nodule and mass diameter
    pos: tuple[float, float] | None = None  # nodule/mass: (across the lung 0 medial..1 lateral, within the zone 0..1)

    def describe(self) -> str:
        """Compact text for truth.csv's details column, e.g. `pleural_effusion:right:moderate`."""
        parts = [self.code]
        parts += [p for p in (self.side, self.severity, self.zone, self.kind) if p]
        if self.size_cm is not None:
            parts.append(f"{self.size_cm:.1f}cm")
        return ":".join(parts)


@dataclass(frozen=True)
class Anatomy:
    """Per-patient geometry and exposure; positions in image-height units, x measured from the left edge."""

    aspect: float  # columns / rows
    thorax_half_width: float  # W: inner rib cage half width at its widest
    body_extra: float  # soft tissue beyond the ribs (habitus)
    habitus: float  # 0 thin .. 1 heavy (soft tissue attenuation)
    apex_y: float
    dome_right_y: float
    dome_left_drop: float  # left dome sits lower by this much
    recess_depth: float  # costophrenic recess below the dome
    mediastinum_half_width: float
    ctr: float  # cardiothoracic ratio as drawn
    heart_height: float  # relative to heart width
    aortic_knob: float  # how far the knob bulges
    rib_spacing: float
    rib_phase: float
    rotation_deg: float
    scale: float
    shift: tuple[float, float]
    exposure: float  # global attenuation scale (over/under exposure)
    gamma: float
    noise: float  # quantum noise sigma at 256 px
    breasts: bool
    gastric_bubble: bool
    marker: str | None  # "R"/"L" lead marker drawn on the film, or None
    collimation: float  # width of the collimated border (0 for none)


@dataclass(frozen=True)
class Storage:
    """How one study's images are written."""

    format: str  # dicom or png
    modality: str = "CR"  # CR or DX
    photometric: str = "MONOCHROME2"
    compression: str | None = None  # None, rle, j2k
    bits_stored: int = 12
    rescale: tuple[float, float] | None = None  # (slope, intercept)
    window: str = "header"  # header, none (percentile), placeholder
    padding: bool = False


@dataclass(frozen=True)
class PhantomStudy:
    """One study: who, what is drawn, which views, how it is stored."""

    index: int
    name: str  # folder name (the `study` column of truth.csv)
    seed: int
    age: int
    sex: str  # M or F
    indication: str
    views: tuple[str, ...]  # ("PA",), ("AP",), ("PA", "LL")
    anatomy: Anatomy
    findings: tuple[Finding, ...]
    storage: Storage
    study_date: str = "20240101"
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def codes(self) -> tuple[str, ...]:
        present = {f.code for f in self.findings}
        return tuple(c for c in FINDING_CODES if c in present)

    def finding(self, code: str) -> Finding | None:
        return next((f for f in self.findings if f.code == code), None)


def study_rng(seed: int, index: int, purpose: str = "spec") -> np.random.Generator:
    """The generator for one study and purpose; independent of how many studies are made."""
    salt = {"spec": 0, "pixels": 1, "text": 2}[purpose]
    return np.random.default_rng([int(seed), int(index), salt])


def _choice(rng: np.random.Generator, options, p=None):
    return options[int(rng.choice(len(options), p=p))]


def sample_anatomy(rng: np.random.Generator, ctr: float) -> Anatomy:
    habitus = float(rng.beta(2.0, 2.5))
    w = float(rng.uniform(0.30, 0.355))
    apex = float(rng.uniform(0.12, 0.17))
    dome = float(rng.uniform(0.63, 0.72))
    return Anatomy(
        aspect=float(_choice(rng, (1.0, 1.0, 0.9, 1.1, 0.95, 1.05))),
        thorax_half_width=w,
        body_extra=float(0.035 + 0.06 * habitus + rng.uniform(0, 0.01)),
        habitus=habitus,
        apex_y=apex,
        dome_right_y=dome,
        dome_left_drop=float(rng.uniform(0.012, 0.035)),
        recess_depth=float(rng.uniform(0.045, 0.07)),
        mediastinum_half_width=float(rng.uniform(0.058, 0.074)),
        ctr=float(ctr),
        heart_height=float(rng.uniform(0.62, 0.78)),
        aortic_knob=float(rng.uniform(0.0, 0.022)),
        rib_spacing=float(rng.uniform(0.052, 0.064)),
        rib_phase=float(rng.uniform(-0.012, 0.012)),
        rotation_deg=float(rng.normal(0.0, 1.6)),
        scale=float(rng.uniform(0.93, 1.04)),
        shift=(float(rng.uniform(-0.025, 0.025)), float(rng.uniform(-0.02, 0.025))),
        exposure=float(rng.uniform(0.85, 1.15)),
        gamma=float(rng.uniform(0.85, 1.2)),
        noise=float(rng.uniform(0.006, 0.02)),
        breasts=False,
        gastric_bubble=bool(rng.random() < 0.6),
        marker=_choice(rng, ("R", "L", None), p=(0.45, 0.2, 0.35)),
        collimation=float(rng.uniform(0.015, 0.05)) if rng.random() < 0.3 else 0.0,
    )


# How often each finding is picked for an abnormal study (before the pairing rules below).
_WEIGHTS = {
    "pleural_effusion": 1.2,
    "cardiomegaly": 1.1,
    "pneumothorax": 0.9,
    "consolidation": 1.1,
    "nodule": 1.0,
    "mass": 0.85,
    "edema": 0.8,
    "atelectasis": 1.0,
}
# Findings that often come together, so combinations look like real patients.
_COMPANIONS = {
    "edema": (("cardiomegaly", 0.45), ("pleural_effusion", 0.35)),
    "cardiomegaly": (("pleural_effusion", 0.2),),
    "consolidation": (("pleural_effusion", 0.15),),
    "mass": (("pleural_effusion", 0.12),),
    "pleural_effusion": (("atelectasis", 0.2),),
}
_SIDES = ("right", "left")


def _other(side: str) -> str:
    return "left" if side == "right" else "right"


def sample_findings(rng: np.random.Generator) -> tuple[Finding, ...]:
    """About a third normal; otherwise one to three findings with sides, severity and positions."""
    if rng.random() < NORMAL_SHARE:
        return ()
    k = int(rng.choice((1, 2, 3), p=(0.55, 0.32, 0.13)))
    codes = list(_WEIGHTS)
    weights = np.array([_WEIGHTS[c] for c in codes])
    chosen: list[str] = [codes[int(rng.choice(len(codes), p=weights / weights.sum()))]]
    while len(chosen) < k:
        companions = [c for c, p in _COMPANIONS.get(chosen[-1], ()) if c not in chosen and rng.random() < p]
        if companions:
            chosen.append(companions[0])
            continue
        free = [c for c in codes if c not in chosen]
        w = np.array([_WEIGHTS[c] for c in free])
        chosen.append(free[int(rng.choice(len(free), p=w / w.sum()))])
    findings: list[Finding] = []
    taken: dict[str, set[str]] = {"right": set(), "left": set()}  # side -> zones used by focal findings
    ptx_side = None
    for code in chosen:
        f = _sample_one(rng, code, taken, ptx_side, findings)
        if f.code == "pneumothorax":
            ptx_side = f.side
        findings.append(f)
    order = {c: i for i, c in enumerate(FINDING_CODES)}
    return tuple(sorted(findings, key=lambda f: order[f.code]))


def _zone_for(rng, side: str, taken: dict[str, set[str]], options=("upper", "middle", "lower")) -> tuple[str, str]:
    """A (side, zone) not used by another focal finding; switches side when needed."""
    for s in (side, _other(side)):
        free = [z for z in options if z not in taken[s] and not (s == "left" and z == "middle")]
        if free:
            zone = _choice(rng, free)
            taken[s].add(zone)
            return s, zone
    return side, options[0]


def _sample_one(rng, code: str, taken, ptx_side, done: list[Finding]) -> Finding:
    side = _choice(rng, _SIDES)
    if code == "pleural_effusion":
        if any(f.code == "edema" for f in done):
            side = _choice(rng, ("bilateral", "right", "bilateral"))
        else:
            side = _choice(rng, ("right", "left", "bilateral"), p=(0.4, 0.35, 0.25))
        if ptx_side and side in (ptx_side, "bilateral"):
            side = _other(ptx_side)  # no hydropneumothorax: its air-fluid level is another finding
        return Finding(code, side=side, severity=_choice(rng, ("small", "moderate", "large"), p=(0.35, 0.4, 0.25)))
    if code == "cardiomegaly":
        return Finding(code, severity=_choice(rng, ("mild", "moderate", "severe"), p=(0.4, 0.35, 0.25)))
    if code == "pneumothorax":
        effusion = next((f for f in done if f.code == "pleural_effusion"), None)
        if effusion is not None:
            side = _other(effusion.side) if effusion.side != "bilateral" else side
        return Finding(code, side=side, severity=_choice(rng, ("small", "moderate", "large"), p=(0.3, 0.4, 0.3)))
    if code == "consolidation":
        side, zone = _zone_for(rng, side, taken)
        return Finding(code, side=side, zone=zone, kind=_choice(rng, ("patchy", "lobar"), p=(0.55, 0.45)))
    if code == "nodule":
        side, zone = _zone_for(rng, side, taken, ("upper", "middle", "lower"))
        return Finding(code, side=side, zone=zone, size_cm=round(float(rng.uniform(1.2, 2.8)), 1),
                       pos=(float(rng.uniform(0.3, 0.75)), float(rng.uniform(0.25, 0.75))))
    if code == "mass":
        side, zone = _zone_for(rng, side, taken, ("upper", "middle", "lower"))
        return Finding(code, side=side, zone=zone, size_cm=round(float(rng.uniform(3.6, 7.0)), 1),
                       pos=(float(rng.uniform(0.35, 0.65)), float(rng.uniform(0.35, 0.65))))
    if code == "edema":
        return Finding(code, side="bilateral", severity=_choice(rng, ("mild", "moderate", "severe"), p=(0.3, 0.4, 0.3)))
    if code == "atelectasis":
        kind = _choice(rng, ("plate", "lobar"), p=(0.6, 0.4))
        if kind == "plate":
            side = _choice(rng, ("right", "left", "bilateral"), p=(0.35, 0.35, 0.3))
            if side != "bilateral":
                taken[side].add("lower")
            return Finding(code, side=side, zone="lower", kind=kind)
        side, zone = _zone_for(rng, side, taken, ("lower", "upper") if side == "right" else ("lower",))
        return Finding(code, side=side, zone=zone, kind=kind)
    raise ValueError(f"unknown phantom finding {code!r}")


def sample_storage(rng: np.random.Generator, png_share: float) -> Storage:
    if rng.random() < png_share:
        return Storage(format="png", modality="", photometric="", window="none")
    modality = _choice(rng, ("CR", "DX"))
    photometric = "MONOCHROME1" if rng.random() < (0.4 if modality == "CR" else 0.12) else "MONOCHROME2"
    compression = _choice(rng, (None, "rle", "j2k"), p=(0.72, 0.16, 0.12))
    rescale = None
    if modality == "DX" and rng.random() < 0.5:
        rescale = (float(_choice(rng, (1.0, 2.0, 0.5))), float(_choice(rng, (0.0, -1024.0, -500.0))))
    window = _choice(rng, ("header", "none", "placeholder"), p=(0.7, 0.22, 0.08))
    return Storage(
        format="dicom", modality=modality, photometric=photometric, compression=compression,
        bits_stored=int(_choice(rng, (10, 12, 14, 16), p=(0.1, 0.5, 0.25, 0.15))), rescale=rescale,
        window=window, padding=bool(rng.random() < 0.2),
    )


def sample_study(seed: int, index: int, *, png_share: float = 0.1, lateral_share: float = 0.25,
                 name: str | None = None) -> PhantomStudy:
    """The whole study for (seed, index)."""
    rng = study_rng(seed, index)
    findings = sample_findings(rng)
    cardio = next((f for f in findings if f.code == "cardiomegaly"), None)
    lo, hi = CTR_BY_SEVERITY[cardio.severity] if cardio else CTR_NORMAL
    anatomy = sample_anatomy(rng, float(rng.uniform(lo, hi)))
    sex = _choice(rng, ("M", "F"))
    age = int(np.clip(rng.normal(58, 17), 18, 95))
    anatomy = replace(anatomy, breasts=sex == "F" and rng.random() < 0.8)
    storage = sample_storage(rng, png_share)
    frontal = "AP" if rng.random() < 0.3 else "PA"
    views: tuple[str, ...] = (frontal,)
    if storage.format == "dicom" and frontal == "PA" and rng.random() < lateral_share / 0.7:
        views = ("PA", "LL")
    year = int(rng.integers(2019, 2025))
    date = f"{year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    return PhantomStudy(
        index=index,
        name=name or f"phantom_{index:05d}",
        seed=seed,
        age=age,
        sex=sex,
        indication=_choice(rng, INDICATIONS),
        views=views,
        anatomy=anatomy,
        findings=findings,
        storage=storage,
        study_date=date,
    )
