"""Starts stock MLServer 1.7.1 with one RPC added: inference.GRPCInferenceService/ModelConfig.

perf_analyzer (service kind triton) calls ModelConfig once at start-up and aborts with "error: failed to
get model config: Method not found!" against MLServer, which lacks it. This shim answers it from each
model's model-settings.json as a Triton ModelConfig (max_batch_size, inputs and outputs without the batch
dimension); ModelInfer and everything else stay untouched MLServer. Runs in the MLServer venv that run.sh
made, not in infergate's.

    python modelconfig_shim.py MODELS_FOLDER     (the folder `mlserver start` would be given)
"""

import json
import subprocess
import sys
from typing import Any

import grpc
import mlserver.grpc.server as mlserver_grpc  # type: ignore[import-not-found]  # only in the MLServer venv
from mlserver.cli.main import root  # type: ignore[import-not-found]

SERVICE = "inference.GRPCInferenceService"

# tritonclient's and MLServer's generated protos both define the package "inference" and clash in one
# process ("duplicate symbol 'inference.ServerLiveRequest'"), so the ModelConfigResponse bytes are built
# in a child process (with tritonclient) and served here pre-serialised.
BUILD_CONFIGS = r"""
import glob, json, os, sys
from tritonclient.grpc import model_config_pb2, service_pb2
TYPES = {"FP32": model_config_pb2.TYPE_FP32, "FP64": model_config_pb2.TYPE_FP64,
         "INT32": model_config_pb2.TYPE_INT32, "INT64": model_config_pb2.TYPE_INT64}
out = {}
for path in glob.glob(os.path.join(sys.argv[1], "**", "model-settings.json"), recursive=True):
    settings = json.load(open(path))
    max_batch = int(settings.get("max_batch_size", 0))
    config = model_config_pb2.ModelConfig(name=settings["name"], platform=settings.get("platform", ""),
                                          max_batch_size=max_batch)
    for kind, tensors in (("inputs", config.input), ("outputs", config.output)):
        for spec in settings.get(kind, []):
            tensor = tensors.add()
            tensor.name, tensor.data_type = spec["name"], TYPES[spec["datatype"]]
            tensor.dims.extend(list(spec["shape"])[1:] if max_batch > 0 else list(spec["shape"]))
    out[settings["name"]] = [service_pb2.ModelConfigResponse(config=config).SerializeToString().hex(), str(config)]
print(json.dumps(out))
"""

configs: dict[str, bytes] = {}  # model name -> serialised ModelConfigResponse


def requested_name(message: bytes) -> str:
    """The name field (1, a string) of a serialised ModelConfigRequest; '' if it has none."""
    i = 0
    while i < len(message):
        tag = message[i]
        i += 1
        length = shift = 0
        while True:  # a varint: the field's length (or value)
            byte = message[i]
            i += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if tag >> 3 == 1:
            return message[i:i + length].decode()
        i += length
    return ""


async def model_config(request: bytes, context: Any) -> bytes:
    name = requested_name(request)
    if name not in configs:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"model {name} not found")
    return configs[name]


# No request or response serialiser: the handler takes and returns raw bytes.
_handler = grpc.method_handlers_generic_handler(SERVICE, {"ModelConfig": grpc.unary_unary_rpc_method_handler(
    model_config)})
_create_server = mlserver_grpc.GRPCServer._create_server


def _create_server_with_model_config(self: Any) -> Any:
    server = _create_server(self)
    server.add_generic_rpc_handlers((_handler,))
    return server


mlserver_grpc.GRPCServer._create_server = _create_server_with_model_config

if __name__ == "__main__":
    built = json.loads(subprocess.check_output([sys.executable, "-c", BUILD_CONFIGS, sys.argv[1]]))
    configs.update({name: bytes.fromhex(hexed) for name, (hexed, _) in built.items()})
    print("ModelConfig shim serving:", {name: text.replace("\n", " ") for name, (_, text) in built.items()},
          flush=True)
    sys.argv = ["mlserver", "start", sys.argv[1]]
    root()
