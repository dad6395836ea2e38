"""One cached KV block on disk: the file format, and reading and writing it.

    offset  size  field
    0       8     magic b"JVKVBLK\\0"
    8       2     format version
    10      2     header size (128)
    12      4     reserved (0)
    16      8     payload length in bytes
    24      32    cache fingerprint (model, dtype, block size, cache layout)
    56      32    block hash (the chained SHA-256 key; also the file name)
    88      4     CRC-32 of bytes 0..88 and of the payload
    92      36    zero padding
    128     ...   payload (BlockTransfer's bytes)

Every field is checked on read, and any mismatch is a miss, never an error:
a truncated file fails the length check, a flipped bit anywhere in the header
or payload fails the CRC (CRC-32 detects every burst of up to 32 bits and
misses random damage with odds of 2^-32), a file from another model or
format fails the fingerprint or version check, and a file renamed to the
wrong key fails the hash check. The CRC guards against accidents, not
attackers: anyone who can write the cache folder can write a valid CRC too,
so the folder must be as trusted as the model weights.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

MAGIC = b"JVKVBLK\0"
VERSION = 1
HEADER_SIZE = 128
_FIELDS = struct.Struct("<8sHHIQ32s32s")  # everything the CRC covers in the header
_CRC = struct.Struct("<I")
_CRC_AT = _FIELDS.size  # 88
_IOV_MAX = 1024  # preadv's buffer-count limit on Linux


def pack_header(fingerprint: bytes, block_hash: bytes, payload: memoryview) -> bytes:
    fields = _FIELDS.pack(MAGIC, VERSION, HEADER_SIZE, 0, payload.nbytes, fingerprint, block_hash)
    crc = zlib.crc32(payload, zlib.crc32(fields))
    head = fields + _CRC.pack(crc)
    return head + bytes(HEADER_SIZE - len(head))


def check_header(header: memoryview, fingerprint: bytes, block_hash: bytes, payload_bytes: int) -> str | None:
    """Why this header does not describe a valid block for this key, or None."""
    magic, version, header_size, _, length, fp, bh = _FIELDS.unpack_from(header)
    if magic != MAGIC:
        return "bad magic"
    if version != VERSION or header_size != HEADER_SIZE:
        return f"format version {version}"
    if length != payload_bytes:
        return f"payload length {length}"
    if fp != fingerprint:
        return "written by another model or configuration"
    if bh != block_hash:
        return "block hash does not match the file name"
    return None


def checksum_ok(header: memoryview, payload: list[memoryview]) -> bool:
    """The stored CRC against the header and the payload (in pieces, as read)."""
    crc = zlib.crc32(header[:_CRC_AT])
    for piece in payload:
        crc = zlib.crc32(piece, crc)
    return crc == _CRC.unpack_from(header, _CRC_AT)[0]


def verify(data: memoryview, fingerprint: bytes, block_hash: bytes, payload_bytes: int) -> str | None:
    """Why a whole file's bytes are not a valid block for this key, or None if they are."""
    if data.nbytes != HEADER_SIZE + payload_bytes:
        return f"size {data.nbytes}, expected {HEADER_SIZE + payload_bytes}"
    why = check_header(data[:HEADER_SIZE], fingerprint, block_hash, payload_bytes)
    if why is None and not checksum_ok(data[:HEADER_SIZE], [data[HEADER_SIZE:]]):
        why = "checksum mismatch"
    return why


# --- files -------------------------------------------------------------------------
def write_block_file(path: Path, fingerprint: bytes, block_hash: bytes, payload: memoryview) -> None:
    """Write to a temporary name, then rename: a crash never leaves a
    half-written file under a real key. Raises OSError (disk full, ...)."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(pack_header(fingerprint, block_hash, payload))
            f.write(payload)
        os.replace(tmp, path)
    except OSError:
        remove_file(tmp)
        raise


def read_block_file(path: Path, fingerprint: bytes, block_hash: bytes, payload_bytes: int,
                    dest: list[memoryview]) -> str | None:
    """Read a block's payload into dest (buffers that together hold
    payload_bytes) with one scatter read. Returns None if the file is a valid
    block for this key, else why not (dest then holds garbage). Raises OSError
    when the file can't be read at all (missing, permissions, a short read)."""
    header = bytearray(HEADER_SIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size != HEADER_SIZE + payload_bytes:
            return f"size {size}, expected {HEADER_SIZE + payload_bytes}"
        if _preadv(fd, [header, *dest]) != size:
            raise OSError(f"short read of {path}")
    finally:
        os.close(fd)
    why = check_header(memoryview(header), fingerprint, block_hash, payload_bytes)
    if why is None and not checksum_ok(memoryview(header), dest):
        why = "checksum mismatch"
    return why


def prefetch_files(paths: list[Path]) -> None:
    """Ask the kernel to start reading these files now, all at once, so that
    reads that follow one by one find them in the page cache."""
    if not hasattr(os, "posix_fadvise"):
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def _preadv(fd: int, buffers: list) -> int:
    """Fill buffers in order from the file's start; the byte count read."""
    if hasattr(os, "preadv") and len(buffers) <= _IOV_MAX:
        return os.preadv(fd, buffers, 0)
    n = 0
    for b in buffers:  # platforms without preadv
        chunk = os.pread(fd, len(b), n)
        memoryview(b).cast("B")[: len(chunk)] = chunk
        n += len(chunk)
        if len(chunk) < len(b):
            break
    return n


def touch_file(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass  # evicted meanwhile


def remove_file(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
