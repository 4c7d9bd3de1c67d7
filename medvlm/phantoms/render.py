"""Draw a phantom chest radiograph (frontal or lateral) as a 0..1 density image (1 = dense, bright).

The picture is an attenuation sum: body soft tissue minus the air in the lungs, plus mediastinum,
heart, spine, ribs, clavicles and vessels, plus each drawn finding; then an exposure curve,
heel effect, quantum noise, markers and collimation. Shapes are evaluated in patient coordinates
(image-height units) on a working grid of at most WORK_ROWS rows, so a picture's content does not
depend on the requested pixel size; the result is resampled to the requested size and the fine
noise is added there (scaled so that it averages to the same level at any size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .spec import CM, Anatomy, Finding, PhantomStudy, study_rng

WORK_ROWS = 320
_LEVEL = 200.0  # 8-bit canvas value for a line of intensity 1
EDGE = 0.0045  # softness of organ boundaries
NOISE_REFERENCE_ROWS = 256


def _finding_rng(study: PhantomStudy, code: str, view: str) -> np.random.Generator:
    """A generator of its own per finding and view, so adding a finding leaves the rest of the picture unchanged."""
    salt = sum((i + 1) * ord(ch) for i, ch in enumerate(code + view))
    return np.random.default_rng([int(study.seed), int(study.index), 3, salt])


def _sig(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@dataclass
class _Frame:
    """The working grid in patient coordinates plus the patient->image transform."""

    rows: int
    cols: int
    x: np.ndarray  # patient x of every pixel (rows, cols)
    y: np.ndarray
    cx: float
    cos: float
    sin: float
    scale: float
    shift: tuple[float, float]
    center: tuple[float, float]

    def to_px(self, xp: float, yp: float) -> tuple[float, float]:
        """Patient coordinates -> working-grid pixel coordinates (for PIL drawing)."""
        cxi, cyi = self.center
        dx, dy = (xp - cxi) * self.scale, (yp - cyi) * self.scale
        xi = cxi + dx * self.cos - dy * self.sin + self.shift[0]
        yi = cyi + dx * self.sin + dy * self.cos + self.shift[1]
        return xi * self.rows, yi * self.rows


def _frame(anatomy: Anatomy, rows: int, cols: int, *, rotate: bool = True) -> _Frame:
    aspect = cols / rows
    ys = (np.arange(rows, dtype=np.float32) + 0.5) / rows
    xs = (np.arange(cols, dtype=np.float32) + 0.5) / rows
    xi, yi = np.meshgrid(xs, ys)
    center = (aspect / 2.0, 0.5)
    theta = math.radians(anatomy.rotation_deg if rotate else 0.0)
    c, s = math.cos(theta), math.sin(theta)
    dx = xi - center[0] - anatomy.shift[0]
    dy = yi - center[1] - anatomy.shift[1]
    xp = center[0] + (dx * c + dy * s) / anatomy.scale
    yp = center[1] + (-dx * s + dy * c) / anatomy.scale
    return _Frame(rows, cols, xp.astype(np.float32), yp.astype(np.float32), center[0], c, s, anatomy.scale,
                  anatomy.shift, center)


class _Canvas:
    """Lines and blobs drawn with PIL on the working grid, returned as float arrays."""

    def __init__(self, frame: _Frame):
        self.frame = frame
        self.img = Image.new("L", (frame.cols, frame.rows), 0)
        self.draw = ImageDraw.Draw(self.img)

    def line(self, points: list[tuple[float, float]], width_units: float, value: float) -> None:
        px = [self.frame.to_px(x, y) for x, y in points]
        width = max(1, int(round(width_units * self.frame.rows * self.frame.scale)))
        self.draw.line(px, fill=int(round(value * _LEVEL)), width=width, joint="curve")

    def array(self, blur_units: float) -> np.ndarray:
        radius = blur_units * self.frame.rows
        img = self.img.filter(ImageFilter.GaussianBlur(radius)) if radius >= 0.3 else self.img
        return np.asarray(img, dtype=np.float32) / _LEVEL


# ---------------------------------------------------------------- frontal geometry


@dataclass
class _Thorax:
    cx: float  # rib cage centre
    w: float
    apex: float
    dome: dict[str, float]  # side -> dome y
    recess: float
    hilum: dict[str, tuple[float, float]]
    heart: tuple[float, float, float, float]  # center x, center y, half width, half height
    m: float
    knob: float
    mx: float  # mediastinal centre (moves with volume loss or a large effusion)

    def cp(self, side: str) -> float:
        return self.dome[side] + self.recess


def _thorax(a: Anatomy, cx: float, findings: tuple[Finding, ...]) -> _Thorax:
    dome = {"right": a.dome_right_y, "left": a.dome_right_y + a.dome_left_drop}
    shift = 0.0
    for f in findings:
        if f.code == "atelectasis" and f.kind == "lobar" and f.zone == "lower":
            dome[f.side] -= 0.025  # volume loss raises the hemidiaphragm
            shift += 0.012 if f.side == "left" else -0.012  # and pulls the mediastinum over
        if f.code == "pleural_effusion" and f.severity == "large" and f.side != "bilateral":
            shift += -0.014 if f.side == "left" else 0.014  # pushed away from a large effusion
        if f.code == "pneumothorax" and f.severity == "large":
            shift += -0.01 if f.side == "left" else 0.01
    mcx = cx + shift
    hw = a.ctr * a.thorax_half_width  # half the heart width: CTR = heart width / (2 W)
    hh = a.heart_height * hw
    # the heart's widest level sits a little above the medial diaphragm; below it the borders run
    # straight down to the cardiophrenic angles
    widest = a.dome_right_y + 0.3 * a.recess_depth - 0.35 * hh
    heart = (mcx + 0.28 * hw, widest, hw, hh)
    hilum_y = a.apex_y + 0.43 * (a.dome_right_y - a.apex_y)
    hilum = {"right": (mcx - 0.085, hilum_y + 0.01), "left": (mcx + 0.08, hilum_y - 0.008)}
    return _Thorax(cx, a.thorax_half_width, a.apex_y, dome, a.recess_depth, hilum, heart,
                   a.mediastinum_half_width, a.aortic_knob, mcx)


def _lung_margins(fr: _Frame, th: _Thorax, side: str, *, inset: float = 0.0, apex_drop: float = 0.0):
    """Signed margins (positive inside) of one lung field: lateral, medial, diaphragm, apex."""
    sgn = -1.0 if side == "right" else 1.0  # the patient's right lung is on the image left
    d = (fr.x - th.cx) * sgn  # distance from the midline towards this lung's lateral wall
    y = fr.y
    cp = th.cp(side)
    t = np.clip((y - th.apex - apex_drop) / (cp - th.apex - apex_drop), 0.0, None)
    lateral = th.w * np.clip(t / 0.5, 0.0, 1.0) ** 0.42 - inset * np.clip(1.3 - t, 0.25, 1.0)
    ml = lateral - d
    hx, hy, hw, hh = th.heart
    hx_side = (hx - th.cx) * sgn + hw  # heart border extent towards this side, at its widest
    across = np.sqrt(np.clip(1.0 - ((y - hy) / hh) ** 2, 0.0, 1.0))
    across = np.where(y > hy, 1.0, across)
    heart_edge = np.where(y > hy - hh, hx_side - hw + hw * across, 0.0)
    # the upper mediastinum narrows towards the thoracic inlet
    upper = th.m * (0.72 + 0.28 * np.clip((y - th.apex) / 0.2, 0.0, 1.0))
    medial = np.maximum(upper + (th.mx - th.cx) * sgn, heart_edge)
    if side == "left" and th.knob > 0:
        medial = medial + th.knob * np.exp(-(((y - (th.apex + 0.13)) / 0.025) ** 2))
    mm = d - medial
    k = th.recess / (0.55 * th.w) ** 2
    diaphragm = th.dome[side] + k * (d - 0.45 * th.w) ** 2
    mb = diaphragm - y
    mt = y - th.apex - apex_drop
    return ml, mm, mb, mt, d


def _soft(*margins, edge: float = EDGE):
    out = None
    for m in margins:
        s = _sig(m / edge)
        out = s if out is None else out * s
    return out


# ---------------------------------------------------------------- frontal picture


def _vessels(fr: _Frame, th: _Thorax, rng: np.random.Generator, canvas: _Canvas, edema: str | None) -> None:
    """Branching vessel trees from each hilum, drawn as tapered polylines."""
    for side in ("right", "left"):
        hx, hy = th.hilum[side]
        outward = math.pi if side == "right" else 0.0
        n = int(rng.integers(16, 22))
        for i in range(n):
            frac = (i + rng.uniform(0.1, 0.9)) / n
            ang = outward + (frac - 0.5) * (3.3 if side == "right" else -3.3)
            length = rng.uniform(0.12, 0.27) * (1.1 if abs(math.sin(ang)) > 0.7 else 1.0)
            _vessel(canvas, rng, hx, hy, ang, length, 0.0075, depth=0, edema=edema)


def _vessel(canvas, rng, x, y, ang, length, width, depth, edema):
    steps = 6
    pts = [(x, y)]
    for k in range(steps):
        ang += rng.normal(0, 0.2)
        x += math.cos(ang) * length / steps
        y += math.sin(ang) * length / steps
        pts.append((x, y))
    # tapered: draw halves with decreasing width and intensity
    half = len(pts) // 2
    fuzz = 1.6 if edema else 1.0
    canvas.line(pts[: half + 1], width * fuzz, 1.0)
    canvas.line(pts[half:], width * 0.6 * fuzz, 0.75)
    if depth < 2:
        for _ in range(int(rng.integers(1, 3))):
            j = int(rng.integers(2, len(pts) - 1))
            bx, by = pts[j]
            _vessel(canvas, rng, bx, by, ang + rng.choice((-1, 1)) * rng.uniform(0.3, 0.7),
                    length * rng.uniform(0.35, 0.55), width * 0.55, depth + 1, edema)


def _ribs(fr: _Frame, th: _Thorax, a: Anatomy, canvas: _Canvas, view: str) -> None:
    thick = 0.015
    for side, sgn in (("right", -1.0), ("left", 1.0)):
        for k in range(11):
            y0 = th.apex - 0.045 + a.rib_phase + k * a.rib_spacing
            # posterior rib: leaves the spine, rises, then sweeps down along the lateral wall
            pts = []
            for d in np.linspace(0.07, 1.05, 16):
                yy = y0 - 0.05 * d + 0.16 * max(d - 0.45, 0.0) ** 1.6
                pts.append((th.cx + sgn * d * th.w, yy))
            canvas.line(pts, thick * (0.8 if k < 2 else 1.0), 0.9)
            # anterior rib: fainter, from the lateral wall down towards the sternum
            ya = y0 + 0.035
            pts = [(th.cx + sgn * d * th.w * 1.02, ya + 0.14 * (1.0 - d) ** 1.3) for d in np.linspace(1.0, 0.3, 8)]
            canvas.line(pts, thick * 0.85, 0.4)
        # clavicle
        cy = th.apex + (0.025 if view == "PA" else -0.005)
        pts = [(th.cx + sgn * d, cy - 0.09 * d + 0.05 * d * d) for d in np.linspace(0.03, 0.3, 10)]
        canvas.line(pts, 0.016, 1.2)


def _effusion(fr, th, f: Finding, sides: list[str], fluid: np.ndarray, margins: dict) -> np.ndarray:
    height = {"small": 0.05, "moderate": 0.17, "large": 0.32}[f.severity]
    for side in sides:
        ml, mm, mb, mt, d = margins[side]
        cp = th.cp(side)
        lateral_top = cp - height * (1.0 + 0.15 * (f.severity == "large"))
        rise = 0.35 * height + 0.015
        top = lateral_top + rise * (1.0 - np.clip(d / th.w, 0.0, 1.0) ** 2)  # meniscus: higher laterally
        fluid = np.maximum(fluid, _sig((fr.y - top) / 0.01) * (0.75 + 0.25 * _sig((fr.y - top - 0.05) / 0.03)) * _sig((d - 0.02) / 0.01) * _sig((th.w + 0.01 - d) / 0.006))
    return fluid


def _blob(fr: _Frame, cx: float, cy: float, r: float, rng, lobulation: float, edge: float) -> np.ndarray:
    dx, dy = fr.x - cx, fr.y - cy
    rad = np.sqrt(dx * dx + dy * dy)
    if lobulation > 0:
        ang = np.arctan2(dy, dx)
        bumps = sum(lobulation / (k - 1) * np.sin(k * ang + rng.uniform(0, 6.28)) for k in (3, 5, 7))
        r = r * (1.0 + bumps)
    inside = np.clip(1.0 - (rad / r) ** 2, 0.0, 1.0)
    return np.sqrt(inside) * _sig((r - rad) / edge)


def _zone_box(th: _Thorax, side: str, zone: str) -> tuple[float, float]:
    """The y range of a lung zone on a frontal view."""
    top, bottom = th.apex + 0.03, th.dome[side] - 0.01
    span = bottom - top
    return {"upper": (top, top + 0.36 * span), "middle": (top + 0.36 * span, top + 0.68 * span),
            "lower": (top + 0.62 * span, bottom)}[zone]


def _focal_center(th: _Thorax, f: Finding) -> tuple[float, float]:
    y0, y1 = _zone_box(th, f.side, f.zone)
    across, down = f.pos or (0.55, 0.5)
    y = y0 + down * (y1 - y0)
    sgn = -1.0 if f.side == "right" else 1.0
    inner = th.m + 0.035 + (0.05 if f.zone != "upper" else 0.0)
    outer = th.w * (0.82 if f.zone != "upper" else 0.65)
    return th.cx + sgn * (inner + across * (outer - inner)), y


def frontal(study: PhantomStudy, rows: int, cols: int, view: str = "PA") -> np.ndarray:
    """The frontal film of `study` at rows x cols (float32, 0..1, 1 = dense)."""
    a = study.anatomy
    wr = min(rows, WORK_ROWS)
    wc = max(1, int(round(cols * wr / rows)))
    fr = _frame(a, wr, wc)
    rng = study_rng(study.seed, study.index, "pixels")
    th = _thorax(a, fr.center[0], study.findings)
    find = {f.code: f for f in study.findings}
    x, y = fr.x, fr.y

    # body soft tissue: neck, shoulders, trunk
    shoulder_y = th.apex - 0.065
    bw = 0.085 + (th.w + a.body_extra - 0.085) * _sig((y - shoulder_y) / 0.02)
    tb = np.sqrt(np.clip(1.0 - ((x - th.cx) / bw) ** 2, 0.0, 1.0)) * _sig((y + 0.05) / 0.02)
    att = (0.5 + 0.28 * a.habitus) * tb

    margins = {s: _lung_margins(fr, th, s) for s in ("right", "left")}
    lungs = {s: _soft(*margins[s][:4]) for s in margins}

    # pneumothorax: the lung edge retracted from the wall; no vessels beyond the visceral pleural line
    ptx = find.get("pneumothorax")
    lung_tissue = dict(lungs)
    pleural_line = np.zeros_like(x)
    if ptx:
        gap = {"small": 0.035, "moderate": 0.06, "large": 0.1}[ptx.severity]
        drop = {"small": 0.05, "moderate": 0.075, "large": 0.11}[ptx.severity]
        inner = _lung_margins(fr, th, ptx.side, inset=gap, apex_drop=drop)
        lung_tissue[ptx.side] = _soft(*inner[:4]) * lungs[ptx.side]
        edge_dist = np.minimum(inner[0], inner[3])
        pleural_line = np.exp(-((edge_dist / 0.0022) ** 2)) * lungs[ptx.side] * _sig(inner[1] / EDGE) * _sig(inner[2] / EDGE)

    lung = lungs["right"] + lungs["left"]
    tissue = lung_tissue["right"] + lung_tissue["left"]
    depth = np.clip(np.maximum(margins["right"][0], margins["left"][0]) / (0.35 * th.w), 0.0, 1.0) ** 0.5
    att = att - 0.40 * lung * (0.62 + 0.38 * depth)
    att = att - 0.09 * (lung - tissue)  # the pneumothorax space is pure air
    att = att + 0.08 * pleural_line
    if ptx and ptx.severity == "large":
        att = att + 0.05 * lung_tissue[ptx.side]  # collapsed lung is denser

    # mediastinum, spine, heart, liver, trachea, gastric bubble
    dxm = x - th.cx
    vert = 0.5 + 0.5 * np.cos(2 * math.pi * (y - a.rib_phase) / a.rib_spacing)
    spine = _sig((0.027 - np.abs(dxm)) / 0.003) * (0.10 + 0.05 * vert) * _sig((y - 0.02) / 0.02)
    att = att + spine * (1.0 - 0.5 * lung)
    hx, hy, hw, hh = th.heart
    heart = _sig((1.0 - ((x - hx) / hw) ** 2 - (np.minimum(y - hy, 0.0) / hh) ** 2) / 0.08)
    att = att + 0.07 * heart * (1.0 - lung)
    below = {s: _sig(-margins[s][2] / 0.004) for s in margins}
    att = att + 0.05 * below["right"] * _sig(-dxm / 0.01) * tb
    trachea = _sig((0.011 - np.abs(x - th.mx + 0.004 * (y - 0.2))) / 0.002) * _sig((th.hilum["right"][1] - 0.03 - y) / 0.01)
    att = att - 0.09 * trachea * _sig((y - th.apex + 0.08) / 0.01)
    if a.gastric_bubble:
        gy = th.dome["left"] + 0.035
        bubble = _sig((1.0 - ((x - th.cx - 0.12) / 0.045) ** 2 - ((y - gy) / 0.022) ** 2) / 0.15)
        att = att - 0.14 * bubble * below["left"]
    if a.breasts:
        for sgn in (-1.0, 1.0):
            by = th.dome["right"] - 0.03
            b = _sig((1.0 - ((x - th.cx - sgn * 0.6 * th.w) / (0.5 * th.w)) ** 2 - ((y - by) / 0.11) ** 2) / 0.3)
            att = att + 0.06 * b * _sig((y - by) / 0.02)

    # drawn lines: vessels (only in aerated lung), ribs and clavicles
    edema = find.get("edema")
    canvas = _Canvas(fr)
    _vessels(fr, th, rng, canvas, edema.severity if edema else None)
    vessels = canvas.array(0.0025 if not edema else 0.004)
    for side in ("right", "left"):
        hx_, hy_ = th.hilum[side]
        vessels = vessels + 0.9 * _sig((0.028 - np.hypot(x - hx_, (y - hy_) * 0.6)) / 0.006)
    att = att + 0.055 * np.clip(vessels, 0.0, 1.3) * tissue
    bones = _Canvas(fr)
    _ribs(fr, th, a, bones, view)
    ribs = bones.array(0.0018)
    ribmask = _sig((th.w * 1.06 - np.abs(dxm)) / 0.006) * _sig((th.dome["right"] + 0.12 - y) / 0.02)
    att = att + 0.085 * ribs * ribmask
    if view == "AP":  # scapulae project over the upper lateral lungs on an AP film
        for sgn in (-1.0, 1.0):
            sx = th.cx + sgn * 0.82 * th.w
            tri = _sig((0.08 - np.abs(x - sx) - 0.25 * np.abs(y - th.apex - 0.12)) / 0.006)
            att = att + 0.05 * tri * _sig((y - th.apex) / 0.01)

    # findings
    fluid = np.zeros_like(x)
    eff = find.get("pleural_effusion")
    if eff:
        sides = ["right", "left"] if eff.side == "bilateral" else [eff.side]
        fluid = _effusion(fr, th, eff, sides, fluid, margins)
        att = att + 0.46 * fluid * lung + 0.08 * fluid * (1.0 - lung) * _sig((th.w + 0.005 - np.abs(dxm)) / 0.006)
    if edema:
        level = {"mild": 0.05, "moderate": 0.11, "severe": 0.22}[edema.severity]
        haze = np.zeros_like(x)
        for side in ("right", "left"):
            hx_, hy_ = th.hilum[side]
            spread = 0.12 if edema.severity != "severe" else 0.15
            haze = haze + np.exp(-(((x - hx_) / spread) ** 2 + ((y - hy_) / (spread * 1.2)) ** 2))
        erng = _finding_rng(study, "edema", view)
        mottle = _lowfreq(erng, fr, 12) if edema.severity == "severe" else 0.0
        att = att + level * np.clip(haze * (1.0 + 0.4 * mottle), 0, 1.4) * tissue
        kerley = _Canvas(fr)
        for side, sgn in (("right", -1.0), ("left", 1.0)):
            for _ in range(int(erng.integers(5, 10))):
                yy = th.dome[side] - erng.uniform(0.005, 0.09)
                d0 = th.w * erng.uniform(0.72, 0.9)
                kerley.line([(th.cx + sgn * d0, yy), (th.cx + sgn * (d0 + erng.uniform(0.02, 0.04)), yy)], 0.0035, 1.0)
        att = att + 0.09 * kerley.array(0.001) * tissue
    cons = find.get("consolidation")
    if cons:
        att = att + _consolidation(fr, th, cons, _finding_rng(study, cons.code, view), margins, tissue)
    atel = find.get("atelectasis")
    if atel:
        att = att + _atelectasis(fr, th, atel, _finding_rng(study, atel.code, view), margins, tissue)
    for code, density, lob, edge in (("nodule", 0.2, 0.0, 0.0025), ("mass", 0.3, 0.09, 0.004)):
        f = find.get(code)
        if f:
            cx_, cy_ = _focal_center(th, f)
            r = 0.5 * f.size_cm * CM
            frng = _finding_rng(study, code, view)
            att = att + density * _blob(fr, cx_, cy_, r, frng, lob, edge) * np.clip(lung + 0.3, 0, 1)
    return _expose(att, a, rng, fr, rows, cols, view)


def _lowfreq(rng, fr: _Frame, cells: int) -> np.ndarray:
    """Smooth noise in -1..1 with about `cells` blobs across the image height."""
    coarse = rng.standard_normal((cells + 1, int(cells * fr.cols / fr.rows) + 2)).astype(np.float32)
    img = Image.fromarray(coarse, "F").resize((fr.cols, fr.rows), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(img, dtype=np.float32) / 1.5, -1.0, 1.0)


def _consolidation(fr, th, f: Finding, rng, margins, tissue) -> np.ndarray:
    y0, y1 = _zone_box(th, f.side, f.zone)
    sgn = -1.0 if f.side == "right" else 1.0
    ml, mm, mb, mt, d = margins[f.side]
    region = _sig((fr.y - y0) / 0.015) * _sig((y1 - fr.y) / 0.015)
    if f.zone == "middle":
        region = region * _sig((th.w * 0.6 - d) / 0.02)  # right middle lobe: medial, against the heart
    noise = _lowfreq(rng, fr, 16)
    if f.kind == "lobar":
        dense = region * _sig((noise + 0.9) / 0.25)
        level = 0.36
    else:
        cy = 0.5 * (y0 + y1)
        cx = th.cx + sgn * th.w * rng.uniform(0.45, 0.65)
        patch = np.exp(-(((fr.x - cx) / (0.11 * th.w / 0.33)) ** 2 + ((fr.y - cy) / 0.07) ** 2))
        dense = region * patch * _sig((noise + 0.3) / 0.3)
        level = 0.3
    side_lung = _soft(ml, mm, mb, mt)
    mask = np.clip(dense, 0, 1) * side_lung
    # air bronchograms: dark branching lines inside the opacity
    canvas = _Canvas(fr)
    hx, hy = th.hilum[f.side]
    for _ in range(int(rng.integers(3, 6))):
        ang = (math.pi if f.side == "right" else 0.0) + rng.uniform(-1.2, 1.2) * (-1 if f.side == "right" else 1)
        _vessel(canvas, rng, hx, hy, ang, rng.uniform(0.15, 0.25), 0.005, depth=1, edema=None)
    bronch = canvas.array(0.0015)
    return level * mask * tissue.clip(0, 1) - 0.12 * mask * np.clip(bronch, 0, 1) * (mask > 0.5)


def _atelectasis(fr, th, f: Finding, rng, margins, tissue) -> np.ndarray:
    out = np.zeros_like(fr.x)
    if f.kind == "plate":
        canvas = _Canvas(fr)
        for side in (["right", "left"] if f.side == "bilateral" else [f.side]):
            sgn = -1.0 if side == "right" else 1.0
            for _ in range(int(rng.integers(1, 3))):
                yy = th.dome[side] - rng.uniform(0.03, 0.075)
                d0 = th.w * rng.uniform(0.25, 0.45)
                length = rng.uniform(0.07, 0.13)
                tilt = rng.uniform(-0.15, 0.15)
                canvas.line([(th.cx + sgn * d0, yy), (th.cx + sgn * (d0 + length), yy + tilt * length)], 0.0085, 1.0)
        return 0.26 * canvas.array(0.0015) * tissue
    ml, mm, mb, mt, d = margins[f.side]
    side_lung = _soft(ml, mm, mb, mt)
    hx, hy = th.hilum[f.side]
    if f.zone == "lower":
        # collapsed lower lobe: a triangle from the hilum down to the medial hemidiaphragm
        base = th.dome[f.side]
        t = np.clip((fr.y - hy) / (base - hy), 0.0, 1.2)
        half = 0.02 + t * th.w * 0.28
        tri = _sig((half - (d - th.m - 0.01)) / 0.006) * _sig((fr.y - hy) / 0.01) * _sig((d - 0.6 * th.m) / 0.006)
        return 0.32 * tri * side_lung + 0.1 * tri * (1 - side_lung) * _sig((th.w * 0.5 - d) / 0.01)
    # collapsed right upper lobe: dense apex with a sharp, elevated fissure below it
    fissure = hy - 0.02 - 0.12 * np.clip(d / th.w, 0, 1)
    upper = _sig((fissure - fr.y) / 0.003) * _sig((th.w * 0.8 - d) / 0.02)
    return 0.34 * upper * side_lung


def _expose(att: np.ndarray, a: Anatomy, rng, fr: _Frame, rows: int, cols: int, view: str) -> np.ndarray:
    """Attenuation -> display density, resampled to rows x cols with noise, marker and collimation."""
    k = 2.2 * a.exposure
    img = 1.0 - np.exp(-k * np.clip(att, 0.0, None))
    img = img / (1.0 - math.exp(-k * 1.1))
    img = np.clip(img, 0.0, 1.0) ** a.gamma
    img = img * (1.0 + 0.05 * (fr.y - 0.5) * (1 if rng.random() < 0.5 else -1))  # heel effect
    img = img + 0.012 * _lowfreq(rng, fr, 24)
    if rows != fr.rows or cols != fr.cols:
        img = np.asarray(Image.fromarray(img.astype(np.float32), "F").resize((cols, rows), Image.Resampling.BICUBIC))
    sigma = a.noise * rows / NOISE_REFERENCE_ROWS
    img = img + rng.standard_normal(img.shape).astype(np.float32) * sigma * (0.6 + 0.6 * np.sqrt(np.clip(img, 0, 1)))
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    if a.marker:
        _marker(img, a.marker, rows, cols, right_side=a.marker == "R", view=view)
    if a.collimation > 0:
        b = int(round(a.collimation * rows))
        img[:, :b] = 0.97
        img[:, cols - b:] = 0.97
    return img


def _marker(img: np.ndarray, letter: str, rows: int, cols: int, right_side: bool, view: str) -> None:
    """A lead side marker: a bright square with the letter, near the top corner of that side."""
    side = max(6, rows // 22)
    tile = Image.new("F", (side, side), 0.92)
    draw = ImageDraw.Draw(tile)
    draw.text((side * 0.25, side * 0.05), letter, fill=0.15, font_size=max(5, int(side * 0.8)))
    y0 = int(rows * 0.06)
    x0 = int(cols * 0.08) if (right_side or view == "LL") else int(cols * 0.92) - side
    img[y0:y0 + side, x0:x0 + side] = np.asarray(tile, dtype=np.float32)


# ---------------------------------------------------------------- lateral picture


def lateral(study: PhantomStudy, rows: int, cols: int) -> np.ndarray:
    """The left lateral film (anterior to the image left): heart in front, spine behind."""
    a = study.anatomy
    wr = min(rows, WORK_ROWS)
    wc = max(1, int(round(cols * wr / rows)))
    fr = _frame(a, wr, wc)
    rng = study_rng(study.seed, study.index + 10_000_019, "pixels")
    find = {f.code: f for f in study.findings}
    x, y = fr.x, fr.y
    cx = fr.center[0]
    depth = 0.24 + 0.04 * a.habitus  # half the antero-posterior chest diameter
    outer = depth + a.body_extra
    body = _sig((1.0 - ((x - cx) / outer) ** 2 - ((y - 0.6) / 0.7) ** 2) / 0.04)
    att = (0.6 + 0.25 * a.habitus) * body
    att = att + 0.25 * body * _sig((a.apex_y + 0.06 - y) / 0.03)  # arms and shoulders over the apices
    dome = a.dome_right_y + 0.02
    rel = (x - cx) / depth  # -1 anterior .. +1 posterior
    diaphragm = dome + 0.03 * (rel + 0.3) ** 2 + 0.06 * _sig((rel - 0.55) / 0.08)
    lung_e = 1.0 - ((x - cx - 0.01) / (depth - 0.04)) ** 2 - ((y - a.apex_y - 0.32) / 0.36) ** 2
    lung = _soft(lung_e * 0.2, diaphragm - y)
    att = att - 0.4 * lung
    hw = 0.42 * depth * a.ctr / 0.45
    hx, hy = cx - depth + 0.03 + hw, dome - 0.6 * hw
    heart = _sig((1.0 - ((x - hx) / hw) ** 2 - (np.minimum(y - hy, 0.0) / (0.85 * hw)) ** 2) / 0.1)
    heart = heart * _sig((diaphragm + 0.02 - y) / 0.01)
    att = att + 0.36 * heart * lung
    sx = cx + depth - 0.03
    vert = 0.5 + 0.5 * np.cos(2 * math.pi * (y - a.rib_phase) / a.rib_spacing)
    spine = _sig((0.03 - np.abs(x - sx)) / 0.004) * (0.12 + 0.08 * vert) * body
    att = att + spine
    sternum = _sig((0.008 - np.abs(x - (cx - depth + 0.012))) / 0.003) * _sig((y - a.apex_y - 0.03) / 0.01)
    att = att + 0.14 * sternum * _sig((dome - 0.04 - y) / 0.01)
    trachea = _sig((0.01 - np.abs(x - cx + 0.01 - 0.1 * (y - a.apex_y))) / 0.002) * _sig((a.apex_y + 0.2 - y) / 0.01)
    att = att - 0.08 * trachea * body
    hilum = np.exp(-(((x - cx - 0.01) / 0.05) ** 2 + ((y - a.apex_y - 0.24) / 0.06) ** 2))
    att = att + 0.09 * hilum * lung
    eff = find.get("pleural_effusion")
    if eff:
        height = {"small": 0.04, "moderate": 0.13, "large": 0.25}[eff.severity]
        top = diaphragm - height * (0.4 + 0.6 * np.clip((rel + 1.0) / 2.0, 0, 1))  # fills the posterior sulcus first
        att = att + 0.42 * _sig((y - top) / 0.006) * lung
    edema = find.get("edema")
    if edema:
        att = att + {"mild": 0.06, "moderate": 0.12, "severe": 0.22}[edema.severity] * hilum * 1.4 * lung
    span = dome - a.apex_y
    for f in study.findings:
        if f.code in ("consolidation", "nodule", "mass") or (f.code == "atelectasis" and f.kind == "lobar"):
            zy = {"upper": 0.25, "middle": 0.6, "lower": 0.8}[f.zone or "lower"]
            zx = {"upper": -0.1, "middle": -0.45, "lower": 0.45}[f.zone or "lower"]
            fy, fx = a.apex_y + zy * span, cx + zx * depth
            if f.code in ("nodule", "mass"):
                r = 0.5 * f.size_cm * CM
                frng = _finding_rng(study, f.code, "LL")
                att = att + (0.2 if f.code == "nodule" else 0.3) * _blob(fr, fx, fy, r, frng, 0.06, 0.004)
            else:
                blob = np.exp(-(((x - fx) / 0.07) ** 2 + ((y - fy) / 0.06) ** 2))
                att = att + 0.3 * blob * lung
    return _expose(att, a, rng, fr, rows, cols, "LL")


def render_view(study: PhantomStudy, view: str, rows: int, cols: int) -> np.ndarray:
    """The density image of one view (PA, AP or LL)."""
    if view == "LL":
        return lateral(study, rows, cols)
    return frontal(study, rows, cols, view)
