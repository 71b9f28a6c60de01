"""The KServe v2 / Triton GRPCInferenceService: convert, call the registry and batcher, convert back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from infergate.batching.stats import Duration, ModelStats
from infergate.models.errors import ModelNotFound, NotAllowed, TooManyInFlight, Unsupported
from infergate.proto import grpc_service_pb2 as pb
from infergate.server import cuda_shared_memory
from infergate.server.codec import decode_request, encode_response
from infergate.server.dataplane import InferResult, InferTarget
from infergate.server.errors import code_of, invalid_message, status_of
from infergate.server.loop import in_request_order
from infergate.server.protocol import SERVICE, SERVICE_NAME
from infergate.server.registry import READY, ModelRegistry
from infergate.server.shared_memory import SharedMemoryRegions
from infergate.server.telemetry.hub import Telemetry

logger = logging.getLogger(__name__)

SERVER_NAME = "infergate"
# Protocol extensions this server really implements (ServerMetadata.extensions).
EXTENSIONS = ("model_configuration", "model_repository", "schedule_policy", "statistics",
              "binary_tensor_data", "parameters", "system_shared_memory")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("infergate")
    except PackageNotFoundError:
        return "0+unknown"


class InferenceService:
    """Handlers for every RPC of inference.GRPCInferenceService."""

    def __init__(self, registry: ModelRegistry, *, is_explicit_control: bool = False,
                 telemetry: Telemetry | None = None, is_strict_readiness: bool = True,
                 max_inflight_requests: int = 0) -> None:
        self.registry = registry
        self.telemetry = telemetry
        self.tracer = telemetry.tracer if telemetry is not None else None
        self.is_explicit_control = is_explicit_control
        self.is_started = False  # set once start-up loading is done; cleared when shutting down
        self.is_strict_readiness = is_strict_readiness  # --strict-readiness: ready only with every expected model
        # Models that should be loaded: those loaded at start, plus RepositoryModelLoad's, less Unload's.
        self.expected_models: set[str] = set()
        self.on_readiness: Callable[[bool], Awaitable[None]] | None = None  # the transport's health, told of changes
        self.regions = SharedMemoryRegions()
        self.max_inflight_requests = max_inflight_requests  # --max-inflight-requests; 0 = no limit
        self.inflight_requests = 0  # ModelInfer calls received and not yet answered, every model and worker
        self.version = _version()
        self._health_tasks: set[asyncio.Task[None]] = set()
        registry.on_health_change = self._model_health_changed

    # -- health and metadata ----------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.is_ready())

    def is_ready(self) -> bool:
        """ServerReady's answer, and whether health says SERVING."""
        return is_server_ready(self.is_started, self.is_strict_readiness, self.expected_models,
                               self.registry.is_ready)

    async def readiness_changed(self) -> None:
        """Tells the transport's health what ServerReady now answers (after a load or an unload)."""
        if self.on_readiness is not None:
            await self.on_readiness(self.is_ready())

    def _model_health_changed(self) -> None:
        """A model started or stopped refusing for hung executions (on the loop, from its batcher): under
        --strict-readiness that changes ServerReady, and health follows, so load balancers route around it."""
        task = asyncio.get_running_loop().create_task(self.readiness_changed())
        self._health_tasks.add(task)
        task.add_done_callback(self._health_tasks.discard)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.registry.is_ready(request.name, request.version))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self.version, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        served = self.registry.get(request.name, request.version)
        spec = served.spec
        entry = self.registry.entry(spec.name)
        response = pb.ModelMetadataResponse(name=spec.name, versions=sorted(entry.versions, key=int),
                                            platform=spec.platform)
        for tensors, target in ((spec.inputs, response.inputs), (spec.outputs, response.outputs)):
            for t in tensors:
                target.add(name=t.name, datatype=t.datatype, shape=t.full_shape(spec.max_batch_size))
        return response

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        served = self.registry.get(request.name, request.version)
        response = pb.ModelConfigResponse()
        # Stubs of both protos live in one pool, so the config copies across directly.
        response.config.CopyFrom(served.spec.config)
        return response

    # -- inference --------------------------------------------------------------------

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        """Decode, await the target (a model's batcher, or a cascade's stages), encode."""
        received_ns = time.monotonic_ns()
        target = self.registry.get(request.model_name, request.model_version)
        stats = target.stats
        # Tracing decides before any work whether this request is traced (cheap when it is not).
        trace_parent = self.tracer.sample(context.invocation_metadata()) if self.tracer is not None else None
        result: InferResult | None = None
        stats.in_flight += 1
        self.inflight_requests += 1
        try:
            if self.max_inflight_requests and self.inflight_requests > self.max_inflight_requests:
                raise TooManyInFlight(self.max_inflight_requests)
            decoded = decode_request(request, target.io, self.regions)
            remaining_s = context.time_remaining()
            deadline_ns = received_ns + int(remaining_s * 1e9) if remaining_s is not None else 0
            result = await target.infer(decoded, deadline_ns)
            response = encode_response(target.spec, target.version, request.id, result.outputs,
                                       decoded.output_names, decoded.output_regions, self.regions, result.parameters)
        except BaseException as exc:
            failed_ns = time.monotonic_ns()
            stats.in_flight -= 1
            self.inflight_requests -= 1
            code = code_of(exc).name
            stats.request_failed(failed_ns - received_ns, code)
            if trace_parent is not None:
                self._trace(trace_parent, target, request, received_ns, failed_ns, result, code)
            raise
        sent_ns = time.monotonic_ns()
        stats.in_flight -= 1
        self.inflight_requests -= 1
        stats.request_succeeded(sent_ns - received_ns)
        if trace_parent is not None:
            self._trace(trace_parent, target, request, received_ns, sent_ns, result, "OK")
        return response

    def _trace(self, parent: Any, target: InferTarget, request: pb.ModelInferRequest, received_ns: int,
               sent_ns: int, result: InferResult | None, code: str) -> None:
        assert self.tracer is not None
        attributes: dict[str, str | int] = {"infergate.model": target.name, "infergate.version": target.version,
                                            "infergate.stage": result.stage if result is not None else ""}
        if request.id:
            attributes["infergate.request_id"] = request.id
        try:
            self.tracer.emit(parent, attributes, received_ns, sent_ns, result.timings if result else None, code)
        except Exception:
            logger.exception("could not record the trace of a request to model '%s'", target.name)

    async def ModelStreamInfer(self, requests: AsyncIterator[pb.ModelInferRequest],
                               context: Any) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Pipelined: every request is submitted as it arrives; responses go out in request order."""
        async for response in in_request_order(requests, lambda request: self._stream_one(request, context)):
            yield response

    async def _stream_one(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelStreamInferResponse:
        try:
            return pb.ModelStreamInferResponse(infer_response=await self.ModelInfer(request, context))
        except Exception as exc:
            code, message = status_of(exc)
            return pb.ModelStreamInferResponse(error_message=message)

    # -- statistics -------------------------------------------------------------------

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest,
                              context: Any) -> pb.ModelStatisticsResponse:
        if request.name and request.version:
            served_models = [self.registry.get(request.name, request.version)]
        elif request.name:
            served_models = list(self.registry.entry(request.name).versions.values())
            if not served_models:
                self.registry.get(request.name)  # raises UNAVAILABLE with the reason
        else:
            served_models = self.registry.all_served()
        response = pb.ModelStatisticsResponse()
        for served in served_models:
            _fill_statistics(response.model_stats.add(), served)
        return response

    # -- repository -------------------------------------------------------------------

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest,
                              context: Any) -> pb.RepositoryIndexResponse:
        self.registry.discover()
        response = pb.RepositoryIndexResponse()
        for entry in self.registry.entries():
            if entry.versions:
                for version in sorted(entry.versions, key=int):
                    response.models.add(name=entry.name, version=version, state=READY, reason=entry.reason)
            elif not request.ready:
                response.models.add(name=entry.name, state=entry.state, reason=entry.reason)
        return response

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,
                                  context: Any) -> pb.RepositoryModelLoadResponse:
        self._require_explicit("load")
        if request.parameters:
            raise Unsupported(f"RepositoryModelLoad parameters {sorted(request.parameters)} are not supported; "
                              "load the model from its folder in the repository")
        if request.model_name not in self.registry.discover():
            raise ModelNotFound(request.model_name)
        self.expected_models.add(request.model_name)
        try:
            await self.registry.load(request.model_name)
        finally:
            await self.readiness_changed()
        if self.telemetry is not None:
            self.telemetry.attach_all()
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                                    context: Any) -> pb.RepositoryModelUnloadResponse:
        self._require_explicit("unload")
        await self.registry.unload(request.model_name)
        self.expected_models.discard(request.model_name)
        await self.readiness_changed()
        return pb.RepositoryModelUnloadResponse()

    # -- system shared memory -----------------------------------------------------------

    async def SystemSharedMemoryRegister(self, request: pb.SystemSharedMemoryRegisterRequest,
                                         context: Any) -> pb.SystemSharedMemoryRegisterResponse:
        self.regions.register(request.name, request.key, int(request.offset), int(request.byte_size))
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryStatus(self, request: pb.SystemSharedMemoryStatusRequest,
                                       context: Any) -> pb.SystemSharedMemoryStatusResponse:
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self.regions.status(request.name):
            status = response.regions[region.name]
            status.name, status.key = region.name, region.key
            status.offset, status.byte_size = region.offset, region.byte_size
        return response

    async def SystemSharedMemoryUnregister(self, request: pb.SystemSharedMemoryUnregisterRequest,
                                           context: Any) -> pb.SystemSharedMemoryUnregisterResponse:
        self.regions.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    # CUDA shared memory: no region is ever registered (server/cuda_shared_memory.py says why, by the devices seen),
    # so the status lists none and unregistering is a no-op, as for an unknown system region.

    async def CudaSharedMemoryStatus(self, request: pb.CudaSharedMemoryStatusRequest,
                                     context: Any) -> pb.CudaSharedMemoryStatusResponse:
        if request.name:
            await asyncio.to_thread(cuda_shared_memory.cuda_devices)  # may import torch: not on the loop
            raise cuda_shared_memory.refuse_status(request.name)
        return pb.CudaSharedMemoryStatusResponse()

    async def CudaSharedMemoryRegister(self, request: pb.CudaSharedMemoryRegisterRequest,
                                       context: Any) -> pb.CudaSharedMemoryRegisterResponse:
        await asyncio.to_thread(cuda_shared_memory.cuda_devices)  # may import torch: not on the loop
        raise cuda_shared_memory.refuse_register(request.name, request.device_id, request.byte_size)

    async def CudaSharedMemoryUnregister(self, request: pb.CudaSharedMemoryUnregisterRequest,
                                         context: Any) -> pb.CudaSharedMemoryUnregisterResponse:
        return pb.CudaSharedMemoryUnregisterResponse()

    def _require_explicit(self, action: str) -> None:
        if not self.is_explicit_control:
            raise NotAllowed(f"explicit model {action} is not allowed: start the server with "
                             "--model-control-mode explicit")


def is_server_ready(is_started: bool, is_strict: bool, expected_models: Iterable[str],
                    is_model_ready: Callable[[str], bool]) -> bool:
    """Triton's --strict-readiness: up, and (when strict) every model that should be loaded is."""
    return is_started and (not is_strict or all(is_model_ready(name) for name in expected_models))


def _fill_statistics(out: pb.ModelStatistics, served: InferTarget) -> None:
    stats: ModelStats = served.stats
    out.name, out.version = served.name, served.version
    out.last_inference = stats.last_inference_ms
    out.inference_count = stats.inference_count
    out.execution_count = stats.execution_count
    infer = out.inference_stats
    for name in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        duration: Duration = getattr(stats, name)
        getattr(infer, name).CopyFrom(pb.StatisticDuration(count=duration.count, ns=duration.ns))
    for size in sorted(stats.batches):
        batch = stats.batches[size]
        entry = out.batch_stats.add(batch_size=size)
        for name in ("compute_input", "compute_infer", "compute_output"):
            duration = getattr(batch, name)
            getattr(entry, name).CopyFrom(pb.StatisticDuration(count=duration.count, ns=duration.ns))


# -- wiring into grpc -------------------------------------------------------------------

Handler = Callable[[Any, Any], Awaitable[Any]]
UNARY_METHODS = (
    "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer", "ModelConfig",
    "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
    "SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister",
)


def guarded(method: str, handler: Handler) -> Handler:
    """Wraps a handler so every error leaves through status_of (one mapping, exact messages)."""

    async def call(request: Any, context: Any) -> Any:
        try:
            return await handler(request, context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            code, message = status_of(exc)
            await context.abort(code, message)

    call.__name__ = method
    return call


def _parsing(method: str, parse: Callable[[bytes], Any], handler: Handler) -> Handler:
    async def call(body: bytes, context: Any) -> Any:
        try:
            request = parse(body)
        except DecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, invalid_message(method, exc))
        return await handler(request, context)

    return call


def _unsupported(method: str) -> Handler:
    async def call(request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not supported by infergate")

    return call


def generic_handler(service: InferenceService) -> grpc.GenericRpcHandler:
    """Builds the grpc handler for inference.GRPCInferenceService from the service's methods."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in SERVICE.methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        codec = dict(request_deserializer=request_type.FromString,
                     response_serializer=response_type.SerializeToString)
        if method.name == "ModelStreamInfer":
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(service.ModelStreamInfer, **codec)
        elif method.name in UNARY_METHODS:
            # The body is parsed here, not by grpcio, whose deserializer failure reaches clients as UNKNOWN.
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _parsing(method.name, request_type.FromString, guarded(method.name, getattr(service, method.name))),
                response_serializer=response_type.SerializeToString)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(_unsupported(method.name), **codec)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

