"""A regular install works: the wheel built from this repository, installed into a fresh virtual
environment outside the checkout, loads the Definitions and runs the ``smoke`` job through its
``cxr-pipeline`` command (training workers started as modules, ``python -m jobs.train_worker``).

The new environment reuses this one's third-party packages through a path entry instead of
installing them again (no network); the project itself comes only from the wheel."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import dagster as dg
import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGED = (
    "pyproject.toml",
    "README.md",
    "definitions.py",
    "workspace.yaml",
    "cxr_pipeline",
    "assets",
    "resources",
    "jobs",
)

pytestmark = pytest.mark.slow  # a wheel build and the whole graph at the smoke budget


def run(command: list, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # what the Dockerfile copies: the build writes nothing into the checkout
    source.mkdir()
    for name in PACKAGED:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", root / "dist", source], root)
    (wheel,) = (root / "dist").glob("cxr_pipeline-*.whl")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], root)
    python = venv / "bin" / "python"
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], root).stdout.strip())
    # this environment's packages, after the new one's own (where the wheel goes)
    (purelib / "reused_packages.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel], root)
    # nothing that points into the checkout (its .venv on PATH, its work folder), no work folder
    outside = [entry for entry in os.environ.get("PATH", "").split(os.pathsep) if str(REPO) not in entry]
    env = {k: v for k, v in os.environ.items() if str(REPO) not in v and k not in ("CXR_HOME", "DAGSTER_HOME")}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *outside])
    return venv, purelib, env, root


def test_the_wheel_loads_the_definitions_outside_the_checkout(installed):
    venv, purelib, env, root = installed
    probe = (
        "import json, dagster as dg, definitions, cxr_pipeline, jobs.train_worker;"
        "dg.Definitions.validate_loadable(definitions.defs);"
        "print(json.dumps({'library': cxr_pipeline.__file__, 'definitions': definitions.__file__,"
        " 'worker': jobs.train_worker.__file__, 'jobs': sorted(j.name for j in definitions.defs.jobs)}))"
    )
    found = json.loads(run([venv / "bin" / "python", "-c", probe], root, env).stdout.strip().splitlines()[-1])
    for module in ("library", "definitions", "worker"):
        assert Path(found[module]).is_relative_to(purelib), found  # from the wheel, not the checkout
    assert {"all_assets", "smoke", "training", "evaluation"} <= set(found["jobs"])


def test_the_installed_command_runs_the_smoke_job(installed):
    venv, _, env, root = installed
    home = root / "work"
    env = {**env, "CXR_STEP_THREADS": "1"}
    run([venv / "bin" / "cxr-pipeline", "--home", home, "demo", "--job", "smoke"], root, env, timeout=1200)
    with dg.DagsterInstance.from_config(str(home / "dagster_home")) as instance:  # the instance inside the work folder
        (smoke,) = instance.get_runs()
        assert smoke.job_name == "smoke" and smoke.status == dg.DagsterRunStatus.SUCCESS
    current = {p.stem for p in (home / "models" / "current").glob("*.json")}
    assert {"vae", "class_ddpm", "denoiser", "arbitrary_sr"} <= current, current
