"""Restoration evaluation: each model next to the baselines it has to beat, on the same images.

Super-resolution (per scale): bicubic; bicubic through the VAE (what the latent path does without
diffusion, so the diffusion model is not credited with the decoder's work); the VAE reconstruction
ceiling (HR -> VAE -> HR, the best any latent model can do); the latent SR model with DDIM from
noise, with DDIM from the LR latent (SDEdit), and with the full ancestral chain.
Denoising (per dose): the low-dose input itself; non-local means with its strength tuned on val;
the diffusion denoiser. Every method gets per-image PSNR/SSIM/MAE, a patient-level bootstrap
interval, the paired PSNR gain over the baseline, and the hallucination guards (LR-consistency for
SR; the spread over seeds for the diffusion models).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..data.degrade import bicubic_to, resize, upsample_bicubic
from ..metrics.restoration import lr_consistency_psnr, per_image_scores, registration_shift, sample_spread
from ..metrics.statistics import Summary, summarize
from ..metrics.verdicts import Verdict, at_least
from ..models.pipelines import ArbitraryScaleSuperResolution, LatentSuperResolution
from ..models.vae import reconstruct
from ..reports.document import Figure, Section, Table
from ..reports.grid import image_grid
from ..reports.plots import heat_maps, tradeoff_plot

PREVIEW_ROWS = 6
RENDERING = {
    "pad": "crop of a mirrored canvas",
    "resize": "resize",
    "implicit": "implicit decoder",
}  # how the arbitrary-scale model meets an output size off its grid


@dataclass
class Method:
    key: str  # the metric-name suffix: psnr_<task>_<key>
    label: str  # what people read in the report
    images: torch.Tensor  # (N, 1, H, W) in [0, 1]
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # more per-image scores


@dataclass
class RestorationEvaluation:
    task: str  # "sr_x4", "denoise_i0_1000"
    title: str
    baseline: str  # key of the method the gain is measured against
    scores: pd.DataFrame  # one row per (method, image)
    summaries: dict[str, dict[str, Summary]]  # method -> score -> summary
    gains: dict[str, Summary]  # method -> paired PSNR gain over the baseline
    labels: dict[str, str]
    figures: list[Figure]
    notes: list[str]
    references: dict[str, float] = field(default_factory=dict)  # flat metrics that are not a method
    tables: list[Table] = field(default_factory=list)
    model: str = ""  # key of the model's default path
    classical: str = ""  # key of the classical method it has to beat (bicubic, NLM)
    # reference method -> paired PSNR gain of the model over it (same images, patient bootstrap)
    versus: dict[str, Summary] = field(default_factory=dict)
    # reference method -> how much closer the model's fine detail is to the truth's (see detail_advantage)
    detail_versus: dict[str, Summary] = field(default_factory=dict)

    def must_beat(self) -> tuple[tuple[str, str], ...]:
        """(model PSNR, classical PSNR) metric names: the promotion gate and the asset check."""
        return ((f"psnr_{self.task}_{self.model}", f"psnr_{self.task}_{self.classical}"),)

    def metrics(self) -> dict[str, float]:
        """Flat MLflow names: ``<score>_<task>_<method>`` with ``_std``, ``_ci_low``, ``_ci_high``."""
        flat = dict(self.references)
        for method, scores in self.summaries.items():
            for score, summary in scores.items():
                name = f"{score}_{self.task}_{method}"
                flat.update(
                    {
                        name: summary.mean,
                        f"{name}_std": summary.std,
                        f"{name}_ci_low": summary.ci_low,
                        f"{name}_ci_high": summary.ci_high,
                    }
                )
        for method, gain in self.gains.items():
            name = f"psnr_gain_{self.task}_{method}"
            flat.update({name: gain.mean, f"{name}_ci_low": gain.ci_low, f"{name}_ci_high": gain.ci_high})
        for reference, gain in self.versus.items():
            name = f"psnr_gain_{self.task}_{self.model}_vs_{reference}"
            flat.update({name: gain.mean, f"{name}_ci_low": gain.ci_low, f"{name}_ci_high": gain.ci_high})
        for reference, advantage in self.detail_versus.items():
            name = f"detail_advantage_{self.task}_{self.model}_vs_{reference}"
            flat.update(
                {name: advantage.mean, f"{name}_ci_low": advantage.ci_low, f"{name}_ci_high": advantage.ci_high}
            )
        return flat

    def add_tradeoff(self, resamples: int = 2000) -> None:
        """The perception-distortion plane (every method's PSNR against its fine detail) and, per
        reference the model was paired with, a plain sentence: does it win on PSNR, on detail,
        on both or on neither, each judged on its paired interval."""
        self.detail_versus = {ref: detail_advantage(self.scores, self.model, ref, resamples) for ref in self.versus}
        points = {
            self.labels[key]: (summary["detail"], summary["psnr"])
            for key, summary in self.summaries.items()
            if "detail" in summary
        }
        self.figures.append(
            Figure(
                f"{self.title}: perception-distortion plane",
                tradeoff_plot(points, f"{self.title}: PSNR against fine detail"),
                "Each method's mean PSNR (up: less distortion) against its mean fine-detail ratio (1: the "
                "truth's fine anatomy; left: smoothed away; right: more high-frequency content than the truth), "
                "with 95% patient-bootstrap intervals. Regression to the mean moves a method up and left.",
            )
        )
        self.notes.append(" ".join(self.tradeoff_sentence(ref) for ref in self.versus))

    def tradeoff_sentence(self, reference: str) -> str:
        psnr, detail = self.versus[reference], self.detail_versus[reference]
        return (
            f"{self.labels[self.model]} against {self.labels[reference]}: on PSNR it {_judged(psnr)} "
            f"({psnr.text(2)} dB); on fine detail it {_judged(detail)} (ratio "
            f"{self.summaries[self.model]['detail'].mean:.2f} against {self.summaries[reference]['detail'].mean:.2f}; "
            f"closer to the truth's by {detail.text(3)} in |log ratio|)."
        )

    def table(self) -> pd.DataFrame:
        rows = []
        for method, scores in self.summaries.items():
            row = {"method": self.labels[method], "metric suffix": f"{self.task}_{method}"}
            for score, summary in scores.items():
                digits = 4 if score in ("ssim", "mae", "spread") else 3 if score == "detail" else 2
                row[score] = summary.text(digits)
            gain = self.gains.get(method)
            row[f"PSNR gain vs {self.labels[self.baseline]}"] = gain.text(2) if gain else "—"
            rows.append(row)
        return pd.DataFrame(rows).fillna("—")

    def section(self) -> Section:
        count = int(self.scores["image_id"].nunique())
        versus = " ".join(
            f"Paired PSNR gain of {self.labels[self.model]} over {self.labels[reference]}: {gain.text(2)} dB."
            for reference, gain in self.versus.items()
        )
        text = (
            f"{count} test images. Cells: mean ± std across images [95% bootstrap interval of the mean, "
            "resampling patients]. " + versus + " " + " ".join(self.notes)
        )
        return Section(self.title, text, [Table(f"{self.title}: scores", self.table()), *self.tables], self.figures)


def score_methods(
    methods: list[Method], target: torch.Tensor, image_ids, groups, baseline: str, resamples: int
) -> tuple[pd.DataFrame, dict, dict]:
    frames, summaries, per_method_psnr = [], {}, {}
    for method in methods:
        frame = per_image_scores(method.images, target)
        for name, values in method.extra.items():
            frame[name] = values
        per_method_psnr[method.key] = frame["psnr"].to_numpy()
        summaries[method.key] = {
            column: summarize(frame[column].to_numpy(), groups, resamples=resamples) for column in frame.columns
        }
        frames.append(frame.assign(method=method.key, image_id=list(image_ids), patient=list(groups)))
    gains = {
        key: summarize(values - per_method_psnr[baseline], groups, resamples=resamples)
        for key, values in per_method_psnr.items()
        if key != baseline
    }
    return pd.concat(frames, ignore_index=True), summaries, gains


def paired_gain(scores: pd.DataFrame, method: str, reference: str, resamples: int) -> Summary:
    """PSNR of ``method`` minus ``reference`` image by image, with the patient bootstrap: the
    interval that says whether a model beats a baseline, not just whether their means differ."""
    by_method = {key: frame.set_index("image_id") for key, frame in scores.groupby("method")}
    ours, theirs = by_method[method], by_method[reference].loc[by_method[method].index]
    return summarize((ours["psnr"] - theirs["psnr"]).to_numpy(), ours["patient"].to_numpy(), resamples=resamples)


def detail_advantage(scores: pd.DataFrame, method: str, reference: str, resamples: int) -> Summary:
    """Image by image, how much closer ``method``'s fine-detail ratio is to the truth's (1) than
    ``reference``'s, as ``|log ratio_reference| - |log ratio_method|`` with the patient bootstrap:
    above 0, ``method`` keeps fine anatomy better (neither smoothing it away nor adding texture)."""
    by_method = {key: frame.set_index("image_id") for key, frame in scores.groupby("method")}
    ours, theirs = by_method[method], by_method[reference].loc[by_method[method].index]
    advantage = np.abs(np.log(theirs["detail"].to_numpy())) - np.abs(np.log(ours["detail"].to_numpy()))
    return summarize(advantage, ours["patient"].to_numpy(), resamples=resamples)


_WORDS = {Verdict.MET: "wins", Verdict.MISSED: "loses", Verdict.CANNOT_BE_JUDGED: "ties (interval spans 0)"}


def _judged(summary: Summary) -> str:
    """A paired difference's verdict against 0, in words."""
    return _WORDS[at_least(summary.ci_low, summary.ci_high, 0.0).verdict]


def comparison_grid(columns: list[torch.Tensor], rows: int = PREVIEW_ROWS) -> np.ndarray:
    """One row per image, one column per version of it."""
    count = min(rows, len(columns[0]))
    stacked = torch.stack([column[:count, 0].float() for column in columns], dim=1)  # (rows, columns, H, W)
    return image_grid(stacked.reshape(-1, *stacked.shape[2:]).numpy(), columns=len(columns))


def error_map(images: torch.Tensor, target: torch.Tensor, gain: float = 4.0) -> torch.Tensor:
    return ((images - target).abs() * gain).clamp(0, 1)


def _nearest_enlarged(images: torch.Tensor, scale: int) -> torch.Tensor:
    return images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)


def spread_figure(maps: np.ndarray, images: torch.Tensor, title: str) -> Figure:
    count = min(PREVIEW_ROWS, len(maps))
    picture = heat_maps(maps[:count], images[:count, 0].numpy(), title)
    return Figure(
        title,
        picture,
        "Top: one sample. Bottom: per-pixel standard deviation over seeds (intensity units, "
        "shared colour scale). Bright structure is where the model is guessing.",
    )


def seed_spread(
    sample_with_seed: Callable[[torch.Tensor, int], torch.Tensor],
    inputs: torch.Tensor,
    first: torch.Tensor,
    seeds: int,
    images: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Spread over ``seeds`` samples of the first ``images`` inputs (the first sample is reused):
    per-image mean std and the std maps; None when one seed was asked for."""
    if seeds < 2:
        return None
    count = min(images, len(inputs))
    extra = [sample_with_seed(inputs[:count], seed + 1000 * k) for k in range(1, seeds)]
    return sample_spread(torch.stack([first[:count], *extra]))


@torch.no_grad()
def _batched_reconstruction(vae, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    return torch.cat(
        [reconstruct(vae, images[start : start + batch_size]) for start in range(0, len(images), batch_size)]
    )


def evaluate_super_resolution(
    model: LatentSuperResolution,
    high_resolution: torch.Tensor,
    low_resolution: torch.Tensor,
    image_ids,
    groups,
    *,
    ddim_steps: int = 50,
    full_chain: bool = False,
    lr_start_strength: float | None = 0.3,
    regression: torch.Tensor | None = None,
    spread_seeds: int = 4,
    spread_images: int = 16,
    seed: int = 0,
    resamples: int = 2000,
) -> RestorationEvaluation:
    scale = model.scale
    task = f"sr_x{scale}"
    bicubic = torch.from_numpy(np.stack([upsample_bicubic(x[0].numpy(), scale) for x in low_resolution])).unsqueeze(1)
    vae = model.model.vae
    ceiling = _batched_reconstruction(vae, high_resolution)
    through_vae = _batched_reconstruction(vae, bicubic)
    ddim = model(low_resolution, sampler="ddim", num_inference_steps=ddim_steps, generator=seed)

    def consistency(images: torch.Tensor) -> dict[str, np.ndarray]:
        return {"lr_consistency_psnr": lr_consistency_psnr(images, low_resolution)}

    methods = [
        Method("bicubic", "Bicubic", bicubic, consistency(bicubic)),
        Method("bicubic_vae", "Bicubic → VAE (the latent path, no diffusion)", through_vae, consistency(through_vae)),
        Method("vae_ceiling", "VAE ceiling (HR → VAE → HR)", ceiling, consistency(ceiling)),
    ]
    if regression is not None:
        methods.append(
            Method(
                "regression", "Residual CNN, L1 on the same pairs (pixel space)", regression, consistency(regression)
            )
        )
    figures, notes = [], []
    spread = seed_spread(
        lambda inputs, s: model(inputs, sampler="ddim", num_inference_steps=ddim_steps, generator=s),
        low_resolution,
        ddim,
        spread_seeds,
        spread_images,
        seed,
    )
    if spread is not None:
        figures.append(spread_figure(spread[1], ddim, f"Sample spread, x{scale}, {spread_seeds} seeds"))
    methods.append(Method("ddim", f"Latent SR, DDIM {ddim_steps}", ddim, consistency(ddim)))
    columns = [
        _nearest_enlarged(low_resolution, scale),
        bicubic,
        *([regression] if regression is not None else []),
        ddim,
    ]
    if lr_start_strength is not None:
        from_lr = model(
            low_resolution, sampler="ddim", num_inference_steps=ddim_steps, generator=seed, strength=lr_start_strength
        )
        methods.append(
            Method(
                "ddim_from_lr",
                f"Latent SR, DDIM {ddim_steps} from the LR latent (strength {lr_start_strength:g})",
                from_lr,
                consistency(from_lr),
            )
        )
        columns.append(from_lr)
    if full_chain:
        chain = model(low_resolution, sampler="ddpm", generator=seed)
        methods.append(
            Method("ddpm", f"Latent SR, full chain ({model.model.schedule.timesteps} steps)", chain, consistency(chain))
        )
        columns.append(chain)
    columns += [high_resolution, error_map(ddim, high_resolution)]
    header = (
        "LR (nearest) | bicubic"
        + (" | CNN" if regression is not None else "")
        + " | SR DDIM"
        + (" | SR DDIM from LR" if lr_start_strength is not None else "")
        + (" | SR full chain" if full_chain else "")
        + " | HR | 4x |SR DDIM - HR|"
    )
    figures.insert(0, Figure(f"Super-resolution x{scale}", comparison_grid(columns), header, upscale=2))
    reference = float(np.median(lr_consistency_psnr(high_resolution, low_resolution)))
    notes.append(
        f"LR-consistency PSNR: the output downsampled back to LR (the filter that made the pairs) against "
        f"the LR input. The ground truth scores a median {reference:.1f} dB: near-exact where the pair was made "
        "without blur or noise, lower where they were drawn. A method far below bicubic here puts structure "
        "into the image that the input does not support."
    )
    scores, summaries, gains = score_methods(methods, high_resolution, image_ids, groups, "bicubic", resamples)
    if spread is not None:
        summaries["ddim"]["spread"] = summarize(spread[0], np.asarray(groups)[: len(spread[0])], resamples=resamples)
        notes.append(
            f"Spread: mean per-pixel standard deviation of DDIM outputs over {spread_seeds} seeds, on the "
            f"first {len(spread[0])} test images."
        )
    versus = {
        ref: paired_gain(scores, "ddim", ref, resamples) for ref in ("bicubic_vae", "regression") if ref in summaries
    }
    evaluation = RestorationEvaluation(
        task,
        f"Super-resolution x{scale}",
        "bicubic",
        scores,
        summaries,
        gains,
        {m.key: m.label for m in methods},
        figures,
        notes,
        references={f"lr_consistency_psnr_{task}_hr": reference},
        model="ddim",
        classical="bicubic",
        versus=versus,
    )
    evaluation.add_tradeoff(resamples)
    return evaluation


def scale_name(scale: float) -> str:
    """``2.5`` -> ``x2p5``: the scale as it appears in metric names."""
    return f"x{scale:g}".replace(".", "p")


def evaluate_arbitrary_scale(
    model: ArbitraryScaleSuperResolution,
    high_resolution: torch.Tensor,
    low_resolution: torch.Tensor,
    image_ids,
    groups,
    scale: float,
    *,
    fixed: LatentSuperResolution | None = None,
    ddim_steps: int = 50,
    spread_seeds: int = 4,
    spread_images: int = 16,
    seed: int = 0,
    resamples: int = 2000,
) -> RestorationEvaluation:
    """The arbitrary-scale model at one scale (``high_resolution`` already cropped so ``scale``
    is exact) against bicubic at the same scale, the same latent path without diffusion, and,
    where one was trained for this scale, the fixed-scale model on the same inputs."""
    task, size = f"sr_{scale_name(scale)}", tuple(high_resolution.shape[-2:])
    range_low, range_high = model.scale_range
    bicubic = torch.from_numpy(np.stack([bicubic_to(x[0].numpy(), size) for x in low_resolution])).unsqueeze(1)
    through_vae = model.without_diffusion(low_resolution, size=size)
    restored = model(low_resolution, size=size, num_inference_steps=ddim_steps, generator=seed)

    def consistency(images: torch.Tensor, geometry: bool = False) -> dict[str, np.ndarray]:
        scores = {"lr_consistency_psnr": lr_consistency_psnr(images, low_resolution)}
        if geometry:  # where the output sits against the truth (output px): a misplaced edge shows here
            scores["registration_px"] = np.array(
                [
                    np.abs(registration_shift(x[0].numpy(), truth[0].numpy(), scale)).max()
                    for x, truth in zip(images, high_resolution)
                ]
            )
        return scores

    methods = [
        Method("bicubic", "Bicubic", bicubic, consistency(bicubic, geometry=True)),
        Method(
            "bicubic_vae",
            f"Bicubic → VAE → {RENDERING[model.rendering_for(scale)]} (the latent path, no diffusion)",
            through_vae,
            consistency(through_vae),
        ),
        Method(
            "arbitrary",
            f"Arbitrary-scale latent SR, DDIM {ddim_steps}",
            restored,
            consistency(restored, geometry=True),
        ),
    ]
    nearest = torch.from_numpy(
        np.stack([resize(x[0].numpy(), size, Image.Resampling.NEAREST) for x in low_resolution])
    ).unsqueeze(1)
    columns, header = [nearest, bicubic, restored], "LR (nearest) | bicubic | arbitrary-scale SR"
    if fixed is not None:
        fixed_out = fixed(low_resolution, num_inference_steps=ddim_steps, generator=seed)
        methods.append(
            Method(
                "fixed", f"Fixed-scale latent SR x{fixed.scale}, DDIM {ddim_steps}", fixed_out, consistency(fixed_out)
            )
        )
        columns.append(fixed_out)
        header += f" | fixed x{fixed.scale} SR"
    columns += [high_resolution, error_map(restored, high_resolution)]
    header += " | HR | 4x |arbitrary - HR|"
    range_note = "inside" if range_low <= scale <= range_high else "outside"
    figures = [Figure(f"Super-resolution x{scale:g} (arbitrary scale)", comparison_grid(columns), header, upscale=2)]
    notes = [
        f"x{scale:g} is {range_note} the training range [{range_low:g}, {range_high:g}]; off the latent "
        f"grid it renders by {RENDERING[model.rendering_for(scale)]} (chosen on val). HR crops of "
        f"{size[0]} x {size[1]} px (centred) make the scale exact: LR {low_resolution.shape[-2]} x "
        f"{low_resolution.shape[-1]} px."
    ]
    spread = seed_spread(
        lambda inputs, s: model(inputs, size=size, num_inference_steps=ddim_steps, generator=s),
        low_resolution,
        restored,
        spread_seeds,
        spread_images,
        seed,
    )
    if spread is not None:
        figures.append(spread_figure(spread[1], restored, f"Sample spread, x{scale:g}, {spread_seeds} seeds"))
    scores, summaries, gains = score_methods(methods, high_resolution, image_ids, groups, "bicubic", resamples)
    if spread is not None:
        summaries["arbitrary"]["spread"] = summarize(
            spread[0], np.asarray(groups)[: len(spread[0])], resamples=resamples
        )
    versus = {
        ref: paired_gain(scores, "arbitrary", ref, resamples) for ref in ("bicubic_vae", "fixed") if ref in summaries
    }
    reference = float(np.median(lr_consistency_psnr(high_resolution, low_resolution)))
    return RestorationEvaluation(
        task,
        f"Super-resolution x{scale:g} (arbitrary scale)",
        "bicubic",
        scores,
        summaries,
        gains,
        {m.key: m.label for m in methods},
        figures,
        notes,
        references={f"lr_consistency_psnr_{task}_hr": reference},
        model="arbitrary",
        classical="bicubic",
        versus=versus,
    )
