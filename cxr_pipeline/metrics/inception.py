"""FID with the standard Inception-v3 (``pt_inception-2015-12-05``), only from a verified local file.

Nothing is downloaded at run time. Without the file, or when its digest does not match, the metric
is reported as not computed with the reason: a figure from any other network is not FID and would
not compare with published numbers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
# torch.hub names weight files with the first eight hex digits of their SHA-256; this is the
# published one. Pin the full digest with ``expected_sha256`` where you have it.
PUBLISHED_SHA256_PREFIX = "6726825d"


@dataclass(frozen=True)
class InceptionFid:
    value: float | None
    reason: str  # how it was computed, or why it was not

    @property
    def computed(self) -> bool:
        return self.value is not None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(weights_path: str | None, expected_sha256: str | None = None) -> str | None:
    """None when the file can be used, else the reason it cannot."""
    if not weights_path:
        return "not computed: no Inception-v3 weights file configured (fid_inception_weights)"
    path = Path(weights_path)
    if not path.is_file():
        return f"not computed: Inception-v3 weights file {path} does not exist"
    actual = sha256_of(path)
    if expected_sha256:
        if actual.lower() != expected_sha256.lower():
            return f"not computed: SHA-256 of {path.name} is {actual}, expected {expected_sha256}"
    elif not actual.startswith(PUBLISHED_SHA256_PREFIX):
        return (
            f"not computed: SHA-256 of {path.name} is {actual}, expected the published prefix {PUBLISHED_SHA256_PREFIX}"
        )
    return None


def inception_fid(
    real: torch.Tensor, fake: torch.Tensor, weights_path: str | None, expected_sha256: str | None = None
) -> InceptionFid:
    """Gray (N, 1, H, W) images in [0, 1], replicated to RGB and resized to 299 px by torchmetrics'
    torch-fidelity Inception, as published FIDs are computed."""
    problem = verify_weights(weights_path, expected_sha256)
    if problem:
        return InceptionFid(None, problem)
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance

        metric = FrechetInceptionDistance(
            feature=2048, normalize=True, feature_extractor_weights_path=str(weights_path)
        )
    except (ImportError, ModuleNotFoundError, RuntimeError) as error:
        return InceptionFid(
            None, f"not computed: torch-fidelity's Inception is unavailable ({error}); pip install 'cxr-pipeline[fid]'"
        )
    metric.update(real.float().repeat(1, 3, 1, 1), real=True)
    metric.update(fake.float().repeat(1, 3, 1, 1), real=False)
    return InceptionFid(
        float(metric.compute()), f"Inception-v3 pool3 (2048-d), {len(real)} real vs {len(fake)} generated"
    )
