"""The cascade load test's arithmetic: cost per inference from /stats.json snapshots, ABBA order, medians, verdicts."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

MAX_COST_RATIO = 0.5  # issue 11: the cascade's cost per inference at most half the large model's
MIN_THROUGHPUT_RATIO = 1.5  # ... and its throughput at least 1.5x
MAX_P99_RATIO = 1.0  # ... at equal or better P99
WINDOW = "all"  # /stats.json window whose counters two snapshots are differenced over
COUNTERS = ("requests", "inferences", "batches", "busy_s", "cost_usd")  # cumulative in the "all" window


def counters(snapshot: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per model name, the cumulative counters of its own /stats.json row (versions summed).

    A cascade's stages also appear under the cascade's name with `stage` set; those rows repeat what the stage
    models' own rows already count, so only rows with an empty stage are read."""
    out: dict[str, dict[str, float]] = {}
    for entry in snapshot.get("models", []):
        if entry.get("stage"):
            continue
        window = entry["windows"][WINDOW]
        totals = out.setdefault(entry["model"], dict.fromkeys(COUNTERS, 0.0))
        for name in COUNTERS:
            totals[name] += float(window.get(name) or 0.0)
    return out


def delta(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """What each model did between two snapshots of the same server."""
    start, end = counters(before), counters(after)
    zero = dict.fromkeys(COUNTERS, 0.0)
    return {model: {name: totals[name] - start.get(model, zero)[name] for name in COUNTERS}
            for model, totals in end.items()}


def cost_per_inference_usd(work: Mapping[str, Mapping[str, float]], model: str) -> float | None:
    """The server's own figure: the model's cost over its rows (a cascade's row sums its stages' cost)."""
    rows, cost = work.get(model, {}).get("inferences", 0.0), work.get(model, {}).get("cost_usd", 0.0)
    return cost / rows if rows else None


def stages_cost_per_inference_usd(work: Mapping[str, Mapping[str, float]], model: str,
                                  stages: Sequence[str]) -> float | None:
    """The cross-check: the stage models' own costs summed, over the rows the cascade answered (its own count,
    else its first stage's, which every row passes). Equal to the cascade's figure while nothing else calls them."""
    rows = work.get(model, {}).get("inferences", 0.0) or work.get(stages[0], {}).get("inferences", 0.0)
    cost = sum(work.get(stage, {}).get("cost_usd", 0.0) for stage in stages)
    return cost / rows if rows else None


def escalated_fraction(work: Mapping[str, Mapping[str, float]], stages: Sequence[str]) -> float | None:
    """Share of the first stage's rows that the last stage computed too (no direct calls to it meanwhile)."""
    first = work.get(stages[0], {}).get("inferences", 0.0)
    return work.get(stages[-1], {}).get("inferences", 0.0) / first if first else None


def compute_profile(work: Mapping[str, Mapping[str, float]], models: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per model, its busy time per row it computed (us) and its mean batch rows: where the server's compute went."""
    profile = {}
    for model in models:
        counts = work.get(model, {})
        rows, batches = counts.get("inferences", 0.0), counts.get("batches", 0.0)
        if rows and batches:
            profile[model] = {"busy_us_per_row": 1e6 * counts["busy_s"] / rows, "mean_batch_rows": rows / batches}
    return profile


def profile_medians(cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """compute_profile's figures, median over the cells of each (tool, variant, model)."""
    values: dict[tuple[str, str, str, str], list[float]] = {}
    for cell in cells:
        for model, figures in cell.get("profile", {}).items():
            for name, value in figures.items():
                values.setdefault((cell["tool"], cell["variant"], model, name), []).append(value)
    return [{"tool": t, "variant": v, "model": m, "figure": n, "median": statistics.median(xs)}
            for (t, v, m, n), xs in values.items()]


def profile_table(profile: Sequence[Mapping[str, Any]]) -> list[str]:
    by_key = {(p["tool"], p["variant"], p["model"], p["figure"]): p["median"] for p in profile}
    lines = ["| tool | variant | model | busy us per row | mean batch rows |", "|---|---|---|---|---|"]
    for tool, variant, model in dict.fromkeys(key[:3] for key in by_key):
        busy, rows = by_key.get((tool, variant, model, "busy_us_per_row")), by_key.get((tool, variant, model,
                                                                                         "mean_batch_rows"))
        lines.append(f"| {tool} | {variant} | {model} | {_fmt(busy, 1)} | {_fmt(rows, 2)} |")
    return lines


def abba(variants: Sequence[str], rounds: int) -> list[tuple[int, str]]:
    """(round, variant) in run order: odd rounds as given, even rounds reversed, so no variant always goes first."""
    order = []
    for rnd in range(1, rounds + 1):
        order += [(rnd, v) for v in (variants if rnd % 2 else tuple(reversed(variants)))]
    return order


def median_of(cells: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [c[key] for c in cells if c.get(key) is not None]
    return statistics.median(values) if values else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def verdict(cascade: Mapping[str, float | None], large: Mapping[str, float | None]) -> dict[str, Any]:
    """The issue's three targets on one tool's medians: cost, throughput, P99 (each ratio cascade / large)."""
    cost = ratio(cascade.get("cost_per_inference_usd"), large.get("cost_per_inference_usd"))
    throughput = ratio(cascade.get("infer_per_s"), large.get("infer_per_s"))
    p99 = ratio(cascade.get("p99_ms"), large.get("p99_ms"))
    return {"cost_ratio": cost, "throughput_ratio": throughput, "p99_ratio": p99,
            "cost_ok": cost is not None and cost <= MAX_COST_RATIO,
            "throughput_ok": throughput is not None and throughput >= MIN_THROUGHPUT_RATIO,
            "p99_ok": p99 is not None and p99 <= MAX_P99_RATIO}


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def summary_table(medians: Mapping[str, Mapping[str, Mapping[str, float | None]]]) -> list[str]:
    """A row per (tool, variant): medians over rounds; cost per 1M inferences so the figures read."""
    lines = ["| tool | variant | infer/s | P50 ms | P95 ms | P99 ms | cost per 1M inferences USD | escalated % |",
             "|---|---|---|---|---|---|---|---|"]
    for tool, by_variant in medians.items():
        for variant, m in by_variant.items():
            cost = m.get("cost_per_inference_usd")
            escalated = m.get("escalated_fraction")
            lines.append(f"| {tool} | {variant} | {_fmt(m.get('infer_per_s'), 0)} | {_fmt(m.get('p50_ms'))} | "
                         f"{_fmt(m.get('p95_ms'))} | {_fmt(m.get('p99_ms'))} | "
                         f"{_fmt(None if cost is None else cost * 1e6, 4)} | "
                         f"{_fmt(None if escalated is None else 100 * escalated, 1)} |")
    return lines


def verdict_table(verdicts: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = ["| tool | cost cascade/large (target <= 0.5) | throughput cascade/large (>= 1.5) | "
             "P99 cascade/large (<= 1.0) |", "|---|---|---|---|"]
    for tool, v in verdicts.items():
        cells = [f"{_fmt(v[k + '_ratio'], 3)} {'pass' if v[k + '_ok'] else 'FAIL'}" for k in ("cost", "throughput",
                                                                                          "p99")]
        lines.append(f"| {tool} | " + " | ".join(cells) + " |")
    return lines
