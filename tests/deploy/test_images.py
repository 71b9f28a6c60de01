"""The images: install steps equal to CI's, hadolint, the build context, the health probe against a real server.

No Docker engine runs here, so the images are never built: these check what can be checked without one.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from deploy_support import ROOT, edit, tool_or_skip

from harness import start_server

HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"


# -- the install steps against .ci/run's ---------------------------------------------------------------------

def test_images_install_what_ci_installs(check: ModuleType) -> None:
    assert check.pin_errors() == []


def test_both_images_pin_cis_torch(check: ModuleType) -> None:
    (ci_torch,) = [r for i in check.ci_installs() for r in i["requirements"] if r.startswith("torch")]
    for name in check.DOCKERFILES:
        installs, variables, _ = check.image_installs(ROOT / name)
        assert [r for i in installs for r in i["requirements"] if r.startswith("torch")] == [ci_torch], name
    cpu_index = check.image_installs(ROOT / "Dockerfile")[1]["TORCH_INDEX_URL"]
    assert cpu_index == "https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize(("path", "old", "new", "expected"), [
    ("Dockerfile", "ARG TORCH_VERSION=2.13.0", "ARG TORCH_VERSION=2.12.0",
     "Dockerfile: installs torch==2.12.0, .ci/run torch==2.13.0: change both together"),
    ("Dockerfile.gpu", "ARG TORCH_VERSION=2.13.0", "ARG TORCH_VERSION=2.14.0",
     "Dockerfile.gpu: installs torch==2.14.0, .ci/run torch==2.13.0: change both together"),
    (".ci/run", "torch==2.13.0", "torch==2.15.0",
     "Dockerfile: installs torch==2.13.0, .ci/run torch==2.15.0: change both together"),
    ("Dockerfile.gpu", 'INFERGATE_GPU=1 python -m pip install "/src[gpu]"', 'python -m pip install "/src[gpu]"',
     "Dockerfile.gpu: the repository is installed without INFERGATE_GPU=1"),
    ("Dockerfile", "python -m pip install /src", "python -m pip install -e /src",
     "Dockerfile: an editable install of the repository"),
    ("Dockerfile.gpu", '"/src[gpu]"', '"/src[gpu,cuda]"', "Dockerfile.gpu: extras ['cuda'] are not in setup.py's"),
    ("Dockerfile.gpu", "ARG ORT_GPU_VERSION=1.31.1", "ARG ORT_GPU_VERSION=1.16.3",
     "Dockerfile.gpu: onnxruntime-gpu==1.16.3 is below setup.py's onnxruntime floor 1.17"),
    ("Dockerfile.gpu", "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130",
     "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu",
     "Dockerfile.gpu: TORCH_INDEX_URL 'https://download.pytorch.org/whl/cpu' is not one of PyTorch's CUDA indexes"),
    ("Dockerfile", "COPY . /src", "COPY . /app", "Dockerfile: no pip install of the repository (/app)"),
])
def test_a_drift_is_named(check: ModuleType, copied: Path, path: str, old: str, new: str, expected: str) -> None:
    edit(copied / path, old, new)
    errors = check.pin_errors()
    assert any(error.startswith(expected) for error in errors), errors


def test_gpu_install_asks_setup_py_for_onnxruntime_gpu_only(tmp_path: Path) -> None:
    """What INFERGATE_GPU=1 does to infergate's own requirements, as `pip install` reads them."""
    requires = {}
    for gpu in ("0", "1"):
        egg_base = tmp_path / gpu
        egg_base.mkdir()
        subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(egg_base)], cwd=ROOT,
                       env={**os.environ, "INFERGATE_GPU": gpu}, check=True, capture_output=True, timeout=120)
        (info,) = egg_base.glob("*.egg-info")
        requires[gpu] = (info / "requires.txt").read_text().split("\n\n")[0].splitlines()  # before the extras
    assert [r for r in requires["1"] if r.startswith("onnxruntime")] == ["onnxruntime-gpu>=1.17"]
    assert [r for r in requires["0"] if r.startswith("onnxruntime")] == ["onnxruntime>=1.17"]
    assert [r for r in requires["1"] if not r.startswith("onnxruntime")] == \
        [r for r in requires["0"] if not r.startswith("onnxruntime")]


# -- hadolint ------------------------------------------------------------------------------------------------

def test_hadolint_passes_both_dockerfiles(check: ModuleType) -> None:
    assert tool_or_skip(check, check.hadolint_errors) == []


def test_hadolint_finds_a_bad_dockerfile(check: ModuleType, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install torch\n")
    errors = tool_or_skip(check, lambda: check.hadolint_errors([bad]))
    assert {re.search(r"DL\d+", e)[0] for e in errors if re.search(r"DL\d+", e)} >= {"DL3007", "DL3003", "DL3013"}


# -- the build context ---------------------------------------------------------------------------------------

def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: `**` any folders, `*` and `?` within one name."""
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] in "*?":
            regex, i = regex + ("[^/]*" if pattern[i] == "*" else "[^/]"), i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            regex, i = regex + pattern[i:end + 1], end + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return re.compile(regex)


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per .dockerignore line, in order: the last match wins."""
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    return [(line.startswith("!"), dockerignore_regex(line.lstrip("!").strip("/")))
            for line in lines if line and not line.startswith("#")]


def is_in_context(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """A path is left out when its last matching pattern (on it or on a folder above it) is no exception."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    is_excluded = False
    for is_exception, pattern in patterns:
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            is_excluded = not is_exception
    return not is_excluded


def test_the_build_context_holds_what_pip_install_needs() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True,
                             timeout=30).stdout.split()
    patterns = dockerignore_patterns()
    needed = ["setup.py", "pyproject.toml", "README.md", "deploy/healthcheck.py"] + [
        path for path in tracked
        if path.split("/")[0] in ("proto", "server", "batching", "models", "kernels", "cascade", "bench")
        and not path.startswith("bench/results/")]
    assert "kernels/_cython_kernels.pyx" in needed
    assert [path for path in needed if not is_in_context(path, patterns)] == []
    for left_out in (".git/HEAD", ".venv/bin/python", ".venv-ci/bin/python", "tests/conftest.py",
                     "bench/results/README.md", "kernels/_cython_kernels.c", "server/__pycache__/app.cpython-311.pyc",
                     "kernels/_cython_kernels.cpython-311-x86_64-linux-gnu.so", "infergate.egg-info/PKG-INFO"):
        assert not is_in_context(left_out, patterns), left_out


# -- the health probe ----------------------------------------------------------------------------------------

def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HEALTHCHECK), *args], capture_output=True, text=True, timeout=30,
                          env={k: v for k, v in os.environ.items() if k != "INFERGATE_HEALTH_ADDRESS"})


def test_probe_passes_on_a_serving_server(url: str) -> None:
    done = probe(url)
    assert (done.returncode, done.stdout.strip()) == (0, f"{url} service '': SERVING")


def test_probe_fails_without_a_server() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket closes
    done = probe(f"127.0.0.1:{port}", "--timeout-s", "2")
    assert done.returncode == 1
    assert done.stderr.startswith(f"127.0.0.1:{port}: no health answer (UNAVAILABLE")


def test_probe_of_an_unknown_service_fails(url: str) -> None:
    done = probe(url, "--service", "nope")
    assert (done.returncode, done.stderr.strip()) == (1, f"{url}: no health answer (NOT_FOUND: unknown service 'nope')")


def test_probe_bad_arguments_exit_2() -> None:
    assert probe("--timeout-s", "0").returncode == 2
    assert probe("--client-cert", "c.pem").returncode == 2


def test_probe_over_a_unix_socket_through_a_drain(tmp_path: Path, test_repository: Path) -> None:
    """The sidecar's probes: SERVING, then at SIGTERM NOT_SERVING at once (readiness fails) while --alive
    still passes (liveness never kills a draining server), as the manifests rely on."""
    socket_path = tmp_path / "infergate.sock"
    address = f"unix:{socket_path}"
    server = start_server("--model-repository", str(test_repository), "--grpc-address", address,
                          "--shutdown-delay-s", "3")
    try:
        assert probe(address).returncode == 0
        assert probe(address, "--alive").returncode == 0
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 2.5  # inside the 3 s of --shutdown-delay-s
        while (done := probe(address)).returncode == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (done.returncode, done.stderr.strip()) == (1, f"{address} service '': NOT_SERVING")
        alive = probe(address, "--alive")
        assert (alive.returncode, alive.stdout.strip()) == (0, f"{address} service '': NOT_SERVING")
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    assert server.process.wait(30) == 0  # the drain ends by itself; a second SIGTERM would exit with 143
    server.stop()


# -- deploy/README.md ----------------------------------------------------------------------------------------

def test_the_deploy_readme_names_what_the_files_pin(check: ModuleType) -> None:
    """A pin changed in a Dockerfile, in deploy/check.py or in the vendored schemas is changed in the README."""
    readme = " ".join((ROOT / "deploy" / "README.md").read_text().split())  # line breaks as spaces
    pinned = []
    for name in check.DOCKERFILES:
        variables = check.dockerfile_variables(check.dockerfile_instructions((ROOT / name).read_text()))
        pinned += [variables[key] for key in ("PYTHON_IMAGE", "CUDA_IMAGE", "TORCH_INDEX_URL") if key in variables]
        pinned += [f"torch=={variables['TORCH_VERSION']}"]
        if "ORT_GPU_VERSION" in variables:
            pinned.append(f"onnxruntime-gpu=={variables['ORT_GPU_VERSION']}")
    pinned.append("Kubernetes " + ".".join(check.KUBERNETES_VERSION.split(".")[:2]))  # "Kubernetes 1.33"
    commits = {re.search(r"kserve/kserve ([0-9a-f]{40})", path.read_text())[1]  # type: ignore[index]
               for path in (ROOT / "deploy" / "kserve" / "schema").glob("*.json")}
    assert len(commits) == 1
    pinned += commits
    assert [pin for pin in pinned if pin not in readme] == []
