"""A tiny budget for every training and evaluation of the main job, set through the assets' own
config: the whole graph in minutes on a CPU under any profile. It shows that a profile's shapes,
memory and plumbing hold (every asset materializes, every model registers, every report is
written) before hours go into a real run; it measures nothing about quality. The ``smoke`` job
runs it; the CI's full-profile test and ``scripts/full_run_plan.py`` use the same config.
"""

from __future__ import annotations

from typing import Any

# Two optimizer steps of two images, a validation (its sample grid drawn in 2 DDIM steps) and a checkpoint.
TINY_TRAINING: dict[str, Any] = {
    "steps": 2,
    "batch_size": 2,
    "eval_every": 2,
    "checkpoint_every": 2,
    "log_every": 1,
    "warmup_steps": 1,
    "preview_steps": 2,
}
# Two DDIM steps on at most 4 test and 8 val images (whole patients), few resamples: every image
# scored costs a few VAE decodes, seconds each at 256 px on a CPU.
TINY_EVALUATION: dict[str, Any] = {
    "ddim_steps": 2,
    "spread_seeds": 2,
    "spread_images": 2,
    "max_test_images": 4,
    "max_val_images": 8,
    "max_train_reference": 16,
    "bootstrap_resamples": 50,
}


def tiny_run_config() -> dict:
    """The run config of the main job at the tiny budget (Dagster's ``{"ops": ...}`` form)."""
    ops: dict[str, dict[str, Any]] = {
        name: dict(TINY_TRAINING) for name in ("latent_sr", "class_ddpm", "low_dose_denoiser", "text_ldm")
    }
    ops["vae"] = {**TINY_TRAINING, "val_images": 4}
    ops["cxr_classifier"] = {**TINY_TRAINING, "val_images": 8}
    ops["arbitrary_sr"] = {
        **TINY_TRAINING,
        "decoder_steps": 2,
        "decoder_batch_size": 2,
        "draws_per_image": 1,
        "decoder_val_images": 2,
        "render_val_images": 2,
    }
    ops["report_encoder"] = {**TINY_TRAINING, "align_steps": 2, "align_batch_size": 2}
    ops["sr_pairs"] = {"sr_scales": [4]}  # the scale the latent SR model trains at
    ops["low_dose_pairs"] = {"low_dose_photons": [1000.0]}  # the hardest dose only
    # the regression baselines: two optimizer steps on a few training pairs
    tiny_regression = {"regression_steps": 2, "regression_train_images": 8}
    ops["sr_evaluation"] = {**TINY_EVALUATION, **tiny_regression, "regression_val_images": 2}
    ops["arbitrary_sr_evaluation"] = {**TINY_EVALUATION, "scales": [2.5]}  # off the integer grid
    ops["denoising_evaluation"] = {
        **TINY_EVALUATION,
        **tiny_regression,
        "val_images": 2,
        "strengths": [0.4],
        "nlm_factors": [1.0],
        "vst_nlm_factors": [0.8],
    }
    ops["generation_evaluation"] = {**TINY_EVALUATION, "samples_per_class": 1, "max_test_images": 8}  # FD needs a few
    # precision / recall / density / coverage need more than k = 5 reports on each side
    ops["text_generation_evaluation"] = {
        **TINY_EVALUATION,
        "guidance_scales": [3.0],
        "consistency_samples": 1,
        "sweep_samples": 1,
        "max_test_images": 16,
        "max_val_images": 16,
    }
    # real against real + generated (both generators, each class as often as in the real mix); the
    # balancing arm is left out: it asks the text model for classes a small dataset may have no
    # training report of
    ops["synthetic_utility"] = {
        "arms": ["real", "real_synthetic"],
        "seeds": 1,
        "classifier_steps": 2,
        "ddim_steps": 2,
        "synthetic_ratio": 0.25,
        "bootstrap_resamples": 50,
        "max_train_images": 64,
        "max_val_images": 8,
        "max_test_images": 8,
    }
    return {"ops": {name: {"config": config} for name, config in ops.items()}}
