"""A chest CT demo in the layout of single-slice CT datasets (COVID-CT style): one folder per
class, ``single-slice-<Class>/``, 8-bit PNG slices, the patient and the slice in every file name
(``covid_p16_ns002i00001_slice_001.png``), no label file and no reports.

Each patient is a contiguous slab of axial slices through one synthetic chest: the body outline
off the image centre and the scanner table below it (straight, sharp edges near the border),
subcutaneous fat, ribs and sternum in cross-section, the vertebral body with its canal, heart
and aorta, and lungs with vessels that drift from slice to slice. Classes draw their findings
where the disease puts them: COVID-19 as peripheral, posterior ground-glass patches, effusion as
a dependent crescent of fluid in the posterior costophrenic recess. Values are a lung window
(-1350 to 150 HU) scaled to 8 bits, with reconstruction blur and mildly correlated noise.

Deterministic for a spec, written atomically like the radiograph demo.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from ... import parallel
from .. import atomic
from .dataset import SPEC_FILE, read_spec

CT_GENERATOR_VERSION = 1
# The folder class and the file-name prefix of each class, as the public dataset names them.
CLASSES = {"Normal": "normal", "COVID19": "covid", "Effusion": "effusion"}
CLASS_SHARES = {"Normal": 0.4, "COVID19": 0.35, "Effusion": 0.25}
WINDOW_HU = (-1350.0, 150.0)  # a lung window (centre -600, width 1500)
HU = {"air": -1000.0, "lung": -850.0, "fat": -100.0, "soft": 40.0, "blood": 50.0, "bone": 700.0, "table": 300.0}


@dataclass(frozen=True)
class CtDemoSpec:
    patients: int
    source_size: int
    slices_per_patient: int = 3
    seed: int = 20261207
    version: int = CT_GENERATOR_VERSION


def to_window(hu: np.ndarray, window: tuple[float, float] = WINDOW_HU) -> np.ndarray:
    low, high = window
    return np.clip((hu - low) / (high - low), 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Chest:
    """One patient's anatomy; the slab's slices sample it at consecutive heights ``z``."""

    centre: tuple[float, float]  # body centre (y, x) in [-1, 1], off the image centre
    body: tuple[float, float]  # half-axes (y, x)
    table_y: float  # the table's top edge
    heart: tuple[float, float, float]  # (y, x, radius) at mid-slab
    vessels: np.ndarray  # (n, 5): y, x, radius, dy/dz, dx/dz, in lung-relative units
    ribs: int
    z0: float


def sample_chest(rng: np.random.Generator) -> Chest:
    return Chest(
        centre=(float(rng.uniform(-0.16, -0.04)), float(rng.uniform(-0.12, 0.12))),
        body=(float(rng.uniform(0.50, 0.60)), float(rng.uniform(0.72, 0.84))),
        table_y=float(rng.uniform(0.72, 0.80)),
        heart=(float(rng.uniform(-0.05, 0.10)), float(rng.uniform(0.05, 0.18)), float(rng.uniform(0.20, 0.26))),
        vessels=np.column_stack(
            [
                rng.uniform(-0.9, 0.9, 60),
                rng.uniform(-0.9, 0.9, 60),
                rng.uniform(0.006, 0.022, 60),
                rng.normal(0, 0.25, 60),
                rng.normal(0, 0.25, 60),
            ]
        ),
        ribs=int(rng.integers(7, 10)),
        z0=float(rng.uniform(0.25, 0.6)),
    )


def _ellipse(y: np.ndarray, x: np.ndarray, cy: float, cx: float, ry: float, rx: float, edge: float) -> np.ndarray:
    """A filled ellipse with a one-pixel soft edge (``edge``: a pixel in these units)."""
    distance = np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2) - 1.0
    return np.clip(0.5 - distance * min(ry, rx) / edge, 0.0, 1.0)


def render_slice(chest: Chest, z: float, size: int, finding: str, rng: np.random.Generator) -> np.ndarray:
    """One axial slice at height ``z`` in [0, 1] (apex to base), in Hounsfield units."""
    axis = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(axis, axis, indexing="ij")
    edge = 2.0 / size
    cy, cx = chest.centre
    by, bx = chest.body
    hu = np.full((size, size), HU["air"])
    table = np.clip(0.5 - (chest.table_y - y) / edge, 0, 1) * np.clip(0.5 - (y - chest.table_y - 0.06) / edge, 0, 1)
    hu += table * (HU["table"] - HU["air"]) * (np.abs(x) < 0.95)
    body = _ellipse(y, x, cy, cx, by, bx, edge)
    hu = hu * (1 - body) + body * HU["fat"]
    inner = _ellipse(y, x, cy, cx, by - 0.07, bx - 0.08, edge)
    hu = hu * (1 - inner) + inner * HU["soft"]
    # lungs: two ellipses, larger towards the base, the heart between them
    grow = 0.75 + 0.35 * z
    lungs = np.zeros_like(hu)
    centres = []
    for side in (-1, 1):
        ly, lx = cy - 0.02, cx + side * bx * 0.45
        ry, rx = (by - 0.16) * grow * 0.95, bx * 0.30 * grow
        centres.append((ly, lx, ry, rx))
        lungs = np.maximum(lungs, _ellipse(y, x, ly, lx, ry, rx, edge))
    hy, hx, hr = chest.heart
    heart_r = hr * (0.5 + 0.8 * z)
    heart = _ellipse(y, x, cy + hy, cx + hx, heart_r * 0.85, heart_r, edge)
    lungs = lungs * (1 - heart)
    lung_hu = np.full_like(hu, HU["lung"])
    for vy, vx, vr, dy, dx in chest.vessels:
        for ly, lx, ry, rx in centres:
            py, px = ly + (vy + dy * (z - 0.5)) * ry * 0.85, lx + (vx + dx * (z - 0.5)) * rx * 0.85
            radius = vr * (1.0 - 0.6 * np.hypot(vy, vx) / 1.3)  # thinner towards the pleura
            lung_hu = np.maximum(lung_hu, HU["lung"] + _ellipse(y, x, py, px, radius, radius, edge) * 900.0)
    if finding == "COVID19":
        for _ in range(int(rng.integers(2, 5))):
            ly, lx, ry, rx = centres[int(rng.integers(2))]
            angle = rng.uniform(0.15, 0.85) * np.pi  # posterior and lateral: the lower half
            py, px = ly + 0.75 * ry * np.sin(angle), lx + 0.8 * rx * np.cos(angle) * np.sign(lx - cx)
            patch = ndimage.gaussian_filter(
                _ellipse(y, x, py, px, rng.uniform(0.08, 0.16), rng.uniform(0.08, 0.16), edge), size * 0.02
            )
            lung_hu = lung_hu + patch * rng.uniform(250, 400)
    hu = hu * (1 - lungs) + lungs * lung_hu
    if finding == "Effusion":
        ly, lx, ry, rx = centres[int(rng.integers(2))]
        level = ly + ry * rng.uniform(0.35, 0.6)  # fluid settles posteriorly (down in a supine scan)
        fluid = _ellipse(y, x, ly, lx, ry, rx, edge) * np.clip(0.5 + (y - level) / edge, 0, 1)
        hu = hu * (1 - fluid) + fluid * 15.0
    hu = hu * (1 - heart) + heart * HU["blood"]
    aorta = _ellipse(y, x, cy + hy - heart_r * 0.3, cx - 0.02, 0.07, 0.07, edge)
    hu = hu * (1 - aorta) + aorta * (HU["blood"] + 20)
    # spine: vertebral body (cortex brighter), canal; sternum in front
    vy = cy + by - 0.20
    vertebra = _ellipse(y, x, vy, cx, 0.10, 0.11, edge)
    hu = hu * (1 - vertebra) + vertebra * (HU["bone"] * 0.6)
    marrow = _ellipse(y, x, vy, cx, 0.075, 0.085, edge)
    hu = hu - marrow * HU["bone"] * 0.25
    canal = _ellipse(y, x, vy + 0.14, cx, 0.045, 0.045, edge)
    hu = hu * (1 - canal) + canal * 10.0
    sternum = _ellipse(y, x, cy - by + 0.10, cx, 0.03, 0.07, edge)
    hu = hu * (1 - sternum) + sternum * HU["bone"]
    # ribs in cross-section along the chest wall
    for k in range(chest.ribs):
        for side in (-1, 1):
            angle = np.pi * (0.12 + 0.76 * k / max(1, chest.ribs - 1)) + 0.15 * z
            ry_, rx_ = cy - (by - 0.11) * np.cos(angle), cx + side * (bx - 0.11) * np.sin(angle)
            rib = _ellipse(y, x, ry_, rx_, 0.028, 0.042, edge)
            hu = hu * (1 - rib) + rib * HU["bone"]
    hu = ndimage.gaussian_filter(hu, 0.5 * size / 256)  # the reconstruction kernel
    noise = ndimage.gaussian_filter(rng.normal(0.0, 1.0, hu.shape), 0.7) * 25.0
    return (hu + noise).astype(np.float32)


@dataclass(frozen=True)
class _PatientTask:
    root: str
    index: int
    spec: CtDemoSpec


def _make_patient(task: _PatientTask) -> dict[str, Any]:
    spec, root = task.spec, Path(task.root)
    rng = np.random.default_rng([spec.seed, task.index])
    names = list(CLASS_SHARES)
    shares = np.array([CLASS_SHARES[n] for n in names])
    label = str(rng.choice(names, p=shares / shares.sum()))
    chest = sample_chest(rng)
    series = int(rng.integers(1, 5))
    files = []
    for k in range(spec.slices_per_patient):
        z = min(1.0, chest.z0 + 0.06 * k)
        image = to_window(render_slice(chest, z, spec.source_size, label, rng))
        name = f"{CLASSES[label]}_p{task.index}_ns{series:03d}i{k + 1:05d}_slice_{k + 1:03d}.png"
        path = root / f"single-slice-{label}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path)
        files.append(path.relative_to(root).as_posix())
    return {"label": label, "files": files}


def generate_ct_demo(dest: Path, spec: CtDemoSpec, *, workers: int = 1) -> dict[str, Any]:
    """Write the CT-slice demo to ``dest`` unless the same spec is already there; return its summary."""
    dest = Path(dest)
    existing = read_spec(dest)
    if existing and existing.get("spec") == {"kind": "ct_slices", **asdict(spec)}:
        return existing
    with atomic.atomic_folder(dest) as tmp:
        tasks = (_PatientTask(str(tmp), i, spec) for i in range(1, spec.patients + 1))
        labels: Counter = Counter()
        images = 0
        for result in parallel.ordered_map(_make_patient, tasks, workers=workers, on_crash=_raise_crash):
            labels[result["label"]] += 1
            images += len(result["files"])
        # the rejection path runs here too: a truncated slice and a note beside the data
        broken = tmp / "single-slice-Normal" / "normal_p0_ns001i00001_slice_001.png"
        broken.parent.mkdir(parents=True, exist_ok=True)
        broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
        (tmp / "README.txt").write_text("Synthetic chest CT slices, one folder per class.\n")
        summary = {
            "spec": {"kind": "ct_slices", **asdict(spec)},
            "patients": spec.patients,
            "images": images,
            "patients_per_class": dict(sorted(labels.items())),
            "bad_inputs": ["truncated png", "text file"],
        }
        (tmp / SPEC_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def _raise_crash(task: _PatientTask, error: BaseException) -> dict[str, Any]:
    raise RuntimeError(f"CT demo generation crashed for patient {task.index}") from error
