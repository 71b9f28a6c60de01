"""System shared-memory regions that clients register to pass tensors without copying them over gRPC.

A key reaches only a regular file directly inside /dev/shm: it must follow shm_open's rules, and
it is opened relative to that directory with O_NOFOLLOW. A region holds a read-only descriptor;
a writable one is opened only when a request first asks for an output in it, and only if the
server may write the file.

Nothing is mmap'ed. A client sharing the host can truncate its file at any moment, and touching a
mapped page past the file's end raises SIGBUS, which kills the whole server; no size check before
the access closes that window. pread and pwrite on the descriptors instead meet a shrunk file as
a short read (or a regrown file), which fails that one request with INVALID_ARGUMENT.
"""

from __future__ import annotations

import errno
import logging
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
    fd: int  # read-only, held for the region's lifetime: inputs are pread from it
    file_id: tuple[int, int]  # (st_dev, st_ino) of the file at registration
    write_fd: int | None = None  # write-only, opened on the first output into this region


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
        except BaseException:
            os.close(fd)
            raise
        self._regions[name] = Region(name, key, offset, byte_size, fd, (info.st_dev, info.st_ino))

    def unregister(self, name: str) -> None:
        """Unregisters one region, or all when name is ""; an unknown name is not an error."""
        names = [name] if name else list(self._regions)
        for region in [self._regions.pop(n) for n in names if n in self._regions]:
            if region.write_fd is not None:
                os.close(region.write_fd)
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

        One pread into a new buffer, which the caller owns: a file that shrinks is a short read,
        never a fault, and later truncation cannot touch the copy."""
        region = self._region_for(tensor, name, offset, byte_size)
        start = region.offset + offset
        try:
            data = os.pread(region.fd, byte_size, start)
            if len(data) < byte_size:  # end of file, or one read's ceiling (0x7ffff000 bytes on Linux)
                data = self._read_rest(region, data, start, byte_size)
        except OSError as exc:
            raise InvalidInput(f"{tensor}: reading {byte_size} bytes at offset {offset} of shared memory region "
                               f"'{name}' (key '{region.key}') failed: {exc.strerror}") from None
        if len(data) < byte_size:
            raise InvalidInput(
                f"{tensor}: shared memory region '{name}' (key '{region.key}') gave {len(data)} of the {byte_size} "
                f"bytes at offset {offset}: the file has shrunk since it was registered, and the region needs "
                f"{region.offset + region.byte_size} bytes of it")
        return data

    def prepare_output(self, tensor: str, name: str, offset: int, byte_size: int) -> None:
        """Checks an output's place in a region and opens the region for writing, before the model runs."""
        region = self._region_for(tensor, name, offset, byte_size)
        self._check_size(tensor, region)
        if region.write_fd is None:
            region.write_fd = self._open_writable(tensor, region)

    def write(self, tensor: str, name: str, offset: int, data: bytes) -> None:
        """Writes data at offset of a region that prepare_output has opened for writing."""
        region = self._region_for(tensor, name, offset, len(data))
        self._check_size(tensor, region)
        if region.write_fd is None:
            region.write_fd = self._open_writable(tensor, region)
        start, view, done = region.offset + offset, memoryview(data), 0
        try:
            while done < len(data):
                written = os.pwrite(region.write_fd, view[done:], start + done)
                if written == 0:
                    raise OSError(errno.EIO, "the write made no progress")
                done += written
        except OSError as exc:
            raise InvalidInput(f"{tensor}: writing {len(data)} bytes at offset {offset} of shared memory region "
                               f"'{name}' (key '{region.key}') failed after {done}: {exc.strerror}") from None

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
        return region

    @staticmethod
    def _read_rest(region: Region, data: bytes, start: int, byte_size: int) -> bytes:
        """data and what follows it up to byte_size bytes, stopping early only at the end of the file."""
        parts = [data]
        got = len(data)
        while got < byte_size:
            more = os.pread(region.fd, byte_size - got, start + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    @staticmethod
    def _check_size(tensor: str, region: Region) -> None:
        """Refuses an output into a file that has shrunk: pwrite would silently regrow it, not fail.

        Advisory only (the file may shrink right after); the pwrite itself cannot fault."""
        size = os.fstat(region.fd).st_size
        if region.offset + region.byte_size > size:
            raise InvalidInput(
                f"{tensor}: shared memory region '{region.name}' needs {region.offset + region.byte_size} bytes of "
                f"key '{region.key}', but the file has shrunk to {size} bytes since it was registered")

    def _open_writable(self, tensor: str, region: Region) -> int:
        where = f"{tensor}: shared memory region '{region.name}' (key '{region.key}')"
        try:
            fd = _open_in_shm_dir(region.key, os.O_WRONLY)
        except OSError as exc:
            raise InvalidInput(f"{where} is not writable by the server: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino) != region.file_id:
                raise InvalidInput(f"{where}: the key names a different file than when the region was registered")
            if not info.st_mode & WRITE_BITS:
                raise InvalidInput(f"{where} is not writable by the server: {os.strerror(errno.EACCES)}")
        except BaseException:
            os.close(fd)
            raise
        return fd
