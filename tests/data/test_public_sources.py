"""MIMIC-CXR-JPG, PadChest, VinDr-CXR, RSNA Pneumonia and SIIM-ACR label files, hand-written in
each dataset's exact layout (headers, quoting, list literals, several rows per image), read
through the same detection and metadata join as the other sources."""

import gzip
import math
import textwrap

import numpy as np
import pandas as pd
import pytest

from cxr_pipeline.data.labels.metadata import LabelOptions, build_metadata, combine, load_label_sources
from cxr_pipeline.data.labels.public_sources import mimic_report_sections
from cxr_pipeline.data.labels.sources import SourceKind, UncertaintyPolicy, sniff_label_file
from cxr_pipeline.data.sniff import FileKind, sniff_file

from .test_labels import manifest_for, write


def gz(tmp_path, name, text):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()))
    return path


MIMIC_CHEXPERT = textwrap.dedent("""\
    subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices
    10000032,50414267,,,,,,,,,1.0,,,,,
    10000032,53189527,,1.0,,,,,,,,-1.0,,,,1.0
    10000764,57375967,,,1.0,,,,,,,,,-1.0,,
""")
MIMIC_METADATA = textwrap.dedent("""\
    dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning
    02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,21800506,213014.531,CHEST (PA AND LAT),postero-anterior,Erect
    174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544,21800506,213014.531,CHEST (PA AND LAT),lateral,Erect
    2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab,10000032,53189527,CHEST (PA AND LAT),PA,3056,2544,21800626,165500.312,CHEST (PA AND LAT),postero-anterior,Erect
    e084de3b-be89b11e-20fe3f9f-9c8d8dfe-4cfd202c,10000764,57375967,CHEST (PORTABLE AP),AP,2705,2539,21321206,092148.046,CHEST (PORTABLE AP),antero-posterior,
""")
MIMIC_SPLIT = textwrap.dedent("""\
    dicom_id,study_id,subject_id,split
    02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,50414267,10000032,train
    174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,50414267,10000032,train
    2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab,53189527,10000032,train
    e084de3b-be89b11e-20fe3f9f-9c8d8dfe-4cfd202c,57375967,10000764,validate
""")
MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def mimic_folder(tmp_path):
    gz(tmp_path, "mimic-cxr-2.0.0-chexpert.csv.gz", MIMIC_CHEXPERT)
    gz(tmp_path, "mimic-cxr-2.0.0-metadata.csv.gz", MIMIC_METADATA)
    gz(tmp_path, "mimic-cxr-2.0.0-split.csv.gz", MIMIC_SPLIT)
    report = tmp_path / "files" / "p10" / "p10000032" / "s50414267.txt"
    report.parent.mkdir(parents=True)
    report.write_text(MIMIC_REPORT)
    names = [
        "mimic-cxr-2.0.0-chexpert.csv.gz",
        "mimic-cxr-2.0.0-metadata.csv.gz",
        "mimic-cxr-2.0.0-split.csv.gz",
        "files/p10/p10000032/s50414267.txt",
    ]
    images = [
        f"files/p10/p{s}/s{t}/{d}.jpg"
        for d, s, t in (
            ("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "10000032", "50414267"),
            ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "10000032", "50414267"),
            ("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "10000032", "53189527"),
            ("e084de3b-be89b11e-20fe3f9f-9c8d8dfe-4cfd202c", "10000764", "57375967"),
        )
    ]
    return names, images


def test_compressed_label_tables_are_text_to_ingestion_and_recognized_by_content(tmp_path):
    names, _ = mimic_folder(tmp_path)
    assert sniff_file(tmp_path / names[0]) is FileKind.TEXT  # not rejected as "not an image" with no reason
    assert [sniff_label_file(tmp_path / name) for name in names] == [
        "mimic_chexpert",
        "mimic_metadata",
        "mimic_split",
        None,
    ]


def test_mimic_studies_views_reports_uncertainty_and_official_split(tmp_path):
    names, images = mimic_folder(tmp_path)
    options = LabelOptions(sources=("mimic_cxr",), official_split=True, uncertainty=UncertaintyPolicy.U_IGNORE)
    sources = load_label_sources(tmp_path, names, manifest_for(images), options)
    assert [s.kind for s in sources] == [SourceKind.MIMIC]
    result = build_metadata(manifest_for(images), combine(sources), options)
    rows = result.metadata.set_index(result.metadata["source_path"].str.rsplit("/", n=1).str[-1].str[:8])
    assert sorted(rows.index) == ["02aa804e", "2a2277a9", "e084de3b"]  # the lateral is excluded, and listed
    assert list(result.excluded["reason"]) == ["lateral_view"]
    assert (
        rows.loc["02aa804e", "class_name"] == "No_Finding"
        and rows.loc["02aa804e", "patient_key"] == "mimic_cxr:10000032"
    )
    assert rows.loc["2a2277a9", "Cardiomegaly"] == 1.0 and math.isnan(rows.loc["2a2277a9", "Effusion"])  # -1: unknown
    assert rows.loc["2a2277a9", "other_findings"] == "Support Devices" and rows.loc["2a2277a9", "n_uncertain"] == 1
    assert math.isnan(rows.loc["02aa804e", "Nodule"])  # MIMIC's labeller has no Nodule: unknown, not negative
    assert rows.loc["02aa804e", "findings_text"].startswith("There is no focal consolidation, pleural effusion")
    assert rows.loc["02aa804e", "impression_text"] == "No acute cardiopulmonary process."
    assert pd.isna(rows.loc["e084de3b", "findings_text"])  # no report file for that study
    assert dict(zip(rows.index, rows["split"])) == {"02aa804e": "train", "2a2277a9": "train", "e084de3b": "val"}
    ones = build_metadata(
        manifest_for(images),
        combine(
            load_label_sources(
                tmp_path,
                names,
                manifest_for(images),
                LabelOptions(sources=("mimic_cxr",), uncertainty=UncertaintyPolicy.U_ONES),
            )
        ),
        options,
    ).metadata
    assert (ones["Effusion"] == 1.0).sum() == 1


def test_report_sections_stop_at_the_next_header():
    findings, impression = mimic_report_sections("FINDINGS: Clear lungs.\n RECOMMENDATION(S): follow up.\n")
    assert findings == "Clear lungs." and impression is None
    assert mimic_report_sections("WET READ: none") == (None, None)


PADCHEST = textwrap.dedent("""\
    ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,PatientBirth,PatientSex_DICOM,ViewPosition_DICOM,Projection,MethodProjection,Pediatric,Modality_DICOM,Manufacturer_DICOM,PhotometricInterpretation_DICOM,PixelRepresentation_DICOM,PixelAspectRatio_DICOM,SpatialResolution_DICOM,BitsStored_DICOM,WindowCenter_DICOM,WindowWidth_DICOM,Rows_DICOM,Columns_DICOM,XRayTubeCurrent_DICOM,Exposure_DICOM,ExposureInuAs_DICOM,ExposureTime,RelativeXRayExposure_DICOM,ReportID,Report,MethodLabel,Labels,Localizations,LabelsLocalizationsBySentence,labelCUIS,LocalizationsCUIS
    20536686640136348236148679891455886468_k6ga29.png,0,20140915,20536686640136348236148679891455886468,839860488694292331637988235681460987,1930.0,F,POSTEROANTERIOR,PA,Manual review of DICOM fields,No,CR,PhilipsMedicalSystems,MONOCHROME2,0,1\\1,0.139,12,2047,4095,2458,2458,320,1.0,1000,4,,4765777,sin hallazg patolog edad paciente .,Physician,['normal'],[],"[['normal']]",[],[]
    135803415504923515076821959678074435083_fzis7d.png,0,20150714,135803415504923515076821959678074435083,313572750430997347502932654319389875966,1966.0,M,POSTEROANTERIOR,PA,Manual review of DICOM fields,No,CR,PhilipsMedicalSystems,MONOCHROME2,0,1\\1,0.139,12,2047,4095,2176,2472,320,1.0,1000,4,,4991845,derrame pleural izquierdo . cardiomegalia .,RNN_model,"['pleural effusion', 'cardiomegaly', ' laminar atelectasis']","['loc left']","[['pleural effusion', 'loc left'], ['cardiomegaly']]",[],[]
    113855343774216031107737439268449652301_pd8bvc.png,0,20150714,135803415504923515076821959678074435083,313572750430997347502932654319389875966,1966.0,M,LATERAL,L,Manual review of DICOM fields,No,CR,PhilipsMedicalSystems,MONOCHROME2,0,1\\1,0.139,12,2047,4095,2176,2472,320,1.0,1000,4,,4991845,derrame pleural izquierdo .,RNN_model,['pleural effusion'],[],[],[],[]
    216840111366964012819207061112010307142388019_ci10ha.png,0,20161002,216840111366964012819207061112010307142388019,16969431451196545627566087768082543233,1950.0,M,ANTEROPOSTERIOR,AP_horizontal,Manual review of DICOM fields,No,CR,PhilipsMedicalSystems,MONOCHROME2,0,1\\1,0.139,12,2047,4095,2176,2472,320,1.0,1000,4,,5035424,,RNN_model,[unreadable,[],[],[],[]
    246421712427862553530412549843478426185_wdc2ij.png,0,20160505,246421712427862553530412549843478426185,2874154316573254217346917849722411838,1957.0,M,,COSTAL,Manual review of DICOM fields,No,CR,PhilipsMedicalSystems,MONOCHROME2,0,1\\1,0.139,12,2047,4095,2176,2472,320,1.0,1000,4,,5035425,fractura costal .,Physician,['callus rib fracture'],[],[],[],[]
""")


def test_padchest_list_literals_projections_and_reports(tmp_path):
    write(tmp_path, "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", PADCHEST)
    images = [f"0/{line.split(',')[0]}" for line in PADCHEST.splitlines()[1:]]
    options = LabelOptions(sources=("padchest",))
    sources = load_label_sources(
        tmp_path, ["PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"], manifest_for(images), options
    )
    assert [s.kind for s in sources] == [SourceKind.PADCHEST]
    assert len(sources[0].problems) == 1 and "unreadable Labels" in sources[0].problems[0]
    result = build_metadata(manifest_for(images), combine(sources), options)
    rows = result.metadata.set_index(result.metadata["source_path"].str[2:8])
    assert sorted(rows.index) == ["135803", "205366", "216840"]  # the L and COSTAL projections are excluded
    reasons = result.excluded.set_index(result.excluded["source_path"].str[2:8])["reason"]
    assert reasons.to_dict() == {"113855": "lateral_view", "246421": "not_frontal_view: COSTAL"}
    assert rows.loc["205366", "class_name"] == "No_Finding" and rows.loc["205366", "sex"] == "F"
    assert rows.loc["205366", "age_years"] == 84  # 2014 study, born 1930
    effusion = rows.loc["135803"]
    assert effusion["Effusion"] == 1.0 and effusion["Cardiomegaly"] == 1.0 and effusion["Pneumonia"] == 0.0
    assert effusion["No_Finding"] == 0.0 and effusion["other_findings"] == "laminar atelectasis"
    assert effusion["findings_text"] == "derrame pleural izquierdo . cardiomegalia ."
    assert math.isnan(rows.loc["216840", "Effusion"])  # an unreadable label list says nothing
    assert rows.loc["216840", "view"] == "AP"


VINDR_PHYSIONET = textwrap.dedent("""\
    image_id,rad_id,Aortic enlargement,Atelectasis,Calcification,Cardiomegaly,Clavicle fracture,Consolidation,Edema,Emphysema,Enlarged PA,ILD,Infiltration,Lung Opacity,Lung cavity,Lung cyst,Mediastinal shift,Nodule/Mass,Pleural effusion,Pleural thickening,Pneumothorax,Pulmonary fibrosis,Rib fracture,Other lesion,COPD,Lung tumor,Pneumonia,Tuberculosis,Other disease,No finding
    000434271f63a053c4128a0ba6352c7f,R2,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1
    000434271f63a053c4128a0ba6352c7f,R3,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1
    000434271f63a053c4128a0ba6352c7f,R6,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1
    00053190460d56c53cc3e57321387478,R11,1,0,0,1,0,0,0,0,0,0,0,0,0,0,0,1,0,0,0,0,0,0,0,0,0,0,1,0
    00053190460d56c53cc3e57321387478,R10,1,0,0,1,0,0,0,0,0,0,0,0,0,0,0,1,1,0,0,0,0,0,0,0,0,0,0,0
    00053190460d56c53cc3e57321387478,R8,0,0,0,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0
""")
VINDR_KAGGLE = textwrap.dedent("""\
    image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
    000434271f63a053c4128a0ba6352c7f,No finding,14,R2,,,,
    000434271f63a053c4128a0ba6352c7f,No finding,14,R3,,,,
    000434271f63a053c4128a0ba6352c7f,No finding,14,R6,,,,
    00053190460d56c53cc3e57321387478,Aortic enlargement,0,R11,1052.0,715.0,1299.0,966.0
    00053190460d56c53cc3e57321387478,Cardiomegaly,3,R11,1000.0,1500.0,2000.0,1900.0
    00053190460d56c53cc3e57321387478,Cardiomegaly,3,R11,1005.0,1502.0,1990.0,1899.0
    00053190460d56c53cc3e57321387478,Nodule/Mass,8,R11,700.0,800.0,760.0,860.0
    00053190460d56c53cc3e57321387478,Aortic enlargement,0,R10,1050.0,716.0,1290.0,960.0
    00053190460d56c53cc3e57321387478,Cardiomegaly,3,R10,1010.0,1490.0,1995.0,1910.0
    00053190460d56c53cc3e57321387478,Nodule/Mass,8,R10,702.0,801.0,758.0,859.0
    00053190460d56c53cc3e57321387478,Pleural effusion,10,R10,300.0,1800.0,600.0,2100.0
    00053190460d56c53cc3e57321387478,Cardiomegaly,3,R8,1001.0,1495.0,1999.0,1905.0
""")


def test_vindr_majority_of_radiologists_in_both_layouts(tmp_path):
    images = ["train/000434271f63a053c4128a0ba6352c7f.dicom", "train/00053190460d56c53cc3e57321387478.dicom"]
    tables = {}
    for name, text in (("image_labels_train.csv", VINDR_PHYSIONET), ("train.csv", VINDR_KAGGLE)):
        folder = tmp_path / name.split(".")[0]
        write(folder.mkdir() or folder, name, text)
        sources = load_label_sources(folder, [name], manifest_for(images), LabelOptions(sources=("vindr_cxr",)))
        assert [s.kind for s in sources] == [SourceKind.VINDR]
        tables[name] = build_metadata(manifest_for(images), combine(sources), LabelOptions()).metadata.set_index(
            "source_path"
        )
    for rows in tables.values():
        normal, sick = rows.loc[images[0]], rows.loc[images[1]]
        assert normal["class_name"] == "No_Finding" and normal["Cardiomegaly"] == 0.0
        assert sick["Cardiomegaly"] == 1.0  # 3 of 3 radiologists
        assert sick["Effusion"] == 0.0  # 1 of 3: not a majority
        assert math.isnan(sick["Nodule"]) and math.isnan(sick["Mass"])  # Nodule/Mass: one or the other
        assert normal["Nodule"] == 0.0 and normal["Mass"] == 0.0  # but a negative is certain
        assert math.isnan(sick["Hernia"])  # VinDr does not annotate hernias
        assert set(sick["other_findings"].split("|")) == {"Aortic enlargement", "Nodule/Mass"}
        assert sick["patient_key"] == "vindr_cxr:00053190460d56c53cc3e57321387478"
    label_columns = ["Cardiomegaly", "Effusion", "No_Finding", "Nodule", "other_findings"]
    pd.testing.assert_frame_equal(tables["image_labels_train.csv"][label_columns], tables["train.csv"][label_columns])


RSNA_LABELS = textwrap.dedent("""\
    patientId,x,y,width,height,Target
    0004cfab-14fd-4e49-80ba-63a80b6bddd6,,,,,0
    00313ee0-9eaa-42f4-b0ab-c148ed3241cd,,,,,0
    00436515-870c-4b36-a041-de91049b9ab4,264.0,152.0,213.0,379.0,1
    00436515-870c-4b36-a041-de91049b9ab4,562.0,152.0,256.0,453.0,1
""")
RSNA_CLASSES = textwrap.dedent("""\
    patientId,class
    0004cfab-14fd-4e49-80ba-63a80b6bddd6,No Lung Opacity / Not Normal
    00313ee0-9eaa-42f4-b0ab-c148ed3241cd,Normal
    00436515-870c-4b36-a041-de91049b9ab4,Lung Opacity
    00436515-870c-4b36-a041-de91049b9ab4,Lung Opacity
""")


def test_rsna_boxes_per_image_and_the_detailed_classes(tmp_path):
    write(tmp_path, "stage_2_train_labels.csv", RSNA_LABELS)
    write(tmp_path, "stage_2_detailed_class_info.csv", RSNA_CLASSES)
    ids = [
        "0004cfab-14fd-4e49-80ba-63a80b6bddd6",
        "00313ee0-9eaa-42f4-b0ab-c148ed3241cd",
        "00436515-870c-4b36-a041-de91049b9ab4",
    ]
    images = [f"stage_2_train_images/{i}.dcm" for i in ids]
    sources = load_label_sources(
        tmp_path,
        ["stage_2_train_labels.csv", "stage_2_detailed_class_info.csv"],
        manifest_for(images),
        LabelOptions(sources=("rsna_pneumonia",)),
    )
    rows = build_metadata(manifest_for(images), combine(sources), LabelOptions()).metadata.set_index("source_path")
    opacity, normal, pneumonia = (rows.loc[path] for path in images)
    assert pneumonia["Pneumonia"] == 1.0 and pneumonia["class_name"] == "Pneumonia" and pneumonia["No_Finding"] == 0.0
    assert normal["No_Finding"] == 1.0 and normal["Effusion"] == 0.0 and normal["class_name"] == "No_Finding"
    assert opacity["Pneumonia"] == 0.0 and math.isnan(opacity["No_Finding"]) and pd.isna(opacity["class_id"])
    assert len(rows) == 3  # two box rows, one image


SIIM = textwrap.dedent("""\
    ImageId, EncodedPixels
    1.2.276.0.7230010.3.1.4.8323329.5597.1517875188.959090, -1
    1.2.276.0.7230010.3.1.4.8323329.12515.1517875239.501137, 175349 7 1013 12 1009 17
    1.2.276.0.7230010.3.1.4.8323329.12515.1517875239.501137, 178409 5 1017 10 1014
""")


def test_siim_masks_per_image_with_the_patient_from_the_dicom_header(tmp_path):
    write(tmp_path, "train-rle.csv", SIIM)
    ids = [
        "1.2.276.0.7230010.3.1.4.8323329.5597.1517875188.959090",
        "1.2.276.0.7230010.3.1.4.8323329.12515.1517875239.501137",
    ]
    images = [f"dicom-images-train/{i}/{i}.dcm" for i in ids]
    manifest = manifest_for(images).assign(
        format="dicom",
        patient_id=pd.array(["17d405a3", "2c9a1b7e"], dtype="string"),
        view_position=["PA", "AP"],
        sex=["F", "M"],
        age_years=[38.0, 51.0],
    )
    assert sniff_label_file(tmp_path / "train-rle.csv") is SourceKind.SIIM
    sources = load_label_sources(
        tmp_path, ["train-rle.csv"], manifest, LabelOptions(sources=("siim_pneumothorax", "dicom"))
    )
    result = build_metadata(manifest, combine(sources), LabelOptions())
    rows = result.metadata.set_index("source_path")
    assert list(rows["label_source"]) == ["siim_pneumothorax"] * 2  # the labels win; the header fills the patient
    assert rows.loc[images[0], "Pneumothorax"] == 0.0 and rows.loc[images[1], "Pneumothorax"] == 1.0
    assert rows.loc[images[1], "patient_key"] == "siim_pneumothorax:2c9a1b7e"
    assert rows.loc[images[1], "sex"] == "M" and rows.loc[images[1], "age_years"] == 51.0
    assert np.isnan(rows.loc[images[1], "Effusion"])  # SIIM annotates pneumothorax only
    assert result.excluded.empty


NIH_BOXES = textwrap.dedent("""\
    Image Index,Finding Label,Bbox [x,y,w,h],,,
    00013118_008.png,Atelectasis,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661,,,
    00014716_007.png,Infiltrate,648.406779661017,577.193220338983,110.338983050847,74.5762711864407,,,
""")


def test_bounding_boxes_from_nih_rsna_and_vindr_map_through_the_resize(tmp_path):
    from cxr_pipeline.data.labels.metadata import combine_boxes, map_boxes

    write(tmp_path, "BBox_List_2017.csv", NIH_BOXES)
    write(tmp_path, "stage_2_train_labels.csv", RSNA_LABELS)
    write(tmp_path, "train.csv", VINDR_KAGGLE)
    images = [
        "images/00013118_008.png",
        "images/00014716_007.png",
        "rsna/00436515-870c-4b36-a041-de91049b9ab4.dcm",
        "vindr/00053190460d56c53cc3e57321387478.dicom",
    ]
    manifest = manifest_for(images).assign(
        original_height=[1024, 1024, 1024, 2000],
        original_width=[1024, 1024, 1024, 3000],
        aspect_policy=["pad", "pad", "pad", "pad"],
        resize_scale_y=[0.0625, 0.0625, 0.0625, 64 / 3000],
        resize_scale_x=[0.0625, 0.0625, 0.0625, 64 / 3000],
        resize_offset_y=[0, 0, 0, -500],
        resize_offset_x=0,
    )
    assert sniff_label_file(tmp_path / "BBox_List_2017.csv") == "nih_boxes"
    sources = load_label_sources(
        tmp_path, ["BBox_List_2017.csv", "stage_2_train_labels.csv", "train.csv"], manifest, LabelOptions()
    )
    boxes = map_boxes(manifest, combine_boxes(sources)).set_index("image_id")
    nih = boxes.loc["id0000"]
    assert nih["finding"] == "Atelectasis" and nih["label"] == "Atelectasis" and nih["label_source"] == "nih"
    assert nih["x_max"] == pytest.approx(225.084745762712 + 86.7796610169491)
    assert nih["stored_x_min"] == pytest.approx(225.084745762712 / 16) and nih["stored_y_max"] == pytest.approx(
        (547.019216763771 + 79.1864406779661) / 16
    )
    assert boxes.loc["id0001", "label"] == "Infiltration"  # NIH's "Infiltrate"
    rsna = boxes.loc[["id0002"]]
    assert (
        len(rsna) == 2 and set(rsna["x_max"]) == {264.0 + 213.0, 562.0 + 256.0} and set(rsna["label"]) == {"Pneumonia"}
    )
    vindr = boxes.loc[["id0003"]]
    assert len(vindr) == 9 and set(vindr["reader"]) == {"R8", "R10", "R11"}  # one box per radiologist, kept as drawn
    effusion = vindr[vindr["finding"] == "Pleural effusion"].iloc[0]
    assert effusion["label"] == "Effusion"
    # letterboxed: 3000 x 2000 padded to 3000 x 3000 (500 rows above), then 64 px
    assert effusion["stored_y_min"] == pytest.approx((1800 + 500) * 64 / 3000)
    assert effusion["stored_x_max"] == pytest.approx(600 * 64 / 3000)
    assert pd.isna(vindr[vindr["finding"] == "Nodule/Mass"]["label"]).all()
    assert (boxes[["stored_x_min", "stored_y_min"]] >= 0).all().all() and (boxes["stored_x_max"] <= 64).all()
