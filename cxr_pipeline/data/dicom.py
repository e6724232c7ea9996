"""DICOM projection radiographs (and CT slices, where allowed) to display-ready pixels,
recording every decision taken.

Order of operations (PS3.3 C.11): stored values -> Modality LUT (rescale or LUT sequence) ->
VOI LUT (LUT sequence, else window, else a robust percentile range) -> scale the VOI output
range to [0, 1] -> invert once for MONOCHROME1, so bright always means dense.

CT differs in the VOI step: after the Modality LUT its values are Hounsfield units, which mean
the same on every scanner, so a slice is windowed in HU (its own window where the file names
one, else a configured default, a lung window unless set) and never by percentiles, which would
give every slice a different grey for the same tissue. Multi-frame (enhanced) CT is rejected
with the frame count: a volume is split into single-frame slices before it is ingested.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder

from .rejections import Reason, Rejected
from .source_image import SourceImage, hash_pixels

# Decoder plugins in order of preference; pydicom's own choice would try Pillow first for JPEG
# 2000, whose handling of >8-bit precision has historically been the least reliable.
DECODER_PREFERENCE = ("pylibjpeg", "pyjpegls", "pydicom", "pillow", "gdcm")

CHEST_BODY_PARTS = ("CHEST", "THORAX", "TORAX", "THORAC", "LUNG")
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL"})
PERCENTILE_RANGE = (0.5, 99.5)
# (centre, width) in HU for CT slices without a window of their own: a lung window, the one chest
# CT slices are usually published in (a mediastinal window is (40, 400))
DEFAULT_CT_WINDOW = (-600.0, 1500.0)


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def parse_age_years(age: str | None) -> float | None:
    """DICOM AS values: ``045Y``, ``006M``, ``010W``, ``003D``."""
    if not age or len(age) < 2 or not age[:-1].strip().isdigit():
        return None
    number, unit = int(age[:-1]), age[-1].upper()
    per_year = {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}.get(unit)
    return None if per_year is None else round(number / per_year, 3)


def _age_from_dates(ds: Dataset) -> float | None:
    """Used only when PatientAge is absent; the birth date itself is never stored."""
    birth, study = _text(ds, "PatientBirthDate"), _text(ds, "StudyDate")
    if not birth or not study or len(birth) < 8 or len(study) < 8:
        return None
    try:
        by, bm, bd = int(birth[:4]), int(birth[4:6]), int(birth[6:8])
        sy, sm, sd = int(study[:4]), int(study[4:6]), int(study[6:8])
    except ValueError:
        return None
    years = sy - by - ((sm, sd) < (bm, bd))
    return float(years) if 0 <= years < 130 else None


def _pixel_spacing(ds: Dataset) -> tuple[float | None, float | None, str | None]:
    """Prefer calibrated PixelSpacing; projection images often carry only the detector's."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            row, col = float(value[0]), float(value[1])
        except (TypeError, ValueError, IndexError):
            continue
        if row > 0 and col > 0:
            return row, col, keyword
    return None, None, None


def _is_lateral(ds: Dataset) -> str | None:
    view = (_text(ds, "ViewPosition") or "").upper()
    if view in LATERAL_VIEWS:
        return f"ViewPosition {view}"
    for item in ds.get("ViewCodeSequence") or []:
        meaning = str(item.get("CodeMeaning", "")).lower()
        # "left lateral decubitus" is a frontal projection of a patient lying on the side.
        if "lateral" in meaning and "decubitus" not in meaning:
            return f"ViewCodeSequence '{item.get('CodeMeaning')}'"
    return None


def check_header(ds: Dataset, *, allowed_modalities: Collection[str], frontal_only: bool) -> None:
    """Reject from the header alone, before spending time on pixels."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        sop = ds.get("SOPClassUID")
        what = getattr(sop, "name", None) or str(sop or "unknown SOP class")
        raise Rejected(Reason.NO_PIXEL_DATA, f"DICOM object without pixel data ({what})")
    modality = (_text(ds, "Modality") or "").upper()
    if modality not in allowed_modalities:
        raise Rejected(
            Reason.MODALITY_NOT_ALLOWED,
            f"modality {modality or 'missing'}; accepted: {', '.join(sorted(allowed_modalities))}",
        )
    body_part = (_text(ds, "BodyPartExamined") or "").upper()
    if body_part and not any(token in body_part for token in CHEST_BODY_PARTS):
        raise Rejected(Reason.BODY_PART_NOT_CHEST, f"BodyPartExamined {body_part}")
    if frontal_only:
        lateral = _is_lateral(ds)
        if lateral:
            raise Rejected(Reason.LATERAL_VIEW, f"lateral projection ({lateral}); frontal only")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        what = "split the volume into single-frame slices" if modality == "CT" else "projection radiographs have one"
        raise Rejected(Reason.MULTI_FRAME, f"{frames} frames; {what}")
    samples = int(ds.get("SamplesPerPixel") or 1)
    photometric = (_text(ds, "PhotometricInterpretation") or "").upper()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise Rejected(
            Reason.NOT_GRAYSCALE,
            f"{samples} samples per pixel, photometric {photometric or 'missing'}",
        )


def _transfer_syntax(ds: Dataset) -> pydicom.uid.UID:
    """Files without File Meta (no preamble) get the syntax their data set was parsed with."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        implicit, little = ds.original_encoding
        if not little:
            syntax = pydicom.uid.ExplicitVRBigEndian
        elif implicit:
            syntax = pydicom.uid.ImplicitVRLittleEndian
        else:
            syntax = pydicom.uid.ExplicitVRLittleEndian
        ds.file_meta.TransferSyntaxUID = syntax
    return syntax


def decode_stored_values(ds: Dataset) -> tuple[np.ndarray, str]:
    """Stored values as an array, and the name of the decoder that produced them."""
    syntax = _transfer_syntax(ds)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise Rejected(
            Reason.UNSUPPORTED_TRANSFER_SYNTAX,
            f"no pixel data decoder for transfer syntax {syntax} ({syntax.name})",
        ) from None
    if not decoder.is_encapsulated:
        try:
            values, _ = decoder.as_array(ds)
        except Exception as error:
            raise Rejected(Reason.CORRUPT, f"native pixel data unreadable: {error}") from None
        return values, "native"
    plugins = [name for name in DECODER_PREFERENCE if name in decoder.available_plugins]
    plugins += [name for name in decoder.available_plugins if name not in plugins]
    if not plugins:
        missing = "; ".join(decoder.missing_dependencies) or "none known"
        raise Rejected(
            Reason.UNSUPPORTED_TRANSFER_SYNTAX,
            f"no installed decoder for {syntax.name} (missing: {missing})",
        )
    errors = []
    for plugin in plugins:
        try:
            values, _ = decoder.as_array(ds, decoding_plugin=plugin)
            return values, plugin
        except Exception as error:
            errors.append(f"{plugin}: {error}")
    raise Rejected(Reason.CORRUPT, f"{syntax.name} pixel data failed to decode ({'; '.join(errors)})")


def _voi_output_range(ds: Dataset) -> tuple[float, float]:
    """The range a VOI transform maps into, mirroring pydicom's windowing (PS3.3 C.11.2.1.2)."""
    if ds.get("ModalityLUTSequence"):
        low, high = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2 ** int(ds.BitsStored) - 1)
    else:
        low, high = float(-(2 ** (int(ds.BitsStored) - 1))), float(2 ** (int(ds.BitsStored) - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return low, high


def _has_valid_voi_lut(ds: Dataset) -> bool:
    sequence = ds.get("VOILUTSequence")
    return bool(sequence) and None not in (
        sequence[0].get("LUTDescriptor"),
        sequence[0].get("LUTData"),
    )


def _window(ds: Dataset) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        center = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        width = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
    except (TypeError, ValueError, IndexError):
        return None
    return (center, width) if width >= 1 else None


def ct_to_display(
    values: np.ndarray, ds: Dataset, window: tuple[float, float], from_dicom: bool = True
) -> tuple[np.ndarray, dict[str, Any]]:
    """A CT slice: stored values -> HU (Modality LUT) -> a linear window in HU -> [0, 1]. The
    window is the file's first (``from_dicom``) or ``window`` (centre, width). HU already put
    dense tissue high, whatever the photometric interpretation says about display, so nothing
    is inverted."""
    hu = np.asarray(apply_modality_lut(values, ds), dtype=np.float64)
    own = _window(ds) if from_dicom else None
    centre, width = own or window
    source = "DICOM WindowCenter/Width" if own else "configured default"
    low, high = centre - width / 2, centre + width / 2
    pixels = np.clip((hu - low) / (high - low), 0.0, 1.0).astype(np.float32)
    decisions = {
        "modality_lut": f"rescale slope={float(ds.get('RescaleSlope', 1))} intercept={float(ds.get('RescaleIntercept', 0))} -> HU",
        "voi": f"CT window center={centre:g} width={width:g} HU ({source}); HU range {hu.min():g}..{hu.max():g}",
        "inverted": False,
    }
    return pixels, decisions


def to_display(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply the grayscale pipeline; return [0, 1] pixels and the decisions taken."""
    decisions: dict[str, Any] = {}
    if ds.get("ModalityLUTSequence"):
        decisions["modality_lut"] = "lut_sequence"
    elif ds.get("RescaleSlope") is not None or ds.get("RescaleIntercept") is not None:
        decisions["modality_lut"] = (
            f"rescale slope={float(ds.get('RescaleSlope', 1))} intercept={float(ds.get('RescaleIntercept', 0))}"
        )
    else:
        decisions["modality_lut"] = "none"
    modality_values = apply_modality_lut(values, ds)

    window = _window(ds)
    if _has_valid_voi_lut(ds):
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        voi = apply_voi_lut(modality_values, ds, prefer_lut=True).astype(np.float64)
        low, high = 0.0, float(2 ** int(descriptor[2]) - 1)
        decisions["voi"] = f"voi_lut_sequence ({len(ds.VOILUTSequence)} available, first used)"
    elif window is not None:
        voi = apply_voi_lut(modality_values, ds, prefer_lut=False).astype(np.float64)
        low, high = _voi_output_range(ds)
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        decisions["voi"] = f"window center={window[0]:g} width={window[1]:g} {function}"
    else:
        voi = np.asarray(modality_values, dtype=np.float64)
        low, high = (float(v) for v in np.percentile(voi, PERCENTILE_RANGE))
        decisions["voi"] = (
            f"percentile p{PERCENTILE_RANGE[0]:g}-p{PERCENTILE_RANGE[1]:g} ({low:g}..{high:g}); no VOI LUT or window"
        )
    if high <= low:
        raise Rejected(Reason.CORRUPT, "image has no dynamic range (constant pixel values)")
    pixels = np.clip((voi - low) / (high - low), 0.0, 1.0).astype(np.float32)

    photometric = str(ds.PhotometricInterpretation).upper()
    decisions["inverted"] = photometric == "MONOCHROME1"
    if decisions["inverted"]:
        pixels = 1.0 - pixels
    return pixels, decisions


def read_dicom(
    path: Path,
    *,
    has_preamble: bool = True,
    allowed_modalities: Collection[str] = ("CR", "DX"),
    frontal_only: bool = True,
    ct_window: tuple[float, float] = DEFAULT_CT_WINDOW,
    ct_window_from_dicom: bool = True,
) -> SourceImage:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, force=not has_preamble)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError) as error:
        raise Rejected(Reason.CORRUPT, f"DICOM header unreadable: {error}") from None
    truncation = [str(w.message) for w in caught if "end of file" in str(w.message).lower()]
    if truncation:
        # pydicom drops an element cut off by the end of the file and only warns.
        raise Rejected(Reason.CORRUPT, f"truncated file: {truncation[0]}")
    if not has_preamble and "SOPClassUID" not in ds and "PixelData" not in ds:
        raise Rejected(Reason.NOT_AN_IMAGE, "looked like DICOM without a preamble but is not")
    try:
        check_header(ds, allowed_modalities=allowed_modalities, frontal_only=frontal_only)
        values, decoder_name = decode_stored_values(ds)
        if (_text(ds, "Modality") or "").upper() == "CT":
            pixels, decisions = ct_to_display(values, ds, ct_window, ct_window_from_dicom)
        else:
            pixels, decisions = to_display(values, ds)
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        # Missing or malformed Image Pixel module elements (BitsStored, Rows, ...).
        raise Rejected(Reason.CORRUPT, f"inconsistent image header: {error}") from None

    spacing_row, spacing_col, spacing_source = _pixel_spacing(ds)
    syntax = _transfer_syntax(ds)
    age = parse_age_years(_text(ds, "PatientAge"))
    sex = (_text(ds, "PatientSex") or "").upper()[:1]
    fields: dict[str, Any] = {
        "format": "dicom",
        "patient_id": _text(ds, "PatientID"),
        "study_uid": _text(ds, "StudyInstanceUID"),
        "series_uid": _text(ds, "SeriesInstanceUID"),
        "sop_uid": _text(ds, "SOPInstanceUID"),
        "modality": _text(ds, "Modality"),
        "body_part": _text(ds, "BodyPartExamined"),
        "view_position": _text(ds, "ViewPosition"),
        "sex": sex if sex in ("M", "F", "O") else None,
        "age_years": age if age is not None else _age_from_dates(ds),
        "original_height": int(values.shape[0]),
        "original_width": int(values.shape[1]),
        "pixel_spacing_row_mm": spacing_row,
        "pixel_spacing_col_mm": spacing_col,
        "pixel_spacing_source": spacing_source,
        "bits_stored": int(ds.BitsStored),
        "photometric": str(ds.PhotometricInterpretation),
        "transfer_syntax": syntax.name,
        "decoder": decoder_name,
        **decisions,
    }
    return SourceImage(pixels=pixels, pixel_hash=hash_pixels(values), fields=fields)
