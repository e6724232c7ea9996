"""Production definitions: the same assets, checks, schedule and sensor, with every training or
evaluation job on the Kubernetes executor (one pod per step; training steps ask for a GPU through
their ``dagster-k8s/config`` tag, see assets/models.py). Point a production workspace at this file
(``python_file: deploy/definitions.py``, working directory the repository root) with the instance
of deploy/dagster.yaml; MLflow via ``MLFLOW_TRACKING_URI`` (deploy/mlflow-server.sh)."""

import os

from dagster_k8s import k8s_job_executor

from definitions import build_definitions
from jobs import compute_jobs

IMAGE = os.environ.get("CXR_IMAGE", "cxr-pipeline:latest")

gpu_cluster_executor = k8s_job_executor.configured(
    {
        "image_pull_policy": "IfNotPresent",
        "max_concurrent": 4,
        "env_secrets": ["cxr-pipeline-secrets"],
        "step_k8s_config": {
            "container_config": {"image": IMAGE, "resources": {"requests": {"cpu": "2", "memory": "8Gi"}}}
        },
    }
)

defs = build_definitions(compute_jobs(gpu_cluster_executor))  # each pod's step on every core it requested
