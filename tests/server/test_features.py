"""Feature transforms declared per model, run by the server on each batch: equal to scikit-learn + the model offline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction import FeatureHasher
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import KBinsDiscretizer, MinMaxScaler, StandardScaler
from tritonclient.utils import InferenceServerException

from infergate import kernels

from harness import ServerProcess, start_server
from modelgen import classifier, write

N_DENSE = 8  # numeric raw columns
N_HASHED = 16  # hash width of the token features
TOKENS = np.array([f"tok{i}".encode() for i in range(40)], dtype=object)


def _dense(rng: np.random.Generator, rows: int, nan_fraction: float = 0.1) -> np.ndarray:
    x = rng.normal(3.0, 2.0, (rows, N_DENSE)).astype(np.float32)
    x[rng.random(x.shape) < nan_fraction] = np.nan
    return x


def _tokens(rng: np.random.Generator, rows: int, per_row: int) -> np.ndarray:
    return rng.choice(TOKENS, (rows, per_row))


class Offline:
    """The fitted scikit-learn preprocessing and the ONNX model, run the way a training notebook would."""

    def __init__(self, root: Path) -> None:
        rng = np.random.default_rng(7)
        train = _dense(rng, 500)
        # Columns 0-5 imputed, scaled and min-maxed; columns 6-7 imputed and bucketized.
        self.numeric = ColumnTransformer([
            ("scaled", make_pipeline(SimpleImputer(strategy="mean"), StandardScaler(), MinMaxScaler()),
             [0, 1, 2, 3, 4, 5]),
            ("binned", make_pipeline(SimpleImputer(strategy="median"),
                                     KBinsDiscretizer(n_bins=4, encode="ordinal", strategy="quantile",
                                                      quantile_method="averaged_inverted_cdf")), [6, 7]),
        ]).fit(train)
        self.hasher = FeatureHasher(n_features=N_HASHED, input_type="string")
        self.width = self.numeric.transform(train[:1]).shape[1] + N_HASHED
        model_path = root / "tabular/1/model.onnx"
        classifier(model_path, n_in=self.width)
        self.session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

    def predict(self, dense: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        hashed = self.hasher.transform([[t.decode() for t in row] for row in tokens]).toarray()
        features = np.hstack([self.numeric.transform(dense), hashed]).astype(np.float32)
        return self.session.run(["LOGITS"], {"INPUT0": features})[0]  # type: ignore[no-any-return]


def _build_repository(root: Path) -> Offline:
    offline = Offline(root)
    declaration = {"format": "infergate.features/1", "inputs": {"INPUT0": [
        {"name": "dense", "datatype": "FP32", "transform": kernels.from_sklearn(offline.numeric).to_config()},
        {"name": "tokens", "datatype": "BYTES", "transform": kernels.from_sklearn(offline.hasher).to_config()},
    ]}}
    write(root / "tabular/features.json", json.dumps(declaration))
    write(root / "tabular/config.pbtxt", """
platform: "onnxruntime_onnx"
max_batch_size: 32
dynamic_batching { max_queue_delay_microseconds: 20000 }
parameters { key: "feature_pipeline" value: { string_value: "features.json" } }
""")
    # The short form, saved into the repository entry by kernels.save and found there by name;
    # no imputer, so a NaN is a client error.
    classifier(root / "scaled/1/model.onnx", n_in=N_DENSE)
    write(root / "scaled/config.pbtxt", 'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
                                        "dynamic_batching { max_queue_delay_microseconds: 20000 }\n")
    standardize = kernels.Standardize(tuple(range(N_DENSE)), mean=(1.0,) * N_DENSE, scale=(2.0,) * N_DENSE)
    kernels.Pipeline([standardize], N_DENSE).save(root / "scaled")
    # Declarations the server must refuse at load, each with its reason.
    for name, text in {
        "unknown_op": json.dumps({"kind": "pipeline", "n_features_in": 4, "steps": [{"op": "sqrt"}]}),
        "wrong_width": json.dumps(kernels.Pipeline([], 4).to_config()),
        "not_json": "{ steps: ",
    }.items():
        classifier(root / f"{name}/1/model.onnx", n_in=N_DENSE)
        write(root / f"{name}/config.pbtxt", 'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n')
        write(root / f"{name}/{kernels.PIPELINE_FILENAME}", text)
    return offline


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Offline, ServerProcess]]:
    root = tmp_path_factory.mktemp("features-repo")
    offline = _build_repository(root)
    server = start_server("--model-repository", str(root))
    yield offline, server
    server.stop()


@pytest.fixture()
def client(offline: tuple[Offline, ServerProcess]) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(offline[1].address) as client:
        yield client


def _infer(client: grpcclient.InferenceServerClient, dense: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    inputs = [grpcclient.InferInput("dense", list(dense.shape), "FP32"),
              grpcclient.InferInput("tokens", list(tokens.shape), "BYTES")]
    inputs[0].set_data_from_numpy(dense)
    inputs[1].set_data_from_numpy(tokens)
    result = client.infer("tabular", inputs, outputs=[grpcclient.InferRequestedOutput("LOGITS")])
    return result.as_numpy("LOGITS")  # type: ignore[no-any-return]


def test_metadata_shows_the_raw_inputs(client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("tabular", as_json=True)
    assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == [
        ("dense", "FP32", ["-1", str(N_DENSE)]), ("tokens", "BYTES", ["-1", "-1"])]
    config = client.get_model_config("tabular", as_json=True)["config"]
    assert [i["name"] for i in config["input"]] == ["dense", "tokens"]


def test_served_answer_equals_sklearn_then_model(offline: tuple[Offline, ServerProcess],
                                                 client: grpcclient.InferenceServerClient) -> None:
    rng = np.random.default_rng(1)
    dense, tokens = _dense(rng, 20), _tokens(rng, 20, 5)
    np.testing.assert_allclose(_infer(client, dense, tokens), offline[0].predict(dense, tokens), rtol=1e-4, atol=1e-4)


def test_concurrent_requests_batched_with_different_token_counts(
        offline: tuple[Offline, ServerProcess], client: grpcclient.InferenceServerClient) -> None:
    rng = np.random.default_rng(2)
    cases = [(_dense(rng, 1 + i % 3), _tokens(rng, 1 + i % 3, 2 + i % 4)) for i in range(48)]
    before = client.get_inference_statistics("tabular", as_json=True)["model_stats"][0]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda case: _infer(client, *case), cases))
    for (dense, tokens), answer in zip(cases, answers):
        np.testing.assert_allclose(answer, offline[0].predict(dense, tokens), rtol=1e-4, atol=1e-4)
    after = client.get_inference_statistics("tabular", as_json=True)["model_stats"][0]
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    inferences = int(after["inference_count"]) - int(before.get("inference_count", 0))
    assert inferences == sum(len(d) for d, _ in cases)
    assert executions < len(cases)  # requests were batched through the transforms


def _infer_scaled(client: grpcclient.InferenceServerClient, dense: np.ndarray) -> np.ndarray:
    infer_input = grpcclient.InferInput("INPUT0", list(dense.shape), "FP32")
    infer_input.set_data_from_numpy(dense)
    return client.infer("scaled", [infer_input]).as_numpy("LOGITS")  # type: ignore[no-any-return]


def test_short_form_saved_beside_the_model(tmp_path: Path, client: grpcclient.InferenceServerClient) -> None:
    dense = _dense(np.random.default_rng(3), 4, nan_fraction=0.0)
    classifier(tmp_path / "m.onnx", n_in=N_DENSE)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(["LOGITS"], {"INPUT0": (dense - 1.0) / 2.0})[0]
    np.testing.assert_allclose(_infer_scaled(client, dense), expected, rtol=1e-5, atol=1e-5)


def test_nan_without_imputer_is_rejected_without_harming_the_batch(client: grpcclient.InferenceServerClient) -> None:
    rng = np.random.default_rng(4)
    good = [_dense(rng, 1, nan_fraction=0.0) for _ in range(6)]
    bad = good[0].copy()
    bad[0, 5] = np.nan
    with ThreadPoolExecutor(7) as pool:
        good_answers = [pool.submit(_infer_scaled, client, d) for d in good]
        bad_answer = pool.submit(_infer_scaled, client, bad)
        with pytest.raises(InferenceServerException) as raised:
            bad_answer.result()
        assert all(a.result().shape == (1, 4) for a in good_answers)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    message = raised.value.message()
    assert "input 'INPUT0'" in message and "column 5" in message and "nan" in message.lower()


def test_wrong_column_count_names_the_raw_input(client: grpcclient.InferenceServerClient) -> None:
    dense = np.zeros((1, N_DENSE + 1), np.float32)
    tokens = _tokens(np.random.default_rng(5), 1, 2)
    with pytest.raises(InferenceServerException) as raised:
        _infer(client, dense, tokens)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "dense" in raised.value.message() and str(N_DENSE) in raised.value.message()


@pytest.mark.parametrize(("model", "reason"), [
    ("unknown_op", "unknown op 'sqrt'"),
    ("wrong_width", "takes 8 features per row, but its transforms produce 4"),
    ("not_json", "cannot be read as JSON"),
])
def test_bad_declarations_fail_the_load_with_a_reason(client: grpcclient.InferenceServerClient, model: str,
                                                      reason: str) -> None:
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index[model]["state"] == "UNAVAILABLE"
    assert reason in index[model]["reason"]
    assert index["tabular"]["state"] == "READY"


def test_transform_time_is_counted_on_its_own(offline: tuple[Offline, ServerProcess],
                                              client: grpcclient.InferenceServerClient) -> None:
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    rng = np.random.default_rng(6)
    _infer(client, _dense(rng, 2), _tokens(rng, 2, 3))
    assert offline[1].metrics_address is not None
    with urlopen(f"http://{offline[1].metrics_address}/metrics", timeout=10) as response:
        text = response.read().decode()
    seconds = {(s.labels["model"], s.labels["phase"]): s.value for family in text_string_to_metric_families(text)
               for s in family.samples if s.name == "infergate_duration_seconds_total"}
    assert seconds[("tabular", "transform")] > 0
    assert seconds[("tabular", "compute_input")] >= seconds[("tabular", "transform")]
