"""Model folders for tests, written the way training writes them."""

from __future__ import annotations

from cxr_pipeline.models.diffusion import Conditioning, ScheduleConfig, UNetConfig
from cxr_pipeline.models.model_folder import SavedModel
from cxr_pipeline.models.model_settings import ModelSettings, TrainingRecord


def untrained(
    kind: str, unet: UNetConfig, schedule: ScheduleConfig, conditioning: Conditioning, settings: ModelSettings
) -> SavedModel:
    """The model.json of a folder no training wrote (step 0, no data)."""
    return SavedModel(kind, unet, schedule, conditioning, settings, TrainingRecord(step=0, data_hash="none", train={}))
