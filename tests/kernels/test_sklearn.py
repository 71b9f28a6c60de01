"""from_sklearn equals scikit-learn's transform on fitted transformers, Pipelines and ColumnTransformers."""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline as SkPipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    KBinsDiscretizer,
    MaxAbsScaler,
    MinMaxScaler,
    OneHotEncoder,
    RobustScaler,
    StandardScaler,
)

from infergate import kernels as K


def data(seed: int, n: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(loc=2.0, scale=3.0, size=(n, 6))
    X[:, 4] = rng.integers(0, 4, n)  # a categorical column
    X[:, 5] = np.abs(X[:, 5])
    X[rng.random(n) < 0.1, 1] = np.nan
    return X


def numeric_step(kind: str) -> object:
    return {"impute_mean": SimpleImputer(), "impute_median": SimpleImputer(strategy="median"),
            "standard": StandardScaler(), "robust": RobustScaler(), "maxabs": MaxAbsScaler(),
            "minmax": MinMaxScaler(feature_range=(-1, 2)), "minmax_clip": MinMaxScaler(clip=True),
            "kbins": KBinsDiscretizer(n_bins=4, encode="ordinal", quantile_method="averaged_inverted_cdf"),
            "log1p": FunctionTransformer(np.log1p)}[kind]


@st.composite
def sk_pipelines(draw: st.DrawFn) -> object:
    first = draw(st.sampled_from(["impute_mean", "impute_median"]))
    # KBinsDiscretizer may come after a scaler: from_sklearn then compiles in exact mode, so a value lying
    # exactly on a bin edge in scikit-learn's arithmetic lands in the same bin here.
    rest = draw(st.lists(st.sampled_from(["standard", "robust", "maxabs", "minmax", "minmax_clip", "kbins"]),
                         max_size=3))
    numeric = SkPipeline([(f"s{i}", numeric_step(k)) for i, k in enumerate([first, *rest])])
    handle_unknown = draw(st.sampled_from(["error", "ignore"]))
    drop = draw(st.sampled_from([None, "first"]))
    encoder = OneHotEncoder(sparse_output=False, handle_unknown=handle_unknown, drop=drop)
    transformers = [("num", numeric, [0, 1, 2, 3]),
                    ("cat", encoder, [4]),
                    ("log", FunctionTransformer(np.log1p), [5])]
    remainder = draw(st.sampled_from(["drop", "passthrough"]))
    chosen = draw(st.lists(st.sampled_from(transformers), min_size=1, max_size=3, unique_by=lambda t: t[0]))
    if all(name == "log" for name, _, _ in chosen) and remainder == "passthrough":
        remainder = "drop"  # remainder would pass the NaN column straight to the output
    ct = ColumnTransformer(chosen, remainder=remainder)
    if remainder == "passthrough":
        return SkPipeline([("impute", SimpleImputer()), ("ct", ct)])
    return ct


@pytest.mark.filterwarnings("ignore:Bins whose width are too small")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(est=sk_pipelines(), seed=st.integers(0, 1000))
def test_random_fitted_pipelines_match_sklearn(est: object, seed: int) -> None:
    X = data(seed)
    est.fit(X)  # type: ignore[attr-defined]
    expected = est.transform(X)  # type: ignore[attr-defined]
    for backend in K.available_backends():
        got = K.from_sklearn(est, output_dtype="float64", backend=backend).transform(X)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9, err_msg=backend)


@pytest.mark.filterwarnings("ignore:Bins whose width are too small")
@pytest.mark.parametrize("kind", ["impute_mean", "standard", "robust", "maxabs", "minmax", "minmax_clip", "kbins"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_single_transformers(kind: str, dtype: type) -> None:
    X = np.nan_to_num(data(1), nan=0.5).astype(dtype)
    est = numeric_step(kind).fit(X)  # type: ignore[attr-defined]
    got = K.from_sklearn(est).transform(X)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, est.transform(X), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Bins whose width are too small")
@pytest.mark.parametrize("scaler", ["standard", "robust", "maxabs", "minmax"])
def test_kbins_after_scaler_is_exact(scaler: str, backend: str) -> None:
    # Seed 11: with the composed (non-exact) program, values on bin edges change bin for every scaler here.
    X = data(11, n=500)
    est = SkPipeline([("impute", SimpleImputer()), ("scale", numeric_step(scaler)), ("bins", numeric_step("kbins")),
                      ("scale_again", numeric_step("standard")), ("bins_again", numeric_step("kbins"))]).fit(X)
    pipeline = K.from_sklearn(est, output_dtype="float64", backend=backend)
    assert isinstance(pipeline, K.Pipeline) and pipeline.is_exact
    np.testing.assert_array_equal(pipeline.transform(X), est.transform(X))
    loaded = K.from_config(pipeline.to_config(), backend=backend)
    assert isinstance(loaded, K.Pipeline) and loaded.is_exact and loaded.to_config()["exact"] is True
    # Without a bucketize after scaling the composed (faster) program is kept.
    plain = K.from_sklearn(SkPipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]).fit(X))
    assert isinstance(plain, K.Pipeline) and not plain.is_exact and "exact" not in plain.to_config()


def test_onehot_unknown_and_all_nan_column() -> None:
    X = data(2)
    enc = OneHotEncoder(sparse_output=False).fit(X[:, [4]])
    with pytest.raises(K.UnknownCategoryError, match="input column 0 has unknown category 7.0 at row 0"):
        K.from_sklearn(enc).transform(np.array([[7.0]]))
    X[:, 2] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Skipping features without any observed values"
        imp = SimpleImputer().fit(X)
        expected = imp.transform(X)
    assert expected.shape[1] == 5
    np.testing.assert_allclose(K.from_sklearn(imp, output_dtype="float64").transform(X), expected)


def test_unsupported_estimators_are_named() -> None:
    X = data(3)
    with pytest.raises(K.UnsupportedEstimatorError, match="OneHotEncoder: sparse_output=True"):
        K.from_sklearn(OneHotEncoder().fit(X[:, [4]]))
    with pytest.raises(K.UnsupportedEstimatorError, match="PCA"):
        from sklearn.decomposition import PCA

        K.from_sklearn(PCA(2).fit(np.nan_to_num(X)))
