"""The served gRPC service's name and its methods, in descriptor order (the index workers send)."""

from __future__ import annotations

from infergate.proto import grpc_service_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAME: str = SERVICE.full_name  # "inference.GRPCInferenceService"
METHOD_NAMES = tuple(method.name for method in SERVICE.methods)
