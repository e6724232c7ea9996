"""Fine detail of every latent model's output, for work folders side by side (an old demo run and a
new one): the detail ratio of metrics/detail.py (1 = the real images' fine anatomy) with PSNR
where there is a ground truth, on the same demo test images, computed in this process with the
same code for every folder.

- autoencoder: test images -> VAE -> images (paired ratio against the input, PSNR);
- super-resolution x4: the latent SR model, DDIM 50 from noise (paired, PSNR), and bicubic;
- arbitrary-scale SR at x2 and x4 (DDIM 20, paired, PSNR);
- class model: one sample per labelled test image, its class, DDIM 50 at the saved guidance
  (set ratio against the real labelled test images);
- text model: one sample per test report, DDIM 20 at the saved guidance (set ratio);
- low-dose denoiser at the lowest dose, DDIM 20 (paired, PSNR), and the noisy input.

    python bench/fine_detail.py OLD_HOME NEW_HOME [--limit 94]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr_pipeline import kinds
from cxr_pipeline.data.degrade import upsample_bicubic
from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.data.pairs import doses_built, low_dose_pair_dir, sr_pair_dir
from cxr_pipeline.evaluation.inputs import degraded_images, split_rows, stored_images
from cxr_pipeline.evaluation.text_measures import prompt_set
from cxr_pipeline.metrics.detail import set_detail_ratio
from cxr_pipeline.metrics.restoration import per_image_scores
from cxr_pipeline.model_record import current_model, has_current_model
from cxr_pipeline.models.pipelines import (
    ArbitraryScaleSuperResolution,
    ClassConditionalGenerator,
    LatentSuperResolution,
    LowDoseDenoiser,
    TextConditionalGenerator,
)
from cxr_pipeline.models.vae import load_vae, reconstruct
from cxr_pipeline.settings import WorkPaths


def paired(name: str, output: torch.Tensor, target: torch.Tensor) -> dict:
    scores = per_image_scores(output.double(), target.double())
    return {
        "output": name,
        "detail": round(float(scores["detail"].mean()), 3),
        "PSNR": round(float(scores["psnr"].mean()), 2),
    }


def figures(home: Path, limit: int) -> list[dict]:
    paths = WorkPaths(home)
    metadata = pd.read_parquet(paths.metadata)
    store = ImageStore(paths.image_store)
    rows = split_rows(metadata, "test", limit)
    real = stored_images(store, rows)
    out = []
    vae = load_vae(current_model(paths, kinds.VAE.key).model_dir)
    out.append(paired("VAE reconstruction", reconstruct(vae, real), real))
    low4 = degraded_images(sr_pair_dir(paths.pairs, 4), rows)
    bicubic = torch.from_numpy(np.stack([upsample_bicubic(x[0].numpy(), 4) for x in low4])).unsqueeze(1)
    out.append(paired("bicubic x4", bicubic, real))
    if has_current_model(paths, "latent_sr_x4"):
        sr = LatentSuperResolution.from_pretrained(current_model(paths, "latent_sr_x4").model_dir)
        out.append(paired("latent SR x4, DDIM 50", sr(low4, num_inference_steps=50), real))
    if has_current_model(paths, kinds.ARBITRARY_SR.key):
        arbitrary = ArbitraryScaleSuperResolution.from_pretrained(
            current_model(paths, kinds.ARBITRARY_SR.key).model_dir
        )
        for scale in (2, 4):
            low = degraded_images(sr_pair_dir(paths.pairs, scale), rows)
            out.append(
                paired(f"arbitrary SR x{scale}, DDIM 20", arbitrary(low, scale=scale, num_inference_steps=20), real)
            )
    labelled = split_rows(metadata, "test", limit, labelled=True)
    if has_current_model(paths, kinds.CLASS_DDPM.key):
        generator = ClassConditionalGenerator.from_pretrained(current_model(paths, kinds.CLASS_DDPM.key).model_dir)
        samples = generator(labelled["class_id"].astype(int).tolist(), num_inference_steps=50)
        out.append(
            {
                "output": "class samples, DDIM 50",
                "detail": round(set_detail_ratio(samples, stored_images(store, labelled)), 3),
            }
        )
    if has_current_model(paths, kinds.TEXT_LDM.key):
        test = prompt_set(metadata, store, "test", limit)
        text = TextConditionalGenerator.from_pretrained(current_model(paths, kinds.TEXT_LDM.key).model_dir)
        out.append(
            {
                "output": "text samples, DDIM 20",
                "detail": round(set_detail_ratio(text(test.prompts, num_inference_steps=20), test.images), 3),
            }
        )
    if has_current_model(paths, kinds.DENOISER.key):
        dose = min(doses_built(paths.pairs))
        noisy = degraded_images(low_dose_pair_dir(paths.pairs, dose), rows)
        denoiser = LowDoseDenoiser.from_pretrained(current_model(paths, kinds.DENOISER.key).model_dir)
        out.append(paired(f"low-dose input, I0 {dose:g}", noisy, real))
        out.append(paired(f"denoiser, I0 {dose:g}, DDIM 20", denoiser(noisy, dose=dose, num_inference_steps=20), real))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("homes", nargs="+", help="work folders to compare (each with a finished demo run)")
    parser.add_argument("--limit", type=int, default=None, help="test images (default: all)")
    args = parser.parse_args()
    frames = []
    for home in args.homes:
        frame = pd.DataFrame(figures(Path(home), args.limit)).set_index("output")
        frames.append(frame.add_prefix(f"{Path(home).parent.name}/{Path(home).name} "))
        print(frames[-1].to_markdown(), flush=True)
    print(pd.concat(frames, axis=1).to_markdown())


if __name__ == "__main__":
    main()
