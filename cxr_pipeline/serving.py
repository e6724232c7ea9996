"""Registered models as MLflow pyfunc models, so MLflow users load and serve them the usual way:

    model = mlflow.pyfunc.load_model("models:/cxr-latent-sr-x4@champion")
    high = model.predict(low_resolution, params={"seed": 0, "num_inference_steps": 50})
    # mlflow models serve -m models:/cxr-latent-sr-x4@champion --env-manager local

Each model is logged as code (``serving_model.py``, MLflow's models-from-code: no pickled Python)
with the model folder as its one artifact and this package as its code, a signature (tensors in
and out, the sampling knobs as params with their defaults) and an input example. What a model
takes and returns is its kind's serving spec (``cxr_pipeline.kinds``), the kind read from the
folder itself:

| kind | input | output | params |
| --- | --- | --- | --- |
| latent SR | LR images (N, 1, h, w) float32 in [0, 1] | (N, 1, h*scale, w*scale) | seed, num_inference_steps, strength |
| arbitrary-scale SR | LR images (N, 1, h, w) | (N, 1, round(h*scale), round(w*scale)) | seed, num_inference_steps, strength, scale |
| denoiser | low-dose images (N, 1, S, S) | restored images, same shape | seed, num_inference_steps, strength, dose |
| class model | class ids (N,) int64 | images (N, 1, S, S) | seed, num_inference_steps, guidance_scale |
| text model | reports: a ``report`` column of strings | images (N, 1, S, S) | seed, num_inference_steps, guidance_scale |
| report encoder | reports: a ``report`` column of strings | pooled embeddings (N, H) | |
| VAE | images (N, 1, S, S) | reconstructions | |
| classifier | images (N, 1, S, S) | class probabilities (N, C) | |

A negative ``strength``, ``guidance_scale`` or ``dose`` means the model's own default (the value it was
saved with; for ``dose``, the unknown-dose embedding).
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

from .kinds import ServingSpec, kind_of_folder
from .model_source import PIPELINE_ARTIFACT

MODEL_CODE = Path(__file__).with_name("serving_model.py")
PACKAGE = Path(__file__).resolve().parent
# What a registered model needs installed beside Python (the project's own code travels with it).
REQUIREMENTS = (
    "torch",
    "diffusers",
    "transformers",
    "tokenizers",
    "safetensors",
    "numpy",
    "pandas",
    "pillow",
    "scipy",
    "pyyaml",
    "mlflow",
)


def pinned_requirements(names: tuple[str, ...] = REQUIREMENTS) -> list[str]:
    """``name==version`` as installed in the training process, so a version served in a managed
    environment, or rebuilt a year later, gets what it was trained and checked with. A local
    version label (torch's ``+cpu``, ``+cu124``) is dropped: it names a build, not a release,
    and no package index resolves it; the accelerator build is the serving host's choice."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in names]


class PipelineModel(PythonModel):
    """The pyfunc model: the folder's pipeline, loaded once, answering requests."""

    def load_context(self, context) -> None:
        folder = Path(context.artifacts[PIPELINE_ARTIFACT])
        self.spec = kind_of_folder(folder).serving
        self.model = self.spec.load(folder, os.environ.get("CXR_SERVING_DEVICE", "auto"))

    def predict(self, context, model_input, params: dict | None = None) -> np.ndarray:
        return self.spec.predict(self.model, model_input, {**self.spec.defaults(), **(params or {})})


def signature(spec: ServingSpec):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    inputs = (
        Schema([ColSpec("string", "report")])
        if spec.input_dtype == "string"
        else Schema([TensorSpec(np.dtype(spec.input_dtype), spec.input_shape)])
    )
    outputs = Schema([TensorSpec(np.dtype(np.float32), spec.output_shape)])
    if not spec.params:
        return ModelSignature(inputs=inputs, outputs=outputs)
    return ModelSignature(
        inputs=inputs,
        outputs=outputs,
        params=ParamSchema([ParamSpec(name, kind_, default) for name, kind_, default in spec.params]),
    )


def input_example(folder: Path):
    return kind_of_folder(folder).serving.example(Path(folder))


def log_pyfunc(folder: Path, registered_name: str | None = None, name: str = "model", metadata: dict | None = None):
    """Log ``folder`` as a pyfunc model in the active run (and register it when a name is given);
    returns MLflow's ModelInfo (``registered_model_version`` is the new version). ``metadata``
    (the training data's provenance) goes into the MLmodel file, read back by ``mlflow.models.get_model_info``."""
    folder = Path(folder)
    spec = kind_of_folder(folder).serving
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(MODEL_CODE),
        artifacts={PIPELINE_ARTIFACT: str(folder)},
        code_paths=[str(PACKAGE)],
        signature=signature(spec),
        input_example=spec.example(folder),
        pip_requirements=pinned_requirements(),
        registered_model_name=registered_name,
        metadata=metadata,
    )
