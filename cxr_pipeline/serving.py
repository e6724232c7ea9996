"""Registered models as MLflow pyfunc models, so MLflow users load and serve them the usual way:

    model = mlflow.pyfunc.load_model("models:/cxr-latent-sr-x4@champion")
    high = model.predict(low_resolution, params={"seed": 0, "steps": 50})
    # mlflow models serve -m models:/cxr-latent-sr-x4@champion --env-manager local

Each model is logged as code (``serving_model.py``, MLflow's models-from-code: no pickled Python)
with the model folder as its one artifact and this package as its code, a signature (tensors in
and out, the sampling knobs as params with their defaults) and an input example. What a model
takes and returns depends on its kind, read from the folder itself:

| kind | input | output | params |
| --- | --- | --- | --- |
| latent SR | LR images (N, 1, h, w) float32 in [0, 1] | (N, 1, h*scale, w*scale) | seed, steps, strength |
| arbitrary-scale SR | LR images (N, 1, h, w) | (N, 1, round(h*scale), round(w*scale)) | seed, steps, strength, scale |
| denoiser | low-dose images (N, 1, S, S) | restored images, same shape | seed, steps, strength, dose |
| class model | class ids (N,) int64 | images (N, 1, S, S) | seed, steps, guidance |
| text model | reports: a ``report`` column of strings | images (N, 1, S, S) | seed, steps, guidance |
| report encoder | reports: a ``report`` column of strings | pooled embeddings (N, H) | |
| VAE | images (N, 1, S, S) | reconstructions | |
| classifier | images (N, 1, S, S) | class probabilities (N, C) | |

A negative ``strength``, ``guidance`` or ``dose`` means the model's own default (the value it was
saved with; for ``dose``, the unknown-dose embedding).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import mlflow
import numpy as np
import torch

PIPELINE_ARTIFACT = "pipeline"
MODEL_CODE = Path(__file__).with_name("serving_model.py")
PACKAGE = Path(__file__).resolve().parent
# What a registered model needs installed beside Python (the project's own code travels with it).
REQUIREMENTS = ("torch", "diffusers", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "pillow",
                "scipy", "mlflow")


def kind_of(folder: Path) -> str:
    """The model kind a folder holds, from its own description files."""
    folder = Path(folder)
    if (folder / "model.json").exists():
        return str(json.loads((folder / "model.json").read_text())["kind"])
    if (folder / "classifier.json").exists():
        return "classifier"
    config = folder / "config.json"
    if config.exists() and json.loads(config.read_text()).get("_class_name") == "AutoencoderKL":
        return "vae"
    if config.exists() and "model_type" in json.loads(config.read_text()):  # a transformers text encoder
        return "report_encoder"
    raise ValueError(f"{folder} is not a model folder of this project (no model.json, classifier.json or "
                     f"AutoencoderKL config.json)")


def _given(value: float, fallback: float | None = None) -> float | None:
    """A request's knob, or ``fallback`` (None: the model's saved default) when it is negative."""
    return fallback if value < 0 else value


def _reports(model_input: Any) -> list[str]:
    """Report texts from a request: a DataFrame's ``report`` (or only) column, or a list."""
    if hasattr(model_input, "columns"):
        column = "report" if "report" in model_input.columns else model_input.columns[0]
        return [str(text) for text in model_input[column].tolist()]
    return [str(text) for text in np.asarray(model_input, dtype=object).reshape(-1).tolist()]


def _report_example(folder: Path):
    import pandas as pd
    return pd.DataFrame({"report": ["Small right pleural effusion. No pneumothorax."]})


def _images(model_input: Any) -> torch.Tensor:
    array = np.asarray(model_input, dtype=np.float32)
    if array.ndim == 3:  # (N, h, w): one channel implied
        array = array[:, None]
    if array.ndim != 4 or array.shape[1] != 1:
        raise ValueError(f"expected images shaped (N, 1, h, w) in [0, 1], got {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array))


@dataclass(frozen=True)
class Task:
    """How one model kind is served: load the folder, answer a request, describe both."""

    load: Callable[[Path, str], Any]
    predict: Callable[[Any, Any, dict], np.ndarray]
    example: Callable[[Path], np.ndarray]  # a small valid input for the model in a folder
    input_dtype: str  # numpy dtype name, or "string": a ``report`` column of text
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: tuple[tuple[str, str, Any], ...] = ()  # (name, MLflow type, default)


def _sampling_params(*extra: tuple[str, str, Any]) -> tuple[tuple[str, str, Any], ...]:
    return (("seed", "long", 0), ("steps", "long", 50), *extra)


def _task(kind: str) -> Task:
    from .models import pipelines
    from .models.classifier import embed, load_classifier
    from .models.vae import load_vae, reconstruct

    images, probabilities = (-1, 1, -1, -1), (-1, -1)
    if kind.startswith("latent_sr"):
        return Task(pipelines.LatentSuperResolution.from_pretrained,
                    lambda sr, x, p: sr(_images(x), seed=p["seed"], steps=p["steps"],
                                        strength=_given(p["strength"], 1.0)).numpy(),
                    lambda folder: _gray(_native_size(folder) // int(_description(folder)["scale"])),
                    "float32", images, images, _sampling_params(("strength", "double", 1.0)))
    if kind.startswith("arbitrary_sr"):
        return Task(pipelines.ArbitraryScaleSuperResolution.from_pretrained,
                    lambda sr, x, p: sr(_images(x), scale=p["scale"], seed=p["seed"], steps=p["steps"],
                                        strength=_given(p["strength"], 1.0)).numpy(),
                    lambda folder: _gray(_native_size(folder) // 4),
                    "float32", images, images, _sampling_params(("strength", "double", 1.0), ("scale", "double", 2.0)))
    if kind.startswith("denoiser"):
        return Task(pipelines.LowDoseDenoiser.from_pretrained,
                    lambda model, x, p: model(_images(x), seed=p["seed"], steps=p["steps"],
                                              strength=_given(p["strength"]), dose=_given(p["dose"])).numpy(),
                    lambda folder: _gray(_native_size(folder)),
                    "float32", images, images, _sampling_params(("strength", "double", -1.0), ("dose", "double", -1.0)))
    if kind.startswith("class_ddpm"):
        return Task(pipelines.ClassConditionalGenerator.from_pretrained,
                    lambda model, x, p: model(np.asarray(x, dtype=np.int64).reshape(-1).tolist(), seed=p["seed"],
                                              steps=p["steps"], guidance=_given(p["guidance"])).numpy(),
                    lambda folder: np.zeros(1, np.int64),
                    "int64", (-1,), images, _sampling_params(("guidance", "double", -1.0)))
    if kind.startswith("text_ldm"):
        return Task(pipelines.TextConditionalGenerator.from_pretrained,
                    lambda model, x, p: model(_reports(x), seed=p["seed"], steps=p["steps"],
                                              guidance=_given(p["guidance"])).numpy(),
                    _report_example, "string", (-1,), images, _sampling_params(("guidance", "double", -1.0)))
    if kind == "report_encoder":
        from .models.report_encoder import ReportEncoder
        return Task(lambda folder, device: ReportEncoder.from_pretrained(folder, _device(device)),
                    lambda encoder, x, p: encoder.encode(_reports(x)).pooled().cpu().numpy().astype(np.float32),
                    _report_example, "string", (-1,), probabilities)
    if kind == "vae":
        return Task(lambda folder, device: load_vae(folder, _device(device)),
                    lambda vae, x, p: reconstruct(vae, _images(x)).numpy(),
                    lambda folder: _gray(16), "float32", images, images)
    if kind == "classifier":
        return Task(lambda folder, device: load_classifier(folder, device)[0],
                    lambda model, x, p: embed(model, _images(x))[1].astype(np.float32),
                    lambda folder: _gray(32), "float32", images, probabilities)
    raise ValueError(f"no serving task for model kind {kind!r}")


def _description(folder: Path) -> dict:
    return json.loads((Path(folder) / "model.json").read_text())


def _native_size(folder: Path) -> int:
    """The image size a diffusion model folder was trained at (its UNet's, times its VAE's
    downsampling), read from the configs without loading weights."""
    folder = Path(folder)
    size = int(json.loads((folder / "unet" / "config.json").read_text())["sample_size"])
    if (folder / "vae" / "config.json").exists():
        size *= 2 ** (len(json.loads((folder / "vae" / "config.json").read_text())["block_out_channels"]) - 1)
    return size


def _gray(size: int) -> np.ndarray:
    return np.full((1, 1, size, size), 0.5, np.float32)


def _device(device: str) -> torch.device:
    from .models.training import pick_device
    return pick_device(device)


class PipelineModel(mlflow.pyfunc.PythonModel):
    """The pyfunc model: the folder's pipeline, loaded once, answering requests."""

    def load_context(self, context) -> None:
        folder = Path(context.artifacts[PIPELINE_ARTIFACT])
        self.kind = kind_of(folder)
        self.task = _task(self.kind)
        self.model = self.task.load(folder, os.environ.get("CXR_SERVING_DEVICE", "auto"))

    def predict(self, context, model_input, params: dict | None = None) -> np.ndarray:
        defaults = {name: default for name, _, default in self.task.params}
        return self.task.predict(self.model, model_input, {**defaults, **(params or {})})


def signature(kind: str):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    task = _task(kind)
    inputs = (Schema([ColSpec("string", "report")]) if task.input_dtype == "string"
              else Schema([TensorSpec(np.dtype(task.input_dtype), task.input_shape)]))
    return ModelSignature(inputs=inputs,
                          outputs=Schema([TensorSpec(np.dtype(np.float32), task.output_shape)]),
                          params=ParamSchema([ParamSpec(name, kind_, default) for name, kind_, default in task.params])
                          if task.params else None)


def input_example(folder: Path) -> np.ndarray:
    return _task(kind_of(folder)).example(Path(folder))


def log_pyfunc(folder: Path, registered_name: str | None = None, name: str = "model"):
    """Log ``folder`` as a pyfunc model in the active run (and register it when a name is given);
    returns MLflow's ModelInfo (``registered_model_version`` is the new version)."""
    folder = Path(folder)
    return mlflow.pyfunc.log_model(
        name=name, python_model=str(MODEL_CODE), artifacts={PIPELINE_ARTIFACT: str(folder)},
        code_paths=[str(PACKAGE)], signature=signature(kind_of(folder)), input_example=input_example(folder),
        pip_requirements=list(REQUIREMENTS), registered_model_name=registered_name)


def pipeline_folder(model_root: Path) -> Path:
    """The model folder inside a downloaded pyfunc model (its MLmodel names the artifact's path)."""
    import yaml

    model_root = Path(model_root)
    description = yaml.safe_load((model_root / "MLmodel").read_text())
    artifact = description["flavors"]["python_function"]["artifacts"][PIPELINE_ARTIFACT]["path"]
    return model_root / artifact
