"""Compile jevons's C kernels for this CPU on first use, and load them.

The sources in csrc/ are plain C (no PyTorch headers), so a build takes about
a second with the system compiler. The library lands in a cache directory
keyed by a hash of the sources, the compiler and this CPU's flags, so each
machine builds once and a changed source rebuilds. With no compiler, or
JEVONS_CPU_KERNELS=0, `load()` returns None and every op stays on its plain
torch reference.

OpenMP: the library is linked with -fopenmp, and its libgomp.so.1 dependency
resolves to the copy PyTorch has already loaded, so both share one thread pool
instead of two pools fighting over the same cores.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from jevons import runtime

log = logging.getLogger("jevons")

ENV_VAR = "JEVONS_CPU_KERNELS"
CSRC = Path(__file__).parent / "csrc"
# Reassociation lets gcc vectorize float sums (dot products, norms); NaN and inf
# semantics stay (no -ffinite-math-only), and files that must round exactly as
# torch does turn contraction off themselves.
FLAGS = (
    "-O3", "-march=native", "-fopenmp", "-fno-strict-aliasing", "-shared", "-fPIC",
    "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math",
)


def cache_dir() -> Path:
    root = os.environ.get("JEVONS_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jevons", "kernels"
    )
    return Path(root)


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def _cpu_signature() -> str:
    """Model name and flags: -march=native output is only valid on a CPU like this one."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(keep)))


def _key(cc: str, sources: list[Path]) -> str:
    h = hashlib.sha256()
    for src in sources:
        h.update(src.name.encode() + b"\0" + src.read_bytes())
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    h.update(version.encode() + " ".join(FLAGS).encode() + _cpu_signature().encode())
    return h.hexdigest()[:16]


def _build(cc: str, sources: list[Path], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent first uses never load a half-written file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [cc, *FLAGS, "-o", tmp, *map(str, sources), "-lmvec", "-lm"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled kernel library, or None when C kernels are off or cannot be built."""
    if not runtime.current().cpu_kernels:
        return None
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None  # -march=native and the OpenMP sharing are only checked on x86-64 Linux
    cc = _compiler()
    if cc is None:
        log.info("no C compiler found; CPU ops run on their torch references")
        return None
    import torch  # noqa: F401  (its libgomp must be loaded before ours resolves it)

    sources = sorted(CSRC.glob("*.c"))
    headers = sorted(CSRC.glob("*.h"))
    try:
        target = cache_dir() / f"jevons_cpu_{_key(cc, sources + headers)}.so"
        if not target.exists():
            log.info("building CPU kernels into %s", target)
            _build(cc, sources, target)
        return ctypes.CDLL(str(target))
    except (OSError, RuntimeError) as e:
        log.warning("CPU kernels unavailable (%s); using torch references", e)
        return None
