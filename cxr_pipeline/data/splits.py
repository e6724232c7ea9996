"""Patient-level splits by a stable hash: the same inputs give the same split on every machine,
and a patient, once assigned, never moves when new data arrives (its hash does not depend on
anyone else). Changing the salt or the fractions is the only way to reshuffle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    return float(fractions[0]), float(fractions[1]), float(fractions[2])


def unit_hash(key: str, salt: str) -> float:
    """A deterministic number in [0, 1) for a key: the first 8 bytes of SHA-256."""
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_splits(
    patient_keys: pd.Series, fractions: Sequence[float] = (0.8, 0.1, 0.1), salt: str = "cxr-v1"
) -> pd.Series:
    """Map every row's patient key to train/val/test; rows of one patient always share a split."""
    train, val, _ = check_fractions(fractions)
    codes, uniques = pd.factorize(patient_keys, sort=False)
    if (codes < 0).any():
        raise ValueError("patient keys must not be missing")
    position = np.fromiter((unit_hash(str(key), salt) for key in uniques), dtype=np.float64, count=len(uniques))
    per_patient = np.where(position < train, 0, np.where(position < train + val, 1, 2))
    return pd.Series(np.asarray(SPLITS)[per_patient[codes]], index=patient_keys.index, name="split")


def patient_subset(rows: pd.DataFrame, cap: int | None, seed: int = 0) -> pd.DataFrame:
    """At most ``cap`` of ``rows`` (which need a ``patient_key``), whole patients at a time, in a
    random order fixed by each patient's own hash (the same patients on every machine, and a
    patient once drawn stays drawn as data arrives); ``rows`` unchanged, in their order, when they
    fit. At least one patient even when it alone is over the cap: validation and evaluation
    sets whose cost should not grow with the dataset."""
    rows = rows.reset_index(drop=True)
    if cap is None or len(rows) <= cap:
        return rows
    if cap < 1:
        raise ValueError(f"a cap on images must be at least 1, got {cap}")
    sizes = rows.groupby("patient_key", sort=False).size()
    order = np.argsort([unit_hash(str(key), f"subset-{seed}") for key in sizes.index], kind="stable")
    ordered = sizes.iloc[order]
    keep = ordered.index[ordered.cumsum().to_numpy() <= cap]
    keep = keep if len(keep) else ordered.index[:1]
    return rows[rows["patient_key"].isin(set(keep))].reset_index(drop=True)
