"""Diffusion models from diffusers parts: ``UNet2DModel`` + ``DDPMScheduler`` / ``DDIMScheduler``.

One objective serves the three models: the UNet predicts the noise (``epsilon``), the velocity
(``v_prediction``, Salimans & Ho 2022) or the clean sample, with optional min-SNR-gamma loss
weighting (Hang et al. 2023), both recorded in the saved scheduler config so sampling reads the
output the way training wrote it. The models differ only in what conditions the UNet:
- latent super-resolution: the LR latent, concatenated channel-wise to the noisy HR latent;
- class-conditional generation: a class embedding, with a learned null class for
  classifier-free guidance (diffusers requires ``class_labels`` whenever ``num_class_embeds``
  is set, so "unconditional" is the extra class ``num_classes``);
- low-dose denoising: the noisy image, concatenated (SR3-style), optionally the dose level as a
  class embedding;
- text-conditional generation: a ``UNet2DConditionModel`` whose transformer blocks attend to a
  report encoder's token embeddings (with its attention mask), plus the masked mean of those
  embeddings added to the timestep embedding (Imagen's pooled text embedding, diffusers'
  ``class_embed_type="projection"``); the empty report is the null condition for guidance.
A trained model's folder (weights, schedule, typed settings) is :mod:`.model_folder`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel, UNet2DModel
from diffusers.training_utils import compute_snr
from tqdm.auto import tqdm

from .. import compute


@dataclass(frozen=True)
class UNetConfig:
    sample_size: int
    in_channels: int
    out_channels: int
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention: bool = False  # self-attention in the lowest-resolution block
    num_class_embeds: int | None = None
    norm_num_groups: int = 16
    # "timestep": a continuous condition (a float per image, e.g. the SR scale) embedded like the
    # timestep (sinusoids, then an MLP) and added to it; None: class ids or nothing
    class_embed_type: str | None = None
    # Text conditioning: the width of the report encoder's token embeddings. Set, the UNet is a
    # UNet2DConditionModel with cross-attention in the middle and in the blocks of the lowest
    # ``cross_attention_levels`` resolutions, and the pooled report embedding projected onto the
    # timestep embedding (levels: docs/recipes.md#text-conditional-model-text_ldm).
    cross_attention_dim: int | None = None
    attention_head_dim: int = 8
    cross_attention_levels: int = 1  # resolution levels, from the lowest up, whose blocks cross-attend

    def build(self) -> UNet2DModel | UNet2DConditionModel:
        blocks = len(self.block_out_channels)
        if self.cross_attention_dim:
            plain, attending = (
                blocks - min(blocks, self.cross_attention_levels),
                min(blocks, self.cross_attention_levels),
            )
            return UNet2DConditionModel(
                sample_size=self.sample_size,
                in_channels=self.in_channels,
                out_channels=self.out_channels,
                block_out_channels=tuple(self.block_out_channels),
                layers_per_block=self.layers_per_block,
                down_block_types=("DownBlock2D",) * plain + ("CrossAttnDownBlock2D",) * attending,
                up_block_types=("CrossAttnUpBlock2D",) * attending + ("UpBlock2D",) * plain,
                mid_block_type="UNetMidBlock2DCrossAttn",
                cross_attention_dim=self.cross_attention_dim,
                attention_head_dim=self.attention_head_dim,
                norm_num_groups=self.norm_num_groups,
                class_embed_type="projection",
                projection_class_embeddings_input_dim=self.cross_attention_dim,
            )
        down = ["DownBlock2D"] * blocks
        up = ["UpBlock2D"] * blocks
        if self.attention:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        return UNet2DModel(
            sample_size=self.sample_size,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            block_out_channels=tuple(self.block_out_channels),
            layers_per_block=self.layers_per_block,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            num_class_embeds=self.num_class_embeds,
            class_embed_type=self.class_embed_type,
            norm_num_groups=self.norm_num_groups,
        )


@dataclass(frozen=True)
class UNetProfile:
    """A UNet's width for one model kind at one profile; the sizes come from the data."""

    block_out_channels: tuple[int, ...]
    norm_num_groups: int
    attention: bool
    layers_per_block: int = 1
    cross_attention_levels: int = 1

    def config(
        self,
        sample_size: int,
        in_channels: int,
        out_channels: int,
        num_class_embeds: int | None = None,
        block_out_channels: tuple[int, ...] | None = None,
        cross_attention_dim: int | None = None,
    ) -> UNetConfig:
        return UNetConfig(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            block_out_channels=tuple(block_out_channels or self.block_out_channels),
            layers_per_block=self.layers_per_block,
            attention=self.attention,
            num_class_embeds=num_class_embeds,
            norm_num_groups=self.norm_num_groups,
            cross_attention_dim=cross_attention_dim,
            cross_attention_levels=self.cross_attention_levels,
        )


@dataclass(frozen=True)
class ScheduleConfig:
    timesteps: int = 1000
    beta_schedule: str = "linear"  # "linear" | "squaredcos_cap_v2" (cosine)
    prediction_type: str = "epsilon"  # "epsilon" | "v_prediction" | "sample"
    snr_gamma: float | None = None  # min-SNR-gamma loss weighting; None: plain MSE on the target

    def ddpm(self) -> DDPMScheduler:
        return DDPMScheduler(
            num_train_timesteps=self.timesteps,
            beta_schedule=self.beta_schedule,
            prediction_type=self.prediction_type,
            clip_sample=False,
        )


@dataclass(frozen=True)
class Conditioning:
    """What a model is conditioned on; stored in model.json."""

    concat_channels: int = 0  # channels of the conditioning image concatenated at the input
    num_classes: int = 0  # real classes; the null class for guidance is index num_classes
    class_dropout: float = 0.0  # share of training labels replaced by the null class
    # Residual restoration (SRDiff-style): > 0 diffuses (target - condition) x residual_scale, the
    # small correction the conditioning image needs, at unit variance; sampling adds it back. A
    # model that predicts a zero correction returns its input, so training starts from the input's
    # quality instead of from noise. 0: the model diffuses the target itself.
    residual_scale: float = 0.0
    text: bool = False  # conditioned on report token embeddings (batch "text", "text_mask")
    text_dropout: float = 0.0  # share of training reports replaced by the empty report (batch "null_text")


@dataclass(frozen=True)
class TextCondition:
    """Report token embeddings (N, L, H) and their attention mask (N, L), 1 on real tokens."""

    hidden: torch.Tensor
    mask: torch.Tensor

    def pooled(self) -> torch.Tensor:
        """The masked mean over tokens: one vector per report, added to the timestep embedding."""
        weights = self.mask.to(self.hidden.dtype).unsqueeze(-1)
        return (self.hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def to(self, device: torch.device | str) -> TextCondition:
        return TextCondition(self.hidden.to(device), self.mask.to(device))

    def repeat(self, count: int) -> TextCondition:
        """One report (1, L, H) for ``count`` images."""
        return TextCondition(self.hidden.expand(count, -1, -1), self.mask.expand(count, -1))

    def where(self, drop: torch.Tensor, other: TextCondition) -> TextCondition:
        """This condition, with the rows where ``drop`` is true taken from ``other``."""
        return TextCondition(
            torch.where(drop[:, None, None], other.hidden, self.hidden),
            torch.where(drop[:, None], other.mask, self.mask),
        )

    @staticmethod
    def cat(parts: list[TextCondition]) -> TextCondition:
        return TextCondition(torch.cat([p.hidden for p in parts]), torch.cat([p.mask for p in parts]))


def predict(
    model: UNet2DModel | UNet2DConditionModel,
    inputs: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor | None = None,
    text: TextCondition | None = None,
) -> torch.Tensor:
    """One forward pass, whichever the conditioning: class labels, or a report."""
    if text is None:
        return model(inputs, t, class_labels=labels).sample
    return model(
        inputs, t, encoder_hidden_states=text.hidden, encoder_attention_mask=text.mask, class_labels=text.pooled()
    ).sample


def loss_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, snr_gamma: float | None) -> torch.Tensor:
    """Per-sample weights of the MSE on the scheduler's target. min-SNR-gamma caps each step's
    weight at gamma / SNR in the x0 loss, so the many easy low-noise steps stop dominating;
    expressed for each target (epsilon, v, x0) so the three equal the same x0 weighting."""
    if snr_gamma is None:
        return torch.ones_like(timesteps, dtype=torch.float32)
    snr = compute_snr(scheduler, timesteps).float()
    capped = torch.clamp(snr, max=snr_gamma)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return capped / snr
    if kind == "v_prediction":
        return capped / (snr + 1.0)
    return capped


def diffusion_step(conditioning: Conditioning, schedule: ScheduleConfig):
    """Training step: batch = {"target", optional "condition", optional "labels", optional "text",
    "text_mask" and "null_text", "null_mask" (the empty report at the same length)}."""
    scheduler = schedule.ddpm()

    def step(model: UNet2DModel, batch: dict[str, torch.Tensor], generator: torch.Generator):
        clean = batch["target"]
        if conditioning.residual_scale:
            clean = (clean - batch["condition"]) * conditioning.residual_scale
        count = clean.shape[0]
        # sample noise and a timestep per image, and noise the clean target
        noise = torch.randn(clean.shape, generator=generator, device=clean.device)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (count,), generator=generator, device=clean.device
        )
        noisy = scheduler.add_noise(clean, noise, timesteps)
        inputs = torch.cat([noisy, batch["condition"]], dim=1) if conditioning.concat_channels else noisy
        # drop labels to the null class, so the same network learns the unconditional model
        labels = batch.get("labels")
        if labels is not None and conditioning.class_dropout > 0:
            drop = torch.rand(count, generator=generator, device=clean.device) < conditioning.class_dropout
            labels = torch.where(drop, torch.full_like(labels, conditioning.num_classes), labels)
        text = TextCondition(batch["text"], batch["text_mask"]) if conditioning.text else None
        if text is not None and conditioning.text_dropout > 0:
            drop = torch.rand(count, generator=generator, device=clean.device) < conditioning.text_dropout
            text = text.where(drop, TextCondition(batch["null_text"], batch["null_mask"]).repeat(count))
        # predict, and weight the squared error per image
        prediction = predict(model, inputs, timesteps, labels, text).float()
        if schedule.prediction_type == "epsilon":
            target = noise
        elif schedule.prediction_type == "v_prediction":
            target = scheduler.get_velocity(clean, noise, timesteps)
        else:
            target = clean
        per_image = ((prediction - target.float()) ** 2).mean(dim=tuple(range(1, prediction.ndim)))
        weights = loss_weights(scheduler, timesteps, schedule.snr_gamma).to(per_image.device)
        return (weights * per_image).mean(), {}

    return step


def guided_prediction(
    model: UNet2DModel,
    inputs: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor | None,
    null_label: int | None,
    guidance: float,
    text: TextCondition | None = None,
    null_text: TextCondition | None = None,
) -> torch.Tensor:
    """Classifier-free guidance: out_uncond + w (out_cond - out_uncond), on whatever the model
    predicts (epsilon, v and x0 are all linear in it). w = 1 is the plain conditional model and
    w = 0 the unconditional one, each with a single forward pass. With ``text``, the null
    condition is ``null_text`` (the empty report, padded to the same length)."""
    if text is not None:
        if null_text is None or guidance == 1.0:
            return predict(model, inputs, t, text=text)
        null_text = null_text.repeat(len(inputs))
        if guidance == 0.0:
            return predict(model, inputs, t, text=null_text)
        both = predict(model, torch.cat([inputs, inputs]), torch.cat([t, t]), text=TextCondition.cat([text, null_text]))
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance * (conditional - unconditional)
    if labels is None or null_label is None or guidance == 1.0:
        return model(inputs, t, class_labels=labels).sample
    null = torch.full_like(labels, null_label)
    if guidance == 0.0:
        return model(inputs, t, class_labels=null).sample
    both = model(torch.cat([inputs, inputs]), torch.cat([t, t]), class_labels=torch.cat([labels, null])).sample
    conditional, unconditional = both.chunk(2)
    return unconditional + guidance * (conditional - unconditional)


_sampling_progress: ContextVar[Callable[[int, int], None] | None] = ContextVar("sampling_progress", default=None)


@contextmanager
def sampling_progress(callback: Callable[[int, int], None] | None):
    """Within the block, every reverse-diffusion chain reports ``callback(steps done, steps)``
    after each step (a progress bar in the app) without threading a callback through every
    pipeline's signature."""
    token = _sampling_progress.set(callback)
    try:
        yield
    finally:
        _sampling_progress.reset(token)


# A progress bar over each reverse-diffusion chain (tqdm): on in a terminal and in a notebook,
# off where output goes to a file or a pipe (Dagster steps, CI). CXR_PROGRESS_BARS=0 / 1 forces
# it either way, as does set_progress_bars (or a pipeline's set_progress_bar_config).
PROGRESS_BARS_ENV = "CXR_PROGRESS_BARS"
_progress_bars: bool | None = None


def set_progress_bars(enabled: bool | None) -> None:
    """On, off, or (None) decided by the environment: for this process."""
    global _progress_bars
    _progress_bars = enabled


def progress_bars_enabled() -> bool:
    if _progress_bars is not None:
        return _progress_bars
    setting = os.environ.get(PROGRESS_BARS_ENV, "").strip().lower()
    if setting in ("0", "false", "off", "no"):
        return False
    if setting in ("1", "true", "on", "yes"):
        return True
    return "ipykernel" in sys.modules or bool(getattr(sys.stderr, "isatty", lambda: False)())


@torch.no_grad()
def sample(
    model: UNet2DModel,
    schedule: ScheduleConfig,
    shape: tuple[int, ...],
    *,
    condition: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    null_label: int | None = None,
    guidance: float = 1.0,
    sampler: str = "ddim",
    steps: int = 50,
    generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
    strength: float = 1.0,
    eta: float = 0.0,
    residual_scale: float = 0.0,
    text: TextCondition | None = None,
    null_text: TextCondition | None = None,
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """Reverse diffusion. ``sampler="ddpm"`` runs the full ancestral chain (``steps`` ignored);
    ``"ddim"`` runs ``steps`` deterministic (eta 0) steps. With ``start`` and ``strength < 1`` the
    chain begins from ``start`` noised to ``strength * T`` (SDEdit), which is far faster for
    restoration, where the input is already close to the answer. ``residual_scale`` (the model's
    :class:`Conditioning`) turns the chain's output, a scaled correction, back into the target.
    ``autocast`` (a pipeline's precision) runs the UNet's forward passes in that type; the chain
    itself (noise, scheduler steps, the residual) stays in fp32."""
    device = next(model.parameters()).device
    ddpm = schedule.ddpm()
    scheduler = ddpm if sampler == "ddpm" else DDIMScheduler.from_config(ddpm.config)
    scheduler.set_timesteps(schedule.timesteps if sampler == "ddpm" else steps, device=device)
    timesteps = scheduler.timesteps
    if condition is not None:
        condition = condition.to(device)
    if residual_scale and start is not None:
        if condition is None:
            raise ValueError("a residual model samples from its condition: pass condition with start")
        start = (start.to(device) - condition) * residual_scale
    noise = torch.randn(shape, generator=generator, device="cpu").to(device)
    if start is not None and strength < 1.0:
        keep = max(1, int(round(len(timesteps) * strength)))
        timesteps = timesteps[len(timesteps) - keep :]
        x = ddpm.add_noise(start.to(device), noise, timesteps[:1].repeat(shape[0]))
    else:
        x = noise
    if labels is not None:
        labels = labels.to(device)
    text = text.to(device) if text is not None else None
    null_text = null_text.to(device) if null_text is not None else None
    report = _sampling_progress.get()
    bar = tqdm(
        total=len(timesteps), desc=f"{sampler} sampling", unit="step", leave=False, disable=not progress_bars_enabled()
    )
    for done, t in enumerate(timesteps, start=1):
        compute.rebalance()
        inputs = torch.cat([x, condition], dim=1) if condition is not None else x
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            prediction = guided_prediction(
                model, inputs, t.repeat(shape[0]), labels, null_label, guidance, text, null_text
            )
        prediction = prediction.float()
        kwargs = {"generator": generator} if sampler == "ddpm" else {"eta": eta, "generator": generator}
        x = scheduler.step(prediction, t, x, **kwargs).prev_sample
        bar.update()
        if report is not None:
            report(done, len(timesteps))
    bar.close()
    return condition + x / residual_scale if residual_scale else x
