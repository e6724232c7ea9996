#!/usr/bin/env bash
# Build the container image (Dockerfile) with podman, no Docker engine needed, and run the smoke
# job inside it on a work folder mounted at /data, as a step pod would. Prints the build time, the
# image size and the smoke job's time. Not part of CI: it needs podman (Debian: apt-get install
# podman) and, where no registry serves python:3.11-slim, debootstrap to make a Debian base image
# from Debian's own packages.
#
#   bash bench/container_image.sh            # CXR_BASE_IMAGE=... to use a base image you have
set -euo pipefail
cd "$(dirname "$0")/.."
command -v podman >/dev/null || { echo "podman is not installed: the image cannot be built here" >&2; exit 2; }
base=${CXR_BASE_IMAGE:-python:3.11-slim-bookworm}
if ! podman image exists "$base" && ! podman pull -q "$base" >/dev/null 2>&1; then
  base=localhost/cxr-debian-python:bookworm
  if ! podman image exists "$base"; then
    echo "no registry serves python:3.11-slim: building $base from Debian's packages (debootstrap)"
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
      http://deb.debian.org/debian >/dev/null
    tar -C "$rootfs" -c . | podman import --quiet - "$base" >/dev/null
    rm -rf "$rootfs"
  fi
fi
# torch: this machine's CPU wheel when it has one (no torch index reachable), else the CPU index
# and this machine's CA bundle (a TLS-inspecting proxy between the build and PyPI)
pip_options="--cert /host-ca.crt"
torch_args=(--build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu)
if ls /opt/wheels/torch-*.whl >/dev/null 2>&1; then
  pip_options="$pip_options --find-links /wheels-local"
  torch_args=(--build-arg TORCH_INDEX=https://pypi.org/simple --volume /opt/wheels:/wheels-local:ro)
fi
torch_args+=(--build-arg "PIP_OPTIONS=$pip_options" --volume /etc/ssl/certs/ca-certificates.crt:/host-ca.crt:ro)
started=$(date +%s)
podman build --isolation chroot --network host --build-arg "PYTHON_IMAGE=$base" --build-arg "GIT_COMMIT=$(git rev-parse HEAD)" \
  "${torch_args[@]}" -t cxr-pipeline:bench . >/tmp/cxr-image-build.log 2>&1 \
  || { tail -30 /tmp/cxr-image-build.log; exit 1; }
built=$(date +%s)
echo "image built in $((built - started)) s from $base; size $(podman image inspect cxr-pipeline:bench --format '{{.Size}}' | numfmt --to=iec)"
work=$(mktemp -d)
chown 10001:10001 "$work"
# Where a container runtime works (podman run, a cluster) the image runs as is; this bench uses
# buildah's chroot isolation, which needs no cgroups, so it also runs inside unprivileged sandboxes.
# That isolation gives the image's declared VOLUME (/data) a fresh empty folder whatever is mounted
# there, so the host folder is mounted beside it and named by CXR_HOME. Outside a cluster the
# instance is a local one in the work folder (DAGSTER_HOME), not the image's PostgreSQL one.
container=$(buildah from cxr-pipeline:bench)
trap 'buildah rm "$container" >/dev/null 2>&1 || true' EXIT
buildah run --isolation chroot --user 10001 --volume "$work:/srv/work:rw" --env CXR_HOME=/srv/work \
  --env DAGSTER_HOME=/srv/work/dagster_home --env CXR_STEP_THREADS=1 "$container" -- \
  cxr-pipeline demo --job smoke >/tmp/cxr-image-smoke.log 2>&1 || { tail -40 /tmp/cxr-image-smoke.log; exit 1; }
ran=$(date +%s)
run_status=$(grep -o 'RUN_SUCCESS\|RUN_FAILURE' /tmp/cxr-image-smoke.log | tail -1)
echo "smoke job inside the image: $((ran - built)) s, $run_status; models on the host: $(ls "$work/models/current" | tr '\n' ' ')"
[ "$run_status" = RUN_SUCCESS ]
