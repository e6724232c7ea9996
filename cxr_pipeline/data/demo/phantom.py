"""A deterministic frontal chest radiograph phantom with label-specific findings.

The image is built in an attenuation domain (soft tissue, bone, air), then mapped to display
values with ``1 - exp(-gain * mu)`` so overlapping structures combine the way projections do:
ribs show through lungs, the spine through the heart, fluid hides the diaphragm.
Anatomy is described in normalized coordinates (u: -1 image left = patient right .. +1,
v: -1 top .. +1 bottom); a per-study affine (patient size, position, rotation) maps it onto the
pixel grid. Patient-level traits (thorax size, heart size, vessel tree) stay fixed across a
patient's follow-ups; position, inspiration, exposure and noise vary per study.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

# The six classes of the class-conditional model, plus three more NIH findings the phantom can
# render, so multi-label images and the 14-label parser have something real to chew on.
RENDERED_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Pneumonia",
    "Pneumothorax",
    "Nodule",
    "Mass",
    "Infiltration",
)


@dataclass(frozen=True)
class PatientTraits:
    """What stays the same across a patient's studies."""

    seed: int
    sex: str  # "M" | "F"
    thorax_width: float  # scales the rib cage horizontally
    thorax_height: float
    cardiothoracic_ratio: float  # normal 0.39..0.50
    rib_spacing: float
    body_fat: float  # soft-tissue thickness beyond the ribs


@dataclass(frozen=True)
class StudyParams:
    """What changes between studies; ``findings`` are NIH label strings."""

    findings: tuple[str, ...] = ()
    view: str = "PA"  # "PA" | "AP"
    scale: float = 1.0
    shift_u: float = 0.0
    shift_v: float = 0.0
    rotation_deg: float = 0.0
    inspiration: float = 0.0  # >0 lowers the domes
    gain: float = 2.0  # exposure
    noise: float = 0.015
    seed: int = 0
    finding_side: dict[str, int] = field(default_factory=dict)  # -1 patient right, +1 left


# Half the detector's 380 mm width is one anatomy unit at study scale 1: sizes in millimetres.
MM_PER_UNIT = 190.0


@dataclass(frozen=True)
class DrawnFinding:
    """What :func:`render` actually drew for one finding, for the report that describes it."""

    name: str  # NIH label
    side: str | None = None  # "right" | "left" | "bilateral" (patient sides); None: not lateralized
    zone: str | None = None  # "upper" | "mid" | "lower" | "apical"
    severity: str | None = None  # "small" | "moderate" | "large" (or "mild" | "marked" for the heart)
    size_mm: float | None = None  # largest diameter of a nodule or mass
    count: int = 1
    pattern: str | None = None  # e.g. "plate-like" or "lower lobe collapse" atelectasis
    measure: float | None = None  # the number behind the severity (cardiothoracic ratio, ...)


def _side_name(side: float) -> str:
    return "right" if side < 0 else "left"


def _zone(v: float) -> str:
    return "upper" if v < -0.2 else "mid" if v < 0.1 else "lower"


def _grade(value: float, small: float, large: float, names=("small", "moderate", "large")) -> str:
    return names[0] if value < small else names[1] if value < large else names[2]


def sample_patient(rng: np.random.Generator, seed: int) -> PatientTraits:
    sex = "M" if rng.random() < 0.55 else "F"
    return PatientTraits(
        seed=seed,
        sex=sex,
        thorax_width=float(rng.uniform(0.9, 1.05) * (1.03 if sex == "M" else 0.97)),
        thorax_height=float(rng.uniform(0.92, 1.06)),
        cardiothoracic_ratio=float(np.clip(rng.normal(0.45, 0.025), 0.39, 0.50)),
        rib_spacing=float(rng.uniform(0.105, 0.122)),
        body_fat=float(rng.uniform(0.05, 0.18)),
    )


def sample_study(
    rng: np.random.Generator, findings: tuple[str, ...], *, seed: int, view: str | None = None
) -> StudyParams:
    return StudyParams(
        findings=findings,
        view=view or ("AP" if rng.random() < 0.3 else "PA"),
        scale=float(rng.uniform(0.88, 1.0)),
        shift_u=float(rng.uniform(-0.05, 0.05)),
        shift_v=float(rng.uniform(-0.04, 0.06)),
        rotation_deg=float(rng.uniform(-4.0, 4.0)),
        inspiration=float(rng.uniform(-0.05, 0.05)),
        gain=float(rng.uniform(1.7, 2.5)),
        noise=float(rng.uniform(0.006, 0.02)),
        seed=seed,
        finding_side={name: (-1 if rng.random() < 0.5 else 1) for name in findings},
    )


class _Canvas:
    """Rasterizes shapes given in anatomy coordinates through the study's affine."""

    def __init__(self, size: int, study: StudyParams):
        self.size = size
        angle = math.radians(study.rotation_deg)
        self.cos, self.sin = math.cos(angle), math.sin(angle)
        self.scale, self.du, self.dv = study.scale, study.shift_u, study.shift_v
        # Anatomy coordinates of every pixel centre (inverse affine), for analytic fields.
        axis = (np.arange(size) + 0.5) / size * 2.0 - 1.0
        grid_u, grid_v = np.meshgrid(axis, axis)
        pu, pv = (grid_u - self.du) / self.scale, (grid_v - self.dv) / self.scale
        self.u = self.cos * pu + self.sin * pv
        self.v = -self.sin * pu + self.cos * pv

    def px(self, u: np.ndarray, v: np.ndarray) -> list[tuple[float, float]]:
        ru = self.scale * (self.cos * u - self.sin * v) + self.du
        rv = self.scale * (self.sin * u + self.cos * v) + self.dv
        x = (ru + 1.0) / 2.0 * self.size
        y = (rv + 1.0) / 2.0 * self.size
        return list(zip(x.tolist(), y.tolist()))

    def _layer(self) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        image = Image.new("L", (self.size, self.size), 0)
        return image, ImageDraw.Draw(image)

    @staticmethod
    def _to_array(image: Image.Image) -> np.ndarray:
        return np.asarray(image, dtype=np.float32) / 255.0

    def polygon(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        image, draw = self._layer()
        draw.polygon(self.px(u, v), fill=255)
        return self._to_array(image)

    def polylines(self, lines: list[tuple[np.ndarray, np.ndarray, float, float]]) -> np.ndarray:
        """Each line: (u, v, width in normalized units, intensity 0..1)."""
        image, draw = self._layer()
        for u, v, width, intensity in lines:
            pixels = max(1, int(round(width * self.scale * self.size / 2.0)))
            draw.line(self.px(u, v), fill=int(round(255 * intensity)), width=pixels, joint="curve")
        return self._to_array(image)

    def blur(self, layer: np.ndarray, sigma_norm: float) -> np.ndarray:
        sigma = sigma_norm * self.size / 2.0
        return ndimage.gaussian_filter(layer, sigma) if sigma >= 0.3 else layer


def _closed_spline(points: np.ndarray, samples: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """Periodic Catmull-Rom through control points: smooth organ outlines from a few numbers."""
    p = np.asarray(points, dtype=np.float64)
    n = len(p)
    t = np.linspace(0.0, n, samples, endpoint=False)
    i = np.floor(t).astype(int)
    s = (t - i)[:, None]
    p0, p1, p2, p3 = p[(i - 1) % n], p[i % n], p[(i + 1) % n], p[(i + 2) % n]
    curve = 0.5 * (
        2 * p1 + (-p0 + p2) * s + (2 * p0 - 5 * p1 + 4 * p2 - p3) * s**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * s**3
    )
    return curve[:, 0], curve[:, 1]


def _lung_outline(side: int, traits: PatientTraits, dome_v: float, medial: float) -> np.ndarray:
    """Control points of one lung; side -1 = patient right (image left), +1 mirrored.

    ``medial`` is the distance of the lower medial border from the midline (the heart border).
    """
    w, h = traits.thorax_width, traits.thorax_height
    points = np.array(
        [
            (-0.26, -0.72 * h),  # apex
            (-0.50, -0.58 * h),
            (-0.66 * w, -0.30 * h),
            (-0.74 * w, 0.02),
            (-0.77 * w, 0.28),
            (-0.75 * w, dome_v + 0.14),  # costophrenic angle
            (-0.58 * w, dome_v + 0.04),
            (-0.40 * w, dome_v - 0.01),  # dome top
            (-0.22, dome_v + 0.03),
            (-medial, dome_v + 0.08),  # cardiophrenic angle
            (-medial - 0.01, 0.05),
            (-0.10, -0.30 * h),
            (-0.15, -0.58 * h),
        ]
    )
    if side > 0:
        points[:, 0] *= -1.0
    return points


def _vessel_tree(rng: np.random.Generator, side: int) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """Branching pulmonary vessels from the hilum; thinner and fainter toward the periphery."""
    lines: list[tuple[np.ndarray, np.ndarray, float, float]] = []
    hilum = (0.20 * side, -0.06)

    def grow(u: float, v: float, angle: float, length: float, width: float, depth: int) -> None:
        if depth == 0 or width < 0.004:
            return
        end_u = u + length * math.cos(angle)
        end_v = v + length * math.sin(angle)
        mid_u = (u + end_u) / 2 + rng.normal(0, 0.01)
        mid_v = (v + end_v) / 2 + rng.normal(0, 0.01)
        lines.append((np.array([u, mid_u, end_u]), np.array([v, mid_v, end_v]), width, min(1.0, 0.35 + width * 25)))
        for _ in range(2 if depth > 1 else rng.integers(1, 3)):
            grow(end_u, end_v, angle + rng.normal(0, 0.45), length * rng.uniform(0.6, 0.8), width * 0.68, depth - 1)

    # Main trunks fan out from the hilum: up, lateral, down (lower lobes carry the most).
    for base in (-1.9, -1.2, -0.5, 0.2, 0.8, 1.3):
        angle = base if side > 0 else math.pi - base
        grow(hilum[0], hilum[1], angle + rng.normal(0, 0.12), rng.uniform(0.12, 0.17), 0.022, 4)
    return lines


def _rib_lines(traits: PatientTraits, side: int) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    lines = []
    t = np.linspace(0.0, 1.0, 24)
    w = traits.thorax_width
    for k in range(10):
        v0 = -0.80 * traits.thorax_height + k * traits.rib_spacing
        reach = (0.60 + 0.16 * math.sin(min(k, 7) / 7 * math.pi / 2)) * w
        # Posterior rib: leaves the spine, rises slightly, then sweeps down to the lateral wall.
        u = side * (0.07 + reach * t)
        v = v0 - 0.07 * np.sin(np.pi * t) * (1.0 - t) + 0.30 * t**2
        lines.append((u, v, 0.036, 1.0))
        # Anterior rib: fainter, from the lateral wall down and medially.
        ua = side * (0.07 + reach * (1.0 - 0.55 * t))
        va = v[-1] + 0.16 * t + 0.05 * t**2
        lines.append((ua, va, 0.030, 0.35))
    return lines


def _blobs(
    canvas: _Canvas,
    rng: np.random.Generator,
    center: tuple[float, float],
    spread: float,
    count: int,
    radius: tuple[float, float],
) -> np.ndarray:
    field_ = np.zeros((canvas.size, canvas.size), dtype=np.float32)
    for _ in range(count):
        cu = center[0] + rng.normal(0, spread)
        cv = center[1] + rng.normal(0, spread)
        r = rng.uniform(*radius)
        field_ += np.exp(-((canvas.u - cu) ** 2 + (canvas.v - cv) ** 2) / (2 * r * r)).astype(np.float32)
    return field_


def render(traits: PatientTraits, study: StudyParams, size: int, drawn: list[DrawnFinding] | None = None) -> np.ndarray:
    """Render one frontal radiograph as float32 in [0, 1] (bright = dense). ``drawn``, when given,
    receives what was drawn for each finding (side, zone, size), which is what the demo's reports
    describe; the image does not depend on it."""
    drawn = drawn if drawn is not None else []
    rng = np.random.default_rng([traits.seed, study.seed, 7])
    canvas = _Canvas(size, study)
    u, v = canvas.u, canvas.v
    findings = set(study.findings)
    side_of = lambda name: study.finding_side.get(name, 1)

    # --- Geometry that findings modify -----------------------------------------------------
    dome = {-1: 0.27 + study.inspiration, 1: 0.31 + study.inspiration}
    if "Atelectasis" in findings:
        dome[side_of("Atelectasis")] -= 0.07  # volume loss pulls the hemidiaphragm up
    ctr = traits.cardiothoracic_ratio
    if "Cardiomegaly" in findings:
        ctr = float(rng.uniform(0.58, 0.68))
        drawn.append(
            DrawnFinding(
                "Cardiomegaly", severity=_grade(ctr, 0.61, 0.65, ("mild", "moderate", "marked")), measure=round(ctr, 2)
            )
        )
    magnification = 1.12 if study.view == "AP" else 1.0
    thorax = 1.52 * traits.thorax_width
    heart_width = ctr * thorax * magnification
    heart_left, heart_right = -0.33 * heart_width, 0.67 * heart_width  # two thirds lie left

    # --- Soft tissue --------------------------------------------------------------------------
    body_a = 0.86 * traits.thorax_width + traits.body_fat
    # A superellipse trunk: square shoulders, tapering flanks.
    body = (np.abs(u / body_a) ** 2.6 + np.abs((v - 0.12) / 1.12) ** 2.6 <= 1.0).astype(np.float32)
    neck = ((np.abs(u) < 0.22) & (v < -0.6)).astype(np.float32)
    body = canvas.blur(np.maximum(body, neck), 0.02)
    thickness = np.sqrt(np.clip(1.0 - (u / (body_a + 0.15)) ** 2, 0.0, 1.0)).astype(np.float32)
    mu = 0.78 * body * (0.3 + 0.7 * thickness)
    if traits.sex == "F":
        for s in (-1, 1):
            breast = ((u - 0.45 * s) / 0.32) ** 2 + ((v - 0.38) / 0.2) ** 2 <= 1.0
            mu += 0.10 * canvas.blur(breast.astype(np.float32), 0.05)
    liver = (u < 0.1) & (v > dome[-1] + 0.02)
    mu += 0.12 * canvas.blur(liver.astype(np.float32), 0.04) * body

    # --- Lungs (air lowers attenuation, most where the lung is thickest) ----------------------
    lung_masks = {}
    medial = {-1: max(0.1, -heart_left - 0.02), 1: 0.12}
    for s in (-1, 1):
        outline = _lung_outline(s, traits, dome[s], medial[s])
        lu, lv = _closed_spline(outline)
        lung_masks[s] = canvas.polygon(lu, lv)
    pneumothorax_space = np.zeros_like(mu)
    collapsed_lung = dict(lung_masks)
    if "Pneumothorax" in findings:
        s = side_of("Pneumothorax")
        outline = _lung_outline(s, traits, dome[s], medial[s])
        hilum = np.array([0.25 * s, 0.0])
        shrink = float(rng.uniform(0.62, 0.8))
        # Collapse toward the hilum, mostly at the apex and lateral wall.
        collapsed = hilum + (outline - hilum) * np.array([shrink, 0.5 + 0.5 * shrink])
        cu, cv = _closed_spline(collapsed)
        collapsed_lung[s] = canvas.polygon(cu, cv) * lung_masks[s]
        pneumothorax_space = np.clip(lung_masks[s] - collapsed_lung[s], 0, 1)
        # A lung shrunk to 0.62 of its reach is a large collapse, to 0.8 a small one.
        drawn.append(
            DrawnFinding(
                "Pneumothorax",
                side=_side_name(s),
                zone="apical",
                severity=_grade(-shrink, -0.75, -0.68),
                measure=round(shrink, 2),
            )
        )
    lung = np.clip(lung_masks[-1] + lung_masks[1], 0, 1)
    depth = ndimage.distance_transform_edt(lung > 0.5).astype(np.float32)
    depth = np.sqrt(depth / max(1.0, depth.max()))
    parenchyma = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), size / 128)
    parenchyma /= parenchyma.std() + 1e-6
    mu -= canvas.blur(lung * (0.35 + 0.65 * depth), 0.012) * (0.62 - 0.025 * parenchyma)
    # Air in the pleural space has no lung tissue at all: darker than aerated lung.
    mu -= 0.08 * canvas.blur(pneumothorax_space, 0.006)

    # --- Mediastinum, heart, airway ------------------------------------------------------------
    mediastinum = canvas.polygon(np.array([-0.11, 0.10, 0.12, -0.12]), np.array([-0.78, -0.78, 0.05, 0.05]))
    knob = (((u - 0.13) / 0.07) ** 2 + ((v + 0.28) / 0.065) ** 2 <= 1.0).astype(np.float32)
    heart_cu, heart_cv = (heart_left + heart_right) / 2.0, 0.12
    heart = (
        ((u - heart_cu) / ((heart_right - heart_left) / 2.0)) ** 2 + ((v - heart_cv) / (0.21 * magnification)) ** 2
        <= 1.0
    ).astype(np.float32)
    heart *= ((v > -0.12) & (v < max(dome.values()) + 0.08)).astype(np.float32)
    mu += 0.32 * canvas.blur(np.maximum(np.maximum(mediastinum, knob), heart), 0.012) * body
    trachea = canvas.polylines(
        [
            (np.array([0.0, 0.0, 0.01]), np.array([-0.98, -0.6, -0.28]), 0.065, 1.0),
            (np.array([0.01, -0.12]), np.array([-0.28, -0.14]), 0.04, 1.0),
            (np.array([0.01, 0.14]), np.array([-0.28, -0.12]), 0.04, 1.0),
        ]
    )
    mu -= 0.22 * canvas.blur(trachea, 0.01)

    # --- Bones --------------------------------------------------------------------------------
    bones = []
    vertebra_v = np.arange(-1.05, 1.05, 0.085)
    for vv in vertebra_v:
        bones.append((np.array([0.0, 0.0]), np.array([vv, vv + 0.07]), 0.13, 0.8))
    spine = canvas.polylines(bones)
    mu += 0.16 * canvas.blur(spine, 0.006)
    for s in (-1, 1):
        ribs = _rib_lines(traits, s)
        outer = canvas.polylines(ribs)
        inner = canvas.polylines([(a, b, w * 0.5, i) for a, b, w, i in ribs])
        # Cortex brighter than the medulla: a band at each rib edge.
        mu += canvas.blur(0.07 * outer + 0.05 * np.clip(outer - inner, 0, 1), 0.004)
        t = np.linspace(0, 1, 16)
        clav_v = -0.70 - 0.10 * t + 0.03 * np.sin(np.pi * t) - (0.05 if study.view == "AP" else 0.0)
        clavicle = canvas.polylines([(s * (0.07 + 0.5 * t), clav_v, 0.05, 1.0)])
        mu += 0.2 * canvas.blur(clavicle, 0.004)

    # --- Pulmonary vessels (inside aerated lung only) --------------------------------------
    vessel_rng = np.random.default_rng([traits.seed, 11])
    vessels = canvas.polylines(_vessel_tree(vessel_rng, -1) + _vessel_tree(vessel_rng, 1))
    aerated = np.clip(collapsed_lung[-1] + collapsed_lung[1], 0, 1)
    mu += 0.16 * canvas.blur(vessels, 0.005) * canvas.blur(aerated, 0.01)
    bubble = (((u - 0.38) / 0.08) ** 2 + ((v - dome[1] - 0.12) / 0.05) ** 2 <= 1.0).astype(np.float32)
    mu -= 0.25 * canvas.blur(bubble, 0.01) * body

    # --- Findings -------------------------------------------------------------------------------
    if "Pneumothorax" in findings:
        s = side_of("Pneumothorax")
        edge = np.clip(collapsed_lung[s] - ndimage.binary_erosion(collapsed_lung[s] > 0.5, iterations=1), 0, 1)
        edge *= ndimage.binary_dilation(pneumothorax_space > 0.5, iterations=2)
        mu += 0.22 * canvas.blur(edge.astype(np.float32), 0.003)
        mu += 0.05 * collapsed_lung[s]  # the collapsed lung is denser
    if "Effusion" in findings:
        sides = (-1, 1) if rng.random() < 0.3 else (side_of("Effusion"),)
        heights = []
        for s in sides:
            height = rng.uniform(0.22, 0.4)
            heights.append(height)
            lateral = np.clip((u * s - 0.1) / (0.75 * traits.thorax_width - 0.1), 0, 1)
            surface = dome[s] + 0.16 - height * (0.55 + 0.75 * lateral**1.5)  # meniscus
            fluid = (lung_masks[s] * (v > surface)).astype(np.float32)
            # Fluid replaces the air: give back what the lung took, and a little more.
            mu += canvas.blur(fluid, 0.01) * (0.62 * (0.35 + 0.65 * depth) + 0.12)
        drawn.append(
            DrawnFinding(
                "Effusion",
                side="bilateral" if len(sides) == 2 else _side_name(sides[0]),
                zone="lower",
                severity=_grade(max(heights), 0.28, 0.34),
                measure=round(float(max(heights)), 2),
            )
        )
    if "Atelectasis" in findings:
        s = side_of("Atelectasis")
        if rng.random() < 0.5:  # plate-like (discoid) bands in the lower zone
            bands = []
            for _ in range(int(rng.integers(1, 3))):
                y = rng.uniform(0.02, 0.18)
                bands.append((np.array([0.2 * s, 0.62 * s]), np.array([y, y - rng.uniform(0.0, 0.06)]), 0.028, 1.0))
            mu += 0.45 * canvas.blur(canvas.polylines(bands), 0.01) * lung_masks[s]
            drawn.append(
                DrawnFinding("Atelectasis", side=_side_name(s), zone="lower", pattern="plate-like", count=len(bands))
            )
        else:  # lower-lobe collapse: a dense wedge along the heart border
            wedge = canvas.polygon(
                np.array([0.12 * s, 0.45 * s, 0.18 * s]), np.array([-0.05, dome[s] + 0.06, dome[s] + 0.08])
            )
            mu += 0.5 * canvas.blur(wedge * lung_masks[s], 0.015)
            drawn.append(DrawnFinding("Atelectasis", side=_side_name(s), zone="lower", pattern="lower lobe collapse"))
    if "Pneumonia" in findings:
        s = side_of("Pneumonia")
        center = (s * rng.uniform(0.3, 0.5), rng.choice([-0.3, 0.05, 0.15]))
        consolidation = _blobs(canvas, rng, center, 0.07, int(rng.integers(6, 12)), (0.035, 0.08))
        consolidation = np.clip(consolidation, 0, 1.4) * lung_masks[s]
        bronchi = canvas.polylines(
            [
                (
                    np.array([center[0] * 0.4, center[0] + rng.normal(0, 0.05)]),
                    np.array([-0.05, center[1] + rng.normal(0, 0.05)]),
                    0.012,
                    1.0,
                )
                for _ in range(3)
            ]
        )
        mu += 0.55 * canvas.blur(consolidation, 0.01) - 0.08 * bronchi * (consolidation > 0.6)
        extent = np.count_nonzero(consolidation > 0.6) / max(1.0, float(np.count_nonzero(lung_masks[s] > 0.5)))
        drawn.append(
            DrawnFinding(
                "Pneumonia",
                side=_side_name(s),
                zone=_zone(float(center[1])),
                severity=_grade(extent, 0.15, 0.175, ("patchy", "moderate", "extensive")),
                measure=round(extent, 3),
            )
        )
    if "Infiltration" in findings:
        texture = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), size / 96)
        texture = np.clip(texture / (texture.std() + 1e-6), 0, 3) / 3
        zone = canvas.blur(((v > -0.2) & (np.abs(u) > 0.15)).astype(np.float32), 0.08)
        mu += 0.28 * texture * zone * lung
        drawn.append(DrawnFinding("Infiltration", side="bilateral", zone="lower"))
    if "Nodule" in findings:
        nodules = []
        for _ in range(int(rng.integers(1, 3))):
            nodule_u = rng.uniform(0.25, 0.6) * (1 if rng.random() < 0.5 else -1)
            nodule_v = rng.uniform(-0.45, 0.1)
            nodule_r = rng.uniform(0.025, 0.04)
            spot = ((u - nodule_u) ** 2 + (v - nodule_v) ** 2 <= nodule_r * nodule_r).astype(np.float32)
            mu += 0.35 * canvas.blur(spot, 0.006)
            nodules.append((nodule_u, nodule_v, nodule_r))
        nodule_sides = {_side_name(n[0]) for n in nodules}
        largest = max(nodules, key=lambda n: n[2])
        drawn.append(
            DrawnFinding(
                "Nodule",
                side=nodule_sides.pop() if len(nodule_sides) == 1 else "bilateral",
                zone=_zone(largest[1]),
                size_mm=round(2 * largest[2] * study.scale * MM_PER_UNIT),
                count=len(nodules),
            )
        )
    if "Mass" in findings:
        mass_u = rng.uniform(0.3, 0.55) * side_of("Mass")
        mass_v = rng.uniform(-0.4, 0.05)
        mass = np.zeros_like(mu)
        for _ in range(3):
            mass_r = rng.uniform(0.06, 0.1)
            ou, ov = rng.normal(0, 0.03, 2)
            mass = np.maximum(
                mass, ((u - mass_u - ou) ** 2 + (v - mass_v - ov) ** 2 <= mass_r * mass_r).astype(np.float32)
            )
        mu += 0.5 * canvas.blur(mass, 0.01)
        rows, columns = np.nonzero(mass > 0.5)
        mass_extent = max(np.ptp(rows), np.ptp(columns)) + 1 if len(rows) else 0
        drawn.append(
            DrawnFinding(
                "Mass",
                side=_side_name(side_of("Mass")),
                zone=_zone(mass_v),
                size_mm=round(mass_extent / size * 2 * MM_PER_UNIT),
            )
        )

    # --- Projection, exposure, detector ------------------------------------------------------
    mu = np.clip(mu, 0.0, None)
    image = 1.0 - np.exp(-study.gain * mu)
    image = image / (1.0 - math.exp(-study.gain * 1.5))
    image = ndimage.gaussian_filter(image, 0.45 * size / 256)  # detector blur
    image = image + rng.normal(0.0, 1.0, image.shape) * study.noise * np.sqrt(np.clip(image, 0.02, 1.0))
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def render_lateral(seed: int, size: int) -> np.ndarray:
    """A crude lateral projection: the demo's deliberately wrong view for frontal-only ingestion."""
    rng = np.random.default_rng([seed, 13])
    canvas = _Canvas(size, StudyParams(scale=float(rng.uniform(0.9, 1.0))))
    u, v = canvas.u, canvas.v
    body = ((u / 0.62) ** 2 + ((v - 0.1) / 1.1) ** 2 <= 1.0).astype(np.float32)
    lung = (((u + 0.02) / 0.42) ** 2 + ((v + 0.05) / 0.62) ** 2 <= 1.0).astype(np.float32)
    heart = (((u + 0.18) / 0.25) ** 2 + ((v - 0.25) / 0.25) ** 2 <= 1.0).astype(np.float32)
    spine = canvas.polylines([(np.array([0.42, 0.48]), np.array([-1.0, 1.0]), 0.12, 1.0)])
    mu = 0.8 * canvas.blur(body, 0.02) - 0.5 * canvas.blur(lung, 0.02) + 0.3 * canvas.blur(heart, 0.02)
    mu += 0.3 * canvas.blur(spine, 0.01)
    image = 1.0 - np.exp(-2.0 * np.clip(mu, 0, None))
    image += rng.normal(0, 0.01, image.shape)
    return np.clip(image / image.max(), 0, 1).astype(np.float32)
