"""ModelRegistry: which model versions are loaded, their batchers, states and statistics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from infergate.batching.batcher import DynamicBatcher, Watchdog
from infergate.batching.limits import execution_timeout_s, limits_for
from infergate.batching.stats import ModelStats
from infergate.models.config import CASCADE_PLATFORM, ModelSpec, read_config
from infergate.models.errors import InferError, ModelNotFound, ModelUnavailable, NotAllowed
from infergate.models.repository import LoadedVersion, list_models, load_model
from infergate.models.runtime import StopToken
from infergate.server.dataplane import DecodedRequest, InferResult, InferTarget, ModelIO

if TYPE_CHECKING:
    from infergate.cascade.serving import CascadeModel

logger = logging.getLogger(__name__)

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"
# A model whose warm full batch computes faster than this runs its batches on the event loop
# thread: handing a batch to an executor thread and back costs more loop time than that (two
# wake-ups and GIL hand-overs, measured at 100-700 us under load here), while the
# computation itself blocks the loop no longer than a few RPCs' worth of work.
# Per model: parameters { key: "inline_execution" value: { string_value: "auto|on|off" } }.
INLINE_MAX_COMPUTE_S = 200e-6
# The name prefix of every model-execution thread: at exit, one still alive is an execution that never ended.
EXECUTION_THREAD_PREFIX = "infer-"


@dataclass(slots=True, eq=False)
class ServedModel:
    """A loaded model version wired to its batcher."""

    loaded: LoadedVersion
    io: ModelIO
    batcher: DynamicBatcher
    stats: ModelStats

    @property
    def name(self) -> str:
        return self.loaded.spec.name

    @property
    def version(self) -> str:
        return self.loaded.version

    @property
    def spec(self) -> ModelSpec:
        return self.loaded.spec

    @property
    def queued(self) -> int:
        return self.batcher.queued

    async def infer(self, request: DecodedRequest, deadline_ns: int) -> InferResult:
        queued = self.batcher.enqueue(request.inputs, request.rows, request.priority, request.timeout_us,
                                      deadline_ns)
        return InferResult(await self.batcher.outputs(queued), queued.timings)

    async def retire(self, drain_timeout_s: float = 30.0) -> None:
        await self.batcher.stop(drain_timeout_s)
        self.batcher.executor.shutdown(wait=False)
        self.loaded.runtime.unload()


if TYPE_CHECKING:
    Served: TypeAlias = ServedModel | CascadeModel  # a ready version: a model with its batcher, or a cascade


@dataclass(slots=True)
class ModelEntry:
    """Everything known about one model name, loaded or not."""

    name: str
    state: str = UNAVAILABLE
    reason: str = ""
    versions: dict[str, Served] = field(default_factory=dict)  # ready versions
    latest: Served | None = None  # highest ready version: the target of version ""


class ModelRegistry:
    """Loads, serves and unloads the models of one repository."""

    def __init__(self, repository: Path, execution_timeout_s: float = 0.0) -> None:
        self.repository = repository
        self.execution_timeout_s = execution_timeout_s  # --model-execution-timeout-s; 0 = none
        self._entries: dict[str, ModelEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Told when a model starts or stops refusing for executions hung past their timeout (ModelReady changes).
        self.on_health_change: Callable[[], None] | None = None

    def get(self, name: str, version: str = "") -> Served:
        """The served model for (name, version); "" means the latest ready version."""
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFound(name, version)
        if not version:
            if entry.latest is None:
                raise ModelUnavailable(name, "", entry.reason or entry.state.lower())
            return entry.latest
        served = entry.versions.get(version)
        if served is None:
            if entry.state == READY:
                raise ModelNotFound(name, version)
            raise ModelUnavailable(name, version, entry.reason or entry.state.lower())
        return served

    def is_ready(self, name: str, version: str = "") -> bool:
        """ModelReady's answer: loaded, and not refusing requests for executions hung past their timeout."""
        try:
            served = self.get(name, version)
        except InferError:
            return False
        return not isinstance(served, ServedModel) or served.batcher.is_healthy

    def is_loaded(self, name: str) -> bool:
        """Whether some version of the model is loaded, ready or not (loading it again would not help)."""
        entry = self._entries.get(name)
        return entry is not None and entry.latest is not None

    def entry(self, name: str) -> ModelEntry:
        """Everything known about one model name; raises ModelNotFound."""
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFound(name)
        return entry

    def entries(self) -> list[ModelEntry]:
        return [self._entries[name] for name in sorted(self._entries)]

    def all_served(self) -> list[Served]:
        return [s for e in self.entries() for s in e.versions.values()]

    def discover(self) -> list[str]:
        """Lists the repository's models, registering unseen ones as UNAVAILABLE (not loaded)."""
        names = list_models(self.repository)
        for name in names:
            self._entries.setdefault(name, ModelEntry(name, reason="not loaded"))
        return names

    def users_of(self, name: str) -> list[str]:
        """The loaded cascades that have `name` as a stage."""
        return sorted(entry.name for entry in self._entries.values()
                      if any(name in served.stage_models for served in entry.versions.values()
                             if not isinstance(served, ServedModel)))

    def _refuse_if_in_use(self, name: str, action: str) -> None:
        users = self.users_of(name)
        if users:
            raise NotAllowed(f"model '{name}' cannot be {action}ed: it is a stage of cascade(s) {users}, which "
                             "are loaded; unload them first")

    def is_cascade(self, name: str) -> bool:
        """Whether the repository's config of `name` says platform infergate_cascade (False when unreadable)."""
        try:
            return read_config(self.repository / name).platform == CASCADE_PLATFORM
        except InferError:
            return False

    async def load(self, name: str) -> None:
        """Loads (or reloads) a model; on failure it is UNAVAILABLE with the reason, and raises.

        A cascade loads its stages first when they are not loaded (as Triton loads an ensemble's models);
        a model that a loaded cascade uses as a stage is not reloaded under it."""
        self._refuse_if_in_use(name, "load")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            entry = self._entries.setdefault(name, ModelEntry(name))
            previous = list(entry.versions.values())
            entry.state, entry.reason = LOADING, ""
            try:
                if self.is_cascade(name):
                    from infergate.cascade.serving import load_cascade

                    served: list[Served] = [await load_cascade(self.repository, name, self._stage_target)]
                else:
                    loaded = await asyncio.to_thread(load_model, self.repository, name)
                    served = [_serve(v, self.execution_timeout_s, self._health_changed) for v in loaded]
            except Exception as exc:
                reason = exc.message if isinstance(exc, InferError) else f"{type(exc).__name__}: {exc}"
                logger.error("model '%s' failed to load: %s", name, reason)
                entry.state, entry.reason = (READY, _still_serving(previous, reason)) if previous else \
                    (UNAVAILABLE, reason)
                raise
            entry.versions = {v.version: v for v in served}
            entry.latest = max(entry.versions.values(), key=lambda s: int(s.version))
            entry.state, entry.reason = READY, ""
            for old in previous:
                await old.retire()

    async def _stage_target(self, cascade: str, name: str, version: int | None) -> InferTarget:
        """A cascade's stage, loaded first if it is in the repository and not loaded."""
        if not self.is_loaded(name) and name in self.discover():
            logger.info("cascade '%s': loading its stage '%s'", cascade, name)
            try:
                await self.load(name)
            except InferError as exc:
                raise ModelUnavailable(name, "", f"stage of cascade '{cascade}' failed to load: {exc.message}") \
                    from None
        return self.get(name, "" if version is None else str(version))

    async def unload(self, name: str, drain_timeout_s: float = 30.0) -> None:
        """Unloads every version of a model after its queued requests finish."""
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFound(name)
        self._refuse_if_in_use(name, "unload")
        async with self._locks.setdefault(name, asyncio.Lock()):
            served = list(entry.versions.values())
            entry.state, entry.versions, entry.latest = UNLOADING, {}, None
            for model in served:
                await model.retire(drain_timeout_s)
            entry.state, entry.reason = UNAVAILABLE, "unloaded"

    async def load_all(self, names: list[str] | None = None) -> None:
        """Loads the given models (default: all in the repository), cascades after plain models; failures
        are logged, not raised."""
        names = self.discover() if names is None else names
        for name in sorted(names, key=self.is_cascade):  # stable: plain models first, each group in name order
            if self.is_loaded(name):
                continue  # a stage some cascade already loaded
            try:
                await self.load(name)
            except Exception:
                pass  # already logged and recorded as the model's reason

    def _health_changed(self) -> None:
        if self.on_health_change is not None:
            self.on_health_change()

    async def stop(self, drain_timeout_s: float) -> None:
        # A cascade holds no batcher: its requests finish, or fail UNAVAILABLE, in its stages' drains.
        await asyncio.gather(*(s.retire(drain_timeout_s) for s in self.all_served()))


def _still_serving(previous: list[Served], reason: str) -> str:
    """RepositoryIndex's reason for a model whose reload failed: what still serves, and why the new one does not."""
    versions = ", ".join(sorted((served.version for served in previous), key=int))
    return f"the previous load still serves (version {versions}); loading again failed: {reason}"


def _serve(loaded: LoadedVersion, server_timeout_s: float, on_health_change: Callable[[], None]) -> ServedModel:
    spec, runtime = loaded.spec, loaded.runtime
    output_names = [t.name for t in spec.outputs]
    stats = ModelStats()

    def new_executor() -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=spec.instance_count,
                                  thread_name_prefix=f"{EXECUTION_THREAD_PREFIX}{spec.name}")

    def execute(inputs: dict, stop: StopToken) -> dict:  # type: ignore[type-arg]
        return runtime.predict(inputs, output_names, stop)

    timeout_s = execution_timeout_s(spec, server_timeout_s)
    watchdog = Watchdog(timeout_s, new_executor, runtime.is_interruptible) if timeout_s > 0 else None
    features = loaded.features
    # A watched model runs its batches in threads even when they are fast: a hang on the loop would stop it all.
    batcher = DynamicBatcher(spec.name, limits_for(spec), execute, new_executor(),
                             instance_count=spec.instance_count, stats=stats,
                             is_inline=watchdog is None and _is_inline(loaded),
                             assemble=features.assemble if features is not None else None, watchdog=watchdog)
    batcher.on_health_change = on_health_change
    return ServedModel(loaded, ModelIO.of(spec), batcher, stats)


def _is_inline(loaded: LoadedVersion) -> bool:
    """Whether batches run on the loop thread (see INLINE_MAX_COMPUTE_S)."""
    mode = loaded.spec.parameters.get("inline_execution", "auto")
    if mode not in ("auto", "on", "off"):
        logger.warning("model '%s': parameter inline_execution '%s' is not auto, on or off; using auto",
                       loaded.spec.name, mode)
        mode = "auto"
    if mode != "auto":
        return mode == "on"
    is_inline = loaded.runtime.device == "cpu" and loaded.warm_batch_s < INLINE_MAX_COMPUTE_S
    logger.info("model '%s' version %s: full batch computes in %.0f us; batches run %s", loaded.spec.name,
                loaded.version, loaded.warm_batch_s * 1e6, "on the event loop" if is_inline else "in a worker thread")
    return is_inline

