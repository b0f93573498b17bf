"""Bytes in and out of SEAL objects, whose Python binding saves and loads only by path.

A per-thread anonymous in-memory file (`os.memfd_create`, Linux; a temporary file elsewhere)
is the path: nothing is written to disk.
"""

from __future__ import annotations

import os
import struct
import tempfile
import threading
from typing import Any, Iterator

_local = threading.local()
SEAL_MAGIC = 0xA15E  # every SEAL object's serialization starts with this header
HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, version major/minor, compression,
# reserved, total size in bytes (header included)


def _buffer() -> tuple[int, str]:
    if not hasattr(_local, "fd"):
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("fedmirasol-he", os.MFD_CLOEXEC)
            _local.fd, _local.path = fd, f"/proc/self/fd/{fd}"
        else:  # pragma: no cover - not Linux
            fd, path = tempfile.mkstemp(prefix="fedmirasol-he-")
            _local.fd, _local.path = fd, path
    return _local.fd, _local.path


def save(obj: Any) -> bytes:
    """`obj.save(path)` (a SEAL object, or a serializable one), as bytes."""
    fd, path = _buffer()
    obj.save(path)
    return os.pread(fd, os.fstat(fd).st_size, 0)


def load(obj: Any, context: Any, data: bytes | memoryview) -> Any:
    """`obj.load(context, path)` from `data`; returns `obj`."""
    fd, path = _buffer()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    obj.load(context, path)
    return obj


def split(data: bytes | memoryview) -> Iterator[memoryview]:
    """The SEAL objects of a concatenation of serializations, by their headers' sizes
    (ValueError when `data` is not such a concatenation)."""
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        if len(view) - offset < HEADER.size:
            raise ValueError(f"a truncated SEAL object at byte {offset}")
        magic, header_size, _, _, _, _, size = HEADER.unpack_from(view, offset)
        if magic != SEAL_MAGIC or header_size != HEADER.size or size < HEADER.size \
                or offset + size > len(view):
            raise ValueError(f"no SEAL object at byte {offset}")
        yield view[offset:offset + size]
        offset += size
