"""The training loop: loss falls, a hard kill resumes bit for bit, device and precision choices."""

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from cxr_pipeline.data.image_store import ImageStore, to_stored
from cxr_pipeline.models.batches import EpochSampler, StoreImages
from cxr_pipeline.models.training import TrainConfig, pick_device
from cxr_pipeline.models.vae import VaeConfig, load_vae, train_vae

REPO = Path(__file__).resolve().parents[2]


def tiny_setup(root: Path):
    """24 train and 8 val smooth 32 px images, a two-block VAE, 12 steps with checkpoints every 2."""
    store = ImageStore(root / "images")
    if not store.shard_names():
        rng = np.random.default_rng(0)
        y, x = np.mgrid[0:32, 0:32] / 32
        images = np.stack(
            [np.clip(0.5 + 0.3 * np.sin(5 * x + p) * np.cos(3 * y + 2 * p), 0, 1) for p in rng.uniform(0, 6, 32)]
        ).astype(np.float32)
        shard = store.write_shard(to_stored(images))
        pd.DataFrame(
            {
                "image_id": [f"i{k}" for k in range(32)],
                "shard": shard,
                "shard_index": range(32),
                "split": ["train"] * 24 + ["val"] * 8,
            }
        ).to_parquet(root / "metadata.parquet")
    metadata = pd.read_parquet(root / "metadata.parquet")
    vae_config = VaeConfig(block_out_channels=(8, 16), latent_channels=2, norm_num_groups=8)
    train_config = TrainConfig(
        steps=12,
        batch_size=4,
        learning_rate=3e-3,
        warmup_steps=2,
        checkpoint_every=2,
        eval_every=6,
        log_every=2,
        device="cpu",
    )
    return metadata, store, vae_config, train_config


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "diffusion_pytorch_model.safetensors")


def test_vae_loss_falls_and_the_model_folder_reloads(tmp_path):
    metadata, store, vae_config, train_config = tiny_setup(tmp_path)
    events = []
    outcome = train_vae(metadata, store, tmp_path / "runs", vae_config, train_config, "tiny", progress=events.append)
    losses = [e.metrics["loss"] for e in events if e.kind == "step"]
    assert losses[-1] < losses[0] * 0.7, losses
    assert {"val_mse", "val_psnr", "val_ssim"} <= outcome.metrics.keys()
    assert (outcome.model_dir / "config.json").exists() and (outcome.model_dir / "training.json").exists()
    reloaded = load_vae(outcome.model_dir)
    assert reloaded.config.latent_channels == 2 and reloaded.config.in_channels == 1


def test_hard_kill_then_restart_resumes_at_the_checkpoint_with_identical_weights(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    metadata, store, vae_config, train_config = tiny_setup(data)
    # bit-identical weights need the same thread count in both processes (CPU kernels round
    # differently at different counts), whatever the environment passes to a subprocess
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.helpers.train_until_killed",
            str(data),
            str(tmp_path / "crashed"),
            "6",
            str(torch.get_num_threads()),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not list((tmp_path / "crashed").rglob("model/config.json"))  # it died before finishing

    resumed = train_vae(metadata, store, tmp_path / "crashed", vae_config, train_config, "tiny")
    assert resumed.resumed_from == 6 and resumed.final_step == 12
    uninterrupted = train_vae(metadata, store, tmp_path / "clean", vae_config, train_config, "tiny")
    assert uninterrupted.resumed_from is None
    a, b = weights(resumed.model_dir), weights(uninterrupted.model_dir)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    assert resumed.metrics == uninterrupted.metrics


def test_restarting_a_finished_run_does_not_train_again(tmp_path):
    metadata, store, vae_config, train_config = tiny_setup(tmp_path)
    first = train_vae(metadata, store, tmp_path / "runs", vae_config, train_config, "tiny")
    events = []
    second = train_vae(metadata, store, tmp_path / "runs", vae_config, train_config, "tiny", progress=events.append)
    assert second.resumed_from == 12 and not [e for e in events if e.kind == "step"]
    assert second.metrics == first.metrics


def test_epoch_sampler_covers_each_epoch_once_and_depends_only_on_the_step():
    sampler = EpochSampler(10, 3, seed=5)
    epoch = np.concatenate([sampler.indices(s) for s in range(sampler.steps_per_epoch)])
    assert len(set(epoch.tolist())) == len(epoch) == 9
    np.testing.assert_array_equal(EpochSampler(10, 3, seed=5).indices(7), sampler.indices(7))


def test_store_images_stack_in_row_order(tmp_path):
    metadata, store, _, _ = tiny_setup(tmp_path)
    val = StoreImages(store, metadata[metadata["split"] == "val"])
    stacked = val.stack()
    assert stacked.shape == (8, 1, 32, 32)
    torch.testing.assert_close(stacked[5:6], val.batch([5]))
    assert StoreImages(store, metadata.iloc[:0]).stack().shape[0] == 0


def test_device_choice():
    assert pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type in (expected, "mps")


def test_mixed_precision_choice_per_device():
    from dataclasses import replace

    from cxr_pipeline.models.training import autocast_dtype, cpu_has_native_bf16

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    config = TrainConfig()
    assert autocast_dtype(config, cpu) is None  # fp32 on CPU unless a recipe opts in
    opted_in = replace(config, cpu_bf16=True)
    assert autocast_dtype(opted_in, cpu) == (torch.bfloat16 if cpu_has_native_bf16() else None)
    assert autocast_dtype(replace(opted_in, mixed_precision="no"), cpu) is None
    assert autocast_dtype(replace(config, mixed_precision="bf16"), cpu) == torch.bfloat16
    assert autocast_dtype(replace(config, mixed_precision="fp16"), cuda) == torch.float16
    assert autocast_dtype(config, torch.device("mps")) is None
    with pytest.raises(ValueError, match="mixed precision"):
        autocast_dtype(replace(config, mixed_precision="fp32"), cpu)


def test_sampling_precision_follows_the_kind_and_the_machine():
    from cxr_pipeline.models.pipelines import CxrPipeline
    from cxr_pipeline.models.training import cpu_has_native_bf16

    kinds = [CxrPipeline, *CxrPipeline.__subclasses__()]
    assert len(kinds) == 6 and not CxrPipeline.cpu_bf16  # a new kind samples in fp32 until val says otherwise
    for kind in kinds:
        assert kind.resolved_precision("no", "cpu") == "fp32"
        assert kind.resolved_precision("bf16", "cpu") == "bf16"
        native = kind.cpu_bf16 and cpu_has_native_bf16()
        assert kind.resolved_precision("auto", "cpu") == ("bf16" if native else "fp32"), kind


def test_bf16_autocast_on_cpu_trains_fp32_weights_that_reconstruct(tmp_path):
    from dataclasses import replace

    metadata, store, vae_config, train_config = tiny_setup(tmp_path)
    events = []
    outcome = train_vae(
        metadata,
        store,
        tmp_path / "runs",
        vae_config,
        replace(train_config, mixed_precision="bf16"),
        "tiny",
        progress=events.append,
    )
    losses = [e.metrics["loss"] for e in events if e.kind == "step"]
    assert losses[-1] < losses[0] * 0.7, losses
    assert all(t.dtype == torch.float32 for t in weights(outcome.model_dir).values())
    assert outcome.metrics["val_psnr"] > 15


def test_divergence_is_a_clear_error(tmp_path):
    metadata, store, vae_config, train_config = tiny_setup(tmp_path)
    from dataclasses import replace

    with pytest.raises(FloatingPointError, match="learning rate"):
        train_vae(metadata, store, tmp_path / "runs", vae_config, replace(train_config, learning_rate=1e12), "tiny")


def test_two_ranks_under_torchrun_end_where_one_process_does(tmp_path):
    """DDP over two Gloo ranks on half batches = one process on the whole batch; only rank 0
    reports and checkpoints, and both ranks hold the same weights."""
    from tests.helpers.ddp_train import train_regression

    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(REPO / "tests" / "helpers" / "ddp_train.py"),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rank0 = torch.load(tmp_path / "weights_rank0_of_2.pt")
    rank1 = torch.load(tmp_path / "weights_rank1_of_2.pt")
    single = train_regression(tmp_path / "single")
    for name, value in single.items():
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0)
        torch.testing.assert_close(rank0[name], value, rtol=0, atol=1e-6)
        assert not torch.equal(value, torch.zeros_like(value))
    reported, losses = (tmp_path / "events.txt").read_text().splitlines()
    assert reported.split() == ["checkpoint", "eval", "step"]
    single_losses = (tmp_path / "single" / "events.txt").read_text().splitlines()[1]
    assert [float(v) for v in losses.split()] == pytest.approx([float(v) for v in single_losses.split()], abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-0000004", "step-0000008"]


def test_a_batch_that_does_not_split_evenly_is_a_clear_error():
    from cxr_pipeline.models.distributed import ProcessGroup, shard

    batch = {"target": torch.arange(12).reshape(6, 2), "labels": torch.arange(6)}
    second = shard(batch, ProcessGroup(rank=1, world_size=3))
    assert second["labels"].tolist() == [2, 3] and second["target"].tolist() == [[4, 5], [6, 7]]
    assert shard(batch, ProcessGroup()) is batch
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        shard(batch, ProcessGroup(rank=0, world_size=4))


def test_cpu_bf16_training_computes_attention_explicitly_with_the_same_values(tmp_path):
    from dataclasses import replace

    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    from cxr_pipeline.models.diffusion import UNetConfig
    from cxr_pipeline.models.training import Trainer, explicit_attention

    def text_unet():
        torch.manual_seed(0)
        return UNetConfig(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(8, 16),
            norm_num_groups=8,
            cross_attention_dim=12,
            attention_head_dim=4,
            cross_attention_levels=1,
        ).build()

    def processors(model):
        return {type(m.processor) for m in model.modules() if isinstance(m, Attention)}

    x, t = torch.randn(3, 4, 8, 8), torch.tensor([1, 500, 999])
    hidden, mask = torch.randn(3, 5, 12), torch.tensor([[1, 1, 1, 0, 0], [1] * 5, [1, 0, 0, 0, 0]])
    fused, explicit = text_unet(), text_unet()
    assert processors(fused) == {AttnProcessor2_0}
    assert explicit_attention(explicit) == len([m for m in explicit.modules() if isinstance(m, Attention)]) > 0
    with torch.no_grad():
        outputs = [
            m(x, t, encoder_hidden_states=hidden, encoder_attention_mask=mask, class_labels=hidden.mean(1)).sample
            for m in (fused, explicit)
        ]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)  # masked padding included

    config = TrainConfig(steps=1, batch_size=3, device="cpu")
    trainer = Trainer(
        text_unet(), lambda *a: None, lambda step: None, replace(config, mixed_precision="bf16"), tmp_path / "bf16"
    )
    assert processors(trainer.model) == {AttnProcessor}
    assert processors(trainer.ema_model()) == {AttnProcessor}
    trainer = Trainer(
        text_unet(), lambda *a: None, lambda step: None, replace(config, mixed_precision="no"), tmp_path / "fp32"
    )
    assert processors(trainer.model) == {AttnProcessor2_0}
