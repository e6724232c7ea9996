"""Label adapters on small hand-written files in each real format, including the awkward cases."""

import math
import textwrap

import numpy as np
import pandas as pd
import pytest

from cxr_pipeline.data.labels.metadata import LabelOptions, assign_classes, build_metadata, combine, load_label_sources
from cxr_pipeline.data.labels.sources import (
    SourceKind,
    UncertaintyPolicy,
    read_chexpert,
    read_filenames,
    read_indiana_csv,
    read_indiana_xml,
    read_nih,
    sniff_label_file,
)
from cxr_pipeline.data.labels.vocabulary import LABEL_COLUMNS, normalize_label

NIH_CSV = textwrap.dedent("""\
    Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],
    00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143,
    00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143,
    00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171,
    00000003_000.png,Pleural_Thickening|Pneumonia|Mass,0,3,414,F,AP,2500,2048,0.168,0.168,
    00000004_000.png,Pneumothorax|Covid,0,4,045Y,F,PA,2992,2991,0.143,0.143,
""")


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_nih_bracketed_headers_exact_tokens_and_unknowns(tmp_path):
    source = read_nih(write(tmp_path, "Data_Entry_2017.csv", NIH_CSV))
    table = source.table.set_index("match_key")
    assert list(table.index) == [
        "00000001_000.png",
        "00000001_001.png",
        "00000002_000.png",
        "00000003_000.png",
        "00000004_000.png",
    ]
    row = table.loc["00000003_000.png"]
    assert (row["Pleural_Thickening"], row["Pneumonia"], row["Mass"], row["Pneumothorax"]) == (1, 1, 1, 0)
    assert row["view"] == "AP" and row["sex"] == "F" and math.isnan(row["age_years"])  # 414 years: implausible
    no_finding = table.loc["00000002_000.png"]
    assert no_finding["No_Finding"] == 1 and no_finding[list(LABEL_COLUMNS[:-1])].sum() == 0
    assert table.loc["00000004_000.png", "age_years"] == 45  # older '045Y' spelling
    assert source.unknown_tokens == {"Covid": 1}
    assert table.loc["00000004_000.png", "unknown_tokens"] == "Covid"
    assert table.loc["00000004_000.png", "Pneumothorax"] == 1
    assert table["patient_id"].tolist() == ["1", "1", "2", "3", "4"]
    assert table.loc["00000001_001.png", "study_id"] == "1"


def test_exact_token_matching_never_substrings():
    assert normalize_label("Pneumothorax") == "Pneumothorax"
    assert normalize_label("pleural thickening") == "Pleural_Thickening"
    assert normalize_label("Pneumo") is None and normalize_label("Massive") is None
    assert normalize_label("No Finding") == "No_Finding"


CHEXPERT_CSV = textwrap.dedent("""\
    Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices
    CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0
    CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,
    CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Female,83,Frontal,AP,,,,1.0,,,-1.0,,,,,,1.0,
    CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg,Female,83,Lateral,,,,,1.0,,,-1.0,,,,,,1.0,
    CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Male,41,Frontal,AP,,,,,,1.0,,,,0.0,,,,
""")


@pytest.mark.parametrize(
    "policy, cardiomegaly, uncertain",
    [(UncertaintyPolicy.U_ONES, 1.0, 0), (UncertaintyPolicy.U_ZEROS, 0.0, 0), (UncertaintyPolicy.U_IGNORE, None, 5)],
)
def test_chexpert_uncertainty_policies(tmp_path, policy, cardiomegaly, uncertain):
    table = read_chexpert(write(tmp_path, "train.csv", CHEXPERT_CSV), policy).table
    row = table.iloc[1]
    assert row["patient_id"] == "patient00002" and row["study_id"] == "study2"
    assert row["match_key"] == "patient00002/study2/view1_frontal.jpg"
    for column in ("Cardiomegaly", "Effusion", "Edema", "Consolidation", "Atelectasis"):  # all -1 in this row
        if cardiomegaly is None:
            assert math.isnan(row[column]), column
        else:
            assert row[column] == cardiomegaly, column
    assert row["n_uncertain"] == uncertain
    # Blank = not mentioned = negative; findings CheXpert never annotates stay unknown.
    assert table.iloc[0]["Cardiomegaly"] == 0.0 and math.isnan(table.iloc[0]["Nodule"])
    assert table.iloc[0]["other_findings"] == "Support Devices"
    assert table.iloc[3]["view"] == "LATERAL" and table.iloc[0]["view"] == "AP"
    assert table.iloc[4]["sex"] == "M" and table.iloc[4]["Edema"] == 1.0


INDIANA_REPORTS = textwrap.dedent("""\
    uid,MeSH,Problems,image,indication,comparison,findings,impression
    1,normal,normal,Xray Chest PA and Lateral,Positive TB test,None.,"The cardiac silhouette and mediastinum size are within normal limits.
    There is no pulmonary edema.",Normal chest x-XXXX.
    2,Cardiomegaly/borderline;Pulmonary Artery/enlarged,Cardiomegaly;Pulmonary Artery,"Chest, 2 views",Preop,None.,Borderline cardiomegaly.,No acute pulmonary findings.
    3,Pulmonary Atelectasis/base/left;Pleural Effusion/left,Pulmonary Atelectasis;Pleural Effusion,PA,,,,Left basilar atelectasis and effusion.
""")
INDIANA_PROJECTIONS = textwrap.dedent("""\
    uid,filename,projection
    1,1_IM-0001-4001.dcm.png,Frontal
    1,1_IM-0001-3001.dcm.png,Lateral
    2,2_IM-0652-1001.dcm.png,Frontal
    3,3_IM-1384-1001.dcm.png,Frontal
    9,9_IM-0000-0001.dcm.png,Frontal
""")


def test_indiana_csv_pair_maps_terms_and_keeps_text(tmp_path):
    source = read_indiana_csv(
        write(tmp_path, "indiana_reports.csv", INDIANA_REPORTS),
        write(tmp_path, "indiana_projections.csv", INDIANA_PROJECTIONS),
    )
    table = source.table.set_index("match_key")
    normal = table.loc["1_IM-0001-4001.dcm.png"]
    assert normal["No_Finding"] == 1 and normal["findings_text"].endswith("There is no pulmonary edema.")
    assert "\n" not in normal["findings_text"] and normal["impression_text"] == "Normal chest x-XXXX."
    assert table.loc["1_IM-0001-3001.dcm.png", "view"] == "LATERAL"
    cardio = table.loc["2_IM-0652-1001.dcm.png"]
    assert cardio["Cardiomegaly"] == 1 and cardio["No_Finding"] == 0
    assert cardio["other_findings"] == "Pulmonary Artery"
    atelectasis = table.loc["3_IM-1384-1001.dcm.png"]
    assert (atelectasis["Atelectasis"], atelectasis["Effusion"]) == (1, 1)
    assert atelectasis["findings_text"] is pd.NA or pd.isna(atelectasis["findings_text"])  # missing section
    assert any("9_IM-0000-0001" in p for p in source.problems)  # projection without a report


XML_FULL = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><meta type="rr"/><uId id="CXR10"/>
<MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText>
<AbstractText Label="FINDINGS">Heart size   is enlarged. Small right   pneumothorax.</AbstractText>
<AbstractText Label="IMPRESSION">Cardiomegaly. Pneumothorax.</AbstractText>
</Abstract></Article></MedlineCitation>
<MeSH><major>Cardiomegaly/mild</major><major>Pneumothorax/right</major><minor>Spine/degenerative</minor></MeSH>
<parentImage id="CXR10_IM-0002-1001"><figureId>F1</figureId></parentImage>
<parentImage id="CXR10_IM-0002-2001"><figureId>F2</figureId></parentImage>
</eCitation>"""
XML_NO_FINDINGS = """<eCitation><uId id="CXR11"/><MedlineCitation><Article><Abstract>
<AbstractText Label="IMPRESSION">No acute disease.</AbstractText></Abstract></Article></MedlineCitation>
<MeSH><major>normal</major></MeSH><parentImage id="CXR11_IM-0003-1001"/></eCitation>"""


def test_indiana_xml_with_missing_sections_and_a_broken_file(tmp_path):
    paths = [
        write(tmp_path, "10.xml", XML_FULL),
        write(tmp_path, "11.xml", XML_NO_FINDINGS),
        write(tmp_path, "12.xml", "<eCitation><uId id='CXR12'>"),
    ]
    source = read_indiana_xml(paths)
    table = source.table.set_index("match_key")
    assert sorted(table.index) == ["CXR10_IM-0002-1001", "CXR10_IM-0002-2001", "CXR11_IM-0003-1001"]
    full = table.loc["CXR10_IM-0002-1001"]
    assert (full["Cardiomegaly"], full["Pneumothorax"], full["No_Finding"]) == (1, 1, 0)
    assert full["findings_text"] == "Heart size is enlarged. Small right pneumothorax."
    assert full["patient_id"] == "CXR10" and full["other_findings"] == "Spine"
    sparse = table.loc["CXR11_IM-0003-1001"]
    assert pd.isna(sparse["findings_text"]) and sparse["impression_text"] == "No acute disease."
    assert sparse["No_Finding"] == 1
    assert len(source.problems) == 1 and "12.xml" in source.problems[0]
    assert (table["match_on"] == "stem").all()


def test_filename_pattern_adapter():
    paths = pd.Series(["covid/covid_p16_ns002i00001_slice_001.png", "normal/normal_p3_x.png", "odd.png"])
    source = read_filenames(paths, r"^(?P<label>[a-z]+)_p(?P<patient>\d+)_")
    table = source.table.set_index("match_key")
    assert table.loc["covid_p16_ns002i00001_slice_001.png", "patient_id"] == "16"
    assert table.loc["normal_p3_x.png", "No_Finding"] == 1
    assert source.unknown_tokens == {"covid": 1}
    assert source.problems == ["odd.png: does not match the filename pattern"]
    with pytest.raises(ValueError, match="patient"):
        read_filenames(paths, r"(?P<label>\w+)")


def test_sources_are_recognized_by_content_not_name(tmp_path):
    assert sniff_label_file(write(tmp_path, "a.csv", NIH_CSV)) is SourceKind.NIH
    assert sniff_label_file(write(tmp_path, "b.txt", CHEXPERT_CSV)) is SourceKind.CHEXPERT
    assert sniff_label_file(write(tmp_path, "c.csv", INDIANA_REPORTS)) == "indiana_reports"
    assert sniff_label_file(write(tmp_path, "d.csv", INDIANA_PROJECTIONS)) == "indiana_projections"
    assert sniff_label_file(write(tmp_path, "e.dat", XML_FULL)) is SourceKind.INDIANA_XML
    assert sniff_label_file(write(tmp_path, "README.txt", "hello")) is None


def test_single_label_classes():
    rows = pd.DataFrame({column: [0.0] * 6 for column in LABEL_COLUMNS})
    rows["n_uncertain"] = 0
    rows.loc[0, "No_Finding"] = 1  # No Finding alone -> 0
    rows.loc[1, "Pneumothorax"] = 1  # one pathology in the class set -> 5
    rows.loc[2, ["Effusion", "Cardiomegaly"]] = 1  # two pathologies -> none
    rows.loc[3, "Nodule"] = 1  # one pathology outside the class set -> none
    rows.loc[4, "Pneumonia"] = 1
    rows.loc[4, "n_uncertain"] = 1  # an unresolved uncertain label -> none
    rows.loc[5, "Mass"] = np.nan  # not annotated by the source: does not block
    rows.loc[5, "Cardiomegaly"] = 1
    assert assign_classes(rows).tolist() == [0, 5, pd.NA, pd.NA, pd.NA, 2]


def manifest_for(paths):
    return pd.DataFrame(
        {
            "image_id": [f"id{i:04d}" for i in range(len(paths))],
            "source_path": paths,
            "shard": "s.npy",
            "shard_index": range(len(paths)),
            "pixel_hash": [f"hash{i}" for i in range(len(paths))],
            "format": "png",
            "patient_id": pd.Series([None] * len(paths), dtype="string"),
            "study_uid": None,
            "view_position": None,
            "modality": None,
            "sex": None,
            "age_years": np.nan,
        }
    )


def test_metadata_join_excludes_and_lists_what_does_not_fit(tmp_path):
    write(tmp_path, "Data_Entry_2017.csv", NIH_CSV)
    write(tmp_path, "indiana_reports.csv", INDIANA_REPORTS)
    write(tmp_path, "indiana_projections.csv", INDIANA_PROJECTIONS)
    manifest = manifest_for(
        [
            "images_001/images/00000001_000.png",
            "images_001/images/00000002_000.png",
            "images_002/images/00000003_000.png",
            "iu/1_IM-0001-4001.dcm.png",
            "iu/1_IM-0001-3001.dcm.png",
            "stray/unknown_image.png",
        ]
    )
    options = LabelOptions(sources=("nih", "indiana_csv"))
    sources = load_label_sources(
        tmp_path, ["Data_Entry_2017.csv", "indiana_reports.csv", "indiana_projections.csv"], manifest, options
    )
    assert [s.kind for s in sources] == [SourceKind.NIH, SourceKind.INDIANA_CSV]
    result = build_metadata(manifest, combine(sources), options)
    assert sorted(result.metadata["source_path"]) == [
        "images_001/images/00000001_000.png",
        "images_001/images/00000002_000.png",
        "images_002/images/00000003_000.png",
        "iu/1_IM-0001-4001.dcm.png",
    ]
    reasons = dict(zip(result.excluded["source_path"], result.excluded["reason"]))
    assert reasons == {"stray/unknown_image.png": "no_label_row", "iu/1_IM-0001-3001.dcm.png": "lateral_view"}
    unmatched = set(result.unmatched_label_rows["match_key"])
    assert unmatched == {
        "00000001_001.png",
        "00000004_000.png",
        "2_IM-0652-1001.dcm.png",
        "3_IM-1384-1001.dcm.png",
        "9_IM-0000-0001.dcm.png",
    }
    by_path = result.metadata.set_index("source_path")
    assert by_path.loc["iu/1_IM-0001-4001.dcm.png", "patient_key"] == "indiana_csv:1"
    assert by_path.loc["images_001/images/00000001_000.png", "class_name"] == "Cardiomegaly"
    assert set(result.metadata["split"]) <= {"train", "val", "test"}


def test_no_label_source_at_all_excludes_every_image_with_a_reason():
    manifest = manifest_for(["a/x.png", "b/y.png"])
    result = build_metadata(manifest, combine([]), LabelOptions())
    assert result.metadata.empty
    assert result.excluded["reason"].tolist() == ["no_label_row", "no_label_row"]


def test_options_refuse_unknown_sources_and_bad_fractions():
    with pytest.raises(ValueError, match="unknown label sources"):
        LabelOptions(sources=("nih", "mimic"))
    with pytest.raises(ValueError, match="fractions"):
        LabelOptions(split_fractions=(0.5, 0.5, 0.5))


def test_indiana_reports_without_mesh_columns(tmp_path):
    reports = write(
        tmp_path, "r.csv", "uid,image,indication,comparison,findings,impression\n1,PA,,,Clear lungs.,Normal.\n"
    )
    projections = write(tmp_path, "p.csv", "uid,filename,projection\n1,1_a.png,Frontal\n")
    table = read_indiana_csv(reports, projections).table
    assert table.loc[0, "findings_text"] == "Clear lungs."
    assert table.loc[0, list(LABEL_COLUMNS)].isna().all()  # no coded terms: labels unknown, not negative


# --- Single-slice CT layout and the dataset's own classes ------------------------------------------

SLICE_LAYOUT = [
    "single-slice-COVID19/covid_p16_ns002i00001_slice_001.png",
    "single-slice-COVID19/covid_p16_ns002i00002_slice_002.png",
    "single-slice-COVID19/covid_p21_ns001i00001_slice_001.png",
    "single-slice-Normal/normal_p16_ns001i00001_slice_001.png",
    "single-slice-Normal/normal_p3_ns004i00007_slice_007.png",
    "single-slice-Normal/notes_without_patient.png",
]


def test_the_single_slice_layout_is_recognized_without_configuration(tmp_path):
    """Folder per class, patient and slice in the name: classes, patients and modality come from
    the layout, with no pattern configured; the two p16 are two patients (their prefix differs)."""
    manifest = manifest_for(SLICE_LAYOUT)
    options = LabelOptions()
    sources = load_label_sources(tmp_path, [], manifest, options)
    assert [s.kind for s in sources] == [SourceKind.CLASS_FOLDERS, SourceKind.DICOM]  # no DICOM here: empty
    assert sources[0].problems == [
        "notes_without_patient.png: in a class folder but no <prefix>_p<N>_..._slice_<K> name"
    ]
    result = build_metadata(manifest, combine(sources), options)
    assert result.classes == ("COVID19", "Normal") and result.vocabulary.origin == "dataset"
    by_path = result.metadata.set_index("source_path")
    assert by_path.loc[SLICE_LAYOUT[0], "class_name"] == "COVID19"
    assert by_path.loc[SLICE_LAYOUT[4], "class_name"] == "Normal"
    assert set(result.metadata["modality"]) == {"CT"}
    patients = dict(zip(result.metadata["source_path"], result.metadata["patient_key"]))
    assert patients[SLICE_LAYOUT[0]] == patients[SLICE_LAYOUT[1]] == "class_folders:covid_p16"
    assert patients[SLICE_LAYOUT[3]] == "class_folders:normal_p16"
    # one patient's slices never straddle splits
    split = dict(zip(result.metadata["source_path"], result.metadata["split"]))
    assert split[SLICE_LAYOUT[0]] == split[SLICE_LAYOUT[1]]
    assert result.excluded["reason"].tolist() == ["no_label_row"]  # the unparseable name, with a reason


def test_a_configured_filename_pattern_wins_over_the_recognized_layout(tmp_path):
    manifest = manifest_for(SLICE_LAYOUT[:4])
    options = LabelOptions(filename_pattern=r"^(?P<label>[a-z]+)_p(?P<patient>\d+)_")
    result = build_metadata(manifest, combine(load_label_sources(tmp_path, [], manifest, options)), options)
    assert set(result.metadata["label_source"]) == {"filename"}
    # its label group is the dataset's own class, not a finding forced onto the NIH vocabulary
    assert result.classes == ("covid", "normal")
    assert result.metadata.set_index("source_path").loc[SLICE_LAYOUT[0], "class_name"] == "covid"
    # the patient is the pattern's: p16 in both folders is one patient here, as configured
    assert result.metadata["patient_key"].nunique() == 2


def test_configured_classes_keep_their_order_and_report_values_outside_them(tmp_path):
    manifest = manifest_for(SLICE_LAYOUT[:5])
    options = LabelOptions(classes=("Normal",))
    result = build_metadata(manifest, combine(load_label_sources(tmp_path, [], manifest, options)), options)
    assert result.classes == ("Normal",) and result.vocabulary.origin == "configured"
    assert result.unmatched_classes == {"COVID19": 3}  # never dropped silently
    covid = result.metadata[result.metadata["dataset_class"] == "COVID19"]
    assert len(covid) == 3 and covid["class_id"].isna().all()  # kept for the restoration models


def test_nih_style_sources_keep_the_nih_classes(tmp_path):
    write(tmp_path, "Data_Entry_2017.csv", NIH_CSV)
    manifest = manifest_for(["images_001/images/00000001_000.png", "images_001/images/00000002_000.png"])
    sources = load_label_sources(tmp_path, ["Data_Entry_2017.csv"], manifest, LabelOptions())
    result = build_metadata(manifest, combine(sources), LabelOptions())
    assert result.vocabulary.origin == "nih" and result.classes[0] == "No_Finding" and len(result.classes) == 6
    assert result.unmatched_classes == {}
