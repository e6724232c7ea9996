"""The code MLflow loads for every registered model of this project (models-from-code): the
model folder logged beside it is its one artifact; see serving.py."""

import mlflow

from cxr_pipeline.serving import PipelineModel

mlflow.models.set_model(PipelineModel())
