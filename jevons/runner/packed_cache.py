"""An optional on-disk cache of the qgemm blobs runner/direct_load.py packs
from a GGUF, so a second start maps them instead of packing them again.

Off unless JEVONS_PACKED_CACHE is set ("1": ~/.cache/jevons/packed, or a
directory). A cold start packs as always and then writes the blobs on a
background thread (the server answers meanwhile); a warm start maps the file
(copy-on-write: clean page-cache pages, nothing packed, nothing zeroed) and
the layers use those bytes as they are.

Never stale: the file's name is a hash of everything the bytes depend on:
the GGUF's identity (real path, device, inode, size, mtime and ctime, which
no user can set back), the source of every file that decides or writes the
packed bytes (the C kernels, their Python wrappers, the direct loader and
the layer classes), the quantization method, dtype and CPU, and the plan
(which layers, from which tensors). Any change is another name, so another
file. An entry is complete only once its index is renamed into place, after
the blobs, so a crash mid-write leaves nothing that is ever read; the
payload's size is checked against the index on every open.
"""
from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path

import torch

from jevons.kernels.cpu import qgemm

log = logging.getLogger("jevons")

ENV_VAR = "JEVONS_PACKED_CACHE"
FORMAT = "jevons-packed-v1"
# Entries kept in a directory: a new one evicts the least recently used
# beyond this (a changed jevons or file leaves its old entry behind).
MAX_ENTRIES = 4
ALIGN = 4096  # each blob starts on a page, as a fresh allocation would
_ROOT = Path(__file__).resolve().parents[1]
# Every file whose change can change a packed byte (or which layer gets it).
_SOURCES = ("kernels/cpu/csrc", "kernels/cpu/qgemm.py", "kernels/cpu/gguf_pack.py", "kernels/cpu/qgemm_quant.py",
            "kernels/cpu/build.py", "runner/direct_load.py", "runner/packed_cache.py", "models/layers/linear.py",
            "loader/gguf_checkpoint.py", "loader/gguf_quant.py", "loader/gguf_header.py")


def cache_dir() -> Path | None:
    value = os.environ.get(ENV_VAR, "").strip()
    if value in ("", "0"):
        return None
    if value == "1":
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        return Path(base) / "jevons" / "packed"
    return Path(value).expanduser()


def _source_digest() -> bytes:
    h = hashlib.sha256()
    for rel in _SOURCES:
        p = _ROOT / rel
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file():
                h.update(str(f.relative_to(_ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.digest()


def cache_key(gguf: Path, method: str, dtype: torch.dtype, plan: Iterable[tuple[str, tuple[str, ...]]]) -> str:
    """The entry's name: a hash of the file's identity, the code, the settings and the plan."""
    from jevons.kernels.cpu.build import _cpu_signature

    real = Path(gguf).resolve()
    st = real.stat()
    h = hashlib.sha256(FORMAT.encode())
    h.update(json.dumps([str(real), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, method,
                         str(dtype), _cpu_signature(), [[n, list(p)] for n, p in plan]]).encode())
    h.update(_source_digest())
    return h.hexdigest()[:32]


class PackedCache:
    """One GGUF + settings: `get` every layer's QWeight (all or none: a hit
    is a complete entry), else `put` each as it is packed and `save`."""

    def __init__(self, directory: Path, key: str) -> None:
        self.dir, self.key = directory, key
        self.index, self.payload = directory / f"{key}.json", directory / f"{key}.bin"
        self._hit: dict[str, qgemm.QWeight] = {}
        self._new: dict[str, qgemm.QWeight] = {}
        self.complete = True  # False once a layer is not a QWeight: nothing is saved then
        self._remove_orphans()
        self._load()

    def _evict(self) -> None:
        """Beyond MAX_ENTRIES, the least recently used entries go (index
        first, so a reader never finds an index without its payload)."""
        indexes = sorted(self.dir.glob("*.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for index in indexes[MAX_ENTRIES:]:
            if index != self.index:
                index.unlink(missing_ok=True)
                index.with_suffix(".bin").unlink(missing_ok=True)

    def _remove_orphans(self) -> None:
        """Temporary files of writers that died mid-write (a server stopped
        before its background write ended): never read, only in the way."""
        for tmp in self.dir.glob(f"{self.key}.*.tmp") if self.dir.is_dir() else ():
            try:
                pid = int(tmp.name.split(".")[-2])
                os.kill(pid, 0)
            except (ValueError, IndexError, ProcessLookupError):
                tmp.unlink(missing_ok=True)
            except PermissionError:
                pass  # another user's live process

    @classmethod
    def open(cls, gguf: Path | None, method: str, dtype: torch.dtype,
             plan: Iterable[tuple[str, tuple[str, ...]]]) -> "PackedCache | None":
        directory = cache_dir()
        if directory is None or gguf is None:
            return None
        try:
            return cls(directory, cache_key(gguf, method, dtype, plan))
        except OSError as e:
            log.warning("packed-weight cache unavailable (%s)", e)
            return None

    @property
    def hit(self) -> bool:
        return bool(self._hit)

    def _load(self) -> None:
        try:
            meta = json.loads(self.index.read_text())
            if meta.get("format") != FORMAT or meta.get("key") != self.key:
                return
            with open(self.payload, "rb") as f:
                if os.fstat(f.fileno()).st_size != meta["size"]:
                    return
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private: the layers may not write it
        except (OSError, ValueError, KeyError):
            return
        try:
            os.utime(self.index)  # used now: the last entry eviction would take
        except OSError:
            pass
        for name, offset, shape, n, k, bits, has_zero in meta["entries"]:
            count = 1
            for d in shape:
                count *= d
            blob = torch.frombuffer(mm, dtype=torch.uint8, count=count, offset=offset).view(*shape)
            self._hit[name] = qgemm.QWeight(blob, n, k, bits, has_zero)

    def get(self, name: str) -> qgemm.QWeight | None:
        return self._hit.get(name)

    def put(self, name: str, qw: qgemm.QWeight | None) -> None:
        if qw is None:
            self.complete = False
        else:
            self._new[name] = qw

    def save(self, background: bool = True) -> threading.Thread | None:
        """Write what `put` collected (on a miss, when every layer was a
        QWeight): the blobs, then the index that makes the entry valid."""
        if self._hit or not self.complete or not self._new:
            return None
        if not background:
            self._write()
            return None
        t = threading.Thread(target=self._write, name="jevons-packed-cache", daemon=True)
        t.start()
        return t

    def _write(self) -> None:
        tmp_bin = self.payload.with_name(f"{self.payload.name}.{os.getpid()}.tmp")
        tmp_idx = self.index.with_name(f"{self.index.name}.{os.getpid()}.tmp")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            need = sum(q.blob.numel() + ALIGN for q in self._new.values())
            if shutil.disk_usage(self.dir).free < 2 * need:
                log.info("packed-weight cache: not enough free disk in %s; not written", self.dir)
                return
            entries, offset = [], 0
            with open(tmp_bin, "wb") as f:
                for name, qw in self._new.items():
                    pad = -offset % ALIGN
                    f.write(b"\0" * pad)
                    offset += pad
                    f.write(memoryview(qw.blob.contiguous().numpy()).cast("B"))
                    entries.append([name, offset, list(qw.blob.shape), qw.n, qw.k, qw.bits, qw.has_zero])
                    offset += qw.blob.numel()
            tmp_idx.write_text(json.dumps({"format": FORMAT, "key": self.key, "size": offset, "entries": entries}))
            os.replace(tmp_bin, self.payload)
            os.replace(tmp_idx, self.index)  # last: the entry exists from here on
            log.info("packed-weight cache: wrote %d layers (%.0f MiB) to %s", len(entries), offset / 2**20,
                     self.payload)
            self._evict()
        except OSError as e:
            log.warning("packed-weight cache: not written (%s)", e)
        finally:
            for p in (tmp_bin, tmp_idx):
                if p.exists():
                    p.unlink()
