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


def assign_splits(patient_keys: pd.Series, fractions: Sequence[float] = (0.8, 0.1, 0.1), salt: str = "cxr-v1") -> pd.Series:
    """Map every row's patient key to train/val/test; rows of one patient always share a split."""
    train, val, _ = check_fractions(fractions)
    codes, uniques = pd.factorize(patient_keys, sort=False)
    if (codes < 0).any():
        raise ValueError("patient keys must not be missing")
    position = np.fromiter((unit_hash(str(key), salt) for key in uniques), dtype=np.float64, count=len(uniques))
    per_patient = np.where(position < train, 0, np.where(position < train + val, 1, 2))
    return pd.Series(np.asarray(SPLITS)[per_patient[codes]], index=patient_keys.index, name="split")
