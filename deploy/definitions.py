"""Production definitions: the same assets, checks, schedule and sensor, with every training or
evaluation job on the Kubernetes executor (one pod per step; heavy steps ask for a GPU through
their ``dagster-k8s/config`` tag, see assets/training.py). The code server of the image (Dockerfile)
serves this file; the instance is deploy/dagster.yaml, MLflow a tracking server
(``MLFLOW_TRACKING_URI``, deploy/mlflow-server.sh). Step by step: docs/operations.md#production.

Every asset hands its data to the next through files under ``CXR_HOME``, so every pod of a run
(the run worker, each step, the code server) mounts the same ``ReadWriteMany`` volume there
(deploy/k8s/work-volume.yaml): the run launcher through deploy/dagster.yaml, each step through
``step_k8s_config`` below.
"""

import os

from dagster_k8s import k8s_job_executor

from definitions import build_definitions
from jobs import compute_jobs

IMAGE = os.environ.get("CXR_IMAGE", "cxr-pipeline:latest")
WORK_CLAIM = os.environ.get("CXR_WORK_CLAIM", "cxr-work")  # the ReadWriteMany claim (deploy/k8s/work-volume.yaml)
WORK_MOUNT = "/data"  # CXR_HOME in every pod, as the image sets it
SECRETS = "cxr-pipeline-secrets"  # DAGSTER_PG_*, MLFLOW_TRACKING_URI, AWS_* (deploy/k8s/secrets.example.yaml)
IMAGE_USER = 10001  # the image's non-root user: the volume is made writable for its group

EXECUTOR_CONFIG = {
    "image_pull_policy": "IfNotPresent",
    "max_concurrent": 4,
    "env_secrets": [SECRETS],
    "step_k8s_config": {
        "container_config": {
            "image": IMAGE,
            "env": [{"name": "CXR_HOME", "value": WORK_MOUNT}],
            "volume_mounts": [{"name": "cxr-work", "mount_path": WORK_MOUNT}],
            "resources": {"requests": {"cpu": "2", "memory": "8Gi"}},
        },
        "pod_spec_config": {
            "volumes": [{"name": "cxr-work", "persistent_volume_claim": {"claim_name": WORK_CLAIM}}],
            "security_context": {"run_as_user": IMAGE_USER, "run_as_non_root": True, "fs_group": IMAGE_USER},
        },
    },
}

cluster_executor = k8s_job_executor.configured(EXECUTOR_CONFIG, name="k8s")

defs = build_definitions(compute_jobs(cluster_executor))  # each pod's step on every core it requested
