"""Fixtures for the kernel tests; shared values live in kernel_cases.py (conftest is not importable by name)."""

import pytest
from kernel_cases import BACKENDS


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
