"""The model-kind registry: lookups by key and by folder, per-scale kinds, and recipes that give
the training loop exactly their own values."""

import dataclasses

import pytest

from cxr_pipeline import kinds
from cxr_pipeline.models.training import TrainConfig


def test_lookup_by_key_and_per_scale_kinds():
    assert kinds.kind("class_ddpm") is kinds.CLASS_DDPM
    x2 = kinds.kind("latent_sr_x2")
    assert (x2.key, x2.registered_name, x2.folder, x2.asset) == (
        "latent_sr_x2",
        "cxr-latent-sr-x2",
        "latent_sr",
        "latent_sr",
    )
    assert not x2.per_scale and x2.pipeline is kinds.LATENT_SR.pipeline
    assert kinds.LATENT_SR.holds("latent_sr_x4") and not kinds.LATENT_SR.holds("latent_sr_xl")
    assert not kinds.CLASS_DDPM.holds("class_ddpm_x4")
    with pytest.raises(ValueError, match="unknown model kind 'latent_sr_xl'"):
        kinds.kind("latent_sr_xl")
    with pytest.raises(ValueError, match="not trained per scale"):
        kinds.VAE.at_scale(2)


def test_every_kind_is_complete_and_named_once():
    served = kinds.served()
    assert len({k.key for k in served}) == len({k.registered_name for k in served}) == len(kinds.KINDS)
    for kind in kinds.KINDS:
        assert kind.registered_name.startswith("cxr-") and kind.description and kind.title
        assert kind.serving.input_shape and kind.serving.output_shape
        if kind.train is not None:  # diffusion kinds: a pipeline, UNet profiles for both profiles, a suite
            assert (
                kind.pipeline is not None
                and kind.evaluation is not None
                and set(kind.unet_profiles) == {"demo", "full"}
            )


def test_a_recipe_hands_the_training_loop_its_own_values():
    recipe = kinds.DENOISER.recipe(steps=40, warmup_steps=100, learning_rate=1e-3, seed=3)
    train = recipe.train_config()
    assert isinstance(train, TrainConfig) and type(train) is TrainConfig
    assert (train.steps, train.warmup_steps, train.learning_rate, train.seed) == (40, 40, 1e-3, 3)  # warm-up capped
    assert train.eval_every == 250 and train.batch_size == 32  # the denoiser's own defaults
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= {f.name for f in dataclasses.fields(recipe)}
    schedule = recipe.schedule()
    assert (schedule.beta_schedule, schedule.prediction_type) == ("squaredcos_cap_v2", "sample")


def test_a_job_runs_only_for_kinds_trained_as_jobs(tmp_path):
    recipe = kinds.CLASS_DDPM.recipe()
    unet = kinds.CLASS_DDPM.unet("demo", 16, 4, 4, num_class_embeds=7)
    job = kinds.TrainingJob("classifier", str(tmp_path), unet, recipe, "abc")
    with pytest.raises(ValueError, match="classifier is trained in its asset's process"):
        kinds.run_job(job)
