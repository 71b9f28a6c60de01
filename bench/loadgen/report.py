"""Results out: host and version metadata, the JSON document, the Markdown table and the PNG plots."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from infergate.bench.loadgen.points import Point
from infergate.bench.perf_compare import git_commit

logger = logging.getLogger(__name__)

# Client-side packages whose versions every result records.
PACKAGES = ("infergate", "grpcio", "protobuf", "numpy", "uvloop", "tritonclient", "matplotlib", "rich")
PLOT_PERCENTILES = ("p50", "p90", "p99", "p99.9")  # drawn in the latency-vs-throughput plot
SCHEMA = "infergate-bench/1"  # the JSON document's format


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def host_metadata(extra_versions: dict[str, str] | None = None) -> dict[str, Any]:
    """CPU model, cores, kernel, Python, every client package's version, the git commit, the load average."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "loadavg_at_start": list(os.getloadavg()),
        "versions": {**versions, **(extra_versions or {})},
    }


def document(meta: dict[str, Any], command: str, settings: dict[str, Any], targets: dict[str, Any],
             points: Sequence[Point], goodput: dict[str, Any] | None = None,
             ratios: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"schema": SCHEMA, "metadata": meta, "command": command, "settings": settings, "targets": targets,
            "points": [asdict(p) for p in points], "goodput": goodput or {}, "ratios": ratios or []}


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _load(p: dict[str, Any]) -> str:
    return f"c={p['concurrency']}" if p["mode"] == "closed" else f"{p['rate_per_s']:g}/s"


def _errors(p: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in p["errors"].items()) or "0"


def markdown(doc: dict[str, Any]) -> str:
    """The results for people: host line, one row per point, goodput, ratios, warnings."""
    meta = doc["metadata"]
    lines = ["# infergate bench", "",
             f"{meta['date']} · {meta['cpu_model']} · {meta['cpu_count']} cores · {meta['kernel']} · Python "
             f"{meta['python']} · commit `{meta['git_commit'][:12]}` · load average at start "
             f"{meta['loadavg_at_start'][0]:.2f}", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), ""]
    for label, target in doc["targets"].items():
        lines.append(f"- `{label}`: {target.get('address', '')}, server {target.get('server', '?')}")
    lines += ["", "Open-loop latencies run from each request's scheduled send time (no coordinated omission). "
              "Throughput counts correct answers completed in the window. CPU: 100 % = one core.", ""]
    header = ["target", "model", "load", "infer/s", "sent/s", "P50 ms", "P90 ms", "P95 ms", "P99 ms", "P99.9 ms",
              "errors", "checked", "client CPU", "server CPU", "notes"]
    rows = []
    for p in doc["points"]:
        lat = p["latency_ms"]
        notes = "; ".join(("CLIENT-LIMITED: " if p["client_limited"] else "") + w for w in p["warnings"])
        if p.get("slo_ok") is not None:
            verdict = "SLO held" if p["slo_ok"] else ("SLO not judged (the client was the limit)"
                                                      if p["client_limited"] else "SLO broken")
            notes = verdict + (f"; {notes}" if notes else "")
        server_cpu = "-" if p.get("server_cpu_pct") is None else f"{p['server_cpu_pct']:.0f} %"
        rows.append([p["target"], p["model"], _load(p), f"{p['throughput_per_s']:,.0f}", f"{p['sent_per_s']:,.0f}",
                     *(_ms(lat.get(k)) for k in ("p50", "p90", "p95", "p99", "p99.9")), _errors(p),
                     str(p["checked"]), f"{p['client_cpu_pct']:.0f} %", server_cpu, notes or ""])
    lines += _table(header, rows)
    lines += ["", "CPU over each point's window (100 % = one core): the client's processes, the server under load, "
              "the other servers meanwhile (compare runs them all at once), and the whole machine (100 % = all "
              "cores; the rest of it was other work on the host).", ""]
    lines += _table(["target", "model", "load", "client", "server", "other servers", "machine", "processes x channels"],
                    [[p["target"], p["model"], _load(p), f"{p['client_cpu_pct']:.0f} %",
                      "-" if p.get("server_cpu_pct") is None else f"{p['server_cpu_pct']:.0f} %",
                      ", ".join(f"{k} {v:.1f} %" for k, v in p["idle_servers_cpu_pct"].items()) or "-",
                      "-" if p.get("machine_cpu_pct") is None else f"{p['machine_cpu_pct']:.0f} %",
                      f"{p['processes']} x {p['channels']}"] for p in doc["points"]])
    if doc["goodput"]:
        lines += ["", "## Goodput (highest throughput whose P99 held the SLO)", ""]
        lines += _table(["target", "model", "mode", "SLO P99 ms", "goodput infer/s", "at load"],
                        [[g["target"], g["model"], g["mode"], f"{g['slo_p99_ms']:g}",
                          "none held" if g["throughput_per_s"] is None else f"{g['throughput_per_s']:,.0f}",
                          g.get("load") or "-"] for g in doc["goodput"].values()])
    if doc["ratios"]:
        lines += ["", "## Ratios (first target over each other one, same point)", ""]
        lines += _table(["model", "load", "pair", "infer/s ratio", "P50 ratio", "P99 ratio"],
                        [[r["model"], r["load"], r["pair"], f"{r['throughput']:.2f}x", r["p50"], r["p99"]]
                         for r in doc["ratios"]])
    lines += ["", "## Command", "", "```sh", doc["command"], "```", ""]
    return "\n".join(lines)


def plots(doc: dict[str, Any], out_dir: Path, stem: str = "") -> list[Path]:
    """Latency percentiles vs throughput, and the latency CDF, one pair of PNGs per model and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    written = []
    groups = sorted({(p["model"], p["mode"]) for p in doc["points"]})
    for model, mode in groups:
        points = [p for p in doc["points"] if (p["model"], p["mode"]) == (model, mode) and p["latency_ms"]["p50"]]
        if not points:
            continue
        targets = list(dict.fromkeys(p["target"] for p in points))
        fig, ax = plt.subplots(figsize=(7, 4.5))
        styles = ["-", "--", "-.", ":"]
        for ti, target in enumerate(targets):
            series = sorted((p for p in points if p["target"] == target),
                            key=lambda p: p["concurrency"] or p["rate_per_s"])
            for si, pct in enumerate(PLOT_PERCENTILES):
                ys = [p["latency_ms"][pct] for p in series]
                ax.plot([p["throughput_per_s"] for p in series], ys, styles[si % len(styles)], marker="o",
                        markersize=3, color=f"C{ti}", label=f"{target} {pct.upper()}")
        ax.set_xlabel("throughput (correct answers/s)")
        ax.set_ylabel("latency (ms)")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_title(f"{model}, {'closed loop' if mode == 'closed' else 'open loop (Poisson)'}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=max(1, len(targets)))
        written.append(_save(fig, out_dir / f"{stem}latency-vs-throughput-{model}-{mode}.png"))
        fig, ax = plt.subplots(figsize=(7, 4.5))
        loads = list(dict.fromkeys(_load(p) for p in points))
        for ti, target in enumerate(targets):
            for p in (p for p in points if p["target"] == target and p["cdf_ms"]):
                qs, ms = zip(*p["cdf_ms"])
                ax.plot(ms, qs, styles[ti % len(styles)], color=f"C{loads.index(_load(p)) % 10}", linewidth=1,
                        label=f"{target} {_load(p)}")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_yscale("logit")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("fraction of requests at or below")
        ax.set_title(f"latency CDF: {model}, {mode} loop")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=max(1, len(targets)))
        written.append(_save(fig, out_dir / f"{stem}latency-cdf-{model}-{mode}.png"))
    return written


def write_all(doc: dict[str, Any], out_dir: Path, with_plots: bool = True) -> list[Path]:
    """results.json, results.md and the PNGs into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(doc, out_dir / "results.json")
    (out_dir / "results.md").write_text(markdown(doc))
    written = [out_dir / "results.json", out_dir / "results.md"]
    if with_plots:
        written += plots(doc, out_dir)
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
