"""PNG and JPEG radiographs (NIH ChestX-ray14, CheXpert, MIMIC-CXR-JPG and friends).

Bit depth is scaled explicitly: 16-bit PNGs divide by 65535, never through Pillow's
``convert("L")``, which clips 16-bit data to 8 bits. RGB or palette files whose channels
agree are collapsed to one channel; genuinely coloured images are rejected.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .rejections import Reason, Rejected
from .source_image import SourceImage, hash_pixels

# Channels may differ by JPEG chroma noise in a grayscale image saved as RGB; a real colour
# photograph differs by far more than this.
GRAY_TOLERANCE = 3.0 / 255.0


def _collapse_to_gray(rgb: np.ndarray, max_value: float) -> tuple[np.ndarray, str]:
    channels = rgb.astype(np.float32) / max_value
    spread = np.abs(channels - channels.mean(axis=2, keepdims=True)).mean()
    if spread > GRAY_TOLERANCE:
        raise Rejected(
            Reason.NOT_GRAYSCALE,
            f"colour content (mean channel deviation {spread * 255:.1f}/255)",
        )
    # ITU-R BT.601 luma, as Pillow's "L" conversion would do, without the 8-bit rounding.
    gray = channels[..., 0] * 0.299 + channels[..., 1] * 0.587 + channels[..., 2] * 0.114
    return gray, f"rgb collapsed to luma (channel deviation {spread * 255:.2f}/255)"


def read_raster(path: Path) -> SourceImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.load()
                file_format = (opened.format or "raster").lower()
                image = ImageOps.exif_transpose(opened)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise Rejected(Reason.CORRUPT, f"image unreadable: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise Rejected(Reason.CORRUPT, f"image truncated or corrupt: {error}") from None

    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise Rejected(Reason.CORRUPT, "32-bit integer image with values outside 16 bits")
        values = values.astype(np.uint16)
        pixels, scaling = values.astype(np.float32) / 65535.0, "16-bit /65535"
        bits = 16
    elif mode in ("L", "1"):
        values = np.asarray(image.convert("L"))
        pixels, scaling = values.astype(np.float32) / 255.0, "8-bit /255"
        bits = 8
    elif mode in ("LA", "La"):
        values = np.asarray(image.getchannel("L"))
        pixels, scaling = values.astype(np.float32) / 255.0, "8-bit /255 (alpha dropped)"
        bits = 8
    elif mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "RGBX", "RGBa"):
        values = np.asarray(image.convert("RGB"))
        pixels, scaling = _collapse_to_gray(values, 255.0)
        scaling = f"8-bit /255, {scaling}"
        bits = 8
    elif mode == "F":
        raise Rejected(Reason.NOT_AN_IMAGE, "floating-point raster; radiographs are integer")
    else:
        raise Rejected(Reason.NOT_GRAYSCALE, f"unsupported pixel mode {mode}")

    fields = {
        "format": file_format,
        "original_height": int(pixels.shape[0]),
        "original_width": int(pixels.shape[1]),
        "bits_stored": bits,
        "photometric": f"pillow:{mode}",
        "decoder": "pillow",
        "modality_lut": "none",
        "voi": scaling,
        "inverted": False,
    }
    return SourceImage(pixels=np.clip(pixels, 0.0, 1.0), pixel_hash=hash_pixels(values), fields=fields)
