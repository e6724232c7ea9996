"""Radiology reports for the demo's studies, written as Indiana University / OpenI XML.

A report states exactly what the phantom drew (:class:`~.phantom.DrawnFinding`): the finding,
its side and zone, its size or severity. Normal studies get normal reports. Statements that are
not findings are the negations radiologists write ("No pneumothorax or pleural effusion."),
never one that contradicts the image. Every statement has several wordings and a report picks
among them, so a text model has to read the words rather than match a handful of templates.
Sentences follow the usual reading order (heart, lungs, pleura, bones).
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree import ElementTree

import numpy as np

from .phantom import DrawnFinding

PLEURAL = ("Effusion", "Pneumothorax")
PARENCHYMAL = ("Atelectasis", "Pneumonia", "Infiltration", "Nodule", "Mass")
# The OpenI MeSH heading of each finding: what the Indiana adapter maps back onto the NIH labels.
MESH = {
    "Atelectasis": "Pulmonary Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Pleural Effusion",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Infiltration": "Infiltrate",
    "Nodule": "Lung Nodule",
    "Mass": "Lung Mass",
}


@dataclass(frozen=True)
class DemoReport:
    findings: str
    impression: str
    indication: str
    comparison: str
    mesh: tuple[str, ...]  # "Pleural Effusion/right/small"; ("normal",) for a normal study


def _pick(rng: np.random.Generator, options: list[str] | tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _cap(text: str | None) -> str:
    text = text or ""
    return text[:1].upper() + text[1:]


def _sided(side: str | None, noun: str) -> str:
    """ "right pleural effusion", "bilateral pleural effusions"."""
    if side == "bilateral":
        return f"bilateral {noun}s"
    return f"{side} {noun}" if side else noun


def _finding_sentence(f: DrawnFinding, rng: np.random.Generator) -> tuple[str, str]:
    """(sentence for FINDINGS, phrase for IMPRESSION) describing one drawn finding."""
    side, zone, severity = f.side, f.zone, f.severity
    if f.name == "Effusion":
        noun = _sided(side, "pleural effusion")
        sentence = _pick(
            rng,
            [
                f"{_cap(severity)} {noun}.",
                f"There are {severity} {noun}."
                if side == "bilateral"
                else f"There is a {severity} {side}-sided pleural effusion.",
                f"{_cap(severity)} {noun} with blunting of the costophrenic angle{'s' if side == 'bilateral' else ''}.",
                f"{_cap(noun)}, {severity} in size.",
            ],
        )
        return sentence, f"{_cap(severity)} {noun}."
    if f.name == "Cardiomegaly":
        adverb = {"mild": "mildly", "moderate": "moderately", "marked": "markedly"}[severity or "moderate"]
        sentence = _pick(
            rng,
            [
                f"{_cap(severity)} cardiomegaly.",
                f"The heart is {adverb} enlarged.",
                f"The cardiac silhouette is {adverb} enlarged.",
                f"{_cap(severity)} enlargement of the cardiac silhouette, cardiothoracic ratio about {f.measure:.2f}.",
            ],
        )
        return sentence, _pick(
            rng, [f"{_cap(severity)} cardiomegaly.", f"{_cap(severity)} cardiomegaly without edema."]
        )
    if f.name == "Pneumothorax":
        sentence = _pick(
            rng,
            [
                f"{_cap(severity)} {side} apical pneumothorax.",
                f"There is a {severity} {side}-sided pneumothorax.",
                f"{_cap(severity)} {side} pneumothorax with a visible visceral pleural line.",
                f"{_cap(side)} pneumothorax, {severity} in size.",
            ],
        )
        return sentence, f"{_cap(severity)} {side} pneumothorax."
    if f.name == "Pneumonia":
        amount = {"patchy": "patchy", "moderate": "moderate", "extensive": "extensive"}[severity or "moderate"]
        sentence = _pick(
            rng,
            [
                f"{_cap(amount)} airspace consolidation in the {side} {zone} lung zone, consistent with pneumonia.",
                f"{_cap(amount)} consolidation with air bronchograms in the {side} {zone} zone.",
                f"There is {amount} airspace opacity in the {side} {zone} lung, concerning for pneumonia.",
                f"Focal {amount} consolidation of the {side} {zone} zone.",
            ],
        )
        return sentence, _pick(
            rng, [f"{_cap(side)} {zone} zone pneumonia.", f"Findings consistent with {side} {zone} zone pneumonia."]
        )
    if f.name == "Atelectasis":
        if f.pattern == "plate-like":
            sentence = _pick(
                rng,
                [
                    f"Plate-like atelectasis at the {side} lung base.",
                    f"Linear opacity at the {side} base, likely discoid atelectasis.",
                    f"Subsegmental atelectasis in the {side} lower zone.",
                ],
            )
            return sentence, _pick(
                rng, [f"{_cap(side)} basilar atelectasis.", f"{_cap(side)} base subsegmental atelectasis."]
            )
        sentence = _pick(
            rng,
            [
                f"{_cap(side)} lower lobe collapse with elevation of the {side} hemidiaphragm.",
                f"Dense opacity along the {side} heart border with volume loss, consistent with {side} lower lobe atelectasis.",
                f"Volume loss in the {side} lower lobe with an elevated {side} hemidiaphragm.",
            ],
        )
        return sentence, f"{_cap(side)} lower lobe atelectasis."
    if f.name == "Infiltration":
        sentence = _pick(
            rng,
            [
                "Bilateral interstitial opacities in the mid and lower zones.",
                "Diffuse bilateral reticular infiltrates, predominantly at the bases.",
                "Coarse interstitial markings in both lower zones.",
            ],
        )
        return sentence, _pick(rng, ["Bilateral interstitial infiltrates.", "Bibasilar interstitial opacities."])
    if f.name == "Nodule":
        where = f"the {zone} zones of both lungs" if side == "bilateral" else f"the {side} {zone} zone"
        if f.count > 1:
            sentence = _pick(
                rng,
                [
                    f"Two pulmonary nodules, the larger {f.size_mm:.0f} mm, in {where}.",
                    f"Two nodular opacities in {where}, the larger measuring {f.size_mm:.0f} mm.",
                ],
            )
            return sentence, "Pulmonary nodules; CT is recommended."
        sentence = _pick(
            rng,
            [
                f"{f.size_mm:.0f} mm nodule in {where}.",
                f"A {f.size_mm:.0f} mm pulmonary nodule projects over {where}.",
                f"Solitary {f.size_mm:.0f} mm nodular opacity in {where}.",
            ],
        )
        return sentence, _pick(
            rng,
            [
                f"{_cap(side)} pulmonary nodule; recommend CT for further evaluation.",
                f"{f.size_mm:.0f} mm {side} lung nodule.",
            ],
        )
    if f.name == "Mass":
        centimetres = f"{(f.size_mm or 0) / 10:.1f} cm"
        sentence = _pick(
            rng,
            [
                f"{centimetres} mass in the {side} {zone} lung.",
                f"There is a {centimetres} rounded mass projecting over the {side} {zone} zone.",
                f"Lobulated {centimetres} opacity in the {side} {zone} zone, consistent with a mass.",
            ],
        )
        return sentence, _pick(
            rng, [f"{_cap(side)} {zone} zone lung mass; CT is recommended.", f"{_cap(side)} lung mass."]
        )
    raise ValueError(f"no report wording for {f.name!r}")


def _normal_statements(present: set[str], sides: set[str], rng: np.random.Generator) -> dict[str, list[str]]:
    """Statements about what is *not* there, by reading-order group; nothing that the image contradicts."""
    groups: dict[str, list[str]] = {"heart": [], "lungs": [], "pleura": [], "bones": []}
    if "Cardiomegaly" not in present:
        groups["heart"].append(
            _pick(
                rng,
                [
                    "Heart size is normal.",
                    "The heart is normal in size.",
                    "The cardiomediastinal silhouette is within normal limits.",
                    "Normal cardiomediastinal silhouette.",
                ],
            )
        )
    parenchymal = present & set(PARENCHYMAL)
    if not parenchymal:
        groups["lungs"].append(
            _pick(
                rng,
                [
                    "The lungs are clear.",
                    "Lungs are clear bilaterally.",
                    "No focal airspace consolidation.",
                    "The lungs are clear without focal opacity.",
                ],
            )
        )
    else:
        if "Pneumonia" not in present and rng.random() < 0.5:
            groups["lungs"].append(_pick(rng, ["No focal consolidation.", "No airspace consolidation."]))
        clear = {"right", "left"} - sides if sides and "bilateral" not in sides else set()
        if len(clear) == 1 and rng.random() < 0.6:
            groups["lungs"].append(f"The {clear.pop()} lung is clear.")
    absent = [name for name in PLEURAL if name not in present]
    if len(absent) == 2:
        groups["pleura"].append(
            _pick(
                rng,
                [
                    "No pneumothorax or pleural effusion.",
                    "No pleural effusion or pneumothorax.",
                    "There is no pneumothorax or pleural effusion.",
                    "No pleural effusions. No pneumothorax.",
                ],
            )
        )
    elif absent == ["Pneumothorax"]:
        groups["pleura"].append(
            _pick(rng, ["No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax."])
        )
    elif absent == ["Effusion"]:
        groups["pleura"].append(
            _pick(rng, ["No pleural effusion.", "There is no pleural effusion.", "No pleural effusions are seen."])
        )
    if rng.random() < 0.6:
        groups["bones"].append(
            _pick(
                rng,
                [
                    "No acute osseous abnormality.",
                    "The osseous structures are intact.",
                    "Visualized osseous structures are unremarkable.",
                ],
            )
        )
    return groups


def write_report(drawn: list[DrawnFinding], *, view: str, age: int, sex: str, rng: np.random.Generator) -> DemoReport:
    """The report of one study from what was drawn on it."""
    present = {f.name for f in drawn}
    sides = {f.side for f in drawn if f.name in PARENCHYMAL and f.side}
    groups = _normal_statements(present, sides, rng)
    impressions = []
    for finding in sorted(drawn, key=lambda f: rng.random()):
        sentence, impression = _finding_sentence(finding, rng)
        group = "heart" if finding.name == "Cardiomegaly" else "pleura" if finding.name in PLEURAL else "lungs"
        groups[group].insert(0, sentence)
        impressions.append(impression)
    sentences = [s for name in ("heart", "lungs", "pleura", "bones") for s in groups[name]]
    if view == "AP" and rng.random() < 0.5:
        sentences.insert(0, _pick(rng, ["Portable AP view.", "AP upright view of the chest."]))
    if not impressions:
        impressions = [
            _pick(
                rng,
                [
                    "No acute cardiopulmonary abnormality.",
                    "No acute cardiopulmonary disease.",
                    "Normal chest.",
                    "No active disease.",
                    "Normal chest x-XXXX.",
                ],
            )
        ]
    elif not present & set(PLEURAL) and rng.random() < 0.3:
        impressions.append("No pneumothorax.")
    patient = "male" if sex == "M" else "female"
    indication = _pick(
        rng,
        [
            f"XXXX-year-old {patient} with cough.",
            f"{age}-year-old {patient}, chest pain.",
            "Shortness of breath.",
            f"Fever and cough in a {patient} patient.",
            "Preoperative evaluation.",
        ],
    )
    mesh = tuple("/".join(part for part in (MESH[f.name], f.side, f.severity) if part) for f in drawn) or ("normal",)
    return DemoReport(
        findings=" ".join(sentences),
        impression=" ".join(impressions),
        indication=indication,
        comparison=_pick(rng, ["None.", "XXXX", "Prior chest radiograph XXXX."]),
        mesh=mesh,
    )


def openi_xml(report: DemoReport, uid: int, image_ids: list[str]) -> str:
    """The report as an OpenI ``ecgen-radiology`` file: ``uId``, the abstract's labelled sections,
    MeSH ``major`` terms and one ``parentImage`` per image (the image file's stem)."""
    root = ElementTree.Element("eCitation")
    ElementTree.SubElement(root, "meta", type="rr")
    ElementTree.SubElement(root, "uId", id=f"CXR{uid}")
    ElementTree.SubElement(root, "pmcId", id=str(uid))
    ElementTree.SubElement(root, "docSource").text = "CXR"
    ElementTree.SubElement(root, "IUXRId", id=str(uid))
    ElementTree.SubElement(root, "licenseType").text = "open-access"
    citation = ElementTree.SubElement(
        root, "MedlineCitation", Owner="Indiana University", Status="supplied by publisher"
    )
    article = ElementTree.SubElement(citation, "Article", PubModel="Electronic")
    ElementTree.SubElement(article, "ArticleTitle").text = "Indiana University Chest X-ray Collection"
    abstract = ElementTree.SubElement(article, "Abstract")
    for label, text in (
        ("COMPARISON", report.comparison),
        ("INDICATION", report.indication),
        ("FINDINGS", report.findings),
        ("IMPRESSION", report.impression),
    ):
        ElementTree.SubElement(abstract, "AbstractText", Label=label).text = text
    mesh = ElementTree.SubElement(root, "MeSH")
    for term in report.mesh:
        ElementTree.SubElement(mesh, "major").text = term
    for index, image_id in enumerate(image_ids, start=1):
        parent = ElementTree.SubElement(root, "parentImage", id=image_id)
        ElementTree.SubElement(parent, "figureId").text = f"F{index}"
        ElementTree.SubElement(parent, "caption").text = "PA and lateral chest x-XXXX XXXX."
    ElementTree.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(root, encoding="unicode") + "\n"
