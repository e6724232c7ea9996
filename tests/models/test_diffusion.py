"""The three diffusion models on tiny data: losses fall, sampling is shaped, ranged and seeded,
and classifier-free guidance is exactly the formula."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers.models.attention_processor import Attention
from diffusers.training_utils import compute_snr

from cxr_pipeline import inference
from cxr_pipeline.data.image_store import ImageStore, to_stored
from cxr_pipeline.data.pairs import build_low_dose_pairs, low_dose_pair_dir
from cxr_pipeline.metrics.restoration import per_image_scores
from cxr_pipeline.models import diffusion_training as dt
from cxr_pipeline.models import pipelines
from cxr_pipeline.models.diffusion import (
    Conditioning,
    ScheduleConfig,
    UNetConfig,
    diffusion_step,
    guided_prediction,
    loss_weights,
    sample,
)
from cxr_pipeline.models.model_folder import describe, load_model
from cxr_pipeline.models.model_settings import ClassDDPMSettings
from cxr_pipeline.models.training import TrainConfig
from cxr_pipeline.models.vae import VaeConfig

SIZE = 16
TRAIN = TrainConfig(
    steps=40,
    batch_size=8,
    learning_rate=3e-3,
    warmup_steps=4,
    checkpoint_every=20,
    eval_every=20,
    log_every=4,
    device="cpu",
)
TINY = dict(block_out_channels=(16, 32), norm_num_groups=8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """32 smooth 16 px images in 3 classes (brightness pattern per class), a store, metadata."""
    root = tmp_path_factory.mktemp("diffusion")
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    classes = np.arange(32) % 3
    images = np.stack(
        [
            np.clip(0.3 + 0.2 * c + 0.1 * np.sin(6 * x + p) * np.cos(4 * y), 0, 1)
            for c, p in zip(classes, rng.uniform(0, 6, 32))
        ]
    ).astype(np.float32)
    store = ImageStore(root / "images")
    shard = store.write_shard(to_stored(images))
    metadata = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(32)],
            "shard": shard,
            "shard_index": range(32),
            "split": ["train"] * 28 + ["val"] * 4,
            "class_id": pd.array(classes, dtype="Int64"),
        }
    )
    return root, metadata, store


def losses(events):
    return [e.metrics["loss"] for e in events if e.kind == "step"]


def test_class_ddpm_learns_and_generates_per_class(data, tmp_path):
    root, metadata, store = data
    events = []
    unet = UNetConfig(SIZE, 1, 1, num_class_embeds=4, **TINY)
    outcome = dt.train_class_ddpm(
        metadata,
        store,
        ["a", "b", "c"],
        unet,
        ScheduleConfig(timesteps=100),
        TRAIN,
        tmp_path,
        "tiny",
        progress=events.append,
    )
    curve = losses(events)
    assert np.mean(curve[-3:]) < 0.6 * np.mean(curve[:3]), curve
    assert sorted(outcome.previews) == [20, 40]
    images = inference.generate(outcome.model_dir, [0, 1, 2, 2], num_inference_steps=10, generator=3, device="cpu")
    assert images.shape == (4, 1, SIZE, SIZE) and images.min() >= 0.0 and images.max() <= 1.0
    again = inference.generate(outcome.model_dir, [0, 1, 2, 2], num_inference_steps=10, generator=3, device="cpu")
    torch.testing.assert_close(images, again, rtol=0, atol=0)  # seeded
    saved = describe(outcome.model_dir)
    assert saved.conditioning.num_classes == 3 and saved.settings_as(ClassDDPMSettings).classes == ["a", "b", "c"]


def test_denoiser_learns_and_restores_toward_the_clean_image(data, tmp_path):
    root, metadata, store = data
    indexes = build_low_dose_pairs(metadata, store, tmp_path / "pairs", [300.0, 3000.0], electronic_noise=2.0, seed=0)
    stores = {d: (ImageStore(low_dose_pair_dir(tmp_path / "pairs", d)), index) for d, index in indexes.items()}
    events = []
    unet = UNetConfig(SIZE, 2, 1, num_class_embeds=3, **TINY)
    outcome = dt.train_denoiser(
        metadata,
        store,
        stores,
        unet,
        ScheduleConfig(timesteps=100, beta_schedule="squaredcos_cap_v2"),
        replace(TRAIN, steps=200),
        tmp_path / "runs",
        "tiny",
        progress=events.append,
    )
    curve = losses(events)
    assert np.mean(curve[-3:]) < 0.6 * np.mean(curve[:3]), curve
    noisy = torch.from_numpy(
        stores[300.0][0].read_many(list(indexes[300.0]["shard"][:6]), list(indexes[300.0]["shard_index"][:6]))
    ).unsqueeze(1)
    restored = inference.denoise(
        outcome.model_dir, noisy, dose=300.0, num_inference_steps=10, strength=0.2, device="cpu"
    )
    assert restored.shape == noisy.shape and restored.min() >= 0.0 and restored.max() <= 1.0
    rows = metadata.set_index("image_id").loc[indexes[300.0]["image_id"][:6]]
    clean = torch.from_numpy(store.read_many(list(rows["shard"]), list(rows["shard_index"]))).unsqueeze(1)
    before, after = (per_image_scores(x, clean)["psnr"].mean() for x in (noisy, restored))
    assert after > before + 1.0, (before, after)  # toward the clean image, not just any image
    unknown_dose = inference.denoise(
        outcome.model_dir, noisy, dose=None, num_inference_steps=10, device="cpu"
    )  # the null embedding
    assert unknown_dose.shape == noisy.shape and not torch.equal(unknown_dose, restored)


def test_latent_sr_learns_and_super_resolves(data, tmp_path):
    root, metadata, store = data
    latents = tmp_path / "latents"
    latents.mkdir()
    rng = np.random.default_rng(1)
    hr = rng.normal(0, 1, (40, 2, 4, 4)).astype(np.float32)
    lr = (hr + rng.normal(0, 0.1, hr.shape)).astype(np.float32)  # LR latent: a noisy copy of HR
    for split, rows in (("train", slice(0, 32)), ("val", slice(32, 40))):
        np.save(latents / f"hr_{split}.npy", hr[rows])
        np.save(latents / f"lr_x4_{split}.npy", lr[rows])
    (latents / "latents.json").write_text(json.dumps({"scaling_factor": 1.0}))
    vae_dir = tmp_path / "vae"
    VaeConfig(block_out_channels=(8, 16, 16), latent_channels=2, norm_num_groups=8).build().save_pretrained(
        str(vae_dir)
    )
    events = []
    unet = UNetConfig(4, 4, 2, block_out_channels=(16, 32), norm_num_groups=8, attention=True)
    outcome = dt.train_latent_sr(
        latents,
        4,
        vae_dir,
        unet,
        ScheduleConfig(timesteps=300, prediction_type="sample"),
        replace(TRAIN, steps=100, eval_every=50, checkpoint_every=50),
        tmp_path / "runs",
        "tiny",
        residual=True,
        progress=events.append,
    )
    curve = losses(events)
    assert np.mean(curve[-3:]) < 0.6 * np.mean(curve[:3]), curve
    low = torch.rand(3, 1, 4, 4)
    sr = pipelines.LatentSuperResolution.from_pretrained(outcome.model_dir, "cpu")
    assert sr.scale == 4 and sr.model.conditioning.residual_scale == pytest.approx(10.0, rel=0.2)  # 1 / std(0.1 noise)
    out = sr(low, num_inference_steps=5, generator=2)
    assert out.shape == (3, 1, 16, 16) and out.min() >= 0.0 and out.max() <= 1.0
    # save_pretrained writes a folder that loads and samples the same images, with the VAE gone
    sr.save_pretrained(tmp_path / "copy")
    shutil.rmtree(vae_dir)
    again = pipelines.LatentSuperResolution.from_pretrained(tmp_path / "copy", "cpu")(
        low, num_inference_steps=5, generator=2
    )
    torch.testing.assert_close(again, out, rtol=0, atol=0)
    with pytest.raises(ValueError, match="latent_sr_x4"):  # a folder of another kind is refused by name
        pipelines.ClassConditionalGenerator.from_pretrained(tmp_path / "copy", "cpu")
    # the sampling precision: bf16 forward passes (explicit attention on CPU) land near fp32's and say so
    half = pipelines.LatentSuperResolution.from_pretrained(tmp_path / "copy", "cpu", precision="bf16")
    full = pipelines.LatentSuperResolution.from_pretrained(tmp_path / "copy", "cpu", precision="no")
    assert (half.precision, full.precision) == ("bf16", "fp32")

    def processors(unet):
        return {type(layer.processor).__name__ for layer in unet.modules() if isinstance(layer, Attention)}

    assert processors(half.model.unet) == {"AttnProcessor"} and "AttnProcessor" not in processors(full.model.unet)
    difference = (half(low, num_inference_steps=5, generator=2) - full(low, num_inference_steps=5, generator=2)).abs()
    assert difference.max() > 0 and difference.mean() < 0.01, difference.mean()
    with pytest.raises(ValueError, match="mixed precision"):
        pipelines.LatentSuperResolution.from_pretrained(tmp_path / "copy", "cpu", precision="half")


@pytest.fixture(scope="module")
def conditional_unet():
    torch.manual_seed(0)
    return UNetConfig(SIZE, 1, 1, num_class_embeds=4, **TINY).build().eval()


def test_guidance_scale_zero_and_one_are_the_unconditional_and_conditional_models(conditional_unet):
    x = torch.randn(2, 1, SIZE, SIZE)
    t = torch.tensor([10, 500])
    labels = torch.tensor([0, 2])
    null = torch.full_like(labels, 3)
    with torch.no_grad():
        conditional = conditional_unet(x, t, class_labels=labels).sample
        unconditional = conditional_unet(x, t, class_labels=null).sample
        torch.testing.assert_close(guided_prediction(conditional_unet, x, t, labels, 3, 1.0), conditional)
        torch.testing.assert_close(guided_prediction(conditional_unet, x, t, labels, 3, 0.0), unconditional)
        guided = guided_prediction(conditional_unet, x, t, labels, 3, 2.5)
    torch.testing.assert_close(guided, unconditional + 2.5 * (conditional - unconditional), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(conditional, unconditional)  # the class embedding matters


def test_ddpm_and_ddim_shapes_and_seeds(conditional_unet):
    schedule = ScheduleConfig(timesteps=50)
    labels = torch.tensor([1, 2])

    def run(sampler, seed):
        return sample(
            conditional_unet,
            schedule,
            (2, 1, SIZE, SIZE),
            labels=labels,
            null_label=3,
            guidance=1.5,
            sampler=sampler,
            steps=10,
            generator=torch.Generator().manual_seed(seed),
        )

    ddim, ddpm = run("ddim", 0), run("ddpm", 0)
    assert ddim.shape == ddpm.shape == (2, 1, SIZE, SIZE)
    torch.testing.assert_close(run("ddim", 0), ddim, rtol=0, atol=0)
    torch.testing.assert_close(run("ddpm", 0), ddpm, rtol=0, atol=0)
    assert not torch.equal(run("ddim", 1), ddim) and not torch.equal(run("ddpm", 1), ddpm)
    assert not torch.equal(ddim, ddpm)


def test_partial_noise_start_stays_close_to_its_input(conditional_unet):
    start = torch.full((2, 1, SIZE, SIZE), 0.5)
    schedule = ScheduleConfig(timesteps=100)
    near = sample(
        conditional_unet,
        schedule,
        tuple(start.shape),
        labels=torch.tensor([0, 0]),
        null_label=3,
        steps=20,
        start=start,
        strength=0.05,
        generator=torch.Generator().manual_seed(0),
    )
    far = sample(
        conditional_unet,
        schedule,
        tuple(start.shape),
        labels=torch.tensor([0, 0]),
        null_label=3,
        steps=20,
        start=start,
        strength=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert (near - start).abs().mean() < (far - start).abs().mean()


def test_min_snr_weights_cap_the_easy_steps_and_agree_across_targets():
    timesteps = torch.tensor([5, 100, 500, 900])
    weights = {}
    for kind in ("epsilon", "v_prediction", "sample"):
        schedule = ScheduleConfig(1000, prediction_type=kind, snr_gamma=5.0)
        scheduler = schedule.ddpm()
        weights[kind] = loss_weights(scheduler, timesteps, 5.0)
    snr = compute_snr(schedule.ddpm(), timesteps)
    assert snr[0] > 5.0 > snr[-1]  # the steps span both sides of gamma
    # in the x0 loss every target is weighted min(SNR, gamma): eps * SNR = v * (SNR + 1) = x0
    x0 = torch.minimum(snr, torch.tensor(5.0))
    torch.testing.assert_close(weights["sample"], x0)
    torch.testing.assert_close(weights["epsilon"] * snr, x0)
    torch.testing.assert_close(weights["v_prediction"] * (snr + 1), x0)
    assert weights["epsilon"][-1] == 1.0 and weights["epsilon"][0] < 0.01  # noisy steps keep full weight
    torch.testing.assert_close(loss_weights(scheduler, timesteps, None), torch.ones(4))


@pytest.fixture(scope="module")
def tiny_latents(data, tmp_path_factory):
    """Latents of the tiny images through a tiny untrained VAE, written as the latents asset does."""
    root, metadata, store = data
    folder = tmp_path_factory.mktemp("latents")
    vae = VaeConfig(block_out_channels=(8, 16), latent_channels=2, norm_num_groups=8).build()
    vae.save_pretrained(str(folder / "vae"))
    train = metadata[metadata["split"] == "train"].reset_index(drop=True)
    images = torch.from_numpy(store.read_many(list(train["shard"]), list(train["shard_index"]))).unsqueeze(1)
    with torch.no_grad():
        latents = vae.encode(images * 2 - 1).latent_dist.mode()
    np.save(folder / "hr_train.npy", latents.numpy())
    train[["image_id", "split", "class_id"]].to_parquet(folder / "index_train.parquet")
    (folder / "latents.json").write_text(
        json.dumps({"scaling_factor": float(1 / latents.std()), "latent_shape": list(latents.shape[1:])})
    )
    return folder


def test_latent_class_model_learns_and_its_folder_stands_alone(data, tiny_latents, tmp_path):
    root, metadata, store = data
    events = []
    unet = UNetConfig(SIZE // 2, 2, 2, num_class_embeds=4, **TINY)
    schedule = ScheduleConfig(timesteps=100, prediction_type="v_prediction", snr_gamma=5.0)
    vae_source = tmp_path / "vae"
    shutil.copytree(tiny_latents / "vae", vae_source)
    outcome = dt.train_class_ddpm(
        metadata,
        store,
        ["a", "b", "c"],
        unet,
        schedule,
        TRAIN,
        tmp_path / "runs",
        "tiny",
        latents_dir=tiny_latents,
        vae_dir=vae_source,
        progress=events.append,
    )
    # min-SNR weights make the per-step loss noisy: compare the objective on one fixed batch instead
    step = diffusion_step(Conditioning(num_classes=3, class_dropout=0.0), schedule)
    batch = {"target": dt.scaled_latents(tiny_latents, "hr", "train")[:16], "labels": torch.arange(16) % 3}
    with torch.no_grad():
        trained = step(load_model(outcome.model_dir).unet, batch, torch.Generator().manual_seed(0))[0]
        untrained = step(unet.build(), batch, torch.Generator().manual_seed(0))[0]
    assert trained < 0.7 * untrained, (trained, untrained)
    images = inference.generate(outcome.model_dir, [0, 1, 2], num_inference_steps=8, generator=5, device="cpu")
    assert images.shape == (3, 1, SIZE, SIZE) and images.min() >= 0.0 and images.max() <= 1.0
    # moved elsewhere, with its VAE source gone, the folder samples the same images
    moved = tmp_path / "elsewhere"
    shutil.copytree(outcome.model_dir, moved)
    shutil.rmtree(outcome.model_dir)
    shutil.rmtree(vae_source)
    torch.testing.assert_close(
        inference.generate(moved, [0, 1, 2], num_inference_steps=8, generator=5, device="cpu"), images, rtol=0, atol=0
    )
    described = describe(moved)
    assert described.settings_as(ClassDDPMSettings).space == "latent"
    assert described.schedule.prediction_type == "v_prediction"
    assert json.loads((moved / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"
    # sampling reads the schedule from scheduler/, the diffusers source of truth; the loss weighting from model.json
    saved = json.loads((moved / "scheduler" / "scheduler_config.json").read_text())
    (moved / "scheduler" / "scheduler_config.json").write_text(json.dumps({**saved, "num_train_timesteps": 50}))
    loaded = load_model(moved).schedule
    assert loaded.timesteps == 50 and loaded.prediction_type == "v_prediction" and loaded.snr_gamma == 5.0


def test_aligned_crops_cut_the_same_window_from_both_tensors_and_are_seeded():
    from cxr_pipeline.models.batches import aligned_crops

    clean = torch.arange(4 * 16 * 16, dtype=torch.float32).reshape(4, 1, 16, 16)
    noisy = clean * 10
    a, b = aligned_crops([clean, noisy], 8, seed=0, step=3)
    assert a.shape == b.shape == (4, 1, 8, 8)
    torch.testing.assert_close(b, a * 10)  # the same window in both
    again, _ = aligned_crops([clean, noisy], 8, seed=0, step=3)
    torch.testing.assert_close(again, a, rtol=0, atol=0)  # a resumed run sees the same crops
    other, _ = aligned_crops([clean, noisy], 8, seed=0, step=4)
    assert not torch.equal(other, a)
    starts = {int(x[0, 0, 0]) for x in a}  # each row's top-left pixel value encodes its window
    assert len(starts) > 1  # rows get different windows
    whole = aligned_crops([clean, noisy], None, seed=0, step=0)
    assert whole[0] is clean and whole[1] is noisy


def test_residual_model_diffuses_the_correction_and_returns_its_input_plus_it(conditional_unet):
    """A residual model's target is (target - condition) x scale; sampling returns condition +
    chain / scale, so a network whose chain ends at zero returns its input unchanged."""
    schedule = ScheduleConfig(100, prediction_type="sample")
    conditioning = Conditioning(concat_channels=1, residual_scale=4.0)

    class Zero(torch.nn.Module):  # predicts x0 = 0: the correction is nothing
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, inputs, t, class_labels=None):
            return type("Out", (), {"sample": torch.zeros_like(inputs[:, :1]) * self.p})()

    condition = torch.rand(2, 1, SIZE, SIZE)
    out = sample(
        Zero(),
        schedule,
        tuple(condition.shape),
        condition=condition,
        steps=10,
        generator=torch.Generator().manual_seed(0),
        residual_scale=conditioning.residual_scale,
    )
    torch.testing.assert_close(out, condition, rtol=0, atol=1e-6)
    # the training target is the scaled correction: a perfect x0 predictor of it has zero loss
    target = condition + 0.1

    class Perfect(Zero):
        def forward(self, inputs, t, class_labels=None):
            return type("Out", (), {"sample": torch.full_like(inputs[:, :1], 0.4) + 0 * self.p})()

    loss, _ = diffusion_step(conditioning, schedule)(
        Perfect(), {"target": target, "condition": condition}, torch.Generator().manual_seed(0)
    )
    assert float(loss) < 1e-10
