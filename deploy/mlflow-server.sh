#!/usr/bin/env bash
# The production MLflow tracking server: PostgreSQL backend (runs, metrics, Model Registry) and an
# S3-compatible bucket for artifacts (models, reports), proxied through the server so clients need
# no bucket credentials. Clients then set MLFLOW_TRACKING_URI=http://<host>:5000.
#   MLFLOW_PG_URI        postgresql://user:password@host:5432/mlflow
#   MLFLOW_ARTIFACTS     s3://bucket/mlflow
#   MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   for MinIO or another S3-compatible store
set -euo pipefail
exec mlflow server \
  --backend-store-uri "${MLFLOW_PG_URI:?set MLFLOW_PG_URI}" \
  --artifacts-destination "${MLFLOW_ARTIFACTS:?set MLFLOW_ARTIFACTS}" \
  --serve-artifacts \
  --host 0.0.0.0 --port "${MLFLOW_PORT:-5000}"
