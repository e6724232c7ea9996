"""Ingestion on the demo layout and real DICOM files: nothing lost, incremental, deterministic."""

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.data.ingest import (
    IngestOptions,
    accounting,
    ingest,
    list_input_files,
    read_manifest,
    read_rejected,
)
from tests.conftest import pydicom_file


def run(data_dir: Path, out: Path, **option_overrides):
    options = IngestOptions(**{"image_size": 32, "workers": 2, **option_overrides})
    summary = ingest(
        data_dir,
        manifest_path=out / "manifest.parquet",
        rejected_path=out / "rejected.parquet",
        store=ImageStore(out / "images"),
        options=options,
    )
    return summary, read_manifest(out / "manifest.parquet"), read_rejected(out / "rejected.parquet")


@pytest.fixture
def demo_copy(small_demo, tmp_path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(small_demo, target)
    return target


def test_demo_every_file_accounted_for_with_the_planted_reasons(demo_copy, tmp_path):
    summary, manifest, rejected = run(demo_copy, tmp_path / "out")
    assert accounting(demo_copy, manifest, rejected) == {"missing": [], "stale": [], "listed_twice": []}
    assert summary.files_seen == len(list_input_files(demo_copy)) == len(manifest) + len(rejected)
    reasons = dict(zip(rejected["source_path"], rejected["reason"]))
    planted = {
        "nih/images_001/images/Thumbs.db": "not_an_image",
        "nih/images_001/images/copy_of_first_image.png": "duplicate",
        "nih/images_001/images/thumbnail_small.png": "too_small",
        "dicom/DMOCT0001/ct_chest_slice.dcm": "modality_not_allowed",
        "dicom/DMOLAT0001/lateral.dcm": "lateral_view",
        "dicom/DMOKO0001/key_objects.dcm": "no_pixel_data",
        "nih/Data_Entry_2017.csv": "text_file",
    }
    for path, reason in planted.items():
        assert reasons.get(path) == reason, (path, reasons.get(path))
    truncated = [p for p in reasons if p.endswith("IM_truncated.dcm")]
    assert truncated and reasons[truncated[0]] == "corrupt"
    # Every genuine image made it in, through every decoder the demo exercises.
    assert set(manifest["decoder"]) >= {"pillow", "native", "pylibjpeg"}
    assert set(manifest["photometric"]) >= {"MONOCHROME1", "MONOCHROME2", "pillow:L"}
    assert manifest["pixel_hash"].is_unique and manifest["image_id"].is_unique
    # Text sidecars (label CSV, README, the demo's own spec) do not count against the share.
    candidates = rejected[rejected["reason"] != "text_file"]
    assert summary.rejected_share == pytest.approx(len(candidates) / (len(manifest) + len(candidates)))


def test_manifest_holds_no_direct_identifiers(demo_copy, tmp_path):
    _, manifest, rejected = run(demo_copy, tmp_path / "out")
    dicom_rows = manifest[manifest["format"] == "dicom"]
    assert dicom_rows["patient_id"].str.startswith("DMO").all()
    headers = [pydicom.dcmread(demo_copy / p, stop_before_pixels=True) for p in dicom_rows["source_path"]]
    names = {str(h.PatientName) for h in headers}
    birth_dates = {str(h.PatientBirthDate) for h in headers}
    assert names and birth_dates
    cells = {str(v) for frame in (manifest, rejected) for v in frame.to_numpy().ravel()}
    assert not any(name in cell for cell in cells for name in names)
    assert not cells & birth_dates
    assert not {"patient_name", "birth_date", "PatientName", "PatientBirthDate"} & set(manifest.columns)


def test_stored_images_match_a_fresh_decode(demo_copy, tmp_path):
    _, manifest, _ = run(demo_copy, tmp_path / "out")
    store = ImageStore(tmp_path / "out" / "images")
    images = store.read_many(list(manifest["shard"]), list(manifest["shard_index"]))
    assert images.shape == (len(manifest), 32, 32)
    assert images.min() >= 0.0 and images.max() <= 1.0
    # Radiographs: a bright mediastinum between dark lungs, for every accepted demo image.
    centre = images[:, 8:20, 14:18].mean(axis=(1, 2))
    lungs = images[:, 8:20, [7, 8, 23, 24]].mean(axis=(1, 2))
    assert (centre > lungs).mean() > 0.95


def test_incremental_runs_touch_only_new_changed_and_deleted_files(demo_copy, tmp_path):
    out = tmp_path / "out"
    first, manifest, _ = run(demo_copy, out)
    again, manifest_again, _ = run(demo_copy, out)
    assert again.processed == 0 and again.unchanged == first.files_seen
    pd.testing.assert_frame_equal(manifest, manifest_again)

    new_file = demo_copy / "dicom" / "NEW" / "rg1.dcm"
    new_file.parent.mkdir(parents=True)
    shutil.copy(pydicom_file("RG1_UNCR.dcm"), new_file)
    deleted = manifest["source_path"].iloc[3]
    (demo_copy / deleted).unlink()
    changed = manifest["source_path"].iloc[5]
    os.utime(demo_copy / changed, ns=(0, 1_000_000_000))

    third, manifest_third, rejected_third = run(demo_copy, out)
    assert third.processed == 2  # the new file and the touched one
    assert third.removed == 2  # rows of the deleted and of the changed file
    assert "dicom/NEW/rg1.dcm" in set(manifest_third["source_path"])
    assert deleted not in set(manifest_third["source_path"])
    assert accounting(demo_copy, manifest_third, rejected_third)["missing"] == []
    # Shards no row refers to are gone; every row's shard exists.
    assert ImageStore(out / "images").shard_names() == set(manifest_third["shard"])


def test_changed_options_rebuild_everything(demo_copy, tmp_path):
    out = tmp_path / "out"
    run(demo_copy, out)
    summary, manifest, _ = run(demo_copy, out, image_size=48)
    assert summary.full_rebuild and summary.processed == summary.files_seen
    store = ImageStore(out / "images")
    assert store.read(manifest["shard"].iloc[0], int(manifest["shard_index"].iloc[0])).shape == (48, 48)
    assert store.meta()["image_size"] == 48


def test_parallel_and_serial_ingestion_agree(demo_copy, tmp_path):
    _, parallel_manifest, parallel_rejected = run(demo_copy, tmp_path / "p", workers=2)
    _, serial_manifest, serial_rejected = run(demo_copy, tmp_path / "s", workers=1)
    columns = ["source_path", "pixel_hash", "decoder", "voi", "inverted"]
    pd.testing.assert_frame_equal(parallel_manifest[columns], serial_manifest[columns])
    pd.testing.assert_frame_equal(
        parallel_rejected[["source_path", "reason"]], serial_rejected[["source_path", "reason"]]
    )
    a = ImageStore(tmp_path / "p" / "images").read_many(
        list(parallel_manifest["shard"]), list(parallel_manifest["shard_index"])
    )
    b = ImageStore(tmp_path / "s" / "images").read_many(
        list(serial_manifest["shard"]), list(serial_manifest["shard_index"])
    )
    np.testing.assert_array_equal(a, b)


def test_real_dicom_folder_with_a_lossy_twin_and_non_chest_files(tmp_path):
    data = tmp_path / "pacs"
    data.mkdir()
    for name in ["RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm", "RG3_UNCR.dcm", "CT_small.dcm", "US1_UNCR.dcm"]:
        shutil.copy(pydicom_file(name), data / name)
    summary, manifest, rejected = run(data, tmp_path / "out")
    # J2KR is lossless: the same pixels as UNCR, so it is the duplicate; the lossy J2KI is not.
    assert sorted(manifest["source_path"]) == ["RG1_J2KI.dcm", "RG1_J2KR.dcm"]
    reasons = dict(zip(rejected["source_path"], rejected["reason"]))
    assert reasons == {
        "RG1_UNCR.dcm": "duplicate",
        "RG3_UNCR.dcm": "body_part_not_chest",
        "CT_small.dcm": "modality_not_allowed",
        "US1_UNCR.dcm": "modality_not_allowed",
    }
    assert "RG1_J2KR.dcm" in rejected.set_index("source_path").loc["RG1_UNCR.dcm", "message"]


def test_missing_data_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(tmp_path / "nowhere", tmp_path / "out")
