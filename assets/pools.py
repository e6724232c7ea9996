"""Dagster concurrency pools shared by several asset modules.

Steps that replace files other runs read (manifest and shards, metadata and splits, pair stores,
latents) share the ``cxr_work_folder`` pool, so a second run's step waits, queued and visible in
the UI, instead of racing the first. The library holds a file lock on the same folders as well
(``cxr_pipeline.data.locks``), which also covers runs outside Dagster and instances whose pool
limit is unset. ``run.sh`` writes ``default_limit: 1`` into ``$DAGSTER_HOME/dagster.yaml``, which
holds this pool to one step; it sizes the ``cxr_training`` pool on its own (see assets/training.py).
"""

from typing import Any

WORK_FOLDER_WRITER: dict[str, Any] = {"pool": "cxr_work_folder"}
