# infergate on CPU: the server, the CPU build of torch (TorchScript models), the built-in example repository.
#
#   docker build -t infergate:cpu .
#   docker run --rm -p 8001:8001 -p 8002:8002 infergate:cpu                         # serves the example
#   docker run --rm -p 8001:8001 -v "$PWD/my-repo:/models:ro" --stop-timeout 30 infergate:cpu
#
# Build arguments: TORCH_VERSION (2.13.0, .ci/run's pin; empty: no torch, so no TorchScript models),
# TORCH_INDEX_URL (PyTorch's CPU wheels). Same layout as Dockerfile.gpu; tests/deploy/test_images.py keeps
# the install steps equal to CI's and deploy/README.md explains the choices. apt versions are not pinned
# (DL3008): the base image's tag pins the release, and a rebuild takes its security fixes.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# A C compiler with OpenMP for the Cython kernels (setup.py builds them; the server falls back without).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libgomp1 \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# CI's order (.ci/run): pip, the pinned torch, then the repository (its own layer: a code change keeps torch's).
# hadolint ignore=DL3013
RUN python -m pip install --upgrade pip \
    && if [ -n "${TORCH_VERSION}" ]; then \
      python -m pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"; \
    fi
COPY . /src
# Then the example repository, built once here (deterministic: training is seeded) so /models serves out of
# the box; its held-out rows land beside it, in /opt/infergate/example-data-v1.
RUN python -m pip install /src \
    && python -m pip check \
    && python -c "import infergate.kernels._cython_kernels" \
    && infergate example-repository /opt/infergate/example-repository

FROM ${PYTHON_IMAGE}
# libgomp1: OpenMP of the Cython kernels.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 infergate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin infergate
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/infergate/example-data-v1 /opt/infergate/example-data-v1
COPY --from=build /opt/infergate/example-repository /models
COPY deploy/healthcheck.py /opt/infergate/healthcheck.py
# Caches go to /tmp (an emptyDir under a read-only root file system): numba's compiled kernels, and the
# example repository should someone run `infergate serve` without --model-repository.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    INFERGATE_CACHE_DIR=/tmp/infergate-cache \
    INFERGATE_HEALTH_ADDRESS=127.0.0.1:8001
USER 10001:10001
WORKDIR /tmp
# The model repository (Triton's layout). Unmounted, it holds the example (digits_small, digits_large,
# identity, digits_cascade); mount yours over it, read-only.
VOLUME ["/models"]
# 8001: gRPC (KServe v2 / Triton); 8002: Prometheus /metrics and /stats.json.
EXPOSE 8001 8002
# grpc.health.v1 Check of service "": SERVING once every model loaded, NOT_SERVING from the start of a drain.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/venv/bin/python", "/opt/infergate/healthcheck.py"]
# SIGTERM drains: health NOT_SERVING at once, 5 s still serving (--shutdown-delay-s), then up to 20 s for the
# calls in flight (--exit-timeout-s). 5 + 20 + 5 s of clean-up fits Kubernetes' default 30 s grace; give
# `docker stop` as long (-t 30 or --stop-timeout 30: its default is 10 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["infergate"]
CMD ["serve", "--model-repository", "/models", "--grpc-address", "0.0.0.0:8001", \
     "--metrics-address", "0.0.0.0:8002", "--shutdown-delay-s", "5", "--exit-timeout-s", "20"]
