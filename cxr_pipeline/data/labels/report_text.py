"""Radiology report text: the prompt a text-conditional model reads, and which findings a report
asserts or denies.

Mentions are found NegEx-style (Chapman et al. 2001): a finding's term counts as denied when a
negation cue ("no", "without", "negative for", ...) precedes it in the same sentence with no
contrast word ("but", "however") in between. That is what the evaluation of text-conditional
generation needs to tell "No pneumothorax." from "Small right pneumothorax." on any dataset's
reports; it is not a labeller for training.
"""

from __future__ import annotations

import re

import pandas as pd

# The terms radiologists use for each label (lower case, regular expressions, whole words).
FINDING_TERMS = {
    "Atelectasis": r"atelecta\w*|collapse|volume loss",
    "Cardiomegaly": r"cardiomegaly|(?:heart|cardiac silhouette)(?: size)? is (?:\w+ly )?enlarged|enlarge(?:d|ment of the) (?:heart|cardiac)",
    "Effusion": r"effusions?",
    "Infiltration": r"infiltrat\w*|interstitial (?:opacit\w*|markings?)",
    "Mass": r"mass(?:es)?",
    "Nodule": r"nodul\w*",
    "Pneumonia": r"pneumonia|consolidation|airspace opacit\w*",
    "Pneumothorax": r"pneumothora(?:x|ces)",
}
NEGATION_CUES = r"\b(?:no|not|without|negative for|free of|absence of|resolved|clear of)\b"
CONTRAST = r"\b(?:but|however|although|except)\b"
_TERMS = {name: re.compile(rf"\b(?:{pattern})\b") for name, pattern in FINDING_TERMS.items()}


def report_prompt(findings: object, impression: object) -> str:
    """FINDINGS then IMPRESSION, the sections the text model is trained on; "" when both are missing."""
    parts = [str(part).strip() for part in (findings, impression) if isinstance(part, str) and part.strip()]
    return " ".join(parts)


# A section header as radiologists type it, anywhere in the text: Findings / Impression in any
# case, or any other upper-case words and a colon ("COMPARISON:", "CLINICAL HISTORY:"), which end a
# section. (A lower-case "tube:" inside a sentence is not a header.)
_HEADER = re.compile(r"\b((?i:findings|impression)|[A-Z][A-Z /&()]*[A-Z)])\s*:")


def prompt_from_report(text: str) -> str:
    """A report as a person writes it, with section headers, brought to what the text model was
    trained on (``report_prompt``: the FINDINGS text, then the IMPRESSION text, no headers): the
    training prompts come from parsed sections, so a header word such as "IMPRESSION" is a word
    the model never saw. Text without FINDINGS or IMPRESSION headers is returned as it is."""
    headers = list(_HEADER.finditer(text))
    sections: dict[str, str] = {}
    for header, following in zip(headers, headers[1:] + [None]):
        name = header.group(1).strip().upper()
        if name in ("FINDINGS", "IMPRESSION") and name not in sections:
            sections[name] = text[header.end() : following.start() if following else len(text)]
    if not sections:
        return text.strip()
    return report_prompt(
        " ".join(sections.get("FINDINGS", "").split()), " ".join(sections.get("IMPRESSION", "").split())
    )


def report_prompts(metadata: pd.DataFrame) -> pd.Series:
    """One prompt per metadata row (image_id index); "" where the row has no report."""
    findings = metadata.get("findings_text", pd.Series(None, index=metadata.index, dtype=object))
    impression = metadata.get("impression_text", pd.Series(None, index=metadata.index, dtype=object))
    prompts = [report_prompt(f, i) for f, i in zip(findings.astype(object), impression.astype(object))]
    return pd.Series(prompts, index=metadata["image_id"].astype(str).to_numpy(), dtype=object)


def finding_mentions(text: str) -> dict[str, str]:
    """Each finding the report mentions: ``"positive"`` or ``"negated"``. A finding asserted in one
    sentence and denied in another counts as positive (the assertion is the finding)."""
    mentions: dict[str, str] = {}
    for sentence in re.split(r"[.;:\n]+", text.lower()):
        for name, term in _TERMS.items():
            for match in term.finditer(sentence):
                before = sentence[: match.start()]
                cues = list(re.finditer(NEGATION_CUES, before))  # the nearest cue decides
                negated = bool(cues) and not re.search(CONTRAST, before[cues[-1].end() :])
                if not negated:
                    mentions[name] = "positive"
                elif name not in mentions:
                    mentions[name] = "negated"
    return mentions
