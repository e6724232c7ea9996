"""PNG/JPEG reading, content sniffing and resizing."""

import numpy as np
import pytest
from PIL import Image

from cxr_pipeline.data.geometry import AspectPolicy, to_square
from cxr_pipeline.data.raster import read_raster
from cxr_pipeline.data.rejections import Reason, Rejected
from cxr_pipeline.data.sniff import FileKind, sniff_file
from tests.conftest import pydicom_file


def test_16_bit_png_keeps_its_precision(tmp_path):
    ramp = np.linspace(0, 65535, 256 * 256).reshape(256, 256).astype(np.uint16)
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    image = read_raster(path)
    assert image.fields["bits_stored"] == 16
    assert image.pixels.max() == pytest.approx(1.0)
    # An 8-bit conversion would leave at most 256 levels.
    assert len(np.unique(image.pixels)) > 10_000


def test_8_bit_png_scales_by_255(tmp_path):
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    path = tmp_path / "gray.png"
    Image.fromarray(values).save(path)
    image = read_raster(path)
    np.testing.assert_allclose(image.pixels, values / 255.0, atol=1e-6)


def test_rgb_of_gray_content_collapses_and_colour_is_rejected(tmp_path):
    gray = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    rgb_path = tmp_path / "rgb.png"
    Image.fromarray(gray).convert("RGB").save(rgb_path)
    collapsed = read_raster(rgb_path)
    np.testing.assert_allclose(collapsed.pixels, gray / 255.0, atol=1.5 / 255)
    assert "collapsed" in collapsed.fields["voi"]

    colour = np.zeros((64, 64, 3), dtype=np.uint8)
    colour[..., 0] = 200
    colour_path = tmp_path / "photo.png"
    Image.fromarray(colour).save(colour_path)
    with pytest.raises(Rejected) as caught:
        read_raster(colour_path)
    assert caught.value.reason is Reason.NOT_GRAYSCALE


def test_truncated_png_is_corrupt(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (128, 128), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(Rejected) as caught:
        read_raster(path)
    assert caught.value.reason is Reason.CORRUPT


def test_jpeg_is_read(tmp_path):
    path = tmp_path / "x.jpg"
    Image.fromarray(np.full((80, 60), 128, dtype=np.uint8)).save(path, quality=95)
    image = read_raster(path)
    assert image.fields["format"] == "jpeg" and image.pixels.shape == (80, 60)
    assert abs(float(image.pixels.mean()) - 128 / 255) < 2 / 255


def test_sniffing_ignores_extensions(tmp_path):
    png_named_dcm = tmp_path / "image.dcm"
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(png_named_dcm, format="PNG")
    text_named_png = tmp_path / "labels.png"
    text_named_png.write_text("Image Index,Finding Labels\n")
    binary = tmp_path / "blob.png"
    binary.write_bytes(bytes(range(256)) * 4)
    assert sniff_file(png_named_dcm) is FileKind.PNG
    assert sniff_file(text_named_png) is FileKind.TEXT
    assert sniff_file(binary) is FileKind.UNKNOWN
    assert sniff_file(pydicom_file("CT_small.dcm")) is FileKind.DICOM


def test_pad_policy_keeps_aspect_and_centres_the_image():
    wide = np.zeros((100, 200), dtype=np.float32)
    wide[40:60, 90:110] = 1.0  # a centred square stays a centred square
    out, record = to_square(wide, 64, AspectPolicy.PAD)
    assert out.shape == (64, 64)
    assert record.offset_y == -50 and record.offset_x == 0
    assert record.scale_x == record.scale_y == pytest.approx(64 / 200)
    rows = np.where(out.max(axis=1) > 0.5)[0]
    cols = np.where(out.max(axis=0) > 0.5)[0]
    assert abs(rows.mean() - 31.5) < 1 and abs(cols.mean() - 31.5) < 1
    assert abs(len(rows) - len(cols)) <= 1  # isotropic: the square is not stretched
    assert out[:10].max() < 0.02  # letterbox band is air


def test_crop_and_stretch_policies():
    tall = np.ones((300, 100), dtype=np.float32)
    tall[:100] = 0.0
    cropped, record = to_square(tall, 50, AspectPolicy.CROP)
    assert record.offset_y == 100 and cropped.min() > 0.98  # the dark top third was cut
    stretched, record = to_square(tall, 50, AspectPolicy.STRETCH)
    assert record.scale_y == pytest.approx(50 / 300) and record.scale_x == pytest.approx(0.5)
    assert stretched[:10].max() < 0.1 and stretched[-10:].min() > 0.9


def test_resize_antialiases_instead_of_aliasing():
    stripes = np.zeros((256, 256), dtype=np.float32)
    stripes[:, ::2] = 1.0  # one-pixel stripes: any decimation without a filter keeps 0s or 1s
    out, _ = to_square(stripes, 64, AspectPolicy.PAD)
    assert abs(float(out.mean()) - 0.5) < 0.02 and float(out.std()) < 0.05
