"""The server's telemetry: one ModelTelemetry per served model version, GPUs, the tracer, snapshots."""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any

from infergate.server.registry import ModelRegistry, ServedModel
from infergate.server.telemetry.aggregate import ModelLabels, ModelTelemetry
from infergate.server.telemetry.cascade_view import CASCADE_DEVICE, CASCADE_PRICE_SOURCE, cascade_summaries
from infergate.server.telemetry.cost import Price, cost_usd, cpu_cores, device_price, model_price
from infergate.server.telemetry.drift import PROFILE_FILE, DriftMonitor, monitor_for
from infergate.server.telemetry.gpu import Gpus, gpu_index
from infergate.server.telemetry.options import TelemetryOptions
from infergate.server.telemetry.tracing import RequestTracer, build_tracer
from infergate.server.telemetry.windows import WINDOW_SLOTS

if TYPE_CHECKING:
    from infergate.cascade.serving import CascadeModel
    from infergate.server.registry import Served

logger = logging.getLogger(__name__)

WINDOWS = (*WINDOW_SLOTS, "all")  # the windows a snapshot reports: "1m", "5m", "all" (since start)


class Telemetry:
    """Attaches telemetry to every served model version and answers for all of them."""

    def __init__(self, registry: ModelRegistry, options: TelemetryOptions) -> None:
        self.registry = registry
        self.options = options
        self.start_s = time.time()
        # By id(served), the served version kept alive; a cascade has several rows (see _attach_cascade).
        self._models: dict[int, tuple[Served, list[ModelTelemetry]]] = {}
        self._lock = threading.Lock()  # attach runs on the loop thread and on scrapes
        self.gpus = Gpus() if options.is_enabled else None
        # Per cascade (name, version): what one row would cost sent to its last stage alone, at the cheapest
        # per-row compute the server measured for that model (its warm-up batches): the saving's reference.
        self.alone_per_row_usd: dict[tuple[str, str], float] = {}
        self.tracer: RequestTracer | None = None
        if options.is_enabled:
            self.tracer = build_tracer(options.trace_exporter, options.trace_sampling_ratio,
                                       options.otlp_endpoint, options.span_exporter)

    def attach_all(self) -> list[ModelTelemetry]:
        """Telemetry for every served version (new ones attached, retired ones dropped), in model order."""
        if not self.options.is_enabled:
            return []
        with self._lock:
            served_now = {id(s): s for s in self.registry.all_served()}
            for key in list(self._models):
                if key not in served_now:
                    del self._models[key]
            without_profile: list[str] = []
            for key, served in served_now.items():
                if key not in self._models:
                    self._models[key] = (served, self._attach(served, without_profile))
            if without_profile:
                logger.info("no drift profile (%s) for %s: PSI is off for them; `infergate drift-profile` builds one",
                            PROFILE_FILE, ", ".join(without_profile))
            # A cascade's rows follow it: its own (stage "") and one per stage, under the cascade's name.
            return [telemetry for key in served_now for telemetry in self._models[key][1]]

    def _attach(self, served: Served, without_profile: list[str]) -> list[ModelTelemetry]:
        if not isinstance(served, ServedModel):
            return self._attach_cascade(served)
        spec, device = served.spec, served.loaded.runtime.device
        labels = ModelLabels(spec.name, served.version, "", device)
        return [ModelTelemetry(served.stats, labels, self._price(served),
                               drift=self._drift_monitor(served, without_profile))]

    def _attach_cascade(self, cascade: CascadeModel) -> list[ModelTelemetry]:
        """The cascade's row, priced at the sum of its stages' costs, then a row per stage priced as the stage."""
        rows = [ModelTelemetry(cascade.stats, ModelLabels(cascade.name, cascade.version, "", CASCADE_DEVICE),
                               Price(0.0, CASCADE_PRICE_SOURCE))]
        last = cascade.stages[-1].target
        if isinstance(last, ServedModel) and math.isfinite(last.loaded.warm_row_s):
            self.alone_per_row_usd[cascade.name, cascade.version] = cost_usd(self._price(last).usd_per_hour,
                                                                             int(last.loaded.warm_row_s * 1e9))
        for stage in cascade.stages:
            target = stage.target
            device = target.loaded.runtime.device if isinstance(target, ServedModel) else CASCADE_DEVICE
            price = self._price(target) if isinstance(target, ServedModel) else Price(0.0, CASCADE_PRICE_SOURCE)
            rows.append(ModelTelemetry(stage.stats, ModelLabels(cascade.name, cascade.version, stage.name, device),
                                       price))
        return rows

    def _price(self, served: ServedModel) -> Price:
        spec, device = served.spec, served.loaded.runtime.device
        index = gpu_index(device)
        gpu_name = self.gpus.name(index) if self.gpus is not None and index is not None else ""
        default = device_price(device, cpu_cores(spec.parameters), self.options.cpu_core_price_usd_per_hour,
                               self.options.gpu_price_usd_per_hour, gpu_name)
        return model_price(spec.name, spec.parameters, default)

    def _drift_monitor(self, served: ServedModel, without_profile: list[str]) -> DriftMonitor | None:
        if self.options.drift_every_batches <= 0:
            return None
        spec = served.spec
        try:
            monitor, why_not = monitor_for(spec.name, self.registry.repository / spec.name,
                                           {t.name: t.dims for t in spec.inputs}, self.options.drift_psi_threshold)
        except Exception as exc:  # e.g. the kernel failed to compile: serve without drift
            monitor, why_not = None, f"{type(exc).__name__}: {exc}"
        if monitor is None:
            if why_not:
                logger.warning("model '%s': drift monitoring is off: %s", spec.name, why_not)
            elif f"'{spec.name}'" not in without_profile:
                without_profile.append(f"'{spec.name}'")
            return None
        served.stats.drift_every = self.options.drift_every_batches
        logger.info("model '%s' version %s: drift monitoring of input '%s' (%d features), one batch in %d",
                    spec.name, served.version, monitor.profile.input, len(monitor.profile.features),
                    self.options.drift_every_batches)
        return monitor

    def snapshot(self) -> dict[str, Any]:
        """Everything `infergate stats` shows, as JSON-ready data (served at /stats.json)."""
        models = []
        for telemetry in self.attach_all():
            labels = telemetry.labels
            models.append({
                "model": labels.model, "version": labels.version, "stage": labels.stage, "device": labels.device,
                "price_usd_per_hour": telemetry.price.usd_per_hour, "price_source": telemetry.price.source,
                "in_flight": telemetry.stats.in_flight,
                "windows": {window: telemetry.summary(window) for window in WINDOWS},
                "drift_psi": telemetry.drift_psi(),  # summary() above has folded
            })
            alone_usd = self.alone_per_row_usd.get((labels.model, labels.version)) if not labels.stage else None
            if alone_usd is not None:
                models[-1]["last_stage_alone_cost_per_1k_inferences_usd"] = alone_usd * 1000
        cascade_summaries(models)
        gpus = [vars_of(r) for r in self.gpus.read()] if self.gpus is not None else []
        return {"uptime_s": round(time.time() - self.start_s, 3), "telemetry": self.options.is_enabled,
                "models": models, "gpus": gpus}

    def shutdown(self) -> None:
        if self.tracer is not None:
            self.tracer.shutdown()


def vars_of(reading: Any) -> dict[str, Any]:
    return {name: getattr(reading, name) for name in reading.__slots__}
