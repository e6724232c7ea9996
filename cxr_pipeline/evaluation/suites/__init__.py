"""The evaluation suites, without Dagster, one module each: each scores the current model on the
test split next to its baselines, challenges the registry's champion on the same images
(``challenge.score_and_challenge``, the skeleton they share), and assembles the report. Scoring
only: publishing (report folder, MLflow run, registry tags and aliases) is ``publish.py``; the
statistics are ``cxr_pipeline.metrics.statistics``; rendering is ``cxr_pipeline.reports``.

Each kind binds its suite to the models it reads as an ``Evaluation`` (``outcome.py``); the
Dagster layer builds every evaluation asset from one.
"""

from .arbitrary_scale import ArbitrarySrOptions, arbitrary_super_resolution_suite
from .denoising import DenoisingOptions, denoising_suite
from .generation import GenerationOptions, generation_suite
from .super_resolution import SrOptions, super_resolution_suite
from .synthetic_utility import SyntheticUtilityOptions, synthetic_utility_suite
from .text_generation import TextGenerationOptions, text_generation_suite

__all__ = [
    "ArbitrarySrOptions",
    "DenoisingOptions",
    "GenerationOptions",
    "SrOptions",
    "SyntheticUtilityOptions",
    "TextGenerationOptions",
    "arbitrary_super_resolution_suite",
    "denoising_suite",
    "generation_suite",
    "super_resolution_suite",
    "synthetic_utility_suite",
    "text_generation_suite",
]
