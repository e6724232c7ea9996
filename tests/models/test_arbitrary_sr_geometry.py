"""One geometry for every scale: pair making, the canvas, its crop or resize, and the measure
that checks them, on sharp, off-centre structure (straight edges and a grid near the borders),
the case a smooth, centred image never tests."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from cxr_pipeline.data.degrade import bicubic_to, low_resolution_size, resize
from cxr_pipeline.metrics.restoration import lr_consistency_psnr, registration_shift
from cxr_pipeline.models.implicit import cell_centres
from cxr_pipeline.models.pipelines import bicubic_canvas, canvas_side, padded_canvas

# 128 px, cropped so each scale is exact (as the evaluation crops): x6 leaves a 21 px LR image
SCALES = [(2.5, 125), (3.0, 126), (6.0, 126), (2.0, 128), (4.0, 128)]


def sharp_pattern(side: int = 128) -> np.ndarray:
    """A body outline off the centre, a table along the bottom border, a grid near the top-left
    corner and two discs: straight, sharp edges far from the centre."""
    u = side / 64
    image = np.full((side, side), 0.1, np.float32)
    image[round(4 * u) : side - round(10 * u), round(7 * u) : side - round(5 * u)] = 0.45
    image[side - round(7 * u) : side - round(4 * u), 1 : side - 1] = 0.9
    for k in range(9, 30, 5):
        image[round(6 * u) : round(24 * u), round(k * u) : round(k * u) + 1] = 0.8
        image[round((k - 3) * u) : round((k - 3) * u) + 1, round(8 * u) : round(30 * u)] = 0.8
    y, x = np.mgrid[:side, :side] / u
    image[(y - 42) ** 2 + (x - 20) ** 2 < 50] = 0.7
    image[(y - 36) ** 2 + (x - 48) ** 2 < 18] = 0.02
    return image


def test_the_registration_measure_finds_a_known_subpixel_shift_and_ignores_blur():
    image = sharp_pattern()
    for shift in ((0.3, -0.7), (1.2, 0.25)):
        moved = ndimage.shift(ndimage.gaussian_filter(image, 0.7), shift, order=3, mode="nearest")
        assert registration_shift(moved, image, 2.0) == pytest.approx(shift, abs=0.06)
    # a blur alone moves the estimate by at most 0.15 px on this pattern (its edges crossing the
    # scored interior make the least squares slightly asymmetric): the measure's floor
    assert registration_shift(ndimage.gaussian_filter(image, 1.5), image, 2.0) == pytest.approx((0, 0), abs=0.15)
    # under a blur as strong as x6's, a third of a pixel still shows at its size
    moved = ndimage.shift(ndimage.gaussian_filter(image, 3.0), (0.35, -0.3), order=3, mode="nearest")
    assert registration_shift(moved, image, 6.0) == pytest.approx((0.35, -0.3), abs=0.08)


@pytest.mark.parametrize("scale,side", SCALES)
def test_pairs_and_bicubic_keep_the_field_of_view_at_every_scale(scale, side):
    """Downsampling and bicubic back keep every edge in place (the baseline's geometry is the
    reference every rendering is held to)."""
    truth = sharp_pattern()[:side, :side]
    low = resize(truth, low_resolution_size(truth.shape, scale))
    assert low.shape == (round(side / scale),) * 2
    back = bicubic_to(low, truth.shape)
    assert np.abs(registration_shift(back, truth, scale)).max() < 0.25


@pytest.mark.parametrize("scale,side", SCALES)
def test_the_padded_canvas_holds_the_output_grid_exactly(scale, side):
    """The default rendering: the canvas's window is bicubic at the output size itself, bit for
    bit, so what the model is shown has the output's geometry and pixel scale."""
    truth = sharp_pattern()[:side, :side]
    low = torch.from_numpy(resize(truth, low_resolution_size(truth.shape, scale)))[None, None]
    canvas, window = padded_canvas(low, (side, side), 16)
    assert canvas.shape[-1] == canvas_side(side, 16) == 128
    inside = canvas[0, 0, window[0], window[1]].numpy()
    np.testing.assert_array_equal(inside, bicubic_to(low[0, 0].numpy(), (side, side)))
    # mirrored outwards: the first ring outside the window repeats the ring inside it
    top = window[0].start
    if top > 0:
        np.testing.assert_array_equal(canvas[0, 0, top - 1, window[1]].numpy(), inside[1])
    assert np.abs(registration_shift(inside, truth, scale)).max() < 0.25
    assert lr_consistency_psnr(torch.from_numpy(inside)[None, None], low)[0] > 28  # bicubic's own


def test_a_non_square_output_is_padded_per_axis():
    low = torch.rand(2, 1, 5, 9)
    canvas, window = padded_canvas(low, (13, 21), 8)
    assert canvas.shape == (2, 1, 16, 24)
    assert canvas[:, :, window[0], window[1]].shape == (2, 1, 13, 21)


@pytest.mark.parametrize("scale,side", SCALES[:3])
def test_the_stretched_canvas_resized_back_keeps_edges_in_place(scale, side):
    """The ``resize`` rendering's geometry: LR over the whole canvas, then the canvas resized to
    the output. It stretches the content the model sees by canvas/side, but the round trip itself
    moves nothing (any misplacement there comes from the model, not the geometry)."""
    truth = sharp_pattern()[:side, :side]
    low = torch.from_numpy(resize(truth, low_resolution_size(truth.shape, scale)))[None, None]
    canvas = bicubic_canvas(low, (side, side), 16)[0, 0].numpy()
    assert canvas.shape[-1] == 128
    back = resize(canvas, (side, side))
    assert np.abs(registration_shift(back, truth, scale)).max() < 0.25


def test_the_implicit_heads_coordinates_are_the_pixel_centres_of_the_same_field_of_view():
    """``align_corners=False``: a 60 px output's centres are a 64 px canvas's, scaled about the
    image centre, never shifted by half a pixel."""
    fine, coarse = cell_centres(60, 60), cell_centres(64, 64)
    assert fine[:, 0].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert coarse[:, 0].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert fine[0, 0].item() == pytest.approx(-1 + 1 / 60) and coarse[0, 0].item() == pytest.approx(-1 + 1 / 64)


def test_training_draws_cover_off_grid_windows_anywhere_in_the_image():
    """Half the draws restore a square off the latent grid at a random place, as the pipeline
    meets most output sizes; the same (seed, image, draw) always picks the same window."""
    from cxr_pipeline.models.diffusion_training import draw_window

    windows = [draw_window(f"img{i}", k, 64, 8, 0) for i in range(200) for k in range(6)]
    whole = [w for w in windows if w == (0, 0, 64)]
    parts = [w for w in windows if w != (0, 0, 64)]
    assert 0.4 < len(whole) / len(windows) < 0.6
    assert {size for _, _, size in parts} == set(range(57, 64))  # every size off the 8 px grid
    assert all(0 <= top <= 64 - size and 0 <= left <= 64 - size for top, left, size in parts)
    assert len({(top, left) for top, left, _ in parts}) > 20  # not always centred
    assert draw_window("img3", 2, 64, 8, 0) == draw_window("img3", 2, 64, 8, 0)
    assert draw_window("img3", 2, 8, 8, 0) == (0, 0, 8)  # an image no larger than the grid is drawn whole
