"""The CXR feature network: a small pathology classifier trained on our own training split.

Generation metrics need a network that has seen chest radiographs: ImageNet Inception features
rank CXR generators poorly (they weigh texture and colour the modality does not have). This
residual CNN is trained on the single-label classes; its pooled penultimate features serve the
domain Fréchet distance and KID, its softmax the conditional accuracy of a class-conditional
generator. Its validation AUROC per class says how far those figures can be trusted.

Augmentation is deliberately mild: small shifts and a gamma jitter, never a horizontal flip (the
heart is on the left; a flipped radiograph is a different anatomy, dextrocardia).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_auroc

from ..data.image_store import ImageStore
from ..data.splits import patient_subset
from .batches import StoreImages, WeightedStepSampler
from .model_settings import TrainingRecord, upgrade_classifier_json
from .training import TrainConfig, Trainer, TrainingOutcome, pick_device, run_key


@dataclass(frozen=True)
class ClassifierConfig:
    widths: tuple[int, ...] = (16, 32, 64, 128)  # one stride-2 stage per width; features = last width
    dropout: float = 0.2
    label_smoothing: float = 0.05
    max_shift: int = 4  # pixels, at the stored resolution
    gamma_jitter: float = 0.15  # gamma drawn from [1 - j, 1 + j]

    def as_dict(self) -> dict:
        return {**asdict(self), "widths": list(self.widths)}


@dataclass(frozen=True, kw_only=True)
class ClassifierSettings:
    """What a trained classifier's ``classifier.json`` records, typed: its network, the classes
    (the recipe's ``classes``; index = output), the image size, its last validation."""

    config: ClassifierConfig
    classes: list[str]
    image_size: int
    num_features: int
    metrics: dict[str, float]
    training: TrainingRecord

    def to_json(self) -> str:
        return json.dumps(
            {
                "config": self.config.as_dict(),
                "classes": list(self.classes),
                "image_size": self.image_size,
                "num_features": self.num_features,
                "metrics": self.metrics,
                "training": self.training.to_dict(),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> ClassifierSettings:
        raw = upgrade_classifier_json(json.loads(text))
        config = ClassifierConfig(**{**raw["config"], "widths": tuple(raw["config"]["widths"])})
        return cls(
            config=config,
            classes=list(raw["classes"]),
            image_size=int(raw["image_size"]),
            num_features=int(raw["num_features"]),
            metrics=dict(raw["metrics"]),
            training=TrainingRecord.from_dict(raw["training"]),
        )


class _ResidualStage(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int):
        super().__init__()
        groups = min(8, channels_out)
        self.body = nn.Sequential(
            nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False),
            nn.GroupNorm(groups, channels_out),
            nn.SiLU(),
            nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False),
            nn.GroupNorm(groups, channels_out),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(channels_in, channels_out, 1, stride, bias=False), nn.GroupNorm(groups, channels_out)
        )
        self.activation = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.body(x) + self.shortcut(x))


class CxrClassifier(nn.Module):
    """Images (N, 1, H, W) in [0, 1] -> logits; ``features`` gives the pooled penultimate layer.
    GroupNorm, not BatchNorm, so a sample's features never depend on the rest of its batch."""

    def __init__(self, config: ClassifierConfig, num_classes: int):
        super().__init__()
        widths = config.widths
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.GroupNorm(min(8, widths[0]), widths[0]), nn.SiLU()
        )
        stages, channels = [], widths[0]
        for width in widths:
            stages.append(_ResidualStage(channels, width, stride=2))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(channels, num_classes))
        self.num_features = channels

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(images * 2.0 - 1.0))
        return x.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def augment(images: torch.Tensor, config: ClassifierConfig, rng: np.random.Generator) -> torch.Tensor:
    """Random shift (edge-replicated, so no black borders appear) and gamma, per image."""
    count, _, height, width = images.shape
    pad = config.max_shift
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="replicate")
    shifts = rng.integers(0, 2 * pad + 1, size=(count, 2))
    shifted = torch.stack([padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(shifts)])
    gammas = torch.from_numpy(rng.uniform(1 - config.gamma_jitter, 1 + config.gamma_jitter, count)).float()
    return shifted.clamp(1e-6, 1.0) ** gammas.view(-1, 1, 1, 1)


def classifier_step(config: ClassifierConfig):
    def step(model: CxrClassifier, batch: dict[str, torch.Tensor], generator: torch.Generator):
        logits = model(batch["images"])
        loss = nn.functional.cross_entropy(logits, batch["labels"], label_smoothing=config.label_smoothing)
        accuracy = (logits.argmax(dim=1) == batch["labels"]).float().mean()
        return loss, {"accuracy": float(accuracy)}

    return step


@torch.no_grad()
def embed(network: nn.Module, images: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features (N, D) and class probabilities (N, C) of images in [0, 1] (a
    ``CxrClassifier``, or the EMA copy of one a Trainer returns)."""
    model = cast(CxrClassifier, network)
    device = next(model.parameters()).device
    model.eval()
    features, probabilities = [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size].to(device).float()
        pooled = model.features(chunk)
        features.append(pooled.cpu())
        probabilities.append(torch.softmax(model.head(pooled), dim=1).cpu())
    return torch.cat(features).double().numpy(), torch.cat(probabilities).double().numpy()


def classification_scores(
    probabilities: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> dict[str, float]:
    """Accuracy, macro AUROC, and one-vs-rest AUROC per class (only classes present in ``labels``
    with negatives too; the others have no defined AUROC and are left out)."""
    probs, target = torch.tensor(np.array(probabilities)), torch.tensor(np.array(labels)).long()
    num_classes = len(class_names)
    per_class = multiclass_auroc(probs, target, num_classes=num_classes, average=None)
    present = [c for c in range(num_classes) if 0 < int((target == c).sum()) < len(target)]
    scores = {
        "val_accuracy": float(multiclass_accuracy(probs, target, num_classes=num_classes, average="micro")),
        "val_auroc_macro": float(per_class[present].mean()) if present else float("nan"),
    }
    scores.update({f"val_auroc_{class_names[c]}": float(per_class[c]) for c in present})
    return scores


# --- Training, loading ------------------------------------------------------------------------------


def labelled_rows(metadata: pd.DataFrame, split: str) -> pd.DataFrame:
    """The single-label images of one split (the classes the classifier knows)."""
    return metadata[(metadata["split"] == split) & metadata["class_id"].notna()].reset_index(drop=True)


def classifier_trainer(
    train_images,
    train_labels: np.ndarray,
    val_images: torch.Tensor,
    val_labels: np.ndarray,
    class_names: Sequence[str],
    config: ClassifierConfig,
    train_config: TrainConfig,
    run_dir: Path,
    progress=None,
) -> Trainer:
    """The one classifier recipe: class-balanced batches from ``train_images`` (anything with
    ``batch(rows)``: ``StoreImages``, ``ConcatImages``), mild augmentation, validation AUROC."""
    train_labels = np.asarray(train_labels, dtype=np.int64)
    sampler = WeightedStepSampler(train_labels, train_config.batch_size, train_config.seed)

    def batches(step: int) -> dict:
        picked = sampler.indices(step)
        rng = np.random.default_rng([train_config.seed, step, 29])
        return {
            "images": augment(train_images.batch(picked), config, rng),
            "labels": torch.from_numpy(train_labels[picked]).long(),
        }

    def evaluate(model: nn.Module, step: int) -> dict[str, float]:
        return classification_scores(embed(model, val_images)[1], val_labels, class_names)

    torch.manual_seed(train_config.seed)
    return Trainer(
        CxrClassifier(config, len(class_names)),
        classifier_step(config),
        batches,
        train_config,
        run_dir,
        evaluate=evaluate,
        progress=progress,
    )


def train_classifier(
    metadata: pd.DataFrame,
    store: ImageStore,
    class_names: Sequence[str],
    config: ClassifierConfig,
    train_config: TrainConfig,
    runs_root: Path,
    data_hash: str,
    progress=None,
    stop_after: int | None = None,
    val_images: int | None = None,
) -> TrainingOutcome:
    """``val_images``: validate on at most this many val images, whole patients (``patient_subset``)."""
    train_rows, val_rows = labelled_rows(metadata, "train"), patient_subset(labelled_rows(metadata, "val"), val_images)
    if train_rows.empty or val_rows.empty:
        raise ValueError("the classifier needs single-label images in both train and val")
    val_stack = StoreImages(store, val_rows).stack()
    run_dir = Path(runs_root) / run_key(
        "classifier", config.as_dict(), list(class_names), train_config.identity(), data_hash
    )
    trainer = classifier_trainer(
        StoreImages(store, train_rows),
        train_rows["class_id"].astype(int).to_numpy(),
        val_stack,
        val_rows["class_id"].astype(int).to_numpy(),
        class_names,
        config,
        train_config,
        run_dir,
        progress,
    )
    model_dir = run_dir / "model"

    def save(result, folder: Path) -> None:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in result.ema_model.state_dict().items()},
            folder / "model.safetensors",
        )
        (folder / "classifier.json").write_text(
            ClassifierSettings(
                config=config,
                classes=list(class_names),
                image_size=int(val_stack.shape[-1]),
                num_features=result.ema_model.num_features,
                metrics=result.last_eval,
                training=TrainingRecord(step=result.final_step, data_hash=data_hash, train=train_config.identity()),
            ).to_json()
        )

    result = trainer.fit_and_save(model_dir, save, stop_after)
    return TrainingOutcome("classifier", run_dir, model_dir, result.final_step, result.resumed_from, result.last_eval)


def load_classifier(folder: Path, device: torch.device | str = "auto") -> tuple[CxrClassifier, ClassifierSettings]:
    folder = Path(folder)
    settings = ClassifierSettings.from_json((folder / "classifier.json").read_text())
    model = CxrClassifier(settings.config, len(settings.classes))
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.to(pick_device(device)).eval(), settings
