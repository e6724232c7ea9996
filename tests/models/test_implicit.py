"""The implicit (LIIF) decoder over the VAE: coordinates and cells at non-integer scales, the
plain decode at the native grid, any output size, and training on tiny data."""

import numpy as np
import pandas as pd
import torch

from cxr_pipeline.data.image_store import ImageStore, to_stored
from cxr_pipeline.models.implicit import ImplicitDecoder, cell_centres, queries, shrink, train_implicit_decoder
from cxr_pipeline.models.training import TrainConfig
from cxr_pipeline.models.vae import VaeConfig

TINY_VAE = VaeConfig(block_out_channels=(8, 16), latent_channels=2, norm_num_groups=8)  # factor 2


def test_centres_and_cells_of_a_non_integer_scale_by_hand():
    # 3 x 5 output pixels over [-1, 1]^2: centres at -1 + (2i + 1) / n, cells 2 / n
    coords, cells = queries(3, 5)
    assert coords.shape == (15, 2) and cells.shape == (15, 2)
    torch.testing.assert_close(coords[:5, 1], torch.tensor([-0.8, -0.4, 0.0, 0.4, 0.8]))
    torch.testing.assert_close(coords[::5, 0], torch.tensor([-2 / 3, 0.0, 2 / 3]))
    torch.testing.assert_close(cells[7], torch.tensor([2 / 3, 0.4]))
    # a 2.5x rendering of a 2 x 2 grid: 5 x 5 centres, the middle one on the shared corner
    assert cell_centres(5, 5)[12].tolist() == [0.0, 0.0]


def test_an_untrained_decoder_is_the_plain_decode_at_the_native_grid_and_renders_any_size():
    torch.manual_seed(0)
    vae = TINY_VAE.build().eval()
    decoder = ImplicitDecoder.from_vae(vae)
    latents = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(decoder.render(latents, (16, 16)), vae.decode(latents).sample, atol=1e-5, rtol=0)
        for size in ((37, 50), (5, 7), (16, 40)):
            assert decoder.render(latents, size).shape == (2, 1, *size)
        # untrained, every cell predicts its own pixel whatever the offset, so the local ensemble is
        # exactly bilinear interpolation of the plain decode (edges replicated), at any size
        plain = vae.decode(latents).sample
        for size in ((32, 32), (21, 13)):
            bilinear = torch.nn.functional.interpolate(plain, size=size, mode="bilinear", align_corners=False)
            torch.testing.assert_close(decoder.render(latents, size), bilinear, atol=1e-5, rtol=0)


def tiny_images(root, count=32, size=16):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    images = np.stack(
        [np.clip(0.5 + 0.3 * np.sin(5 * x + p) * np.cos(3 * y + 2 * p), 0, 1) for p in rng.uniform(0, 6, count)]
    ).astype(np.float32)
    store = ImageStore(root / "images")
    shard = store.write_shard(to_stored(images))
    metadata = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(count)],
            "shard": shard,
            "shard_index": range(count),
            "split": ["train"] * (count - 8) + ["val"] * 8,
        }
    )
    return metadata, store


def test_training_lowers_the_loss_and_the_saved_decoder_renders_the_same(tmp_path):
    metadata, store = tiny_images(tmp_path)
    torch.manual_seed(0)
    TINY_VAE.build().save_pretrained(str(tmp_path / "vae"))
    events = []
    config = TrainConfig(
        steps=80,
        batch_size=8,
        learning_rate=1e-2,
        warmup_steps=4,
        checkpoint_every=40,
        eval_every=80,
        log_every=4,
        device="cpu",
    )
    outcome = train_implicit_decoder(
        metadata,
        store,
        tmp_path / "vae",
        config,
        tmp_path / "runs",
        "tiny",
        query_points=64,
        hidden=(32, 32),
        progress=events.append,
    )
    losses = [e.metrics["loss"] for e in events if e.kind == "step"]
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:3]), losses  # a random frozen VAE bounds it
    assert {"val_psnr_render_x1", "val_psnr_render_x2", "val_psnr_bicubic_x2"} <= outcome.metrics.keys()
    loaded = ImplicitDecoder.from_pretrained(outcome.model_dir)
    latents = torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        again = loaded.render(latents, (23, 23))
    assert again.shape == (1, 1, 23, 23) and torch.isfinite(again).all()
    assert shrink(torch.rand(1, 1, 16, 16), 2.5, 2).shape[-1] == 6  # 16 / 2.5 = 6.4 -> a multiple of 2


def test_a_resumed_decoder_training_ends_where_an_uninterrupted_one_does(tmp_path):
    metadata, store = tiny_images(tmp_path)
    torch.manual_seed(0)
    TINY_VAE.build().save_pretrained(str(tmp_path / "vae"))
    config = TrainConfig(
        steps=12,
        batch_size=4,
        learning_rate=3e-3,
        warmup_steps=2,
        checkpoint_every=4,
        eval_every=12,
        log_every=4,
        device="cpu",
    )
    whole = train_implicit_decoder(
        metadata, store, tmp_path / "vae", config, tmp_path / "a", "tiny", query_points=32, hidden=(16,)
    )
    train_implicit_decoder(
        metadata, store, tmp_path / "vae", config, tmp_path / "b", "tiny", query_points=32, hidden=(16,), stop_after=8
    )
    resumed = train_implicit_decoder(
        metadata, store, tmp_path / "vae", config, tmp_path / "b", "tiny", query_points=32, hidden=(16,)
    )
    assert resumed.resumed_from == 8
    first, second = (ImplicitDecoder.from_pretrained(o.model_dir).head.state_dict() for o in (whole, resumed))
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)
