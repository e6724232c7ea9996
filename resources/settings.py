"""Where data comes from, where outputs go, and which profile sizes them."""

import os
from pathlib import Path

import dagster as dg

from cxr_pipeline.compute import reuse_freed_memory, start_sharing
from cxr_pipeline.settings import Profile, WorkPaths, profile_from_environment, work_home

DEMO_KINDS = ("radiographs", "ct_slices")


class CxrSettings(dg.ConfigurableResource):
    """Each field, when left empty, falls back to its environment variable, then a default.

    - ``home`` / ``CXR_HOME``: the work folder for every output (default ``./work``).
    - ``data_dir`` / ``CXR_DATA_DIR``: the raw data to ingest (default: the built-in demo
      dataset, generated on first use into ``<home>/demo_data``).
    - ``profile`` / ``CXR_PROFILE``: ``demo`` (default) or ``full``.
    - ``demo`` / ``CXR_DEMO``: which built-in dataset stands in when no data folder is given:
      ``radiographs`` (default: NIH, OpenI and PACS layouts) or ``ct_slices`` (chest CT slices in
      the single-slice class-folder layout, no reports).
    - ``share_cores``: every step's process takes its share of the cores (torch, OpenMP, MKL and
      its own thread pools): every core divided by the heavy steps running on the machine now,
      rebalanced as they start and end (``cxr_pipeline.compute``). The Definitions turn it on for
      the local executor, where steps run side by side; off, every step uses every core.

    Every step's process also keeps freed memory for reuse (``reuse_freed_memory``; set
    ``CXR_REUSE_FREED_MEMORY=0`` for the C library's defaults).
    """

    home: str | None = None
    data_dir: str | None = None
    profile: str | None = None
    demo: str | None = None
    workers: int = 0  # processes for decoding and generation; 0 = every core
    share_cores: bool = False

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        reuse_freed_memory()
        if self.share_cores:
            start_sharing()

    def resolved_home(self) -> Path:
        return work_home(self.home)

    def paths(self) -> WorkPaths:
        return WorkPaths(self.resolved_home())

    def profile_spec(self) -> Profile:
        return profile_from_environment(self.profile)

    def configured_data_dir(self) -> Path | None:
        value = self.data_dir or os.environ.get("CXR_DATA_DIR")
        return Path(value).expanduser().resolve() if value else None

    def demo_kind(self) -> str:
        kind = self.demo or os.environ.get("CXR_DEMO") or "radiographs"
        if kind not in DEMO_KINDS:
            raise ValueError(f"unknown demo {kind!r}; choose one of {DEMO_KINDS}")
        return kind

    def uses_demo_data(self) -> bool:
        return self.configured_data_dir() is None

    def raw_data_dir(self) -> Path:
        demo = self.paths().demo_data
        return self.configured_data_dir() or (
            demo if self.demo_kind() == "radiographs" else demo.with_name("demo_ct_slices")
        )
