"""Binary framing between the parent and a sandbox worker (stdlib only: also shipped into the worker).

A frame is a fixed 17-byte header, a small JSON object ("meta") and an optional binary blob::

    magic b"DGS1" | kind u8 | meta_len u32 | blob_len u64 | meta (UTF-8 JSON) | blob

The blob carries the bulky parts raw (code, stdout/stderr bytes, RGB pixels) so nothing is
base64-encoded or pickled. The worker trusts the parent; the parent trusts nothing from the worker:
:func:`check_header` bounds every length before a byte of the body is read.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Sequence

MAGIC = b"DGS1"
HEADER = struct.Struct("<4sBIQ")
HEADER_SIZE = HEADER.size

# frame kinds
READY = 1  # worker -> parent: started, with the facts about its isolation
EXEC = 2  # parent -> worker: run a cell
RESULT = 3  # worker -> parent: cell output
LOAD = 4  # parent -> worker: input images
LOADED = 5  # worker -> parent: images bound as image_1...
FAILED = 6  # worker -> parent: the worker could not start or serve a request
PING = 7
PONG = 8

KIND_NAMES = {
    READY: "READY",
    EXEC: "EXEC",
    RESULT: "RESULT",
    LOAD: "LOAD",
    LOADED: "LOADED",
    FAILED: "FAILED",
    PING: "PING",
    PONG: "PONG",
}

MAX_META_BYTES = 1 << 20  # no legitimate meta object comes near this


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame (or closed the channel)."""


def encode_header(kind: int, meta: bytes, blob_len: int) -> bytes:
    return HEADER.pack(MAGIC, kind, len(meta), blob_len)


def check_header(raw: bytes, allowed_kinds: Sequence[int], max_blob: int) -> tuple[int, int, int]:
    """Validate a header read from an untrusted peer; return ``(kind, meta_len, blob_len)``."""
    if len(raw) != HEADER_SIZE:
        raise ProtocolError("truncated frame header")
    magic, kind, meta_len, blob_len = HEADER.unpack(raw)
    if magic != MAGIC:
        raise ProtocolError("bad frame magic")
    if kind not in allowed_kinds:
        raise ProtocolError(f"unexpected frame kind {kind}")
    if meta_len > MAX_META_BYTES:
        raise ProtocolError(f"frame meta too large ({meta_len} bytes)")
    if blob_len > max_blob:
        raise ProtocolError(f"frame payload too large ({blob_len} > {max_blob} bytes)")
    return kind, meta_len, blob_len


def decode_meta(raw: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(raw.decode("utf-8")) if raw else {}
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame meta is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ProtocolError("frame meta is not an object")
    return meta


# ---- blocking helpers used inside the worker (the trusted side of the pipe) ----


def send_frame(fd: int, kind: int, meta: dict[str, Any], blobs: Sequence[bytes | memoryview] = ()) -> None:
    """Write one frame with ``writev`` (no concatenation copy of big blobs)."""
    meta_b = json.dumps(meta, separators=(",", ":")).encode("utf-8")
    total = sum(len(b) for b in blobs)
    bufs: list[Any] = [encode_header(kind, meta_b, total), meta_b]
    bufs.extend(memoryview(b).cast("B") for b in blobs if len(b))
    while bufs:
        n = os.writev(fd, bufs)
        while bufs and n >= len(bufs[0]):
            n -= len(bufs[0])
            bufs.pop(0)
        if n:
            bufs[0] = memoryview(bufs[0])[n:]


def read_exact(fd: int, n: int) -> bytearray:
    """Read exactly ``n`` bytes (blocking); raise EOFError if the channel closes first."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            raise EOFError("channel closed")
        got += k
    return buf


def recv_frame(fd: int) -> tuple[int, dict[str, Any], bytearray]:
    """Read one frame from the trusted parent (blocking)."""
    kind, meta_len, blob_len = check_header(bytes(read_exact(fd, HEADER_SIZE)), tuple(KIND_NAMES), 1 << 40)
    meta = decode_meta(bytes(read_exact(fd, meta_len))) if meta_len else {}
    blob = read_exact(fd, blob_len) if blob_len else bytearray()
    return kind, meta, blob
