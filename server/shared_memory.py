"""System shared-memory regions that clients register to pass tensors without copying them over gRPC."""

from __future__ import annotations

import logging
import mmap
import os
from dataclasses import dataclass

from infergate.models.errors import AlreadyExists, InvalidInput, NotFound

logger = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"  # where POSIX shm_open() keys live on Linux


@dataclass(slots=True, eq=False)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    memory: mmap.mmap


class SharedMemoryRegions:
    """The regions registered with this server, by name (Triton's system_shared_memory extension)."""

    def __init__(self) -> None:
        self._regions: dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if name in self._regions:
            raise AlreadyExists(f"shared memory region '{name}' is already registered")
        path = os.path.join(SHM_DIR, key.lstrip("/"))
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise InvalidInput(f"shared memory key '{key}' cannot be opened: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if offset < 0 or byte_size <= 0 or offset + byte_size > size:
                raise InvalidInput(
                    f"shared memory region '{name}': offset {offset} + byte_size {byte_size} exceeds the "
                    f"{size} bytes of key '{key}'")
            memory = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._regions[name] = Region(name, key, offset, byte_size, memory)

    def unregister(self, name: str) -> None:
        """Unregisters one region, or all when name is ""; an unknown name is not an error."""
        for region in [self._regions.pop(name)] if name in self._regions else (
                [] if name else [self._regions.pop(n) for n in list(self._regions)]):
            try:
                region.memory.close()
            except BufferError:
                pass  # a request still reads it; the mapping closes when that view is released

    def status(self, name: str) -> list[Region]:
        if not name:
            return list(self._regions.values())
        if name not in self._regions:
            raise NotFound(f"shared memory region '{name}' is not registered")
        return [self._regions[name]]

    def view(self, tensor: str, name: str, offset: int, byte_size: int) -> memoryview:
        """The bytes [offset, offset + byte_size) of a region, relative to its registered offset."""
        region = self._regions.get(name)
        if region is None:
            raise InvalidInput(f"{tensor} names shared memory region '{name}', which is not registered")
        if offset < 0 or byte_size < 0 or offset + byte_size > region.byte_size:
            raise InvalidInput(
                f"{tensor}: shared memory offset {offset} + byte_size {byte_size} exceeds region '{name}' "
                f"of {region.byte_size} bytes")
        start = region.offset + offset
        return memoryview(region.memory)[start:start + byte_size]
