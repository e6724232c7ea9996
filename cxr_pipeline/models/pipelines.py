"""One object per trained diffusion model, in the diffusers habit: ``from_pretrained`` loads the
UNet, its schedule, its conditioning and (latent models) its own VAE once; calling the object
samples; ``save_pretrained`` writes the self-contained folder a registered version is.

Evaluation, previews, notebooks and the app load a pipeline once and call it many times (seeds,
strengths, dose levels) instead of reading the folder on every call.

    sr = LatentSuperResolution.from_pretrained("cxr-latent-sr-x4")      # the champion, a folder or a URI
    high = sr(low_resolution, num_inference_steps=50, generator=torch.Generator().manual_seed(0))

The sampling arguments have diffusers' names (``num_inference_steps``, ``guidance_scale``,
``generator``); ``steps``, ``guidance`` and ``seed`` still work and warn. ``generator`` may also
be an int: each batch of ``batch_size`` is then seeded ``generator + its first index``, so a figure
does not depend on how many images were sampled before it. A call returns the images as one
(N, 1, H, W) tensor in [0, 1], which every metric of the project reads; ``return_dict=True`` wraps
it in diffusers' ``ImagePipelineOutput`` (``.images``).
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch
from diffusers import AutoencoderKL

from ..data.degrade import bicubic_to, resize, upsample_bicubic
from ..data.labels.report_text import prompt_from_report
from ..model_source import resolve_model
from .diffusion import TextCondition, UNetConfig, sample, set_progress_bars
from .implicit import ImplicitDecoder, LiifHead, downsampling_factor
from .model_folder import DiffusionModel, load_model, save_model
from .model_settings import ArbitrarySRSettings, ClassDDPMSettings, DenoiserSettings, LatentSRSettings, TextLDMSettings
from .report_encoder import ReportEncoder
from .training import explicit_attention, pick_device, precision_dtype
from .vae import encode_mean, from_model, to_model

logger = logging.getLogger(__name__)
P = TypeVar("P", bound="CxrPipeline")

# The sampling arguments' earlier names, still accepted with a FutureWarning, and diffusers' names.
RENAMED_ARGUMENTS = {"steps": "num_inference_steps", "seed": "generator", "guidance": "guidance_scale"}
Generator = torch.Generator | int | None
NO_GUIDANCE: Any = object()  # a pipeline without classifier-free guidance


def renamed_arguments(
    legacy: dict[str, Any], num_inference_steps: int, generator: Generator, guidance_scale: Any = NO_GUIDANCE
) -> tuple[int, Generator, Any]:
    """The sampling arguments under diffusers' names, with any earlier names in ``legacy`` taken
    over (a FutureWarning each); an unknown keyword, or ``guidance`` where the pipeline takes
    none, is a TypeError, as Python would raise."""
    given = {"num_inference_steps": num_inference_steps, "generator": generator, "guidance_scale": guidance_scale}
    for old, value in legacy.items():
        new = RENAMED_ARGUMENTS.get(old)
        if new is None or given[new] is NO_GUIDANCE:
            raise TypeError(f"unexpected keyword argument {old!r}")
        warnings.warn(
            f"{old}= is deprecated and will be removed; use {new}= (diffusers' name)", FutureWarning, stacklevel=4
        )
        given[new] = value
    return given["num_inference_steps"], given["generator"], given["guidance_scale"]


def batch_generator(generator: Generator, start: int) -> torch.Generator:
    """The random source of the batch starting at image ``start``: the caller's generator as is,
    or for an int (default 0) a generator seeded ``generator + start``."""
    if isinstance(generator, torch.Generator):
        return generator
    return torch.Generator().manual_seed(int(generator or 0) + start)


def pipeline_output(images: torch.Tensor, return_dict: bool):
    if not return_dict:
        return images
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

    return ImagePipelineOutput(images=images)


def precision_name(autocast: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(autocast, "fp32") if autocast is not None else "fp32"


@torch.no_grad()
def to_images(out: torch.Tensor, vae: torch.nn.Module | None, factor: float) -> torch.Tensor:
    """Model output -> images in [0, 1] on the CPU: decoded by the VAE for latent models."""
    if vae is not None:
        out = cast(AutoencoderKL, vae).decode(out.to(next(vae.parameters()).device) / factor).sample
    return from_model(out.float().cpu())


class CxrPipeline:
    """A loaded model folder; subclasses are the model kinds and know how to call it.

    ``precision`` is the UNet's autocast type while sampling, in the Trainer's words: "auto" is
    bf16 on CUDA, and on CPUs with native bf16 only for the kinds whose val figures held in bf16
    (``cpu_bf16``, docs/recipes.md#sampling-precision-per-kind-cpu_bf16); "no" is fp32. The VAE and the sampling chain stay
    fp32."""

    kind = ""  # the model.json "kind" this pipeline loads (per-scale kinds without their "_x<scale>")
    cpu_bf16 = False  # "auto" samples in bf16 on CPUs with native bf16

    def __init__(self, model: DiffusionModel, folder: Path | None = None, *, precision: str = "auto"):
        held = model.saved.kind
        if re.sub(r"_x\d+$", "", held) != self.kind:
            raise ValueError(f"{folder or 'this model'} holds a {held!r} model, not a {self.kind!r} one")
        self.model, self.folder = model, folder
        self.autocast = precision_dtype(precision, self.device, cpu_bf16=self.cpu_bf16)
        if self.device.type == "cpu" and self.autocast == torch.bfloat16:
            explicit_attention(model.unet)

    @classmethod
    def from_pretrained(
        cls: type[P], model: str | Path, device: str | torch.device = "auto", *, precision: str = "auto"
    ) -> P:
        """A model folder, a registered model name (its ``champion`` version), or a URI:
        ``models:/name/3``, ``models:/name@challenger``, ``runs:/<run id>/model``."""
        folder = resolve_model(model)
        pipeline = cls(load_model(folder, pick_device(device)), folder, precision=precision)
        logger.info(
            "loaded %s from %s on %s, sampling in %s", cls.__name__, folder, pipeline.device, pipeline.precision
        )
        return pipeline

    @property
    def precision(self) -> str:
        """What sampling runs in, for the record: "bf16", "fp16" or "fp32"."""
        return precision_name(self.autocast)

    @classmethod
    def resolved_precision(cls, precision: str, device: str | torch.device = "auto") -> str:
        """What ``precision`` means for this kind on ``device``, before loading a model."""
        return precision_name(precision_dtype(precision, pick_device(device), cpu_bf16=cls.cpu_bf16))

    def save_pretrained(self, folder: Path) -> None:
        save_model(folder, self.model.unet, self.model.saved, self.model.vae)

    def set_progress_bar_config(self, disable: bool | None = None) -> None:
        """diffusers' switch for the sampling progress bar (``disable=True`` hides it; None lets
        the environment decide). It applies to every pipeline of this process."""
        set_progress_bars(None if disable is None else not disable)

    @property
    def unet_config(self) -> UNetConfig:
        return self.model.saved.unet

    @property
    def device(self) -> torch.device:
        return next(self.model.unet.parameters()).device

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not sample")


class LatentSuperResolution(CxrPipeline):
    kind = "latent_sr"
    cpu_bf16 = True  # the same on val in bf16, faster

    def __init__(self, model: DiffusionModel, folder: Path | None = None, *, precision: str = "auto"):
        super().__init__(model, folder, precision=precision)
        if model.vae is None:
            raise ValueError(f"{folder or 'this model'} has no vae/: a latent model folder carries its autoencoder")
        self.settings = model.saved.settings_as(LatentSRSettings)
        self.scale = self.settings.scale

    @torch.no_grad()
    def __call__(
        self,
        low_resolution: torch.Tensor,
        *,
        sampler: str = "ddim",
        num_inference_steps: int = 50,
        generator: Generator = None,
        strength: float = 1.0,
        batch_size: int = 64,
        return_dict: bool = False,
        **renamed: Any,
    ) -> Any:
        """LR images (N, 1, h, w) in [0, 1] -> SR images (N, 1, h*scale, w*scale) in [0, 1].
        ``strength`` 1 samples from pure noise; lower values start from the LR latent noised to
        that share of T (SDEdit): fewer steps, and the output cannot drift far from the input."""
        num_inference_steps, generator, _ = renamed_arguments(renamed, num_inference_steps, generator)
        model, factor = self.model, self.model.scaling_factor
        outputs = []
        for start in range(0, len(low_resolution), batch_size):
            chunk = low_resolution[start : start + batch_size]
            up = torch.from_numpy(np.stack([upsample_bicubic(x[0].numpy(), self.scale) for x in chunk])).unsqueeze(1)
            condition = encode_mean(model.vae, up) * factor
            latents = sample(
                model.unet,
                model.schedule,
                tuple(condition.shape),
                condition=condition,
                sampler=sampler,
                steps=num_inference_steps,
                start=condition,
                strength=strength,
                residual_scale=model.conditioning.residual_scale,
                generator=batch_generator(generator, start),
                autocast=self.autocast,
            )
            outputs.append(to_images(latents, model.vae, factor))
        return pipeline_output(torch.cat(outputs), return_dict)


def canvas_side(side: int, factor: int) -> int:
    """The smallest multiple of ``factor`` (what the encoder and the UNet divide by) that holds ``side`` pixels."""
    return -(-side // factor) * factor


def bicubic_canvas(low_resolution: torch.Tensor, size: tuple[int, ...], factor: int) -> torch.Tensor:
    """LR images (N, 1, h, w) bicubic-resampled over the same field of view to ``size``, rounded up
    to a multiple of ``factor``: the arbitrary-scale model's condition, in training and in use alike."""
    canvas = (canvas_side(size[0], factor), canvas_side(size[1], factor))
    return torch.from_numpy(np.stack([bicubic_to(x[0].numpy(), canvas) for x in low_resolution])).unsqueeze(1)


def mirror_to_canvas(image: np.ndarray, factor: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """``image`` (h, w) mirrored outwards, as evenly as the sides allow, to the next multiple of
    ``factor``, and the window of the canvas that is the image. The one padding of the
    arbitrary-scale model, for its conditions and its targets alike, in training and in use."""
    size = image.shape
    canvas = (canvas_side(size[0], factor), canvas_side(size[1], factor))
    top, left = (canvas[0] - size[0]) // 2, (canvas[1] - size[1]) // 2
    pads = ((top, canvas[0] - size[0] - top), (left, canvas[1] - size[1] - left))
    mode = "reflect" if max(max(p) for p in pads) < min(size) else "edge"
    window = (slice(top, top + size[0]), slice(left, left + size[1]))
    return np.pad(image, pads, mode=mode), window  # type: ignore[call-overload]


def padded_canvas(
    low_resolution: torch.Tensor, size: tuple[int, int], factor: int
) -> tuple[torch.Tensor, tuple[slice, slice]]:
    """LR images (N, 1, h, w) bicubic-resampled to exactly ``size`` (the output grid), then
    mirrored out to the latent grid (:func:`mirror_to_canvas`); and the window of the canvas that
    is the output. Unlike :func:`bicubic_canvas` the content keeps the output's pixel scale."""
    images, window = [], (slice(0), slice(0))
    for x in low_resolution:
        canvas, window = mirror_to_canvas(bicubic_to(x[0].numpy(), size), factor)
        images.append(canvas)
    return torch.from_numpy(np.stack(images)).unsqueeze(1), window


def scale_label(ratio: float) -> float:
    """The arbitrary-scale model's continuous condition, the output-to-input size ratio, in the
    units of the timestep embedding it goes through (x1 -> 100, x4 -> 400)."""
    return 100.0 * float(ratio)


class ArbitraryScaleSuperResolution(CxrPipeline):
    """Super-resolution at any scale or output size with one model. The LR image is resampled
    (bicubic) to a canvas on the latent grid (a multiple of the VAE's factor times the UNet's)
    and encoded; the diffusion model, trained on continuous scales and told the scale, restores
    that latent (the correction to the bicubic latent, as the fixed-scale model does), and the VAE
    decodes it. How the canvas meets an output size off the latent grid is ``rendering``:

    - ``"pad"`` (the default): the LR image is resampled to exactly the output size and mirrored
      out to the canvas; the decoded canvas is cropped back. The model works at the output's
      own pixel scale, the scale it is told.
    - ``"resize"``: the LR image is resampled over the whole canvas (the field of view stretched
      by up to a grid step) and the decode is brought to the output size by an antialiased
      (Lanczos) resize.
    - ``"implicit"``: the same stretched canvas, rendered at the output size by the implicit
      decoder (:mod:`.implicit`).

    Which is best depends on the data: on CT slices ``pad`` won at every scale off the grid (the
    stretch of the other two puts sharp anatomy up to 7% off where training had it; ``resize``
    fell below bicubic at x6), on the smooth radiograph phantom ``resize`` won near the grid.
    So the training chooses on val, per probe scale (``choose_renderings``; recorded in
    ``model.json``), and a request takes the choice of the nearest probe scale; setting
    ``rendering`` overrides it. On the grid the three are the same (docs/recipes.md).

    The scale work happens in latent space, not in the decoder: an implicit decoder asked to
    upsample a latent scored below bicubic from the same input on this data
    (docs/recipes.md#arbitrary-scale-super-resolution-arbitrary_sr), so it renders only the last fraction of a grid step."""

    kind = "arbitrary_sr"
    cpu_bf16 = True

    def __init__(self, model: DiffusionModel, folder: Path | None = None, *, precision: str = "auto"):
        super().__init__(model, folder, precision=precision)
        if folder is None:
            raise ValueError("an arbitrary-scale model loads from its folder (its decoder head is saved beside it)")
        self.settings = model.saved.settings_as(ArbitrarySRSettings)
        head = LiifHead.from_pretrained(str(Path(folder) / "head"), low_cpu_mem_usage=False)
        self.decoder = ImplicitDecoder(model.vae, head).to(self.device).eval()
        # canvases are whole multiples of what the VAE and then the UNet's down blocks divide by
        self.factor = downsampling_factor(model.vae) * 2 ** (len(model.unet.config.block_out_channels) - 1)
        # told the scale (a timestep-style embedding) when trained so; beyond the training range the
        # true scale too (chosen on val: docs/recipes.md#arbitrary-scale-super-resolution-arbitrary_sr);
        # False tells it the nearest end instead
        self.scale_conditioned = model.unet.config.class_embed_type == "timestep"
        self.extrapolate = True
        # off the latent grid: "pad" (mirror out, crop back), "resize" or "implicit"; None: the one
        # chosen on val for the nearest probe scale when the model was trained (rendering_for)
        self.rendering: str | None = None

    @property
    def scale_range(self) -> tuple[float, float]:
        return self.settings.scale_range

    def rendering_for(self, ratio: float) -> str:
        """The rendering at an output/input size ratio: the one set on the pipeline, else the one
        chosen on val at the nearest probe scale (in log scale), else ``pad``."""
        if self.rendering is not None:
            return self.rendering
        scales, renderings = self.settings.rendering_scales, self.settings.renderings
        if not scales:
            return "pad"
        nearest = min(range(len(scales)), key=lambda i: abs(math.log(ratio / scales[i])))
        return renderings[nearest]

    def save_pretrained(self, folder: Path) -> None:
        super().save_pretrained(folder)
        self.decoder.head.save_pretrained(str(Path(folder) / "head"))

    @staticmethod
    def output_size(low_size: tuple[int, int], scale: float | None, size: tuple[int, ...] | None) -> tuple[int, int]:
        if (scale is None) == (size is None):
            raise ValueError("give either scale or size")
        if size is not None:
            height, width = (int(v) for v in size)
        else:
            assert scale is not None  # one of the two, checked above
            if scale <= 0:
                raise ValueError(f"scale must be positive, got {scale}")
            height, width = (max(1, int(round(side * scale))) for side in low_size)
        if height < 1 or width < 1:
            raise ValueError(f"output size must be positive, got {(height, width)}")
        return height, width

    @torch.no_grad()
    def __call__(
        self,
        low_resolution: torch.Tensor,
        *,
        scale: float | None = None,
        size: tuple[int, ...] | None = None,
        sampler: str = "ddim",
        num_inference_steps: int = 50,
        generator: Generator = None,
        strength: float = 1.0,
        batch_size: int = 64,
        return_dict: bool = False,
        **renamed: Any,
    ) -> Any:
        """LR images (N, 1, h, w) in [0, 1] -> SR images (N, 1, H, W) in [0, 1], with (H, W) the
        LR size times ``scale`` (rounded) or ``size``. ``strength`` as in :class:`LatentSuperResolution`."""
        num_inference_steps, generator, _ = renamed_arguments(renamed, num_inference_steps, generator)
        model = self.model
        target = self.output_size((int(low_resolution.shape[-2]), int(low_resolution.shape[-1])), scale, size)

        def restore(condition: torch.Tensor, start: int, ratio: float) -> torch.Tensor:
            if not self.extrapolate:
                ratio = min(max(ratio, self.scale_range[0]), self.scale_range[1])
            labels = torch.full((len(condition),), scale_label(ratio)) if self.scale_conditioned else None
            return sample(
                model.unet,
                model.schedule,
                tuple(condition.shape),
                condition=condition,
                labels=labels,
                sampler=sampler,
                steps=num_inference_steps,
                start=condition,
                strength=strength,
                residual_scale=model.conditioning.residual_scale,
                generator=batch_generator(generator, start),
                autocast=self.autocast,
            )

        return pipeline_output(self._through_latents(low_resolution, target, batch_size, restore), return_dict)

    @torch.no_grad()
    def without_diffusion(
        self,
        low_resolution: torch.Tensor,
        *,
        scale: float | None = None,
        size: tuple[int, ...] | None = None,
        batch_size: int = 64,
        return_dict: bool = False,
        **renamed: Any,
    ) -> Any:
        """The same path with a zero correction (bicubic canvas -> VAE -> rendering): the baseline
        that keeps the diffusion model from being credited with the decoder's work."""
        target = self.output_size((int(low_resolution.shape[-2]), int(low_resolution.shape[-1])), scale, size)
        return self._through_latents(low_resolution, target, batch_size, lambda condition, start, ratio: condition)

    def _through_latents(
        self,
        low_resolution: torch.Tensor,
        target: tuple[int, int],
        batch_size: int,
        restore: Callable[[torch.Tensor, int, float], torch.Tensor],
    ) -> torch.Tensor:
        """Canvas -> latent -> ``restore(scaled latent, first row, ratio)`` -> rendering at
        ``target``, the ratio being the canvas content's size over the LR image's (what the
        model is told: the output's ratio when padded, the stretched one otherwise)."""
        model, factor = self.model, self.model.scaling_factor
        low_size = (int(low_resolution.shape[-2]), int(low_resolution.shape[-1]))
        outputs = []
        rendering = self.rendering_for((target[0] / low_size[0] + target[1] / low_size[1]) / 2)
        for start in range(0, len(low_resolution), batch_size):
            batch = low_resolution[start : start + batch_size]
            if rendering == "pad":
                canvas, window = padded_canvas(batch, target, self.factor)
                ratio = (target[0] / low_size[0] + target[1] / low_size[1]) / 2
                latents = restore(encode_mean(model.vae, canvas) * factor, start, ratio)
                outputs.append(to_images(latents, model.vae, factor)[..., window[0], window[1]])
                continue
            canvas = bicubic_canvas(batch, target, self.factor)
            ratio = (canvas.shape[-2] / low_size[0] + canvas.shape[-1] / low_size[1]) / 2
            latents = restore(encode_mean(model.vae, canvas) * factor, start, ratio)
            if tuple(canvas.shape[-2:]) == target:
                outputs.append(to_images(latents, model.vae, factor))
            elif rendering == "implicit":
                outputs.append(self.decoder.images(latents.to(self.device) / factor, target))
            elif rendering == "resize":
                decoded = to_images(latents, model.vae, factor)
                outputs.append(torch.from_numpy(np.stack([resize(x[0].numpy(), target) for x in decoded])).unsqueeze(1))
            else:
                raise ValueError(f"rendering must be 'pad', 'resize' or 'implicit', got {rendering!r}")
        return torch.cat(outputs)


class ClassConditionalGenerator(CxrPipeline):
    kind = "class_ddpm"
    cpu_bf16 = True

    def __init__(self, model: DiffusionModel, folder: Path | None = None, *, precision: str = "auto"):
        super().__init__(model, folder, precision=precision)
        self.settings = model.saved.settings_as(ClassDDPMSettings)

    @property
    def class_names(self) -> list[str]:
        return list(self.settings.classes)

    @torch.no_grad()
    def __call__(
        self,
        class_ids: Sequence[int],
        *,
        guidance_scale: float | None = None,
        sampler: str = "ddim",
        num_inference_steps: int = 50,
        generator: Generator = None,
        batch_size: int = 64,
        return_dict: bool = False,
        **renamed: Any,
    ) -> Any:
        """Images (N, 1, S, S) in [0, 1] for the given classes, with classifier-free guidance
        (``guidance_scale`` None: the scale the model was saved with)."""
        num_inference_steps, generator, guidance_scale = renamed_arguments(
            renamed, num_inference_steps, generator, guidance_scale
        )
        model = self.model
        scale = self.settings.guidance_scale if guidance_scale is None else guidance_scale
        size, channels = model.unet.config.sample_size, model.unet.config.out_channels
        labels = torch.as_tensor(list(class_ids), dtype=torch.long)
        outputs = []
        for start in range(0, len(labels), batch_size):
            chunk = labels[start : start + batch_size]
            out = sample(
                model.unet,
                model.schedule,
                (len(chunk), channels, size, size),
                labels=chunk,
                null_label=model.null_label,
                guidance=scale,
                sampler=sampler,
                steps=num_inference_steps,
                generator=batch_generator(generator, start),
                autocast=self.autocast,
            )
            outputs.append(to_images(out, model.vae, model.scaling_factor))
        return pipeline_output(torch.cat(outputs), return_dict)


class TextConditionalGenerator(CxrPipeline):
    """Radiographs from radiology reports: the folder's own report encoder (``text_encoder/``),
    UNet, schedule and VAE."""

    kind = "text_ldm"
    cpu_bf16 = True

    def __init__(
        self,
        model: DiffusionModel,
        folder: Path | None = None,
        text_encoder: ReportEncoder | None = None,
        *,
        precision: str = "auto",
    ):
        super().__init__(model, folder, precision=precision)
        self.settings = model.saved.settings_as(TextLDMSettings)
        if text_encoder is None:
            if folder is None:
                raise ValueError("a text-conditional model needs its report encoder: pass text_encoder or a folder")
            text_encoder = ReportEncoder.from_pretrained(Path(folder) / "text_encoder", self.device)
        self.text_encoder = text_encoder

    def save_pretrained(self, folder: Path) -> None:
        super().save_pretrained(folder)
        self.text_encoder.save_pretrained(Path(folder) / "text_encoder")

    def encode(self, reports: Sequence[str]) -> tuple[TextCondition, TextCondition]:
        """(the reports, the empty report), padded to one length; a report with FINDINGS /
        IMPRESSION headers is read as the training prompts were made (``prompt_from_report``)."""
        both = self.text_encoder.encode([*(prompt_from_report(report) for report in reports), ""])
        return (TextCondition(both.hidden[:-1], both.mask[:-1]), TextCondition(both.hidden[-1:], both.mask[-1:]))

    @torch.no_grad()
    def __call__(
        self,
        reports: Sequence[str],
        *,
        guidance_scale: float | None = None,
        sampler: str = "ddim",
        num_inference_steps: int = 50,
        generator: Generator = None,
        batch_size: int = 64,
        return_dict: bool = False,
        **renamed: Any,
    ) -> Any:
        """Images (N, 1, S, S) in [0, 1], one per report, with classifier-free guidance against
        the empty report (``guidance_scale`` None: the scale the model was saved with; 0: unconditional)."""
        num_inference_steps, generator, guidance_scale = renamed_arguments(
            renamed, num_inference_steps, generator, guidance_scale
        )
        model = self.model
        scale = self.settings.guidance_scale if guidance_scale is None else guidance_scale
        size, channels = model.unet.config.sample_size, model.unet.config.out_channels
        reports = list(reports)
        outputs = []
        for start in range(0, len(reports), batch_size):
            text, null = self.encode(reports[start : start + batch_size])
            out = sample(
                model.unet,
                model.schedule,
                (len(text.hidden), channels, size, size),
                text=text,
                null_text=null,
                guidance=scale,
                sampler=sampler,
                steps=num_inference_steps,
                generator=batch_generator(generator, start),
                autocast=self.autocast,
            )
            outputs.append(to_images(out, model.vae, model.scaling_factor))
        return pipeline_output(torch.cat(outputs) if outputs else torch.zeros(0, 1, size, size), return_dict)


class LowDoseDenoiser(CxrPipeline):
    kind = "denoiser"
    cpu_bf16 = True

    def __init__(self, model: DiffusionModel, folder: Path | None = None, *, precision: str = "auto"):
        super().__init__(model, folder, precision=precision)
        self.settings = model.saved.settings_as(DenoiserSettings)

    @property
    def doses(self) -> list[float]:
        return list(self.settings.doses)

    @torch.no_grad()
    def __call__(
        self,
        noisy: torch.Tensor,
        *,
        dose: float | None = None,
        strength: float | None = None,
        sampler: str = "ddim",
        num_inference_steps: int = 50,
        generator: Generator = None,
        batch_size: int = 64,
        return_dict: bool = False,
        **renamed: Any,
    ) -> Any:
        """Low-dose images (N, 1, S, S) in [0, 1] -> restored images. ``strength`` 1 samples from
        pure noise; lower values start from the noisy input partially noised (faster, closer to
        the input). ``dose`` (photons) selects the dose embedding; unknown doses use the null one."""
        num_inference_steps, generator, _ = renamed_arguments(renamed, num_inference_steps, generator)
        model = self.model
        strength = self.settings.sampling_strength if strength is None else strength
        label = self.doses.index(dose) if dose in self.doses else model.null_label
        outputs = []
        for start in range(0, len(noisy), batch_size):
            condition = to_model(noisy[start : start + batch_size])
            labels = (
                torch.full((len(condition),), label) if self.settings.dose_conditioning and label is not None else None
            )
            out = sample(
                model.unet,
                model.schedule,
                tuple(condition.shape),
                condition=condition,
                labels=labels,
                null_label=model.null_label,
                sampler=sampler,
                steps=num_inference_steps,
                start=condition,
                strength=strength,
                residual_scale=model.conditioning.residual_scale,
                generator=batch_generator(generator, start),
                autocast=self.autocast,
            )
            outputs.append(from_model(out.float().cpu()))
        return pipeline_output(torch.cat(outputs), return_dict)
