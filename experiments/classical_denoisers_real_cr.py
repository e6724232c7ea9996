"""NLM inside the variance-stabilising transform against NLM on the image, on real CR anatomy
(pydicom-data's RG1_UNCR; the other CR there is not a modality ingestion accepts), low dose
simulated by the pairs' physics. 64 px crops of the 256 px ingested film, off-centre and with
sharp edges: each h chosen on half the crops, scored on the others.

    python experiments/classical_denoisers_real_cr.py
"""

from pathlib import Path

import numpy as np
import torch
from pydicom.data import get_testdata_file

from cxr_pipeline.data.degrade import DetectorCounts, image_rng, simulate_low_dose
from cxr_pipeline.data.image_store import from_stored
from cxr_pipeline.data.ingest import IngestOptions, ingest_file
from cxr_pipeline.evaluation.denoising import nlm_denoise, tune_nlm, tune_vst_nlm, vst_nlm_denoise
from cxr_pipeline.metrics.restoration import per_image_scores

crops = []
for name in ("RG1_UNCR.dcm", "693_UNCR.dcm"):
    out = ingest_file(Path(get_testdata_file(name)), IngestOptions(image_size=256))
    print(name, out.accepted, out.reason)
    if out.accepted:
        img = from_stored(out.stored)
        crops += [img[y : y + 64, x : x + 64] for y in range(32, 192, 40) for x in range(32, 192, 40)]
clean = torch.from_numpy(np.stack(crops)).float().unsqueeze(1)
print("crops", len(clean), "off-centre, sharp edges included")
for dose in (1000.0, 3000.0):
    noisy = torch.from_numpy(
        np.stack([simulate_low_dose(c[0].numpy(), dose, image_rng(0, str(i), "ld")) for i, c in enumerate(clean)])
    ).unsqueeze(1)
    det = [DetectorCounts(dose)] * len(clean)
    half = len(clean) // 2
    f, _ = tune_nlm(clean[:half], noisy[:half])
    g, _ = tune_vst_nlm(clean[:half], noisy[:half], det[:half])
    a = per_image_scores(nlm_denoise(noisy[half:], f), clean[half:])
    b = per_image_scores(vst_nlm_denoise(noisy[half:], det[half:], g), clean[half:])
    n = per_image_scores(noisy[half:], clean[half:])
    d = b.psnr - a.psnr
    print(
        f"I0 {dose:g}: noisy {n.psnr.mean():.2f}  NLM {a.psnr.mean():.2f} (detail {a.detail.mean():.2f})  VST+NLM {b.psnr.mean():.2f} (detail {b.detail.mean():.2f})  paired {d.mean():+.2f} dB, wins on {int((d > 0).sum())}/{len(d)} crops"
    )
