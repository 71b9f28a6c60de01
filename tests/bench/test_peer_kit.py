"""The side-by-side kit lives in the package: its files ship, its caches stay out of the tree, its models hold."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import prometheus_client
import pytest
from onnx import numpy_helper

from infergate.bench import peer_kit
from infergate.bench import perf_compare as pc
from infergate.bench.reference_models import REFERENCE_MODELS, write_reference_models

ROOT = Path(__file__).resolve().parents[2]
KIT_FILES = sorted(p.relative_to(peer_kit.PEERS_DIR) for p in peer_kit.PEERS_DIR.rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts)
SCRIPTS = [peer_kit.PERF_ANALYZER_INSTALLER, peer_kit.launcher("triton"), peer_kit.launcher("mlserver")]
CACHE_VARIABLES = ("INFERGATE_BENCH_CACHE", "INFERGATE_CACHE_DIR", "XDG_CACHE_HOME")


def test_every_kit_file_ships_in_the_package_and_scripts_stay_executable(tmp_path: Path) -> None:
    # build_py copies the packages and their package_data as a wheel would, without compiling the kernels;
    # --egg-base keeps its metadata out of the source tree.
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path), "build_py", "-d",
                    str(tmp_path / "lib")], cwd=ROOT, check=True, capture_output=True, timeout=120)
    shipped = tmp_path / "lib" / "infergate" / "bench" / "peers"
    assert sorted(p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file()) == KIT_FILES
    for script in SCRIPTS:
        assert os.access(shipped / script.relative_to(peer_kit.PEERS_DIR), os.X_OK), script


def test_every_peer_has_a_launcher_run_with_bash() -> None:
    for name in pc.SERVER_NAMES:
        if name == "infergate":
            continue
        cfg = pc.Config(servers=[name], models=["mlp_small"], concurrency=[], out=Path("/o"), cache=Path("/c"),
                        work=Path("/w"), python=Path(sys.executable), infergate_cmd="", measurement_ms=1,
                        max_trials=1, retry_stability_pct=0, rounds=1, ready_timeout_s=1, pa_args=[])
        server = pc.SERVER_CLASSES[name](cfg, ["mlp_small"], Path("/o"))
        assert server.start_command() == ["bash", str(peer_kit.launcher(name)), "/c/models", f"/c/{name}"]
        assert peer_kit.launcher(name).is_file()


@pytest.mark.parametrize(("environment", "expected"), [
    ({"INFERGATE_BENCH_CACHE": "/b", "INFERGATE_CACHE_DIR": "/i", "XDG_CACHE_HOME": "/x"}, "/b"),
    ({"INFERGATE_CACHE_DIR": "/i", "XDG_CACHE_HOME": "/x"}, "/i/bench"),
    ({"XDG_CACHE_HOME": "/x"}, "/x/infergate/bench"),
    ({"XDG_CACHE_HOME": ""}, "~/.cache/infergate/bench"),
    ({}, "~/.cache/infergate/bench"),
])
def test_the_bench_cache_is_a_user_cache_and_the_scripts_agree(
        environment: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in CACHE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    want = Path(expected.replace("~", str(tmp_path)))
    assert peer_kit.default_bench_cache() == want
    assert peer_kit.default_work_dir("compare") == want / "work" / "compare"
    for script in [*SCRIPTS, ROOT / ".ci" / "run"]:  # each script's own default, from its `cache=` line
        line = next(text for text in script.read_text().splitlines() if text.startswith("cache="))
        shown = subprocess.run(["bash", "-c", f'{line}; printf %s "$cache"'], capture_output=True, text=True,
                               check=True, env={**os.environ})
        assert shown.stdout == str(want), script


def test_a_failed_perf_analyzer_install_names_the_command_to_run(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    installer = tmp_path / "install.sh"
    installer.write_text("exit 3\n")
    monkeypatch.setattr(peer_kit, "PERF_ANALYZER_INSTALLER", installer)
    cfg = pc.Config(servers=[], models=[], concurrency=[], out=tmp_path, cache=tmp_path / "cache", work=tmp_path,
                    python=Path(sys.executable), infergate_cmd="", measurement_ms=1, max_trials=1,
                    retry_stability_pct=0, rounds=1, ready_timeout_s=1, pa_args=[])
    with pytest.raises(RuntimeError) as caught:
        pc.ensure_perf_analyzer(cfg)
    directory = tmp_path / "cache" / "perf_analyzer"
    assert str(caught.value) == (f"perf_analyzer could not be installed into {directory} (exit 3); see the output "
                                 f"above, or run: bash {installer} {directory}")


def test_reference_models_keep_their_contract_and_weights(tmp_path: Path) -> None:
    paths = write_reference_models(tmp_path / "a")
    assert [p.name for p in paths] == ["mlp_small.onnx", "mlp_large.onnx"]
    # Fixed seed: a second build is the same bytes, so every peer and every run serves the same weights.
    assert [p.read_bytes() for p in write_reference_models(tmp_path / "b")] == [p.read_bytes() for p in paths]
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    for path, widths in zip(paths, REFERENCE_MODELS.values(), strict=True):
        model = onnx.load(path)
        assert [n.op_type for n in model.graph.node].count("Gemm") == len(widths) - 1
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (y,) = session.run(["OUTPUT0"], {"INPUT0": x})
        assert y.shape == (3, 10) and np.allclose(y.sum(axis=1), 1.0, atol=1e-5)
    # The first weight of each, as in the files bench/results were measured on: one generator, mlp_small first.
    firsts = [numpy_helper.to_array(onnx.load(p).graph.initializer[0])[0, 0] for p in paths]
    assert firsts == [pytest.approx(0.015716277), pytest.approx(-0.09669908)]


def test_compare_starts_infergate_on_the_reference_model_without_tritonclient(tmp_path: Path) -> None:
    if any(pc._port_is_busy(port) for port in (8011, 8012)):
        pytest.skip("ports 8011/8012 are taken (another benchmark is running)")
    # An importable `tritonclient` that fails, first on the path: readiness must not need it (not a requirement).
    (tmp_path / "hide" / "tritonclient").mkdir(parents=True)
    (tmp_path / "hide" / "tritonclient" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "hide"), "INFERGATE_BENCH_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "infergate.server", "bench", "compare", "--servers", "infergate", "--models",
         "mlp_small", "--concurrency", "2", "--requests", "50", "--warmup-s", "0", "--out", str(tmp_path / "out"),
         "--python", sys.executable, "--quiet", "--no-plots", "--log-level", "warning"],
        env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir()) == ["mlp_large.onnx", "mlp_small.onnx"]
    assert (tmp_path / "cache" / "work" / "compare" / "infergate-repo" / "mlp_small" / "1" / "model.onnx").exists()
    assert not (tmp_path / "cache" / "perf_analyzer").exists()  # compare measures with the harness alone



def _stand_in_mlserver(monkeypatch: pytest.MonkeyPatch) -> None:
    """The names the MLServer runtime imports (MLServer itself lives only in its own venv)."""
    modules = {name: types.ModuleType(name) for name in ("mlserver", "mlserver.codecs", "mlserver.types")}
    modules["mlserver"].MLModel = type("MLModel", (), {})  # type: ignore[attr-defined]
    modules["mlserver.codecs"].NumpyCodec = None  # type: ignore[attr-defined]
    modules["mlserver.types"].InferenceRequest = None  # type: ignore[attr-defined]
    modules["mlserver.types"].InferenceResponse = None  # type: ignore[attr-defined]
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


def test_the_mlserver_runtime_survives_mlservers_reload_for_each_model(monkeypatch: pytest.MonkeyPatch) -> None:
    _stand_in_mlserver(monkeypatch)
    monkeypatch.syspath_prepend(str(peer_kit.PEERS_DIR / "mlserver"))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delitem(sys.modules, "onnx_runtime", raising=False)
    module = importlib.import_module("onnx_runtime")
    try:
        module._rows_observer("mlp_large", "1")(3)
        importlib.reload(module)  # what mlserver.settings does before loading each model that names it
        module._rows_observer("mlp_small", "1")(5)
        sums = {name: prometheus_client.REGISTRY.get_sample_value(
            "onnx_batch_rows_sum", {"model_name": name, "model_version": "1"}) for name in ("mlp_large", "mlp_small")}
        assert sums == {"mlp_large": 3.0, "mlp_small": 5.0}
    finally:
        prometheus_client.REGISTRY.unregister(getattr(module, module.HISTOGRAM_GLOBAL))
        sys.modules.pop("onnx_runtime", None)
