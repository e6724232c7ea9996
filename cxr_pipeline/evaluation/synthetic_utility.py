"""Does synthetic data help? The augmentation experiment behind the ``synthetic_utility`` asset.

One classifier recipe (the feature classifier's: architecture, steps, batch size, augmentation,
class-balanced batches) is trained on several training sets, the *arms*, with several seeds each,
and every arm is scored on the real test split only. An arm is real training images, generated
images, or both (see ``ARMS``). Generated images come from the class-conditional model (a class
label) and the text-conditional model (a training report), half each unless an arm names one.

Every arm draws class-balanced batches, so the real-only arm already resamples its rare classes:
balancing with generated images has to beat resampling the same real images, not an unweighted
baseline that a reweighting alone would beat.

Nothing derived from val or test enters any arm: real images are the training split's, text
samples are conditioned on training reports, and the generators were trained on the same split
assignment (the suite compares their data hash). ``check_provenance`` asserts the first two on
every arm before anything trains.

Scores are accuracy and one-vs-rest AUROC (macro and per class), averaged over seeds, with a 95 %
bootstrap interval that resamples test *patients* (one draw shared by every arm, so differences
are paired) and each arm's seeds (so one lucky training run cannot pass for an effect).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data import atomic
from ..data.image_store import ImageStore, to_stored
from ..data.labels.report_text import report_prompts
from ..metrics.statistics import patient_weights, percentile_interval, weighted_classification_scores
from ..metrics.verdicts import Judged, improves, not_worse
from ..models.batches import ConcatImages, StoreImages
from ..models.classifier import ClassifierConfig, classifier_trainer, embed
from ..models.training import TrainConfig

CLASS_GENERATOR, TEXT_GENERATOR = "class_ddpm", "text_ldm"
GENERATORS = (CLASS_GENERATOR, TEXT_GENERATOR)
REAL = "real"  # the reference arm every difference is taken against


@dataclass(frozen=True)
class Arm:
    name: str
    real: bool  # the real training images are in it
    generators: tuple[str, ...]  # generated images from these, in equal shares
    fill: str  # "none"; "matched": ratio x each class's real count; "balance": up to the commonest class
    description: str


ARMS = {
    arm.name: arm
    for arm in (
        Arm(REAL, True, (), "none", "the real training images"),
        Arm(
            "real_synthetic",
            True,
            GENERATORS,
            "matched",
            "real, plus generated images per class (ratio x its real count), half class-, half text-conditional",
        ),
        Arm(
            "real_class",
            True,
            (CLASS_GENERATOR,),
            "matched",
            "real, plus class-conditional images (ratio x each class)",
        ),
        Arm(
            "real_text",
            True,
            (TEXT_GENERATOR,),
            "matched",
            "real, plus text-conditional images from training reports (ratio x each class)",
        ),
        Arm("synthetic", False, GENERATORS, "matched", "generated images only, in the real images' class mix"),
        Arm(
            "real_balanced",
            True,
            GENERATORS,
            "balance",
            "real, plus generated images of each rarer class up to the commonest class's count",
        ),
    )
}
DEFAULT_ARMS = (REAL, "real_synthetic", "synthetic", "real_balanced")


@dataclass(frozen=True)
class UtilityProfile:
    """How big the experiment is. The demo trims the classifier and the seeds to fit its minutes;
    ``full`` runs every arm with the feature classifier's own network and five seeds."""

    arms: tuple[str, ...]
    seeds: int
    classifier: ClassifierConfig
    steps: int
    batch_size: int = 32
    learning_rate: float = 2e-3


UTILITY_PROFILES = {
    "demo": UtilityProfile(DEFAULT_ARMS, seeds=2, classifier=ClassifierConfig(widths=(8, 16, 32, 64)), steps=300),
    "full": UtilityProfile(tuple(ARMS), seeds=5, classifier=ClassifierConfig(), steps=600),
}


def arms_named(names: Sequence[str]) -> list[Arm]:
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise ValueError(f"unknown arms {unknown}; known: {sorted(ARMS)}")
    if REAL not in names:
        raise ValueError(f"the arms must include {REAL!r}: every other arm is compared with it")
    return [ARMS[n] for n in dict.fromkeys(names)]


# --- How many images each arm gets -----------------------------------------------------------------------


def synthetic_counts(arm: Arm, real_counts: np.ndarray, ratio: float) -> dict[str, np.ndarray]:
    """Generated images per class, per generator, for one arm (an arm with two generators
    takes half from each; the odd image goes to the first)."""
    real_counts = np.asarray(real_counts, dtype=np.int64)
    if arm.fill == "none" or not arm.generators:
        return {}
    if arm.fill == "matched":
        total = np.round(real_counts * ratio).astype(np.int64)
    elif arm.fill == "balance":
        total = real_counts.max() - real_counts
    else:
        raise ValueError(f"unknown fill {arm.fill!r}")
    shares = len(arm.generators)
    return {g: total // shares + (i < total % shares) for i, g in enumerate(arm.generators)}


def pool_plan(arms: Sequence[Arm], real_counts: np.ndarray, ratio: float) -> dict[str, np.ndarray]:
    """Images per class each generator has to produce: the most any arm takes. Arms take nested
    prefixes of one pool, so the balanced arm's images include the matched arm's."""
    plan: dict[str, np.ndarray] = {}
    for arm in arms:
        for generator, counts in synthetic_counts(arm, real_counts, ratio).items():
            plan[generator] = np.maximum(plan.get(generator, np.zeros_like(counts)), counts)
    return plan


# --- The generated pool ----------------------------------------------------------------------------------

ClassSampler = Callable[[list[int], int], torch.Tensor]  # (class ids, seed) -> (N, 1, S, S) in [0, 1]
TextSampler = Callable[[list[str], int], torch.Tensor]  # (reports, seed) -> (N, 1, S, S) in [0, 1]


def training_reports(train_rows: pd.DataFrame) -> pd.DataFrame:
    """The training split's single-label reports: what the text model is prompted with."""
    prompts = report_prompts(train_rows)
    rows = train_rows.assign(prompt=prompts.to_numpy())
    return rows[[bool(p) for p in rows["prompt"]]][["image_id", "class_id", "prompt"]].reset_index(drop=True)


def _text_requests(reports: pd.DataFrame, counts: np.ndarray, seed: int) -> pd.DataFrame:
    """For each class, ``counts[c]`` reports of that class: a seeded shuffle, cycled when more
    images than reports are wanted (each repeat is sampled from different noise)."""
    chosen = []
    for c, wanted in enumerate(counts):
        of_class = reports[reports["class_id"].astype(int) == c]
        if wanted and of_class.empty:
            raise ValueError(f"no training report of class {c} to prompt the text model with")
        if not wanted:
            continue
        order = np.random.default_rng([seed, c, 41]).permutation(len(of_class))
        picks = order[np.arange(wanted) % len(order)]
        chosen.append(of_class.iloc[picks].assign(rank=np.arange(wanted)))
    return (
        pd.concat(chosen, ignore_index=True)
        if chosen
        else pd.DataFrame(columns=["image_id", "class_id", "prompt", "rank"])
    )


def generate_pool(
    plan: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    reports: pd.DataFrame,
    samplers: Mapping[str, Callable],
    folder: Path,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Generate the pool into ``folder`` (an image store and ``index.parquet``: class, generator,
    origin, prompt, and the rank that arms take prefixes by), written atomically. A folder that
    is already complete is reused: the key the caller names it by covers everything it depends on."""
    folder = Path(folder)
    if (folder / "index.parquet").exists():
        return pd.read_parquet(folder / "index.parquet")
    tables = []
    with atomic.atomic_folder(folder) as tmp:
        store, size = ImageStore(tmp), None
        for generator, counts in plan.items():
            if not counts.sum():
                continue
            if generator == CLASS_GENERATOR:
                requests = pd.DataFrame({"class_id": np.repeat(np.arange(len(counts)), counts)})
                requests["rank"] = np.concatenate([np.arange(n) for n in counts])
                requests["origin"] = [f"class:{class_names[c]}" for c in requests["class_id"]]
                requests["prompt"] = ""
                images = samplers[generator](requests["class_id"].astype(int).tolist(), seed)
            elif generator == TEXT_GENERATOR:
                requests = _text_requests(reports, counts, seed).rename(columns={"image_id": "origin"})
                images = samplers[generator](requests["prompt"].tolist(), seed)
            else:
                raise ValueError(f"unknown generator {generator!r}")
            log(f"generated {len(images)} images with {generator}")
            if size is None:
                size = int(images.shape[-1])
                store.initialize(image_size=size, fingerprint="synthetic")
            shard = store.write_shard(to_stored(images[:, 0].float().cpu().numpy()))
            tables.append(
                requests.assign(
                    generator=generator,
                    shard=shard,
                    shard_index=np.arange(len(requests)),
                    image_id=[f"{generator}-{i:06d}" for i in range(len(requests))],
                )
            )
        index = (
            pd.concat(tables, ignore_index=True)
            if tables
            else pd.DataFrame(
                columns=["class_id", "rank", "origin", "prompt", "generator", "shard", "shard_index", "image_id"]
            )
        )
        index["class_id"] = index["class_id"].astype(int)
        atomic.write_parquet(tmp / "index.parquet", index)
    return index


# --- The arms ---------------------------------------------------------------------------------------------


@dataclass
class ArmData:
    """One arm's training set, with where every image came from."""

    arm: Arm
    images: ConcatImages
    labels: np.ndarray
    sources: np.ndarray  # "real" or the generator
    origins: np.ndarray  # the real image's id, the prompting report's image id, or "class:<name>"

    def counts(self, num_classes: int) -> pd.DataFrame:
        frame = pd.DataFrame({"source": self.sources, "class_id": self.labels})
        table = frame.groupby(["source", "class_id"]).size().unstack(fill_value=0)
        return table.reindex(columns=range(num_classes), fill_value=0)


def arm_training_set(
    arm: Arm,
    real_rows: pd.DataFrame,
    real_store: ImageStore,
    pool: pd.DataFrame,
    pool_store: ImageStore | None,
    ratio: float,
    num_classes: int,
) -> ArmData:
    """The real training rows (when the arm has them) followed by the pool's images the arm
    takes: for each generator and class, the first ``synthetic_counts`` by rank."""
    real_counts = np.bincount(real_rows["class_id"].astype(int), minlength=num_classes)
    real = real_rows if arm.real else real_rows.iloc[:0]
    taken = []
    for generator, counts in synthetic_counts(arm, real_counts, ratio).items():
        rows = pool[(pool["generator"] == generator)]
        rows = rows[rows["rank"].to_numpy() < counts[rows["class_id"].astype(int).to_numpy()]]
        short = counts - np.bincount(rows["class_id"].astype(int), minlength=num_classes)
        if short.any():
            raise ValueError(f"the pool holds too few {generator} images for arm {arm.name}: short by {short.tolist()}")
        taken.append(rows)
    synthetic = pd.concat(taken, ignore_index=True) if taken else None
    parts = [StoreImages(real_store, real)]
    labels, sources, origins = (
        [real["class_id"].astype(int).to_numpy()],
        [REAL] * len(real),
        real["image_id"].astype(str).tolist(),
    )
    if synthetic is not None and len(synthetic):
        if pool_store is None:
            raise ValueError(f"arm {arm.name} takes generated images, and no pool store was given")
        parts.append(StoreImages(pool_store, synthetic))
        labels.append(synthetic["class_id"].astype(int).to_numpy())
        sources += synthetic["generator"].tolist()
        origins += synthetic["origin"].astype(str).tolist()
    return ArmData(
        arm,
        ConcatImages(parts),
        np.concatenate(labels),
        np.array(sources, dtype=object),
        np.array(origins, dtype=object),
    )


def check_provenance(data: ArmData, train_image_ids: set[str], class_names: Sequence[str]) -> None:
    """Refuse an arm holding anything from outside the training split: a real image, or a text
    sample whose report, that is not a training image's; class samples name a known class."""
    for source, origin in zip(data.sources, data.origins):
        if source == CLASS_GENERATOR:
            if origin.removeprefix("class:") not in class_names:
                raise ValueError(f"arm {data.arm.name}: class sample of unknown class {origin!r}")
        elif origin not in train_image_ids:
            what = "real image" if source == REAL else f"{source} sample prompted by image"
            raise ValueError(f"arm {data.arm.name}: {what} {origin!r} is not in the training split")


def train_arm(
    data: ArmData,
    val_images: torch.Tensor,
    val_labels: np.ndarray,
    test_images: torch.Tensor,
    class_names: Sequence[str],
    config: ClassifierConfig,
    train_config: TrainConfig,
    run_dir: Path,
    progress=None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Train one seed of one arm (resuming from its checkpoint); its test class probabilities and
    its last validation scores."""
    trainer = classifier_trainer(
        data.images, data.labels, val_images, val_labels, class_names, config, train_config, run_dir, progress
    )
    result = trainer.fit()
    return embed(result.ema_model, test_images)[1], result.last_eval


# --- Scores with paired, patient-level intervals ------------------------------------------------------------


@dataclass(frozen=True)
class UtilityScores:
    """Per arm and metric: the seed-averaged value, its interval, the spread over seeds, and the
    paired difference to the real-only arm with its interval."""

    table: pd.DataFrame  # arm, metric, value, ci_low, ci_high, seed_std, seeds, diff, diff_low, diff_high
    level: float
    resamples: int

    def row(self, arm: str, metric: str) -> pd.Series:
        hit = self.table[(self.table["arm"] == arm) & (self.table["metric"] == metric)]
        if hit.empty:
            raise KeyError(f"no score {metric} for arm {arm}")
        return hit.iloc[0]


def utility_scores(
    probabilities: Mapping[str, Sequence[np.ndarray]],
    labels: np.ndarray,
    patients: Sequence,
    class_names: Sequence[str],
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> UtilityScores:
    """``probabilities[arm]`` holds one (N, C) array per training seed, on the same test images.
    One patient draw per bootstrap row is shared by every arm (paired); each arm also redraws
    its seeds with replacement, so the interval carries the training noise too."""
    if REAL not in probabilities:
        raise ValueError(f"the {REAL!r} arm is the reference and must be scored")
    rng = np.random.default_rng([seed, 97])
    weights = patient_weights(patients, resamples, rng)
    per_arm: dict[str, dict[str, np.ndarray]] = {}  # arm -> metric -> (resamples + 1,) seed-mean rows
    point: dict[str, dict[str, tuple[float, float, list[float]]]] = {}
    for a, (arm, runs) in enumerate(probabilities.items()):
        by_seed = [
            weighted_classification_scores(np.asarray(p, dtype=np.float64), labels, weights, class_names) for p in runs
        ]
        draws = np.random.default_rng([seed, 131, a]).integers(0, len(runs), size=(resamples, len(runs)))
        per_arm[arm], point[arm] = {}, {}
        for metric in by_seed[0]:
            matrix = np.stack([s[metric] for s in by_seed], axis=1)  # (resamples + 1, seeds)
            seeds = matrix[0].tolist()
            resampled = np.take_along_axis(matrix[1:], draws, axis=1).mean(axis=1)
            per_arm[arm][metric] = resampled
            spread = float(np.std(matrix[0], ddof=1)) if len(runs) > 1 else float("nan")
            point[arm][metric] = (float(np.mean(matrix[0])), spread, seeds)
    rows = []
    for arm in probabilities:
        for metric, (value, spread, seeds) in point[arm].items():
            low, high = percentile_interval(per_arm[arm][metric], level)
            reference = point[REAL].get(metric)
            if reference is None or arm == REAL:
                diff = diff_low = diff_high = float("nan")
            else:
                diff = value - reference[0]
                diff_low, diff_high = percentile_interval(per_arm[arm][metric] - per_arm[REAL][metric], level)
            rows.append(
                {
                    "arm": arm,
                    "metric": metric,
                    "value": value,
                    "ci_low": low,
                    "ci_high": high,
                    "seed_std": spread,
                    "seeds": seeds,
                    "diff": diff,
                    "diff_low": diff_low,
                    "diff_high": diff_high,
                }
            )
    return UtilityScores(pd.DataFrame(rows), level, resamples)


# --- The result ------------------------------------------------------------------------------------------


@dataclass
class SyntheticUtilityResult:
    arms: list[Arm]
    class_names: list[str]
    real_counts: np.ndarray  # real training images per class
    arm_counts: dict[str, pd.DataFrame]  # arm -> source x class image counts
    scores: UtilityScores
    val_scores: pd.DataFrame  # arm, seed, val_auroc_macro, val_accuracy
    examples: dict[str, tuple[np.ndarray, list[str]]] = field(default_factory=dict)  # arm -> (grid, its rows' classes)
    test_images: int = 0
    test_patients: int = 0

    @property
    def rarest_class(self) -> str:
        return self.class_names[int(np.argmin(self.real_counts))]

    def metrics(self) -> dict[str, float]:
        """``<accuracy|auroc>_utility_<arm>[_<class>]`` with ``_ci_low``/``_ci_high``/``_seed_std``,
        and ``..._utility_diff_<arm>...`` for the paired difference to real-only."""
        out: dict[str, float] = {}
        for row in self.scores.table.itertuples():
            suffix = row.metric.partition("_")[2]
            stem = "accuracy_utility" if row.metric == "accuracy" else "auroc_utility"
            tail = "" if row.metric in ("accuracy", "auroc_macro") else f"_{suffix}"
            base = f"{stem}_{row.arm}{tail}"
            out.update({base: row.value, f"{base}_ci_low": row.ci_low, f"{base}_ci_high": row.ci_high})
            if np.isfinite(row.seed_std):
                out[f"{base}_seed_std"] = row.seed_std
            if row.arm != REAL:
                diff = f"{stem}_diff_{row.arm}{tail}"
                out.update({diff: row.diff, f"{diff}_ci_low": row.diff_low, f"{diff}_ci_high": row.diff_high})
        return out

    def not_worse(self, arm: str = "real_synthetic") -> Judged | None:
        """Non-inferiority of (arm - real) macro AUROC: the paired interval's lower end above
        ``-NOT_WORSE_AUROC_MARGIN`` (``verdicts.py`` says why that margin). None when the arm was not run."""
        if arm not in {a.name for a in self.arms}:
            return None
        row = self.scores.row(arm, "auroc_macro")
        return not_worse(row["diff_low"], row["diff_high"])

    def rarest_class_verdict(self) -> Judged | None:
        """Balancing improves the rarest class's AUROC: the paired interval above 0; cannot be
        judged when real-only already scores at the ceiling."""
        gain = self.rarest_class_gain()
        if gain is None:
            return None
        reference = self.scores.row(self.reference, f"auroc_{self.rarest_class}")["value"]
        return improves(gain["diff_low"], gain["diff_high"], reference)

    def rarest_class_gain(self) -> pd.Series | None:
        if "real_balanced" not in {a.name for a in self.arms}:
            return None
        try:
            return self.scores.row("real_balanced", f"auroc_{self.rarest_class}")
        except KeyError:  # the rarest class has no positives in test
            return None

    @property
    def seeds(self) -> int:
        return int(self.val_scores.groupby("arm").size().max()) if len(self.val_scores) else 0

    @property
    def reference(self) -> str:
        """The arm every difference is taken against."""
        return REAL
