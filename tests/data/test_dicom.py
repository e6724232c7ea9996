import io

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate

from cxr_pipeline.data.dicom import parse_age_years, read_dicom
from cxr_pipeline.data.ingest import IngestOptions, _Task, process_file
from cxr_pipeline.data.rejections import Reason, Rejected
from tests.conftest import pydicom_file

OPTIONS = IngestOptions(image_size=64)


def outcome_for(path):
    return process_file(_Task(str(path.parent), path.name, OPTIONS))


def test_chest_cr_monochrome1_has_dark_lungs_and_bright_mediastinum():
    outcome = outcome_for(pydicom_file("RG1_UNCI.dcm"))
    assert outcome.accepted, outcome.message
    assert outcome.fields["photometric"] == "MONOCHROME1"
    assert outcome.fields["inverted"] is True
    assert outcome.fields["bits_stored"] == 15
    assert outcome.fields["voi"].startswith("window center=15000 width=30000")
    image = outcome.stored.astype(np.float32) / 65535
    mediastinum = image[16:40, 29:35].mean()
    lungs = (image[16:40, 12:22].mean() + image[16:40, 42:52].mean()) / 2
    assert mediastinum > lungs + 0.15, (mediastinum, lungs)


def test_uncompressed_and_jpeg2000_lossless_decode_to_identical_pixels():
    plain = outcome_for(pydicom_file("RG1_UNCR.dcm"))
    j2k = outcome_for(pydicom_file("RG1_J2KR.dcm"))
    assert plain.accepted and j2k.accepted
    assert j2k.fields["transfer_syntax"] == "JPEG 2000 Image Compression (Lossless Only)"
    assert j2k.fields["decoder"] == "pylibjpeg"
    assert plain.fields["decoder"] == "native"
    assert plain.pixel_hash == j2k.pixel_hash
    np.testing.assert_array_equal(plain.stored, j2k.stored)


@pytest.mark.parametrize(
    "name, reason",
    [
        ("CT_small.dcm", Reason.MODALITY_NOT_ALLOWED),
        ("MR_small.dcm", Reason.MODALITY_NOT_ALLOWED),
        ("US1_UNCR.dcm", Reason.MODALITY_NOT_ALLOWED),
        ("RG3_UNCI.dcm", Reason.BODY_PART_NOT_CHEST),
        ("RG3_UNCR.dcm", Reason.BODY_PART_NOT_CHEST),
        ("RG3_J2KR.dcm", Reason.BODY_PART_NOT_CHEST),
        ("emri_small_jpeg_2k_lossless_too_short.dcm", Reason.CORRUPT),
    ],
)
def test_non_chest_and_broken_files_are_rejected_with_the_right_reason(name, reason):
    outcome = outcome_for(pydicom_file(name))
    assert not outcome.accepted
    assert outcome.reason == reason.value, outcome.message
    assert outcome.message


def test_truncated_file_is_corrupt(tmp_path):
    data = pydicom_file("RG1_UNCR.dcm").read_bytes()
    broken = tmp_path / "IM0001"
    broken.write_bytes(data[: len(data) // 2])
    outcome = outcome_for(broken)
    assert outcome.reason == Reason.CORRUPT.value


def test_dicom_without_preamble_or_extension_is_recognized(tmp_path):
    ds = pydicom.dcmread(pydicom_file("RG1_UNCR.dcm"))
    ds.preamble = None
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=False)
    path = tmp_path / "IM0001"
    path.write_bytes(buffer.getvalue())
    outcome = outcome_for(path)
    assert outcome.file_kind == "dicom_no_preamble"
    assert outcome.accepted, outcome.message
    assert outcome.pixel_hash == outcome_for(pydicom_file("RG1_UNCR.dcm")).pixel_hash


def test_monochrome2_twin_of_a_monochrome1_image_looks_the_same(tmp_path):
    """Inversion happens once, after VOI: the inverted-photometric twin must display identically."""
    ds = pydicom.dcmread(pydicom_file("RG1_UNCR.dcm"))
    top = 2**ds.BitsStored - 1
    values = ds.pixel_array
    ds.PixelData = (top - values).astype(np.uint16).tobytes()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.WindowCenter = top - float(ds.WindowCenter)
    twin = tmp_path / "twin.dcm"
    ds.save_as(twin)
    original = read_dicom(pydicom_file("RG1_UNCR.dcm"))
    mirrored = read_dicom(twin)
    assert mirrored.fields["inverted"] is False
    np.testing.assert_allclose(original.pixels, mirrored.pixels, atol=2e-3)


def test_without_window_a_percentile_range_is_used_and_recorded(tmp_path):
    ds = pydicom.dcmread(pydicom_file("RG1_UNCR.dcm"))
    del ds.WindowCenter, ds.WindowWidth
    path = tmp_path / "nowindow.dcm"
    ds.save_as(path)
    image = read_dicom(path)
    assert image.fields["voi"].startswith("percentile p0.5-p99.5")
    assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0
    # Percentile scaling stretches to the full range.
    assert np.percentile(image.pixels, 99.9) > 0.99 and np.percentile(image.pixels, 0.1) < 0.01


def test_lateral_view_is_rejected_only_when_frontal_only(tmp_path):
    ds = pydicom.dcmread(pydicom_file("RG1_UNCR.dcm"))
    ds.ViewPosition = "LL"
    path = tmp_path / "lat.dcm"
    ds.save_as(path)
    with pytest.raises(Rejected) as caught:
        read_dicom(path, frontal_only=True)
    assert caught.value.reason is Reason.LATERAL_VIEW
    assert read_dicom(path, frontal_only=False).fields["view_position"] == "LL"


def test_direct_identifiers_are_not_kept_but_age_is_derived(tmp_path):
    ds = pydicom.dcmread(pydicom_file("RG1_UNCR.dcm"))
    ds.PatientName = "DOE^JANE"
    ds.PatientBirthDate = "19700301"
    ds.StudyDate = "20200215"
    if "PatientAge" in ds:
        del ds.PatientAge
    path = tmp_path / "named.dcm"
    ds.save_as(path)
    fields = read_dicom(path).fields
    assert fields["age_years"] == 49.0
    assert "DOE" not in repr(fields) and "1970" not in repr(fields)


def test_age_strings():
    assert parse_age_years("045Y") == 45.0
    assert parse_age_years("006M") == 0.5
    assert parse_age_years("") is None and parse_age_years("abc") is None


def test_no_installed_decoder_is_a_clear_rejection(tmp_path):
    """A transfer syntax pydicom has no pixel decoder for names itself in the message."""
    ds = pydicom.dcmread(pydicom_file("RG1_UNCR.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    ds.PixelData = encapsulate([b"\x00" * 64])
    path = tmp_path / "mpeg.dcm"
    ds.save_as(path)
    outcome = outcome_for(path)
    assert outcome.reason == Reason.UNSUPPORTED_TRANSFER_SYNTAX.value
    assert "MPEG2" in outcome.message


def test_voi_and_modality_lut_sequences_are_applied_and_recorded():
    voi = read_dicom(pydicom_file("vlut_04.dcm"), allowed_modalities=("OT",))
    assert voi.fields["voi"].startswith("voi_lut_sequence")
    lut = read_dicom(pydicom_file("mlut_18.dcm"), allowed_modalities=("OT",))
    assert lut.fields["modality_lut"] == "lut_sequence"
    for image in (voi, lut):
        assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0
        assert image.pixels.max() - image.pixels.min() > 0.5  # scaled from the LUT's output range
    # The same files are rejected under the default (CR, DX) policy.
    with pytest.raises(Rejected) as caught:
        read_dicom(pydicom_file("vlut_04.dcm"))
    assert caught.value.reason is Reason.MODALITY_NOT_ALLOWED


# --- CT slices ------------------------------------------------------------------------------------

CT_OPTIONS = IngestOptions(image_size=64, allowed_modalities=("CR", "DX", "CT"))


def ct_outcome(name, options=CT_OPTIONS):
    path = pydicom_file(name)
    return process_file(_Task(str(path.parent), path.name, options))


def test_a_ct_slice_is_rejected_under_the_default_radiograph_modalities():
    outcome = ct_outcome("693_UNCR.dcm", OPTIONS)
    assert not outcome.accepted and outcome.reason == Reason.MODALITY_NOT_ALLOWED.value
    assert "CT" in outcome.message


def test_ct_decodes_to_hounsfield_units_in_its_own_window_and_records_it():
    """693_UNCR: rescale intercept -1024 (stored 0 is -1024 HU) and a window of its own (40/100):
    every pixel is the HU value through that window, and the manifest says which window."""
    outcome = ct_outcome("693_UNCR.dcm")
    assert outcome.accepted, outcome.message
    assert "CT window center=40 width=100 HU (DICOM WindowCenter/Width)" in outcome.fields["voi"]
    assert "-> HU" in outcome.fields["modality_lut"]
    ds = pydicom.dcmread(pydicom_file("693_UNCR.dcm"))
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    from cxr_pipeline.data.dicom import ct_to_display

    pixels, _ = ct_to_display(ds.pixel_array, ds, (-600.0, 1500.0))
    expected = np.clip((hu - (40 - 50)) / 100, 0, 1)
    np.testing.assert_allclose(pixels, expected, atol=1e-6)
    assert (hu < -1000).any() and (pixels == 0).any() and (pixels == 1).any()  # air below, bone above


def test_ct_without_a_window_takes_the_configured_default():
    outcome = ct_outcome("CT_small.dcm")
    assert outcome.accepted, outcome.message
    assert "center=-600 width=1500 HU (configured default)" in outcome.fields["voi"]
    mediastinal = IngestOptions(image_size=64, allowed_modalities=("CT",), ct_window=(40.0, 400.0))
    assert "center=40 width=400 HU (configured default)" in ct_outcome("CT_small.dcm", mediastinal).fields["voi"]
    # the file's own window can be overridden for every slice
    forced = IngestOptions(image_size=64, allowed_modalities=("CT",), ct_window_from_dicom=False)
    assert "center=-600 width=1500 HU (configured default)" in ct_outcome("693_UNCR.dcm", forced).fields["voi"]
    # and the window is part of what decides the stored pixels
    assert forced.fingerprint() != CT_OPTIONS.fingerprint() and OPTIONS.fingerprint() != CT_OPTIONS.fingerprint()


def test_compressed_ct_decodes_to_the_same_slice_as_uncompressed():
    plain, lossless = ct_outcome("693_UNCR.dcm"), ct_outcome("693_J2KR.dcm")
    assert plain.accepted and lossless.accepted and plain.pixel_hash == lossless.pixel_hash


def test_multi_frame_ct_is_rejected_with_its_frame_count():
    outcome = ct_outcome("eCT_Supplemental.dcm")
    assert outcome.reason == Reason.MULTI_FRAME.value
    assert "2 frames; split the volume into single-frame slices" in outcome.message
