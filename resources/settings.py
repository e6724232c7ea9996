"""Where data comes from, where outputs go, and which profile sizes them."""


import os
from pathlib import Path
from typing import Optional

import dagster as dg

from cxr_pipeline.compute import use_threads
from cxr_pipeline.settings import Profile, WorkPaths, profile_from_environment, work_home


class CxrSettings(dg.ConfigurableResource):
    """Each field, when left empty, falls back to its environment variable, then a default.

    - ``home`` / ``CXR_HOME``: the work folder for every output (default ``./work``).
    - ``data_dir`` / ``CXR_DATA_DIR``: the raw data to ingest (default: the built-in demo
      dataset, generated on first use into ``<home>/demo_data``).
    - ``profile`` / ``CXR_PROFILE``: ``demo`` (default) or ``full``.
    - ``step_threads``: the compute threads of every step's process (torch, OpenMP, MKL and the
      step's own thread pools), set when the step starts; 0 leaves every core to each step. The
      Definitions set it to the machine's share (``cxr_pipeline.compute.core_share``), so
      trainings side by side do not fight over the cores.
    """

    home: Optional[str] = None
    data_dir: Optional[str] = None
    profile: Optional[str] = None
    workers: int = 0  # processes for decoding and generation; 0 = every core
    step_threads: int = 0

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.step_threads:
            use_threads(self.step_threads)

    def resolved_home(self) -> Path:
        return work_home(self.home)

    def paths(self) -> WorkPaths:
        return WorkPaths(self.resolved_home())

    def profile_spec(self) -> Profile:
        return profile_from_environment(self.profile)

    def configured_data_dir(self) -> Path | None:
        value = self.data_dir or os.environ.get("CXR_DATA_DIR")
        return Path(value).expanduser().resolve() if value else None

    def uses_demo_data(self) -> bool:
        return self.configured_data_dir() is None

    def raw_data_dir(self) -> Path:
        return self.configured_data_dir() or self.paths().demo_data
