import os
from pathlib import Path

import pytest
import torch
from pydicom.data import get_testdata_file

from cxr_pipeline.data.demo.dataset import DemoSpec, generate_demo_dataset


def pydicom_file(name: str) -> Path:
    """A real DICOM file from the installed pydicom-data package."""
    path = get_testdata_file(name)
    assert path is not None, f"{name} not found: is pydicom-data installed?"
    return Path(path)


SMALL_DEMO = DemoSpec(patients=14, source_size=128, dicom_share=0.3)


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory) -> Path:
    """A small demo dataset (same generator as the default one, fewer and smaller images)."""
    root = tmp_path_factory.mktemp("demo") / "data"
    generate_demo_dataset(root, SMALL_DEMO, workers=2)
    return root


THREAD_SETTINGS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CXR_SHARE_CORES", "CXR_STEP_THREADS", "CXR_RUNNING_STEPS_DIR")


@pytest.fixture(autouse=True)
def thread_settings_do_not_leak():
    """A test that leaves the process's threads changed makes later tests differ from their own
    subprocesses (a resumed training then no longer matches to the bit): it fails here, by name."""
    before = torch.get_num_threads(), {name: os.environ.get(name) for name in THREAD_SETTINGS}
    yield
    after = torch.get_num_threads(), {name: os.environ.get(name) for name in THREAD_SETTINGS}
    assert after == before, f"this test left the thread settings changed: {before} -> {after}"
