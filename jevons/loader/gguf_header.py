"""A GGUF file's header (metadata and tensor table) parsed straight from its
memory map, and its tensors as views into that map.

Why not gguf.GGUFReader: it builds a numpy view for every part of every
metadata field, which for a 151k-token Qwen2 vocabulary (tokens, types and
merges: ~450k strings) costs tens of seconds of CPU before any weight is read.
Here a string array is one tight loop over the bytes, and numeric arrays are
one np.frombuffer each. The layout follows ggml's gguf.md (version 2 and 3,
little-endian): magic, version, tensor count, KV count, the KV pairs, the
tensor infos, then the tensor data at `general.alignment` (default 32).
Tensor views match GGUFReader's: F32/F16 typed, everything else raw bytes."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

_MAGIC = 0x46554747  # "GGUF" read as a little-endian uint32
# GGUFValueType -> struct code of its scalar (STRING = 8 and ARRAY = 9 are handled apart)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
          7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_TYPED = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}


@dataclass(frozen=True)
class TensorView:
    """What the loader needs of a stored tensor (gguf.ReaderTensor's fields)."""

    name: str
    shape: np.ndarray  # ggml order: ne0 (the row length) first
    tensor_type: GGMLQuantizationType
    data: np.ndarray  # a view into the memory map; F32/F16 typed, else uint8 bytes


class _Cursor:
    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos = buf, 0

    def scalar(self, code: str) -> Any:
        (value,) = struct.unpack_from("<" + code, self.buf, self.pos)
        self.pos += struct.calcsize(code)
        return value

    def string(self) -> str:
        n = self.scalar("Q")
        start, self.pos = self.pos, self.pos + n
        return str(self.buf[start : self.pos], "utf-8", "replace")

    def strings(self, count: int) -> list[str]:
        # The hot loop for vocabularies: locals only, no per-item method calls.
        buf, pos, out = self.buf, self.pos, []
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(count):
            (n,) = unpack(buf, pos)
            pos += 8
            out.append(str(buf[pos : pos + n], "utf-8", "replace"))
            pos += n
        self.pos = pos
        return out

    def value(self, kind: int) -> Any:
        if kind == 8:
            return self.string()
        if kind == 9:
            item, count = self.scalar("I"), self.scalar("Q")
            if item == 8:
                return self.strings(count)
            if item == 9:
                return [self.value(9) for _ in range(count)]  # nested arrays: rare, small
            dtype = np.dtype(_NUMPY[item]).newbyteorder("<")
            arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
            self.pos += arr.nbytes
            return arr.tolist()
        if kind not in _SCALARS:
            raise ValueError(f"GGUF value type {kind} is unknown")
        return self.scalar(_SCALARS[kind])


def read_gguf(path: str) -> tuple[dict[str, Any], dict[str, TensorView]]:
    """(metadata, tensors by name) of a GGUF file. Tensors are read-only views
    into a shared memory map: nothing is read from disk until used."""
    # A plain ndarray over the map: slicing an np.memmap runs Python-level
    # __array_finalize__ on every view, which the dequantizer's steps would pay.
    mm = np.memmap(path, mode="r", dtype=np.uint8).view(np.ndarray)
    cur = _Cursor(memoryview(mm))
    magic, version = cur.scalar("I"), cur.scalar("I")
    if magic != _MAGIC:
        raise ValueError(f"{path} is not a GGUF file (or is big-endian, which jevons does not read)")
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = cur.scalar("Q"), cur.scalar("Q")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.scalar("I"))
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = [cur.scalar("Q") for _ in range(cur.scalar("I"))]
        infos.append((name, dims, GGMLQuantizationType(cur.scalar("I")), cur.scalar("Q")))
    align = int(metadata.get("general.alignment", 32))
    start = -(-cur.pos // align) * align
    tensors: dict[str, TensorView] = {}
    for name, dims, kind, offset in infos:
        block, nbytes = GGML_QUANT_SIZES[kind]
        count = int(np.prod(dims, dtype=np.int64))
        size = count // block * nbytes
        raw = mm[start + offset : start + offset + size]
        if raw.size != size:
            raise ValueError(f"{path}: tensor {name!r} runs past the end of the file (truncated download?)")
        if kind in _TYPED:
            data = raw.view(_TYPED[kind]).reshape(tuple(reversed(dims)))
        else:
            data = raw.reshape(tuple(reversed(dims[1:])) + (dims[0] // block * nbytes,))
        tensors[name] = TensorView(name, np.array(dims, dtype=np.uint64), kind, data)
    return metadata, tensors
