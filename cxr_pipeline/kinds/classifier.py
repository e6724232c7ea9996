"""The CXR feature network: a pathology classifier on the single-label classes whose features
and predictions score the generators (fd_cxr, KID, conditional accuracy). ``cxr-feature-classifier``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..data.image_store import ImageStore
from ..data.labels.metadata import content_hash
from ..models.classifier import ClassifierConfig, embed, load_classifier, train_classifier
from ..settings import WorkPaths
from .base import (
    IMAGES,
    VECTORS,
    ModelKind,
    ServingSpec,
    TrainingPlan,
    TrainingRecipe,
    gray,
    request_images,
    too_few_classes,
    with_data_classes,
)


@dataclass(frozen=True)
class Recipe(TrainingRecipe):
    steps: int = 600
    batch_size: int = 32
    learning_rate: float = 2e-3
    eval_every: int = 100  # validation AUROC every this many steps
    val_images: int = 2000  # validated on at most this many val images (whole patients): bounded at any dataset size
    classes: list[str] = field(default_factory=list)  # empty: the classes the labels stage decided


def plan(recipe: Recipe, paths: WorkPaths, profile: str) -> list[TrainingPlan]:
    recipe = with_data_classes(recipe, paths)
    metadata = pd.read_parquet(paths.metadata)
    data_hash = content_hash(metadata)
    widths = recipe.widths()
    network = ClassifierConfig(widths=widths) if widths else ClassifierConfig()
    train_config = recipe.train_config()
    params = {
        **{f"classifier.{k}": v for k, v in network.as_dict().items()},
        **{f"train.{k}": v for k, v in train_config.identity().items()},
        "classes": ",".join(recipe.classes),
    }

    def run(progress):
        return train_classifier(
            metadata,
            ImageStore(paths.image_store),
            recipe.classes,
            network,
            train_config,
            paths.models / CLASSIFIER.folder,
            data_hash,
            progress=progress,
            val_images=recipe.val_images,
        ), {}

    return [TrainingPlan(CLASSIFIER, data_hash, params, run=run)]


SERVING = ServingSpec(
    lambda folder, device: load_classifier(folder, device)[0],
    lambda model, x, p: embed(model, request_images(x))[1].astype(np.float32),
    lambda folder: gray(32),
    "float32",
    IMAGES,
    VECTORS,
)

CLASSIFIER = ModelKind(
    key="classifier",
    asset="cxr_classifier",
    registered_name="cxr-feature-classifier",
    folder="classifier",
    title="CXR feature classifier",
    description="CXR feature network for fd_cxr, KID and conditional accuracy",
    recipe=Recipe,
    plan=plan,
    serving=SERVING,
    # its features and predictions score every generator: a weak classifier makes every score noise
    acceptance=(("val_auroc_macro", 0.8, "separates the classes on val (chance is 0.5)"),),
    unavailable=too_few_classes,
)
