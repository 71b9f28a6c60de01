"""A cascade's live view, from its rows in a telemetry snapshot: what each stage answered and escalated, the
cascade's cost per inference (its stages' costs summed) and the saving against sending every row to the last
stage. Pure functions of the snapshot's rows."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

logger = logging.getLogger(__name__)

CASCADE_DEVICE = "cascade"  # the device label of a cascade's own row: its stages run on theirs
CASCADE_PRICE_SOURCE = "sum of its stages"


def cascade_summaries(models: list[dict[str, Any]]) -> None:
    """Fills in, per window, the cascade fields of every cascade's rows in a /stats.json `models` list.

    Stage rows gain answered_rows, escalated_rows and escalation_rate (rows reaching the next stage over rows
    reaching this one, both counted in the same window); the cascade's row gains its cost (the stages' costs
    summed), cost_per_1k_inferences_usd, what its last stage cost per row here
    (last_stage_cost_per_1k_inferences_usd: escalated rows come a few at a time, so this is dear) and
    saving_ratio: against every row sent to the last stage alone, priced at the row's best batched cost
    (the row's last_stage_alone_cost_per_1k_inferences_usd, from the server's warm-up) when known, else
    at that stage's cost here."""
    for cascade, stages in _cascades(models):
        for window, summary in cascade["windows"].items():
            stage_windows = [stage["windows"][window] for stage in stages]
            reached = [w["inferences"] for w in stage_windows]
            for index, w in enumerate(stage_windows):
                escalated = reached[index + 1] if index + 1 < len(reached) else 0
                w["answered_rows"] = max(reached[index] - escalated, 0)
                w["escalated_rows"] = escalated
                w["escalation_rate"] = escalated / reached[index] if reached[index] else None
            cost_usd = sum(w["cost_usd"] for w in stage_windows)
            summary["cost_usd"] = cost_usd
            summary["cost_per_1k_inferences_usd"] = (1000 * cost_usd / summary["inferences"]
                                                     if summary["inferences"] else None)
            last = stage_windows[-1]["cost_per_1k_inferences_usd"]
            if last is None:
                last = _alone_cost(models, stages[-1]["stage"], window)
            summary["last_stage_cost_per_1k_inferences_usd"] = last
            alone = cascade.get("last_stage_alone_cost_per_1k_inferences_usd", last)
            summary["saving_ratio"] = saving_ratio(summary["cost_per_1k_inferences_usd"], alone)


def saving_ratio(cascade_per_1k_usd: float | None, last_stage_per_1k_usd: float | None) -> float | None:
    """1 - what the cascade costs per row / what the last stage alone costs per row; None when either is unknown."""
    if cascade_per_1k_usd is None or not last_stage_per_1k_usd:
        return None
    return 1.0 - cascade_per_1k_usd / last_stage_per_1k_usd


def _cascades(models: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(cascade row, its stage rows in stage order) for every cascade in the list."""
    for row in models:
        if row["stage"] == "" and row["device"] == CASCADE_DEVICE:
            stages = [r for r in models if r["model"] == row["model"] and r["version"] == row["version"]
                      and r["stage"]]
            if stages:
                yield row, stages


def _alone_cost(models: Iterable[dict[str, Any]], model: str, window: str) -> float | None:
    """The model's own cost per 1k rows (when the cascade's last stage has had no row yet in the window)."""
    for row in models:
        if row["model"] == model and row["stage"] == "":
            value: float | None = row["windows"][window]["cost_per_1k_inferences_usd"]
            return value
    return None
