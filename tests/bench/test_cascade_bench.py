"""The cascade benchmarks' pure parts: splits, the dense ONNX graphs, the results table, the cost arithmetic."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from infergate.bench import cascade_cost as cc
from infergate.bench import cascade_datasets as cd
from infergate.bench import cascade_load as cl
from infergate.bench import cascade_models as cm
from infergate.bench import cascade_noise as cn
from infergate.bench import cascade_report as cr


def test_parts_are_disjoint_cover_every_row_and_keep_the_fractions() -> None:
    labels = np.repeat(np.arange(3), [50, 40, 30])
    parts = cd.split_parts(labels, cd.SMALL_TABLE_FRACTIONS)
    together = np.concatenate([parts.train, parts.tune, parts.eval])
    assert sorted(together.tolist()) == list(range(len(labels)))
    assert parts.sizes() == {"train": 48, "tune": 36, "eval": 36}
    for label, count in ((0, 50), (1, 40), (2, 30)):
        assert np.sum(labels[parts.eval] == label) == round(0.3 * count)


def test_the_same_labels_and_seed_give_the_same_parts() -> None:
    labels = np.arange(100) % 4
    first, again = cd.split_parts(labels, cd.DIGITS_FRACTIONS), cd.split_parts(labels, cd.DIGITS_FRACTIONS)
    assert all(np.array_equal(a, b) for a, b in zip(vars(first).values(), vars(again).values(), strict=True))
    other = cd.split_parts(labels, cd.DIGITS_FRACTIONS, seed=1)
    assert not np.array_equal(first.eval, other.eval)


def test_a_folded_standardiser_takes_raw_features() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (20, 5))
    layers = [(rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)),
              (rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32))]
    mean, scale = x.mean(axis=0), cm.safe_scale(x)
    folded = cm.fold_standardiser(layers, mean, scale)
    np.testing.assert_allclose(cm.logits_of(folded, x), cm.logits_of(layers, (x - mean) / scale), rtol=1e-4, atol=1e-4)


def test_a_constant_column_keeps_scale_one() -> None:
    assert cm.safe_scale(np.array([[1.0, 2.0], [1.0, 4.0]])).tolist() == [1.0, 1.0]


def test_the_onnx_graph_agrees_with_its_numpy_reference() -> None:
    rng = np.random.default_rng(1)
    layers = [(rng.standard_normal((6, 8)).astype(np.float32), rng.standard_normal(8).astype(np.float32)),
              (rng.standard_normal((8, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32))]
    x = rng.standard_normal((7, 6)).astype(np.float32)
    session = ort.InferenceSession(cm.dense_onnx("m", layers).SerializeToString())
    probabilities, logits = session.run([cm.PROBABILITIES, cm.LOGITS], {cm.INPUT: x})
    expected = cm.logits_of(layers, x)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    softmax = np.exp(expected - expected.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probabilities, softmax / softmax.sum(axis=1, keepdims=True), atol=1e-5)


def test_two_class_logistic_regression_has_a_column_per_class() -> None:
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    y = np.array([0, 0, 1, 1])
    (weights, bias), = cm.train_logistic(x, y, classes=2)
    assert weights.shape == (1, 2) and bias.shape == (2,)
    assert np.argmax(cm.logits_of([(weights, bias)], x), axis=1).tolist() == [0, 0, 1, 1]


def test_config_text_names_both_outputs_with_the_class_count() -> None:
    text = cm.config_text("iris_small", 4, 3)
    assert 'name: "iris_small"' in text and "dims: [ 4 ]" in text
    assert text.count("dims: [ 3 ]") == 2 and 'name: "LOGITS"' in text


def _tune_report(eval_rows: int = 200, small_acc: float = 0.9, drop: float = 0.004) -> dict[str, Any]:
    stage = {"model": "s", "accuracy": small_acc, "ece_before": 0.05, "ece_after": 0.015, "nll_before": 0.3,
             "nll_after": 0.2}
    return {"evaluation_rows": eval_rows,
            "stages": [{"model": "s", "temperature": 1.5, "threshold": 0.875},
                       {"model": "l", "temperature": 1.1, "threshold": None}],
            "evaluation": {"stages": [stage, {**stage, "model": "l", "accuracy": 0.95, "ece_after": 0.03}],
                           "cascade": {"accuracy": 0.95 - drop, "answered_fraction": [0.7, 0.3],
                                       "saving_fraction": 0.6},
                           "reference_accuracy": 0.95, "accuracy_drop": drop}}


FACTS = {"dataset": "toy", "rows": {"train": 100, "tune": 50, "eval": 200}}


def test_evaluation_row_judges_each_target() -> None:
    row = cr.evaluation_row(FACTS, _tune_report())
    assert row["threshold"] == 0.875 and row["answered_at_small"] == 0.7
    # The large stage's ECE after scaling is 3 %: above the 2 % bound, so calibration fails as a whole.
    assert row["passes"] == {"ece_small": True, "ece_large": False, "answered_at_small": True, "accuracy_drop": True}
    assert row["reasons"] == []


def test_few_rows_and_a_small_model_as_good_as_the_large_are_named_as_reasons() -> None:
    row = cr.evaluation_row(FACTS, _tune_report(eval_rows=45, small_acc=0.95, drop=0.01))
    assert not row["passes"]["accuracy_drop"]
    assert row["reasons"][0].startswith("one evaluation row is 2.22 pp of accuracy")
    assert row["reasons"][1].startswith("one confidently wrong row moves ECE by up to 2.2 pp on 45 rows")
    assert "the small model is no less accurate than the large" in row["reasons"][2]


def test_the_table_renders_percentages_and_verdicts() -> None:
    row = cr.evaluation_row(FACTS, _tune_report())
    lines = cr.markdown_table([row])
    assert len(lines) == 3 and lines[0].count("|") == lines[2].count("|")
    assert lines[2] == ("| toy | 100/50/200 | 90.0 | 5.00 -> 1.50 | 95.0 | 5.00 -> 3.00 | 0.8750 | 70.0 | 94.6 | "
                        "+0.40 | 60.0 | fail: ece_large |")


def test_an_ece_within_the_sampling_floor_is_named_and_shown() -> None:
    floors = [{"median": 0.01, "p90": 0.02}, {"median": 0.025, "p90": 0.04}]
    evidence = {"ece_floors": floors, "drop_interval": (-0.01, 0.004), "replayed": {}}
    row = cr.evaluation_row(FACTS, _tune_report(), evidence)
    assert row["reasons"] == ["l: its ECE after, 3.00 %, is within what a perfectly calibrated model with its "
                              "confidences shows on 200 rows (median 2.50 %, 90th percentile 4.00 %)"]
    assert "| 5.00 -> 3.00 (2.50) |" in cr.markdown_table([row])[2]


def test_the_ece_floor_of_exact_calibration_is_small_but_not_zero() -> None:
    rng = np.random.default_rng(0)
    confident = np.full((300, 2), 0.05)
    confident[np.arange(300), rng.integers(0, 2, 300)] = 0.95
    floor = cn.ece_floor(confident, draws=200)
    # 300 rows at confidence 0.95: the bin's accuracy has standard deviation sqrt(0.95 * 0.05 / 300) = 1.26 pp.
    assert 0.005 < floor["median"] < 0.015 < floor["p90"] < 0.03


def _row(model: str, rows: float, cost: float, stage: str = "") -> dict[str, Any]:
    return {"model": model, "stage": stage,
            "windows": {"all": {"requests": rows, "inferences": rows, "batches": rows / 2, "busy_s": cost,
                                "cost_usd": cost}}}


def _snapshot(models: dict[str, tuple[float, float]]) -> dict[str, Any]:
    return {"models": [_row(name, rows, cost) for name, (rows, cost) in models.items()]}


def test_cost_per_inference_differences_two_snapshots() -> None:
    before = _snapshot({"large": (100, 1.0), "small": (0, 0.0)})
    after = _snapshot({"large": (1100, 3.0), "small": (0, 0.0)})
    work = cc.delta(before, after)
    assert work["large"]["inferences"] == 1000
    assert cc.cost_per_inference_usd(work, "large") == pytest.approx(2.0 / 1000)


def test_a_cascade_costs_its_stages_over_the_rows_it_answered() -> None:
    before = _snapshot({"cascade": (0, 0.0), "small": (0, 0.0), "large": (0, 0.0)})
    after = _snapshot({"cascade": (1000, 0.8), "small": (1000, 0.2), "large": (150, 0.6)})
    # The cascade's stage rows repeat the stage models' own counts: read twice, they would double the cost.
    after["models"] += [_row("cascade", 1000, 0.2, stage="small"), _row("cascade", 150, 0.6, stage="large")]
    work = cc.delta(before, after)
    assert work["cascade"]["inferences"] == 1000
    assert cc.cost_per_inference_usd(work, "cascade") == pytest.approx(0.8 / 1000)
    assert cc.stages_cost_per_inference_usd(work, "cascade", ("small", "large")) == pytest.approx(0.8 / 1000)
    assert cc.escalated_fraction(work, ("small", "large")) == pytest.approx(0.15)
    profile = cc.compute_profile(work, ("small", "large"))
    assert profile["large"] == {"busy_us_per_row": pytest.approx(4000.0), "mean_batch_rows": 2.0}
    cells = [{"tool": "pa", "variant": "cascade", "profile": profile}, {"tool": "pa", "variant": "cascade",
                                                                        "profile": {"large": {"mean_batch_rows": 4.0}}}]
    assert cc.profile_table(cc.profile_medians(cells))[2:] == ["| pa | cascade | small | 200.0 | 2.00 |",
                                                                "| pa | cascade | large | 4,000.0 | 3.00 |"]
    without_own_row = {k: v for k, v in work.items() if k != "cascade"}  # the first stage's rows count instead
    assert cc.stages_cost_per_inference_usd(without_own_row, "cascade", ("small", "large")) == pytest.approx(0.8e-3)


def test_no_rows_means_no_cost_figure() -> None:
    assert cc.cost_per_inference_usd({}, "large") is None


def test_abba_reverses_even_rounds() -> None:
    assert cc.abba(("a", "b"), 4) == [(1, "a"), (1, "b"), (2, "b"), (2, "a"), (3, "a"), (3, "b"), (4, "b"), (4, "a")]


def test_the_verdict_takes_ratios_of_the_medians() -> None:
    cascade = {"cost_per_inference_usd": 0.4, "infer_per_s": 1600.0, "p99_ms": 9.0}
    large = {"cost_per_inference_usd": 1.0, "infer_per_s": 1000.0, "p99_ms": 10.0}
    v = cc.verdict(cascade, large)
    assert v["cost_ratio"] == pytest.approx(0.4) and v["throughput_ratio"] == pytest.approx(1.6)
    assert (v["cost_ok"], v["throughput_ok"], v["p99_ok"]) == (True, True, True)
    assert not cc.verdict({**cascade, "p99_ms": 11.0}, large)["p99_ok"]
    assert cc.median_of([{"x": 3.0}, {"x": None}, {"x": 1.0}], "x") == 2.0


PA_ABORTED = """Request concurrency: 16
  Client:
    Request count: 17815
    Throughput: 1217.83 infer/sec
    Avg latency: 13120 usec (standard deviation 5876 usec)
    p50 latency: 11826 usec
    p90 latency: 20443 usec
    p95 latency: 24144 usec
    p99 latency: 33845 usec
  Server:
terminate called after throwing an instance of 'std::runtime_error'
"""


def test_perf_analyzers_printed_client_figures_are_read_when_it_aborts_before_its_csv() -> None:
    assert cl.pa_stdout_figures(PA_ABORTED) == {"infer_per_s": 1217.83, "errors": None, "from_stdout": 1.0,
                                                "p50_ms": 11.826, "p95_ms": 24.144, "p99_ms": 33.845}
    with pytest.raises(ValueError, match="no client summary"):
        cl.pa_stdout_figures("Failed to obtain stable measurement.")


def test_a_drop_interval_holding_the_bound_is_named() -> None:
    evidence = {"ece_floors": [{}, {}], "drop_interval": (-0.002, 0.012), "replayed": {}}
    row = cr.evaluation_row(FACTS, _tune_report(), evidence)
    assert row["reasons"] == ["the drop's 95 % paired-bootstrap interval, -0.20 to +1.20 pp, holds the 0.5 pp bound: "
                              "these rows cannot tell a pass from a fail"]


def test_the_drop_interval_of_identical_answers_is_zero_and_of_one_extra_error_brackets_it() -> None:
    same = np.ones(100, bool)
    assert cn.drop_interval(same, same) == (0.0, 0.0)
    one_worse = same.copy()
    one_worse[0] = False
    low, high = cn.drop_interval(same, one_worse, draws=500)
    # The one differing row is drawn about Poisson(1) times per resample: 3 or 4 times at the 97.5th percentile.
    assert low == 0.0 and high in (0.03, 0.04)


def test_a_replay_that_disagrees_with_the_report_is_named() -> None:
    replayed = {"cascade_accuracy": 0.946, "large_accuracy": 0.95, "answered_at_small": 0.7}
    row = cr.evaluation_row(FACTS, _tune_report(), {"ece_floors": [{}, {}], "drop_interval": (0.0, 0.001),
                                                     "replayed": replayed})
    assert row["reasons"] == []
    row = cr.evaluation_row(FACTS, _tune_report(), {"ece_floors": [{}, {}], "drop_interval": (0.0, 0.001),
                                                     "replayed": {**replayed, "answered_at_small": 0.69}})
    assert row["reasons"] == ["answered_at_small: the routing replayed from the models gives 0.6900, the tune report "
                              "0.7000"]
