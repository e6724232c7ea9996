"""Each enhancement step against its definition on hand-made images, and the appearance figures."""

import numpy as np
import pytest

from cxr_pipeline.metrics.appearance import appearance, contrast, entropy, sharpness
from cxr_pipeline.reports.enhancement import (
    PRESETS,
    Enhancement,
    clahe,
    enhance,
    equalize,
    median,
    unsharp,
    vignette,
    window,
)


def ramp(size: int = 64) -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, size), (size, 1))


def test_window_clips_outside_and_stretches_inside():
    image = ramp(101)
    out = window(image, center=0.5, width=0.4)  # [0.3, 0.7] -> [0, 1]
    assert (out[:, image[0] <= 0.3] == 0.0).all() and (out[:, image[0] >= 0.7] == 1.0).all()
    inside = (image[0] > 0.3) & (image[0] < 0.7)
    np.testing.assert_allclose(out[0, inside], (image[0, inside] - 0.3) / 0.4, atol=1e-12)
    with pytest.raises(ValueError, match="width must be positive"):
        window(image, 0.5, 0.0)


def test_clahe_leaves_a_flat_image_flat_and_raises_local_contrast():
    for value in (0.1, 0.5, 0.9):
        assert np.ptp(clahe(np.full((48, 48), value), clip_limit=2.5, grid=(8, 8))) == 0.0
    rng = np.random.default_rng(0)
    dim = 0.4 + 0.1 * rng.random((256, 256))  # a low-contrast texture, 1024 pixels per tile
    assert clahe(dim, 2.5, (8, 8)).std() > 3 * dim.std()
    # a higher clip limit allows more contrast
    assert clahe(dim, 4.0, (8, 8)).std() > clahe(dim, 1.0, (8, 8)).std()


def test_median_removes_an_isolated_speck_and_keeps_an_edge():
    image = np.zeros((9, 9))
    image[4, 4] = 1.0
    assert median(image, 3).max() == 0.0
    step = np.zeros((9, 9))
    step[:, 5:] = 1.0
    np.testing.assert_array_equal(median(step, 3), step)


def test_unsharp_mask_overshoots_a_step_edge_on_both_sides():
    step = np.full((16, 16), 0.25)
    step[:, 8:] = 0.75
    out = unsharp(step, amount=1.5, radius=1.0)
    assert out[:, 8].min() > 0.75 and out[:, 7].max() < 0.25  # overshoot and undershoot at the edge
    np.testing.assert_allclose(out[:, :3], 0.25, atol=1e-6)  # far from it, unchanged
    np.testing.assert_allclose(out[:, -3:], 0.75, atol=1e-6)


def test_histogram_equalization_flattens_the_histogram():
    rng = np.random.default_rng(1)
    skewed = rng.random((64, 64)) ** 2
    counts = np.histogram(equalize(skewed), bins=4, range=(0, 1))[0]
    assert counts.max() / counts.min() < 1.05
    before = np.histogram(skewed, bins=4, range=(0, 1))[0]
    assert before.max() / before.min() > 3


def test_vignette_keeps_the_centre_and_darkens_the_corners_by_its_strength():
    out = vignette(np.ones((65, 65)), 0.3)
    assert out[32, 32] == pytest.approx(1.0) and out[0, 0] == pytest.approx(0.7) and out[64, 64] == pytest.approx(0.7)
    assert out[32, 0] == pytest.approx(0.85)  # an edge midpoint is at r^2 = 1/2


def test_presets_are_the_reference_table_and_keep_images_in_range():
    balanced = PRESETS["balanced"]
    assert (
        balanced.window_center,
        balanced.window_width,
        balanced.edge_amount,
        balanced.median_size,
        balanced.clahe_clip,
        balanced.clahe_grid,
        balanced.vignette,
        balanced.histogram_equalization,
    ) == (0.5, 1.0, 0.7, 0, 0.0, (8, 8), 0.0, False)
    assert PRESETS["sharp_detail"].histogram_equalization is False and PRESETS["radiographic_film"].clahe_grid == (7, 7)
    image = ramp()
    for name in PRESETS:
        out = enhance(image, name)
        assert out.shape == image.shape and out.min() >= 0.0 and out.max() <= 1.0, name
    np.testing.assert_array_equal(enhance(image, "none"), image)
    assert [s for s, _ in balanced.steps()] == ["unsharp mask"]
    film = PRESETS["radiographic_film"]
    assert [s for s, _ in film.steps()] == [
        "window",
        "CLAHE",
        "median",
        "unsharp mask",
        "histogram equalization",
        "vignette",
    ]


def test_a_custom_preset_runs_only_its_steps():
    only_window = Enhancement(window_center=0.5, window_width=0.5)
    np.testing.assert_allclose(only_window(ramp()), window(ramp(), 0.5, 0.5))
    assert PRESETS["radiographic_film"].with_changes(vignette=0.0).steps()[-1][0] == "histogram equalization"
    with pytest.raises(ValueError, match="odd"):
        Enhancement(median_size=4)
    with pytest.raises(ValueError, match="invalid"):
        Enhancement(vignette=1.5)


def test_appearance_figures():
    flat = np.full((32, 32), 0.5)
    assert contrast(flat) == 0.0 and sharpness(flat) == 0.0 and entropy(flat) == 0.0
    halves = np.zeros((32, 32))
    halves[:, 16:] = 1.0
    assert contrast(halves) == pytest.approx(0.5) and entropy(halves) == pytest.approx(1.0)
    rng = np.random.default_rng(2)
    noisy = rng.random((32, 32))
    from skimage.filters import gaussian

    assert sharpness(noisy) > 10 * sharpness(gaussian(noisy, 2))
    assert set(appearance(noisy)) == {"contrast", "sharpness", "entropy"}


def test_reports_say_their_images_are_raw(tmp_path):
    from cxr_pipeline.reports.document import RAW_IMAGES_NOTE, Figure, Report, Section, write_report

    report = Report("r", "s", [Section("one", figures=[Figure("f", np.zeros((4, 4)))])])
    html, markdown = write_report(report, tmp_path)
    assert RAW_IMAGES_NOTE in html.read_text() and RAW_IMAGES_NOTE in markdown.read_text()


def _saturated(image: np.ndarray) -> float:
    return float(np.mean((image <= 0.005) | (image >= 0.995)))


def test_the_default_preset_stays_close_to_the_raw_image_on_demo_and_real_radiographs(small_demo):
    """The preset shown beside every generated image must not posterize, blotch or clip: a real
    chest CR (pydicom-data) at 256 and 64 px and a demo image, each against its raw self."""
    from skimage.metrics import structural_similarity
    from skimage.transform import resize

    from cxr_pipeline.data.image_store import from_stored
    from cxr_pipeline.data.ingest import IngestOptions, ingest_file
    from tests.conftest import pydicom_file

    def read(path, size):
        return from_stored(ingest_file(path, IngestOptions(image_size=size, workers=1)).stored).astype(np.float64)

    real = read(pydicom_file("RG1_UNCR.dcm"), 256)
    images = {
        "real 256 px": real,
        "real 64 px": resize(real, (64, 64), anti_aliasing=True),
        "demo 64 px": read(next(small_demo.rglob("*.png")), 64),
    }
    for name, raw in images.items():
        shown = PRESETS["balanced"](raw)
        assert structural_similarity(raw, shown, data_range=1.0) > 0.9, name  # no blotches
        assert _saturated(shown) <= _saturated(raw) + 0.025, name  # nothing clipped away
        levels = lambda x: len(np.unique(np.round(x * 255)))
        assert levels(shown) >= 0.9 * levels(raw), name  # no posterization
        assert sharpness(shown) > sharpness(raw), name  # it still enhances
