# The cxr-pipeline image: the Dagster code server, the run worker and every step pod of
# deploy/definitions.py run it. Built from the repository's own install path (a wheel of this
# checkout, torch pinned first), as a non-root user, with the work folder as a volume.
#
#   docker build -t cxr-pipeline:latest .                                  # CPU
#   docker build -t cxr-pipeline:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 .
#   podman build / buildah bud take the same arguments (bench/container_image.sh builds it and runs
#   the smoke job inside it)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheel
# extra pip options for both stages, e.g. "--cert /path/ca.pem" behind a TLS-inspecting proxy,
# "--find-links /wheels-local" for wheels mounted at build time
ARG PIP_OPTIONS=""
WORKDIR /src
COPY pyproject.toml README.md definitions.py workspace.yaml ./
COPY cxr_pipeline ./cxr_pipeline
COPY assets ./assets
COPY resources ./resources
COPY jobs ./jobs
RUN python3 -m venv /opt/build && /opt/build/bin/pip install ${PIP_OPTIONS} "setuptools>=77" \
    && /opt/build/bin/pip wheel ${PIP_OPTIONS} --no-deps --no-build-isolation --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# torch first, from the index that matches the hardware (the CPU build by default; a CUDA index
# for GPU nodes: the CUDA libraries come as wheels, so the slim base image serves both)
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PIP_OPTIONS=""
# the commit the image was built from: MLflow's mlflow.source.git.commit on every run it makes
ARG GIT_COMMIT=unknown
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
# a virtual environment of its own: works on any Debian-based Python image (PEP 668 included)
RUN python3 -m venv /opt/venv && python -m pip install ${PIP_OPTIONS} --index-url "${TORCH_INDEX}" --extra-index-url https://pypi.org/simple \
        "torch==${TORCH_VERSION}"
COPY --from=wheel /wheels /wheels
RUN python -m pip install ${PIP_OPTIONS} "$(ls /wheels/cxr_pipeline-*.whl)[deploy]" && rm -rf /wheels
# the production definitions and instance (deploy/), read by the code server and the run launcher
COPY deploy /opt/cxr/deploy
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin cxr \
    && mkdir -p /data /opt/dagster/dagster_home \
    && cp /opt/cxr/deploy/dagster.yaml /opt/dagster/dagster_home/dagster.yaml \
    && chown -R cxr:cxr /data /opt/dagster
# GIT_PYTHON_REFRESH: the image has no git (the commit comes from CXR_GIT_COMMIT); MLflow's GitPython
# would otherwise print a page of warnings at every import
ENV CXR_HOME=/data DAGSTER_HOME=/opt/dagster/dagster_home CXR_GIT_COMMIT=${GIT_COMMIT} HOME=/home/cxr \
    GIT_PYTHON_REFRESH=quiet
VOLUME ["/data"]
USER 10001
WORKDIR /home/cxr
EXPOSE 3030
# the user code deployment's gRPC server; step pods and run workers override the command
CMD ["dagster", "api", "grpc", "--host", "0.0.0.0", "--port", "3030", "--python-file", "/opt/cxr/deploy/definitions.py"]
