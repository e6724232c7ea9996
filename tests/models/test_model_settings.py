"""Typed model settings: every kind's round trip, strict keys, and folders in the format before them."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path

import pytest
import torch

from cxr_pipeline import kinds
from cxr_pipeline.models.classifier import ClassifierConfig, ClassifierSettings, CxrClassifier, load_classifier
from cxr_pipeline.models.diffusion import Conditioning, ScheduleConfig, UNetConfig
from cxr_pipeline.models.model_folder import SavedModel, save_model
from cxr_pipeline.models.model_settings import (
    SETTINGS,
    ArbitrarySRSettings,
    ClassDDPMSettings,
    DenoiserSettings,
    LatentSRSettings,
    ModelSettings,
    TextLDMSettings,
    TrainingRecord,
    settings_type,
)
from cxr_pipeline.models.pipelines import ClassConditionalGenerator, LowDoseDenoiser

ROOT = Path(__file__).resolve().parents[2]
LEGACY = Path(__file__).parent / "fixtures" / "legacy_model_json"

EXAMPLES: dict[str, ModelSettings] = {
    "latent_sr": LatentSRSettings(scale=4, residual=True, vae_source="/w/vae", scaling_factor=1.3),
    "arbitrary_sr": ArbitrarySRSettings(
        scale_min=1.0,
        scale_max=4.0,
        draws_per_image=6,
        draws_by_area=True,
        degradation_mix=True,
        pair_seed=0,
        residual=True,
        decoder_min_ratio=0.75,
        decoder_run="abc",
        vae_source="/w/vae",
        scaling_factor=1.3,
    ),
    "class_ddpm": ClassDDPMSettings(
        classes=["a", "b"],
        class_balance=True,
        guidance_scale=3.0,
        space="latent",
        vae_source="/w/vae",
        scaling_factor=1.3,
    ),
    "denoiser": DenoiserSettings(
        doses=[1000.0, 3000.0], dose_conditioning=True, sampling_strength=0.4, crop=32, residual=True
    ),
    "text_ldm": TextLDMSettings(
        guidance_scale=4.0,
        text_dropout=0.1,
        balance=True,
        trainable_encoder_layers=0,
        vae_source="/w/vae",
        encoder_source="/w/enc",
        text_length=40,
        train_reports=90,
        preview_prompts=["Clear lungs."],
        scaling_factor=1.3,
    ),
}


def test_every_diffusion_kind_has_settings_and_an_example():
    diffusion_kinds = {k.key for k in kinds.KINDS if k.train is not None}
    assert set(SETTINGS) == diffusion_kinds == set(EXAMPLES)
    assert settings_type("latent_sr_x4") is LatentSRSettings
    with pytest.raises(ValueError, match="no settings are defined for model kind 'vae'"):
        settings_type("vae")


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_settings_round_trip_and_refuse_unknown_or_missing_keys(kind):
    settings = EXAMPLES[kind]
    assert type(settings).from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    raw = settings.to_dict()
    with pytest.raises(ValueError, match=r"unknown keys \['guidance'\]"):
        type(settings).from_dict({**raw, "guidance": 2.0})
    required = next(
        f.name
        for f in dataclasses.fields(settings)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    with pytest.raises(ValueError, match=rf"missing keys \['{required}'\]"):
        type(settings).from_dict({k: v for k, v in raw.items() if k != required})


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_settings_take_the_names_of_the_recipe_fields_they_come_from(kind):
    """A value keeps its name from the recipe to the folder: no field of the settings names a recipe
    field's value under another name (derived values, like the latents' scaling factor, are no
    recipe field at all)."""
    recipe = {f.name for f in dataclasses.fields(kinds.kind(kind).recipe)}
    derived = {
        "scaling_factor",
        "vae_source",
        "encoder_source",
        "scale",
        "doses",
        "decoder_run",
        "text_length",
        "train_reports",
        "preview_prompts",
        "space",
        "rendering_scales",  # chosen on val after training (choose_renderings), not set in the recipe
        "renderings",
    }
    assert {f.name for f in dataclasses.fields(EXAMPLES[kind])} - derived <= recipe


def test_a_saved_model_json_round_trips_whole(tmp_path):
    unet = UNetConfig(8, 2, 2, (16, 32), norm_num_groups=8, num_class_embeds=3)
    saved = SavedModel(
        "class_ddpm",
        unet,
        ScheduleConfig(100, prediction_type="v_prediction", snr_gamma=5.0),
        Conditioning(num_classes=2, class_dropout=0.1),
        EXAMPLES["class_ddpm"],
        TrainingRecord(step=7, data_hash="h", train={"steps": 7}, warm_start_from="/w/m", warm_start_tensors="3 of 4"),
    )
    assert SavedModel.from_json(saved.to_json()) == saved
    raw = json.loads(saved.to_json())
    assert set(raw) == {"kind", "schedule", "conditioning", "unet", "settings", "training"}
    raw["settings"]["default_guidance"] = 3.0
    with pytest.raises(ValueError, match=r"class_ddpm model: unknown keys \['default_guidance'\]"):
        SavedModel.from_json(json.dumps(raw))
    with pytest.raises(ValueError, match="holds a 'class_ddpm' model, not a 'denoiser' one"):
        saved.settings_as(DenoiserSettings)


@pytest.mark.parametrize("kind", sorted(path.stem for path in LEGACY.glob("*.json")))
def test_model_json_of_the_format_before_typed_settings_still_reads(kind):
    """model.json files written by the trainers before the settings were typed (from a demo run)."""
    raw = json.loads((LEGACY / f"{kind}.json").read_text())
    assert "settings" not in raw
    saved = SavedModel.from_json(json.dumps(raw))
    settings = saved.settings_as(settings_type(kind))
    assert saved.training.step == raw["step"] and saved.training.data_hash == raw["data_hash"]
    if kind == "class_ddpm":
        assert settings.classes == raw["class_names"] and settings.guidance_scale == raw["default_guidance"]
    if kind == "text_ldm":
        assert settings.guidance_scale == raw["default_guidance"] and settings.balance == raw["balanced"]
        assert saved.training.warm_start_from == raw["warm_start_from"]
    if kind == "arbitrary_sr":
        assert list(settings.scale_range) == raw["scale_range"] and settings.draws_per_image == raw["draws"]
    if kind == "denoiser":
        assert settings.sampling_strength == raw["default_strength"] and settings.doses == raw["doses"]
    if kind == "latent_sr":
        assert settings.scale == raw["scale"] and settings.residual
    # written again, it is today's format and reads back the same
    assert SavedModel.from_json(saved.to_json()) == saved


def test_a_folder_written_in_the_old_format_loads_and_samples(tmp_path):
    """The whole folder: weights saved as training saved them, model.json in the old format."""
    legacy = json.loads((LEGACY / "denoiser.json").read_text())
    unet = UNetConfig(**{**legacy["unet"], "block_out_channels": tuple(legacy["unet"]["block_out_channels"])})
    torch.manual_seed(0)
    folder = tmp_path / "old"
    save_model(folder, unet.build(), SavedModel.from_json(json.dumps(legacy)))
    (folder / "model.json").write_text(json.dumps(legacy))  # as the old trainer wrote it
    denoiser = LowDoseDenoiser.from_pretrained(folder, "cpu", precision="no")
    assert denoiser.doses == legacy["doses"] and denoiser.settings.sampling_strength == legacy["default_strength"]
    noisy = torch.rand(1, 1, unet.sample_size, unet.sample_size)
    out = denoiser(noisy, dose=legacy["doses"][0], num_inference_steps=2, generator=0)
    assert out.shape == noisy.shape and torch.isfinite(out).all()
    # saved again by the pipeline: today's format, the same samples
    denoiser.save_pretrained(tmp_path / "new")
    assert "settings" in json.loads((tmp_path / "new" / "model.json").read_text())
    again = LowDoseDenoiser.from_pretrained(tmp_path / "new", "cpu", precision="no")
    torch.testing.assert_close(
        again(noisy, dose=legacy["doses"][0], num_inference_steps=2, generator=0), out, rtol=0, atol=0
    )
    with pytest.raises(ValueError, match="holds a 'denoiser' model, not a 'class_ddpm' one"):
        ClassConditionalGenerator.from_pretrained(folder, "cpu")


def test_the_classifier_settings_round_trip_and_read_the_old_format(tmp_path):
    config = ClassifierConfig(widths=(8, 16))
    settings = ClassifierSettings(
        config=config,
        classes=["a", "b"],
        image_size=32,
        num_features=16,
        metrics={"val_accuracy": 0.5},
        training=TrainingRecord(step=3, data_hash="h", train={}),
    )
    assert ClassifierSettings.from_json(settings.to_json()) == settings
    old = {
        "config": config.as_dict(),
        "class_names": ["a", "b"],
        "image_size": 32,
        "num_features": 16,
        "metrics": {"val_accuracy": 0.5},
        "step": 3,
        "data_hash": "h",
        "train": {},
    }
    assert ClassifierSettings.from_json(json.dumps(old)) == settings
    folder = tmp_path / "classifier"
    folder.mkdir()
    from safetensors.torch import save_file

    save_file(CxrClassifier(config, 2).state_dict(), folder / "model.safetensors")
    (folder / "classifier.json").write_text(json.dumps(old))
    _, loaded = load_classifier(folder, "cpu")
    assert loaded.classes == ["a", "b"]


def test_no_model_setting_is_read_by_string_key_outside_its_dataclass():
    """The settings of a trained model are read as typed fields everywhere; only the module that
    translates the old format knows the old names."""
    pattern = re.compile(
        r'extra\[|\.get\("default_|\["default_guidance"\]|\["class_names"\]|\["scale_range"\]'
        r'|options\["|job\.options'
    )
    allowed = {ROOT / "cxr_pipeline" / "models" / "model_settings.py"}
    offenders = []
    for folder in ("cxr_pipeline", "assets", "resources", "jobs", "bench", "experiments", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            if path in allowed:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_job_recipes_are_the_kinds_own_and_typed():
    hints = typing.get_type_hints(kinds.TrainingJob)
    assert hints["recipe"] is kinds.TrainingRecipe
    assert "options" not in {f.name for f in dataclasses.fields(kinds.TrainingJob)}
