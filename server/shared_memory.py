"""System shared-memory regions that clients register to pass tensors without copying them over gRPC.

A key reaches only a regular file directly inside /dev/shm: it must follow shm_open's rules, and
it is opened relative to that directory with O_NOFOLLOW. A region is mapped read-only; it is
mapped writable only when a request first asks for an output in it, and only if the server may
write the file.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import stat
from dataclasses import dataclass

from infergate.models.errors import AlreadyExists, InvalidInput, NotFound

logger = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"  # where POSIX shm_open() keys live on Linux
NAME_MAX = 255  # bytes of a key after its leading '/' (Linux NAME_MAX, the limit shm_open applies)
SHOWN_KEY_CHARS = 80  # characters of a rejected key quoted in an error message
# O_NOFOLLOW: a symlink under a key is refused (ELOOP), never followed out of /dev/shm.
# O_NONBLOCK: a FIFO planted under a key cannot block open(); fstat then refuses it.
OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
# A server running as root could open a file read-only to everyone for writing; its mode bits
# are the owner's word that it is read-only, so an output region needs one of these set.
WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
# File types a key may name in /dev/shm other than a regular file, for the error message.
FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
              (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))


@dataclass(slots=True, eq=False)
class Region:
    name: str
    key: str
    offset: int  # where the region starts in the file
    byte_size: int
    fd: int  # read-only, held for the region's lifetime: fstat per use, and identity for reopening
    file_id: tuple[int, int]  # (st_dev, st_ino) of the file at registration
    memory: mmap.mmap  # read-only mapping of the region, starting `skip` bytes before it
    skip: int  # offset minus the page-aligned start of the mapping
    writable: mmap.mmap | None = None  # made on the first output into this region


def key_problem(key: str) -> str | None:
    """The shm_open rule that key breaks, or None if it follows them all."""
    if not key.startswith("/"):
        return "a key must start with '/'"
    name = key[1:]
    if "/" in name:
        return "a key must have no '/' after its leading one"
    if name in ("", ".", ".."):
        return "a key must name a file after its '/', not '', '.' or '..'"
    if "\0" in name:
        return "a key must not contain NUL"
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > NAME_MAX:
        return f"a key may have at most {NAME_MAX} bytes after its '/' (NAME_MAX); this one has {size}"
    return None


def _shown(key: str) -> str:
    text = key if len(key) <= SHOWN_KEY_CHARS else key[:SHOWN_KEY_CHARS] + "..."
    return f"'{text}'" if text.isprintable() else repr(text)


def _file_kind(mode: int) -> str:
    return next((kind for test, kind in FILE_KINDS if test(mode)), "not a regular file")


def _open_in_shm_dir(key: str, flags: int) -> int:
    """Opens the file a valid key names, relative to /dev/shm so no path can leave it."""
    dir_fd = os.open(SHM_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return os.open(key[1:], flags | OPEN_FLAGS, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def _open_error(key: str, exc: OSError) -> InvalidInput:
    reason = "it is a symbolic link, which is not followed" if exc.errno == errno.ELOOP else exc.strerror
    return InvalidInput(f"Unable to open shared memory region: {_shown(key)}: {reason}")


class SharedMemoryRegions:
    """The regions registered with this server, by name (Triton's system_shared_memory extension)."""

    def __init__(self) -> None:
        self._regions: dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name:
            raise InvalidInput("a shared memory region needs a name; '' means every region in unregister and status")
        if name in self._regions:
            raise AlreadyExists(f"shared memory region '{name}' is already registered")
        problem = key_problem(key)
        if problem is not None:
            raise InvalidInput(f"shared memory key {_shown(key)} is not valid: {problem} (the rules of shm_open)")
        try:
            fd = _open_in_shm_dir(key, os.O_RDONLY)
        except OSError as exc:
            raise _open_error(key, exc) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidInput(f"Unable to open shared memory region: {_shown(key)}: it is "
                                   f"{_file_kind(info.st_mode)}, expected a regular file")
            where = f"failed to register shared memory region '{name}'"
            if offset < 0 or byte_size <= 0:
                raise InvalidInput(f"{where}: offset {offset} and byte_size {byte_size}; expected offset >= 0 "
                                   "and byte_size >= 1")
            if offset + byte_size > info.st_size:
                raise InvalidInput(f"{where}: offset {offset} + byte_size {byte_size} exceeds the "
                                   f"{info.st_size} bytes of key '{key}'")
            skip = offset % mmap.ALLOCATIONGRANULARITY
            memory = mmap.mmap(fd, skip + byte_size, access=mmap.ACCESS_READ, offset=offset - skip)
        except BaseException:
            os.close(fd)
            raise
        self._regions[name] = Region(name, key, offset, byte_size, fd, (info.st_dev, info.st_ino), memory, skip)

    def unregister(self, name: str) -> None:
        """Unregisters one region, or all when name is ""; an unknown name is not an error."""
        names = [name] if name else list(self._regions)
        for region in [self._regions.pop(n) for n in names if n in self._regions]:
            for memory in (region.memory, region.writable):
                if memory is not None:
                    memory.close()
            os.close(region.fd)

    def status(self, name: str) -> list[Region]:
        if not name:
            return list(self._regions.values())
        if name not in self._regions:
            raise NotFound(f"shared memory region '{name}' is not registered")
        return [self._regions[name]]

    def check(self, tensor: str, name: str, offset: int, byte_size: int) -> None:
        """Raises InvalidInput unless [offset, offset + byte_size) lies in a registered region."""
        self._region_for(tensor, name, offset, byte_size)

    def read(self, tensor: str, name: str, offset: int, byte_size: int) -> bytes:
        """A copy of bytes [offset, offset + byte_size) of a region, relative to its registered offset.

        Copied at once, so a client that truncates its file afterwards cannot fault the server
        (SIGBUS) while a batch reads the tensor."""
        region = self._region_for(tensor, name, offset, byte_size)
        start = region.skip + offset
        return region.memory[start:start + byte_size]

    def prepare_output(self, tensor: str, name: str, offset: int, byte_size: int) -> None:
        """Checks an output's place in a region and maps the region writable, before the model runs."""
        region = self._region_for(tensor, name, offset, byte_size)
        if region.writable is None:
            region.writable = self._map_writable(tensor, region)

    def write(self, tensor: str, name: str, offset: int, data: bytes) -> None:
        """Writes data at offset of a region that prepare_output has mapped writable."""
        region = self._region_for(tensor, name, offset, len(data))
        if region.writable is None:
            region.writable = self._map_writable(tensor, region)
        start = region.skip + offset
        region.writable[start:start + len(data)] = data

    def _region_for(self, tensor: str, name: str, offset: int, byte_size: int) -> Region:
        region = self._regions.get(name)
        if region is None:
            raise InvalidInput(f"{tensor} names shared memory region '{name}', which is not registered")
        if offset < 0 or byte_size < 0:
            raise InvalidInput(f"{tensor}: shared memory offset {offset} and byte_size {byte_size} in region "
                               f"'{name}'; expected both >= 0")
        if offset + byte_size > region.byte_size:
            raise InvalidInput(
                f"{tensor}: shared memory offset {offset} + byte_size {byte_size} exceeds region '{name}' "
                f"of {region.byte_size} bytes")
        size = os.fstat(region.fd).st_size
        if region.offset + region.byte_size > size:
            raise InvalidInput(
                f"{tensor}: shared memory region '{name}' needs {region.offset + region.byte_size} bytes of key "
                f"'{region.key}', but the file has shrunk to {size} bytes since it was registered")
        return region

    def _map_writable(self, tensor: str, region: Region) -> mmap.mmap:
        where = f"{tensor}: shared memory region '{region.name}' (key '{region.key}')"
        try:
            fd = _open_in_shm_dir(region.key, os.O_RDWR)
        except OSError as exc:
            raise InvalidInput(f"{where} is not writable by the server: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino) != region.file_id:
                raise InvalidInput(f"{where}: the key names a different file than when the region was registered")
            if not info.st_mode & WRITE_BITS:
                raise InvalidInput(f"{where} is not writable by the server: {os.strerror(errno.EACCES)}")
            start = region.offset - region.skip
            return mmap.mmap(fd, region.skip + region.byte_size, access=mmap.ACCESS_WRITE, offset=start)
        finally:
            os.close(fd)
