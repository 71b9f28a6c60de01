"""CUDA shared memory RPCs: what this server can say of them, by the CUDA devices it sees."""

from __future__ import annotations

import functools
import importlib.util
import os

from infergate.models.errors import InferError, NotFound, Status, Unsupported

SYSTEM_SHM_HINT = ("system shared memory (SystemSharedMemoryRegister, tritonclient.utils.shared_memory) works "
                   "here and on every node")


class NoGpu(InferError):
    """A CUDA shared memory region asked of a server that sees no CUDA device: not retryable here."""

    status = Status.FAILED_PRECONDITION


@functools.cache
def cuda_devices() -> int:
    """CUDA devices visible to this process, asked once of the runtimes installed (torch is an extra; without it,
    onnxruntime's CUDA provider stands for one device)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return 0
    if importlib.util.find_spec("torch") is not None:
        import torch

        return int(torch.cuda.device_count())
    import onnxruntime

    return 1 if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else 0


def refuse_register(name: str, device_id: int, byte_size: int) -> InferError:
    """Why CudaSharedMemoryRegister cannot register the region here."""
    region = f"CUDA shared memory region '{name}' (device_id {device_id}, byte_size {byte_size})"
    if cuda_devices() == 0:
        return NoGpu(f"{region} cannot be registered: this server sees no CUDA device (no GPU, or "
                     f"CUDA_VISIBLE_DEVICES hides it); {SYSTEM_SHM_HINT}")
    return Unsupported(f"{region} cannot be registered: CUDA IPC regions are not served yet, on GPU nodes either; "
                       f"{SYSTEM_SHM_HINT}")


def refuse_status(name: str) -> InferError:
    """CudaSharedMemoryStatus of one region: none can be registered, so a named one is never found."""
    return NotFound(f"CUDA shared memory region '{name}' is not registered (this server registers none: "
                    f"{'it sees no CUDA device' if cuda_devices() == 0 else 'CUDA IPC regions are not served yet'})")
