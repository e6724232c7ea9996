"""The built-in demo dataset: real layouts, real variety, visible findings, deterministic."""

import csv
import hashlib
from dataclasses import replace

import numpy as np
import pydicom
import pytest

from cxr_pipeline.data.demo import phantom
from cxr_pipeline.data.demo.dataset import NIH_HEADER, generate_demo_dataset
from cxr_pipeline.data.sniff import FileKind, sniff_file
from tests.conftest import SMALL_DEMO


def test_nih_layout_and_exact_csv_header(small_demo):
    lines = (small_demo / "nih" / "Data_Entry_2017.csv").read_text().splitlines()
    assert lines[0] == NIH_HEADER
    rows = list(csv.reader(lines[1:]))
    assert rows and all(len(row) == 12 and row[-1] == "" for row in rows)  # trailing comma
    for row in rows:
        name = row[0]
        assert name.startswith(f"{int(row[3]):08d}_{int(row[2]):03d}.")
        matches = list((small_demo / "nih").glob(f"images_*/images/{name}"))
        assert len(matches) == 1
        assert all(label in ("No Finding", *phantom.RENDERED_FINDINGS) for label in row[1].split("|"))


def test_dicom_share_varies_encoding_like_real_exports(small_demo):
    files = [p for p in (small_demo / "dicom").rglob("*") if p.is_file() and p.parent.name.startswith("study")]
    files = [p for p in files if "truncated" not in p.name]
    assert files
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    assert {h.PhotometricInterpretation for h in headers} == {"MONOCHROME1", "MONOCHROME2"}
    assert {h.Modality for h in headers} == {"CR", "DX"}
    assert all(10 <= h.BitsStored <= 16 for h in headers)
    assert len({h.file_meta.TransferSyntaxUID for h in headers}) >= 3
    assert any("WindowCenter" in h for h in headers) and any("WindowCenter" not in h for h in headers)
    assert any(not p.suffix for p in files)  # PACS-style names without extension
    assert all(sniff_file(p) is FileKind.DICOM for p in files)


def test_generation_is_deterministic_and_reused(small_demo, tmp_path):
    again = tmp_path / "again"
    generate_demo_dataset(again, SMALL_DEMO, workers=1)

    def digest(root):
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    assert digest(again) == digest(small_demo)
    marker = again / "demo_dataset.json"
    before = marker.stat().st_mtime_ns
    generate_demo_dataset(again, SMALL_DEMO, workers=1)  # same spec: nothing rewritten
    assert marker.stat().st_mtime_ns == before


def _pair(finding, seed=3):
    rng = np.random.default_rng(seed)
    traits = phantom.sample_patient(rng, seed)
    study = phantom.sample_study(rng, (), seed=seed, view="PA")
    base = phantom.render(traits, study, 128)
    sick = phantom.render(traits, replace(study, findings=(finding,), finding_side={finding: 1}), 128)
    return base, sick, study


def _region(image, study, u0, u1, v0, v1):
    """Mean over a box given in anatomy coordinates (the study's affine is mild)."""
    size = image.shape[0]
    to_px = lambda t: int(round((t + 1) / 2 * size))
    return float(image[to_px(v0) : to_px(v1), to_px(u0) : to_px(u1)].mean())


@pytest.mark.parametrize(
    "finding, box, direction",
    [
        ("Cardiomegaly", (0.30, 0.55, 0.05, 0.25), +1),  # heart now reaches the left lung base
        ("Effusion", (0.45, 0.70, 0.15, 0.35), +1),  # fluid whitens the left base
        ("Pneumothorax", (0.45, 0.65, -0.45, -0.15), -1),  # the lateral apex loses lung markings
        ("Pneumonia", (0.25, 0.60, -0.40, 0.25), +1),
        ("Atelectasis", (0.20, 0.60, -0.05, 0.35), +1),
    ],
)
def test_findings_change_the_image_where_they_should(finding, box, direction):
    base, sick, study = _pair(finding)
    delta = _region(sick, study, *box) - _region(base, study, *box)
    assert delta * direction > 0.01, delta
    # and the opposite (right) lung is left nearly alone
    mirror = (-box[1], -box[0], box[2], box[3])
    assert abs(_region(sick, study, *mirror) - _region(base, study, *mirror)) < abs(delta) / 2


# --- The CT-slice demo ------------------------------------------------------------------------------


def test_the_ct_slice_demo_is_written_in_the_single_slice_layout_deterministically(tmp_path):
    from cxr_pipeline.data.demo.ct_slices import CLASSES, CtDemoSpec, generate_ct_demo
    from cxr_pipeline.data.labels.sources import SLICE_FOLDER, SLICE_NAME

    spec = CtDemoSpec(patients=6, source_size=96, slices_per_patient=2)
    summary = generate_ct_demo(tmp_path / "a", spec, workers=1)
    assert summary["images"] == 12 and sum(summary["patients_per_class"].values()) == 6
    files = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 13  # and one truncated slice for the rejection path
    for relative in files:
        folder, name = relative.split("/")
        match = SLICE_FOLDER.match(folder)
        assert match and match.group("label") in CLASSES
        assert SLICE_NAME.match(name), name
        assert name.startswith(CLASSES[match.group("label")] + "_p")
    # the same spec gives the same bytes; a second call with it writes nothing
    generate_ct_demo(tmp_path / "b", spec, workers=2)
    for relative in files:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes()
    assert generate_ct_demo(tmp_path / "a", spec) == summary


def test_a_ct_slice_has_air_lungs_soft_tissue_and_bone_in_its_window():
    from cxr_pipeline.data.demo.ct_slices import render_slice, sample_chest, to_window

    rng = np.random.default_rng(3)
    hu = render_slice(sample_chest(rng), 0.5, 128, "Normal", rng)
    # air outside, lungs around -850, soft tissue and blood near 40, bone well above
    assert (hu < -900).mean() > 0.2 and ((hu > -900) & (hu < -600)).mean() > 0.05
    assert ((hu > -150) & (hu < 150)).mean() > 0.1 and (hu > 300).mean() > 0.01
    window = to_window(hu)
    assert window.min() >= 0 and window.max() <= 1 and window.dtype == np.float32


def test_the_demo_setting_picks_the_ct_slices_and_its_own_folder(tmp_path, monkeypatch):
    from resources import CxrSettings

    monkeypatch.delenv("CXR_DATA_DIR", raising=False)
    monkeypatch.delenv("CXR_DEMO", raising=False)
    radiographs = CxrSettings(home=str(tmp_path))
    assert radiographs.demo_kind() == "radiographs" and radiographs.raw_data_dir() == tmp_path / "demo_data"
    monkeypatch.setenv("CXR_DEMO", "ct_slices")
    ct = CxrSettings(home=str(tmp_path))
    assert ct.demo_kind() == "ct_slices" and ct.raw_data_dir() == tmp_path / "demo_ct_slices"
    with pytest.raises(ValueError, match="unknown demo"):
        CxrSettings(home=str(tmp_path), demo="mri").demo_kind()
