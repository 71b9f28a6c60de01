"""Shared fixtures: the test model repository and a real `infergate serve` process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import ServerProcess, has_torch, start_server
from modelgen import build_test_repository


@pytest.fixture(scope="session")
def test_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_repository(tmp_path_factory.mktemp("repo"), with_torch=has_torch())


@pytest.fixture(scope="session")
def server(test_repository: Path) -> Iterator[ServerProcess]:
    proc = start_server("--model-repository", str(test_repository))
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def url(server: ServerProcess) -> str:
    return server.address


@pytest.fixture()
def client(url: str) -> Iterator[object]:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as c:
        yield c
