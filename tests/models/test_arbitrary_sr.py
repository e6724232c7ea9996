"""Arbitrary-scale super-resolution: degradation at any scale, exact evaluation crops, the scale
draws, the two-stage training, and the pipeline at non-integer scales and explicit sizes."""

import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_pipeline import inference
from cxr_pipeline.data.degrade import DegradationMix, bicubic_to, low_resolution_size
from cxr_pipeline.data.image_store import ImageStore, to_stored
from cxr_pipeline.data.pairs import build_sr_pairs, centre_crop, exact_side, low_resolution_at, sr_pair_dir
from cxr_pipeline.evaluation.restoration import evaluate_arbitrary_scale, scale_name
from cxr_pipeline.metrics.restoration import per_image_scores
from cxr_pipeline.models import diffusion_training as dt
from cxr_pipeline.models import pipelines
from cxr_pipeline.models.diffusion import ScheduleConfig, UNetConfig
from cxr_pipeline.models.implicit import ImplicitDecoder, evaluate_rendering
from cxr_pipeline.models.model_folder import describe
from cxr_pipeline.models.model_settings import ArbitrarySRSettings
from cxr_pipeline.models.training import TrainConfig
from cxr_pipeline.models.vae import VaeConfig, encode_latents

SIZE = 16
TINY_VAE = VaeConfig(block_out_channels=(8, 16), latent_channels=2, norm_num_groups=8)  # factor 2: 8x8 latents
TRAIN = TrainConfig(
    steps=60,
    batch_size=16,
    learning_rate=3e-3,
    warmup_steps=4,
    checkpoint_every=30,
    eval_every=30,
    log_every=5,
    device="cpu",
)
DECODER_TRAIN = TrainConfig(
    steps=10,
    batch_size=8,
    learning_rate=3e-3,
    warmup_steps=2,
    checkpoint_every=10,
    eval_every=10,
    log_every=5,
    device="cpu",
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """32 smooth 16 px images, their store and metadata, a tiny VAE and the latents folder."""
    root = tmp_path_factory.mktemp("arbitrary")
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    images = np.stack(
        [np.clip(0.5 + 0.3 * np.sin(5 * x + p) * np.cos(3 * y + 2 * p), 0, 1) for p in rng.uniform(0, 6, 32)]
    ).astype(np.float32)
    store = ImageStore(root / "images")
    shard = store.write_shard(to_stored(images))
    metadata = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(32)],
            "shard": shard,
            "shard_index": range(32),
            "split": ["train"] * 24 + ["val"] * 4 + ["test"] * 4,
            "class_id": pd.array([0] * 32, "Int64"),
            "patient_key": [f"p{k // 2}" for k in range(32)],
        }
    )
    torch.manual_seed(0)
    TINY_VAE.build().save_pretrained(str(root / "vae"))
    encode_latents(metadata, store, root / "vae", {}, root / "latents", device="cpu")
    return root, metadata, store


def test_low_resolution_at_any_scale_is_what_the_pair_store_holds_at_integer_scales(data, tmp_path):
    root, metadata, store = data
    images = store.read_many(list(metadata["shard"]), list(metadata["shard_index"]))
    built = build_sr_pairs(metadata, store, tmp_path, [2, 4], DegradationMix(), seed=3)
    for scale in (2, 4):
        stored = ImageStore(sr_pair_dir(tmp_path, scale)).read_many(
            list(built[scale]["shard"]), list(built[scale]["shard_index"])
        )
        np.testing.assert_array_equal(
            low_resolution_at(images, metadata["image_id"], scale, DegradationMix(), 3), stored
        )
    odd = low_resolution_at(images[:3], metadata["image_id"][:3], 2.5, DegradationMix(), 3)
    assert odd.shape == (3, 6, 6) and low_resolution_size((16, 16), 2.5) == (6, 6)  # 16 / 2.5 = 6.4, rounded


def test_evaluation_crops_make_every_scale_exact():
    assert [exact_side(64, s) for s in (2, 2.5, 3, 4, 6)] == [64, 60, 63, 64, 60]  # LR 32, 24, 21, 16, 10
    assert [scale_name(s) for s in (2.0, 2.5, 6)] == ["x2", "x2p5", "x6"]
    crop = centre_crop(torch.arange(64.0).reshape(1, 1, 8, 8), 5)
    assert crop.shape == (1, 1, 5, 5) and crop[0, 0, 0, 0] == 9  # one row and one column dropped before, two after
    with pytest.raises(ValueError):
        exact_side(3, 6.5)


def test_scale_draws_cover_the_range_one_per_stratum_and_repeat():
    draws = dt.scale_draws("image-1", 6, (1.0, 4.0), seed=0)
    assert [int((s - 1.0) // 0.5) for s in draws] == list(range(6))
    assert draws == dt.scale_draws("image-1", 6, (1.0, 4.0), seed=0)
    assert draws != dt.scale_draws("image-2", 6, (1.0, 4.0), seed=0)
    by_area = dt.scale_draws("image-1", 5, (1.0, 4.0), seed=0, by_area=True)  # strata of 3 in scale squared
    assert [int((s * s - 1.0) // 3.0) for s in by_area] == list(range(5)) and max(by_area) <= 4.0


def test_the_decoder_is_scored_below_the_grid_against_the_resized_plain_decode(data):
    root, metadata, store = data
    images = torch.from_numpy(
        store.read_many(list(metadata["shard"][:4]), list(metadata["shard_index"][:4]))
    ).unsqueeze(1)
    decoder = ImplicitDecoder.from_vae(TINY_VAE.build().eval())
    scores = evaluate_rendering(decoder, images, (0.5, 1.0))
    assert {"val_psnr_render_x0p5", "val_psnr_resized_x0p5", "val_psnr_render_x1", "val_psnr_bicubic_x1"} <= set(scores)
    assert all(np.isfinite(scores[k]) for k in ("val_psnr_render_x0p5", "val_psnr_resized_x0p5", "val_psnr_render_x1"))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    root, metadata, store = data
    runs = tmp_path_factory.mktemp("runs")
    events = []
    unet = UNetConfig(
        SIZE // 2, 4, 2, block_out_channels=(16, 32), norm_num_groups=8, attention=True, class_embed_type="timestep"
    )  # told the scale
    outcome = dt.train_arbitrary_sr(
        metadata,
        store,
        root / "latents",
        root / "vae",
        unet,
        ScheduleConfig(timesteps=100, prediction_type="sample"),
        TRAIN,
        DECODER_TRAIN,
        runs,
        "tiny",
        draws_per_image=3,
        decoder_hidden=(16, 16),
        decoder_queries=64,
        progress=events.append,
    )
    return outcome, events, runs


def test_two_stages_train_into_one_folder_with_both_curves(trained):
    outcome, events, runs = trained
    diffusion = [e.metrics["loss"] for e in events if e.kind == "step" and not e.part]
    decoder = [e for e in events if e.kind == "step" and e.part == "decoder"]
    assert len(decoder) == 2 and len(diffusion) == TRAIN.steps // TRAIN.log_every
    assert (
        decoder[0].describe().startswith("decoder: step 5/10") and "decoder_train_loss" in decoder[0].logged_metrics()
    )
    assert np.mean(diffusion[-3:]) < np.mean(diffusion[:3]), diffusion
    assert {"decoder_val_psnr_render_x0p95", "decoder_val_psnr_resized_x0p95"} <= set(outcome.metrics)
    for part in ("unet", "scheduler", "vae", "head"):
        assert (outcome.model_dir / part).is_dir(), part
    saved = describe(outcome.model_dir)
    assert saved.kind == "arbitrary_sr" and saved.settings_as(ArbitrarySRSettings).scale_range == (1.0, 4.0)
    assert saved.conditioning.residual_scale > 0 and saved.settings_as(ArbitrarySRSettings).draws_per_image == 3


def test_a_warm_start_takes_the_fixed_scale_unet_and_leaves_the_scale_embedding_fresh(data, tmp_path):
    """The recipe's warm start: the fixed-scale model (no scale embedding) gives every other weight."""
    root, metadata, store = data
    fixed = UNetConfig(SIZE // 2, 4, 2, block_out_channels=(16, 32), norm_num_groups=8, attention=True)
    torch.manual_seed(1)
    fixed.build().save_pretrained(str(tmp_path / "fixed" / "unet"))
    told = replace(fixed, class_embed_type="timestep")
    outcome = dt.train_arbitrary_sr(
        metadata,
        store,
        root / "latents",
        root / "vae",
        told,
        ScheduleConfig(timesteps=100, prediction_type="sample"),
        replace(TRAIN, steps=1),
        DECODER_TRAIN,
        tmp_path / "runs",
        "tiny",
        draws_per_image=3,
        decoder_hidden=(16, 16),
        decoder_queries=64,
        warm_start_from=tmp_path / "fixed",
    )
    record = describe(outcome.model_dir).training
    copied, total = (int(n) for n in record.warm_start_tensors.split(" of "))
    fresh = [name for name in told.build().state_dict() if name.startswith("class_embedding.")]
    assert record.warm_start_from == str(tmp_path / "fixed") and copied == total - len(fresh) and fresh


def test_the_pipeline_super_resolves_at_non_integer_scales_and_sizes(trained, tmp_path):
    outcome, _, _ = trained
    model = pipelines.ArbitraryScaleSuperResolution.from_pretrained(outcome.model_dir, "cpu")
    low = torch.rand(3, 1, 6, 6)
    out = model(
        low, scale=2.5, num_inference_steps=4, generator=1
    )  # 6 * 2.5 = 15 px: off the grid, on a mirrored 16 px canvas
    assert out.shape == (3, 1, 15, 15) and out.min() >= 0.0 and out.max() <= 1.0
    torch.testing.assert_close(model(low, scale=2.5, num_inference_steps=4, generator=1), out, rtol=0, atol=0)  # seeded
    assert model.rendering is None and model.rendering_for(2.5) in ("pad", "resize", "implicit")  # chosen on val
    model.rendering = "pad"
    out = model(low, scale=2.5, num_inference_steps=4, generator=1)
    renderings = {}
    for rendering in ("resize", "implicit"):  # the field of view stretched over 16 px, then resized or rendered
        model.rendering = rendering
        renderings[rendering] = model(low, scale=2.5, num_inference_steps=4, generator=1)
    model.rendering = None
    rendered = renderings["implicit"]
    for other in renderings.values():
        assert other.shape == out.shape and not torch.equal(other, out)
        assert (other - out).abs().mean() < 0.2  # the same input through two geometries, not two different images
    assert model(low, size=(13, 21), num_inference_steps=2).shape == (3, 1, 13, 21)
    assert model(low, scale=1.0 / 3, num_inference_steps=2).shape == (3, 1, 2, 2)
    # on the grid the VAE's own decoder renders: no diffusion is exactly bicubic -> VAE -> decode
    on_grid = model.without_diffusion(torch.rand(2, 1, 8, 8), size=(16, 16))
    assert on_grid.shape == (2, 1, 16, 16)
    # the scale reaches the UNet: beyond the training range [1, 4] it is told the true scale, or 4
    assert model.scale_conditioned and model.scale_range == (1.0, 4.0) and model.extrapolate
    told = model(low, scale=5.0, num_inference_steps=2, generator=1)
    model.extrapolate = False
    clamped = model(low, scale=5.0, num_inference_steps=2, generator=1)
    model.extrapolate = True
    assert clamped.shape == told.shape == (3, 1, 30, 30) and not torch.equal(clamped, told)
    with pytest.raises(ValueError, match="either scale or size"):
        model(low, scale=2.0, size=(12, 12))
    # the one-call helper picks this pipeline from the folder's kind
    helper = inference.super_resolve(outcome.model_dir, low, scale=3.3, num_inference_steps=2, device="cpu")
    assert helper.shape == (3, 1, 20, 20)  # round(6 * 3.3) = 20
    # save_pretrained keeps the decoder head: a copy renders off-grid sizes the same ways
    model.save_pretrained(tmp_path / "copy")
    copy = pipelines.ArbitraryScaleSuperResolution.from_pretrained(tmp_path / "copy", "cpu")
    assert copy.settings.renderings == model.settings.renderings  # the val choice travels with it
    copy.rendering = "pad"
    torch.testing.assert_close(copy(low, scale=2.5, num_inference_steps=4, generator=1), out, rtol=0, atol=0)
    copy.rendering = "implicit"
    torch.testing.assert_close(copy(low, scale=2.5, num_inference_steps=4, generator=1), rendered, rtol=0, atol=0)
    with pytest.raises(ValueError, match="arbitrary_sr"):
        pipelines.LatentSuperResolution.from_pretrained(tmp_path / "copy", "cpu")


def test_a_resumed_run_reuses_the_decoder_and_resumes_the_diffusion(data, trained, tmp_path):
    root, metadata, store = data
    outcome, _, runs = trained
    copied = tmp_path / "runs"
    shutil.copytree(runs, copied)
    unet = UNetConfig(
        SIZE // 2, 4, 2, block_out_channels=(16, 32), norm_num_groups=8, attention=True, class_embed_type="timestep"
    )
    events = []
    again = dt.train_arbitrary_sr(
        metadata,
        store,
        root / "latents",
        root / "vae",
        unet,
        ScheduleConfig(timesteps=100, prediction_type="sample"),
        replace(TRAIN),
        DECODER_TRAIN,
        copied,
        "tiny",
        draws_per_image=3,
        decoder_hidden=(16, 16),
        decoder_queries=64,
        progress=events.append,
    )
    assert [e.kind for e in events if e.kind == "resume"] == ["resume", "resume"]  # both stages were complete
    assert not [e for e in events if e.kind == "step"]
    assert again.final_step == outcome.final_step


def test_the_evaluation_scores_each_scale_against_bicubic_and_the_latent_path(trained, data):
    outcome, _, _ = trained
    root, metadata, store = data
    model = pipelines.ArbitraryScaleSuperResolution.from_pretrained(outcome.model_dir, "cpu")
    test = metadata[metadata["split"] == "test"].reset_index(drop=True)
    high = torch.from_numpy(store.read_many(list(test["shard"]), list(test["shard_index"]))).unsqueeze(1)
    high = centre_crop(high, exact_side(SIZE, 2.5))  # 15 px, LR 6 px
    low = torch.from_numpy(low_resolution_at(high[:, 0].numpy(), test["image_id"], 2.5, None, 0)).unsqueeze(1)
    result = evaluate_arbitrary_scale(
        model,
        high,
        low,
        test["image_id"],
        test["patient_key"],
        2.5,
        ddim_steps=3,
        spread_seeds=2,
        spread_images=2,
        resamples=100,
    )
    metrics = result.metrics()
    for name in (
        "psnr_sr_x2p5_bicubic",
        "psnr_sr_x2p5_bicubic_vae",
        "psnr_sr_x2p5_arbitrary",
        "lr_consistency_psnr_sr_x2p5_arbitrary",
        "spread_sr_x2p5_arbitrary",
        "psnr_gain_sr_x2p5_arbitrary",
        "psnr_gain_sr_x2p5_arbitrary_vs_bicubic_vae",
        "lr_consistency_psnr_sr_x2p5_hr",
    ):
        assert name in metrics and np.isfinite(metrics[name]), name
    # the figures are what their names say: bicubic scored again here, the gain is paired and per image
    bicubic = torch.from_numpy(np.stack([bicubic_to(x[0].numpy(), tuple(high.shape[-2:])) for x in low])).unsqueeze(1)
    assert metrics["psnr_sr_x2p5_bicubic"] == pytest.approx(per_image_scores(bicubic, high)["psnr"].mean(), abs=1e-6)
    assert metrics["psnr_gain_sr_x2p5_arbitrary"] == pytest.approx(
        metrics["psnr_sr_x2p5_arbitrary"] - metrics["psnr_sr_x2p5_bicubic"], abs=1e-6
    )
    assert metrics["psnr_gain_sr_x2p5_arbitrary_ci_low"] <= metrics["psnr_gain_sr_x2p5_arbitrary"]
    assert metrics["registration_px_sr_x2p5_bicubic"] < 0.25  # bicubic keeps the field of view
    assert result.must_beat() == (("psnr_sr_x2p5_arbitrary", "psnr_sr_x2p5_bicubic"),)
    assert "inside the training range" in " ".join(result.notes)


def test_the_rendering_off_the_grid_is_chosen_on_val_and_recorded_once(trained, data):
    """After training, each probe scale off the grid gets the rendering with the best val PSNR
    among those keeping most of the fine detail, written into model.json: the pipeline then
    follows it per requested scale, unless told otherwise."""
    outcome, _, _ = trained
    root, metadata, store = data
    settings = describe(outcome.model_dir).settings_as(ArbitrarySRSettings)
    assert settings.rendering_scales == [2.5, 3.5, 6.0]
    assert set(settings.renderings) <= {"pad", "resize", "implicit"} and len(settings.renderings) == 3
    assert any(k.startswith("val_psnr_render_pad_x") for k in outcome.metrics)
    model = pipelines.ArbitraryScaleSuperResolution.from_pretrained(outcome.model_dir, "cpu")
    assert model.rendering is None
    assert [model.rendering_for(r) for r in (2.4, 3.4, 5.5)] == settings.renderings  # the nearest probe
    model.rendering = "implicit"
    assert model.rendering_for(2.4) == "implicit"
    # recorded once: asking again leaves the folder as it is
    before = (outcome.model_dir / "model.json").read_text()
    assert dt.record_renderings(outcome.model_dir, metadata, store, None, 0, 4) == {}
    assert (outcome.model_dir / "model.json").read_text() == before


def test_whole_image_draws_take_the_images_own_latents_as_targets(data):
    """The targets of whole-image draws are the latents the ``latents`` asset already encoded
    (no second encode); off-grid windows are encoded from their mirrored canvas. Both ways give
    the same latents where they overlap."""
    from cxr_pipeline.models.latents import LatentRows
    from cxr_pipeline.models.vae import load_vae

    root, metadata, store = data
    order = pd.read_parquet(root / "latents" / "index_train.parquet")["image_id"]
    rows = metadata.set_index("image_id").loc[order].reset_index()
    images, vae = dt.arbitrary_sr.StoreImages(store, rows), load_vae(root / "vae")
    hr = LatentRows(root / "latents" / "hr_train.npy", 1.0)
    args = (images, vae, 3, (1.0, 4.0), None, 0)
    encoded_conditions, encoded, ratios = dt.scale_pair_latents(*args, grid=4)
    conditions, reused, same_ratios = dt.scale_pair_latents(*args, grid=4, whole_latents=hr)
    torch.testing.assert_close(conditions, encoded_conditions, rtol=0, atol=0)
    np.testing.assert_array_equal(ratios, same_ratios)
    whole = [
        i for i in range(len(reused)) if dt.draw_window(images.image_ids[i // 3], i % 3, SIZE, 4, 0) == (0, 0, SIZE)
    ]
    assert 0 < len(whole) < len(reused)
    torch.testing.assert_close(reused[whole], hr[[i // 3 for i in whole]], rtol=0, atol=0)
    torch.testing.assert_close(reused, encoded, rtol=1e-4, atol=1e-5)  # the same encoder's output either way
