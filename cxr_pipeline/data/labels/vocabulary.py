"""The label vocabulary every source is mapped onto: the 14 NIH ChestX-ray14 findings plus
No Finding, and the classes of the class-conditional model.

Values in label columns: 1.0 positive, 0.0 negative, NaN unknown (the source does not annotate
that finding, or an uncertain mention under the U-Ignore policy).
"""

from __future__ import annotations

import re

PATHOLOGIES = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No_Finding"
LABEL_COLUMNS = PATHOLOGIES + (NO_FINDING,)

# class_id order of the class-conditional model (issue: 0 No Finding .. 5 Pneumothorax).
DEFAULT_CLASSES = (NO_FINDING, "Atelectasis", "Cardiomegaly", "Effusion", "Pneumonia", "Pneumothorax")


def _key(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


# Spellings seen across NIH versions, CheXpert observations, and IU/OpenI MeSH and Problems terms.
_ALIASES = {
    **{_key(name): name for name in LABEL_COLUMNS},
    _key("No Finding"): NO_FINDING,
    _key("normal"): NO_FINDING,
    _key("Pleural Effusion"): "Effusion",
    _key("Pleural Thickening"): "Pleural_Thickening",
    _key("Pulmonary Atelectasis"): "Atelectasis",
    _key("Atelectases"): "Atelectasis",
    _key("Infiltrate"): "Infiltration",
    _key("Infiltrates"): "Infiltration",
    _key("Pulmonary Edema"): "Edema",
    _key("Pulmonary Emphysema"): "Emphysema",
    _key("Pulmonary Fibrosis"): "Fibrosis",
    _key("Hernia, Hiatal"): "Hernia",
    _key("Hernia, Diaphragmatic"): "Hernia",
    _key("Hiatal Hernia"): "Hernia",
    _key("Lung Nodule"): "Nodule",
    _key("Pulmonary Nodule"): "Nodule",
    _key("Lung Mass"): "Mass",
}


def normalize_label(token: str) -> str | None:
    """Map one finding token onto a label column by exact (case and punctuation folded) match.

    Never a substring match: 'Pneumothorax' must not hit 'Pneumo', 'Mass' must not hit 'Massive'.
    """
    return _ALIASES.get(_key(token))
