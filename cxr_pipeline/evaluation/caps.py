"""How much of each split an evaluation scores, so that its cost stops growing with the dataset.

Every figure an evaluation reports is a mean over images with a patient-bootstrap interval, a
distance between feature distributions, or a rate; all of them are as precise at a thousand
test images as the intervals in the reports need (a paired PSNR gain with a per-image spread of
1 dB has a 95% interval of about ±0.06 dB at 1000 images; fd_cxr's bias shrinks as 1/n). Past
that, a bigger split only costs time: NIH ChestX-ray14's test split alone holds about 11,000
images. So each profile caps the images a suite scores, and the draw is of whole patients, at
random but by a stable hash (the same patients on every machine, and a patient once drawn stays
drawn), so that patient-level bootstrap intervals stay valid. Under its cap a split is used whole
and in its own order, so small datasets (the demo) score exactly what they always did.

Each evaluation asset's config overrides its caps (``max_test_images``, ``max_val_images``,
``max_train_reference``); the report says how many images were scored and how they were drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..data.splits import patient_subset


@dataclass(frozen=True)
class EvaluationCaps:
    """Images (or reports) an evaluation takes at most from each split."""

    test_images: int  # scored on test, by every suite (and the synthetic-utility classifiers)
    val_images: int  # val-side choices and references: guidance sweeps, generation's real-val reference
    train_reference: int  # training images a memorization or retrieval check compares against
    utility_train_images: int  # real training images per arm of the synthetic-utility experiment
    # The denoising suite tunes NLM's h and its own start on ``val_images`` of its config (24).


EVALUATION_CAPS = {
    # above every split of the demo dataset (300 patients: about 760 / 100 / 95 images)
    "demo": EvaluationCaps(test_images=1000, val_images=500, train_reference=5000, utility_train_images=5000),
    # NIH ChestX-ray14 at 0.8/0.1/0.1 has about 89,700 / 11,200 / 11,200 images
    "full": EvaluationCaps(test_images=1000, val_images=256, train_reference=5000, utility_train_images=5000),
}


def caps_for(profile: str) -> EvaluationCaps:
    return EVALUATION_CAPS[profile]


@dataclass(frozen=True)
class Draw:
    """Which rows of a split an evaluation scores, and how they were chosen (for the report)."""

    split: str
    rows: pd.DataFrame
    available_images: int
    available_patients: int
    cap: int | None
    seed: int
    unit: str = "images"

    @property
    def whole(self) -> bool:
        return len(self.rows) == self.available_images

    def describe(self) -> str:
        patients = self.rows["patient_key"].nunique() if len(self.rows) else 0
        if self.whole:
            limit = f", under the cap of {self.cap:,}" if self.cap else ""
            return (
                f"{self.split}: all {self.available_images:,} {self.unit} of {self.available_patients:,} "
                f"patients{limit}"
            )
        return (
            f"{self.split}: {len(self.rows):,} of {self.available_images:,} {self.unit} "
            f"({patients:,} of {self.available_patients:,} patients), whole patients drawn at random by a "
            f"stable hash (seed {self.seed}) up to the cap of {self.cap:,}"
        )

    def params(self) -> dict:
        return {
            f"{self.split}_{self.unit}_scored": len(self.rows),
            f"{self.split}_{self.unit}_available": self.available_images,
            f"{self.split}_cap": self.cap,
        }


def draw_patients(rows: pd.DataFrame, cap: int | None, split: str, seed: int = 0, unit: str = "images") -> Draw:
    """At most ``cap`` of ``rows``, whole patients at a time (``data.splits.patient_subset``), with
    what the report says of the draw."""
    rows = rows.reset_index(drop=True)
    available_patients = int(rows["patient_key"].nunique()) if len(rows) else 0
    return Draw(split, patient_subset(rows, cap, seed), len(rows), available_patients, cap, seed, unit)


def split_draw(metadata: pd.DataFrame, split: str, cap: int | None, *, labelled: bool = False, seed: int = 0) -> Draw:
    """The rows of one split (only single-label ones when ``labelled``), drawn under ``cap``."""
    rows = metadata[metadata["split"] == split]
    if labelled:
        rows = rows[rows["class_id"].notna()]
    return draw_patients(rows, cap, split, seed)
