"""A cascade's live view as a pure function of its snapshot rows: answered and escalated rows, cost, saving."""

from __future__ import annotations

from typing import Any

import pytest

from infergate.server.telemetry.cascade_view import CASCADE_DEVICE, cascade_summaries, saving_ratio


def _row(model: str, stage: str, device: str, inferences: int, cost_usd: float) -> dict[str, Any]:
    per_1k = 1000 * cost_usd / inferences if inferences else None
    window = {"inferences": inferences, "cost_usd": cost_usd, "cost_per_1k_inferences_usd": per_1k}
    return {"model": model, "version": "1", "stage": stage, "device": device, "windows": {"all": window}}


def test_stage_rows_give_answers_escalations_and_the_saving() -> None:
    # 1000 rows: all pass the small stage (0.1 m$ each), 200 go on to the large one (1 m$ each).
    models = [_row("c", "", CASCADE_DEVICE, 1000, 0.0), _row("c", "small", "cpu", 1000, 0.1),
              _row("c", "large", "cpu", 200, 0.2), _row("large", "", "cpu", 50, 0.05)]
    cascade_summaries(models)
    whole, small, large = (row["windows"]["all"] for row in models[:3])
    assert (small["answered_rows"], small["escalated_rows"], small["escalation_rate"]) == (800, 200, 0.2)
    assert (large["answered_rows"], large["escalated_rows"], large["escalation_rate"]) == (200, 0, 0.0)
    assert whole["cost_usd"] == pytest.approx(0.3)
    assert whole["cost_per_1k_inferences_usd"] == pytest.approx(0.3)
    assert whole["last_stage_cost_per_1k_inferences_usd"] == pytest.approx(1.0)
    assert whole["saving_ratio"] == pytest.approx(1 - 0.3 / 1.0)
    assert "saving_ratio" not in models[3]["windows"]["all"]  # a plain model's row is left alone


def test_before_any_row_reaches_the_last_stage_its_own_cost_is_the_reference() -> None:
    models = [_row("c", "", CASCADE_DEVICE, 10, 0.0), _row("c", "small", "cpu", 10, 0.001),
              _row("c", "large", "cpu", 0, 0.0), _row("large", "", "cpu", 100, 0.1)]
    cascade_summaries(models)
    whole = models[0]["windows"]["all"]
    assert whole["last_stage_cost_per_1k_inferences_usd"] == pytest.approx(1.0)
    assert whole["saving_ratio"] == pytest.approx(0.9)
    assert models[1]["windows"]["all"]["escalation_rate"] == 0.0


def test_the_saving_is_against_the_last_stage_at_its_best_batch_when_the_server_measured_it() -> None:
    # Escalated rows reach the large stage a few at a time (1 m$ a row here); batched, it costs 0.5 m$ a row.
    models = [_row("c", "", CASCADE_DEVICE, 1000, 0.0), _row("c", "small", "cpu", 1000, 0.1),
              _row("c", "large", "cpu", 200, 0.2)]
    models[0]["last_stage_alone_cost_per_1k_inferences_usd"] = 0.5
    cascade_summaries(models)
    whole = models[0]["windows"]["all"]
    assert whole["last_stage_cost_per_1k_inferences_usd"] == pytest.approx(1.0)  # what it cost here
    assert whole["saving_ratio"] == pytest.approx(1 - 0.3 / 0.5)


@pytest.mark.parametrize(("cascade", "last", "expected"), [(0.3, 1.0, 0.7), (None, 1.0, None), (0.3, None, None),
                                                            (0.3, 0.0, None), (2.0, 1.0, -1.0)])
def test_saving_ratio(cascade: float | None, last: float | None, expected: float | None) -> None:
    assert saving_ratio(cascade, last) == (pytest.approx(expected) if expected is not None else None)
