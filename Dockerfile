# syntax=docker/dockerfile:1
# The chipfit operator image. Build: `docker build -t chipfit:0.1.0 .` (skaffold.yaml does the same).
# Two stages: `build` turns the pinned dependencies and chipfit itself into wheels; the final stage installs
# only those wheels, offline, into a clean slim image that runs as a non-root user.

# Python 3.11 (pyproject's floor) on Debian bookworm slim, pinned by digest so a rebuilt tag cannot change
# the image underneath us. Digest as recorded by a Renovate-maintained Dockerfile for this tag; re-pin with
# `docker buildx imagetools inspect python:3.11.10-slim-bookworm`.
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, so editing chipfit's code does not re-download them.
# Binary wheels only: neither stage has a compiler, and none is needed.
COPY requirements.lock ./
RUN python -m pip wheel --only-binary=:all: --wheel-dir /wheels --requirement requirements.lock
COPY pyproject.toml README.md ./
COPY placement/ placement/
COPY operator/ operator/
RUN python -m pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# Must match the chart's pod securityContext (runAsUser / runAsGroup); numeric so that the kubelet can
# verify runAsNonRoot.
ARG CHIPFIT_UID=10001
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid "${CHIPFIT_UID}" chipfit \
    && useradd --system --uid "${CHIPFIT_UID}" --gid chipfit --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin chipfit
# Install from the build stage's wheels only (--no-index: nothing is resolved or fetched here), through a
# bind mount so the wheels never become a layer; then drop the installers, which the operator never runs.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,from=build,source=/src/requirements.lock,target=/tmp/requirements.lock \
    python -m pip install --no-index --find-links=/wheels --requirement /tmp/requirements.lock /wheels/chipfit-*.whl \
    && python -m pip uninstall --yes pip setuptools wheel
USER ${CHIPFIT_UID}:${CHIPFIT_UID}
# kopf's liveness endpoint and the Prometheus metrics (the chart's health.port and metrics.port).
EXPOSE 8080 9090
ENTRYPOINT ["chipfit", "operator"]
