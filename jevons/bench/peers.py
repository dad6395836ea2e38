"""llama.cpp as the peer: find (or build) its binaries and run its own
benchmarks, llama-bench (pp/tg at batch 1) and llama-batched-bench (decode
with many sequences), on the same GGUF and thread count as jevons.

The binaries come from ../shared/peers/build-llama-cpp.sh (relative to the
repository root), which builds them once (~10 minutes on 2 cores) into
~/.cache/jevons/peers and prints the bin folder on its last line."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TOOLS = ("llama-bench", "llama-batched-bench", "llama-server")
BUILD_SCRIPT = Path(__file__).resolve().parents[2].parent / "shared" / "peers" / "build-llama-cpp.sh"
CACHE = Path(os.environ.get("JEVONS_PEERS", Path.home() / ".cache" / "jevons" / "peers"))


def _has_tools(d: Path, tools: tuple[str, ...]) -> bool:
    return all(os.access(d / t, os.X_OK) for t in tools)


def find_llama_cpp(explicit: str | None = None, build: bool = True, tools: tuple[str, ...] = TOOLS) -> Path:
    """The llama.cpp bin folder: --llama-cpp-dir, $JEVONS_LLAMA_CPP_DIR, a
    cached build, the PATH, or else a fresh build through the script."""
    if explicit:
        d = Path(explicit).expanduser()
        for cand in (d, d / "bin", d / "build" / "bin"):
            if _has_tools(cand, tools):
                return cand
        raise FileNotFoundError(f"--llama-cpp-dir {d} holds none of {', '.join(tools)} (looked in ., bin, build/bin)")
    env = os.environ.get("JEVONS_LLAMA_CPP_DIR")
    if env and _has_tools(Path(env), tools):
        return Path(env)
    for cand in sorted(CACHE.glob("llama.cpp-*/bin"), reverse=True):
        if _has_tools(cand, tools):
            return cand
    on_path = [shutil.which(t) for t in tools]
    if all(on_path):
        return Path(on_path[0]).parent  # type: ignore[arg-type]
    if not build:
        raise FileNotFoundError("llama.cpp binaries not found; pass --llama-cpp-dir or run " + str(BUILD_SCRIPT))
    if not BUILD_SCRIPT.is_file():
        raise FileNotFoundError(f"no llama.cpp found and no build script at {BUILD_SCRIPT}; pass --llama-cpp-dir")
    print(f"building llama.cpp with {BUILD_SCRIPT} (once; ~10 minutes on 2 cores)...", file=sys.stderr)
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


_REPACK_OK: dict[tuple[Path, Path], bool] = {}


def repack_works(bin_dir: Path, gguf: Path, threads: int) -> bool:
    """Whether llama.cpp's repacked weight kernels run here. A native build on a
    CPU that advertises AMX uses AMX tiles for quantized matmuls; in VMs that do
    not grant the tile state they die with SIGILL on the first matmul. A short
    llama-bench tells (once per binary and model)."""
    key = (bin_dir, gguf)
    if key not in _REPACK_OK:
        cmd = [str(bin_dir / "llama-bench"), "-m", str(gguf), "-p", "32", "-n", "0", "-r", "1", "-t", str(threads)]
        try:
            rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600).returncode
        except (OSError, subprocess.TimeoutExpired):
            return True  # can't tell; the real run will report its own error
        _REPACK_OK[key] = rc not in (-4, 132)  # SIGILL, direct or through a shell
        if not _REPACK_OK[key]:
            print(f"warning: {bin_dir / 'llama-bench'} dies with SIGILL (AMX?) here; running llama.cpp with weight "
                  "repacking off (--repack 0 / --no-repack), which also disables its other repacked kernels. "
                  "A build without AMX (-DGGML_NATIVE=OFF, AVX512 on, GGML_AMX_*=OFF) avoids that handicap.",
                  file=sys.stderr)
    return _REPACK_OK[key]


@dataclass
class PeerRun:
    """One peer measurement: the exact command and what it measured."""

    command: list[str]
    results: list[dict]

    def command_line(self) -> str:
        return " ".join(self.command)


def _run(cmd: list[str], timeout_s: float) -> str:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout


def llama_bench(bin_dir: Path, gguf: Path, prompt_len: int, gen_len: int, threads: int,
                repetitions: int = 3, timeout_s: float = 1800.0) -> PeerRun:
    """llama-bench -p P -n N: rows for ppP (prefill) and tgN (batch-1 decode),
    each with avg_ts/stddev_ts in tokens per second."""
    cmd = [str(bin_dir / "llama-bench"), "-m", str(gguf), "-p", str(prompt_len), "-n", str(gen_len),
           "-t", str(threads), "-r", str(repetitions), "-o", "json"]
    if not repack_works(bin_dir, gguf, threads):
        cmd += ["--repack", "0"]
    return PeerRun(cmd, parse_llama_bench(_run(cmd, timeout_s)))


def parse_llama_bench(stdout: str) -> list[dict]:
    rows = json.loads(stdout[stdout.index("["):])
    return [{"n_prompt": int(r["n_prompt"]), "n_gen": int(r["n_gen"]), "avg_ts": float(r["avg_ts"]),
             "stddev_ts": float(r.get("stddev_ts", 0.0)),
             "samples_ts": [float(x) for x in r.get("samples_ts") or [r["avg_ts"]]]} for r in rows]


def llama_batched_bench(bin_dir: Path, gguf: Path, prompt_len: int, gen_len: int, batches: list[int],
                        threads: int, repetitions: int = 1, timeout_s: float = 3600.0) -> PeerRun:
    """llama-batched-bench -npp P -ntg N -npl B1,B2: per B, S_PP (prefill) and
    S_TG (decode, B*N tokens over the generation time) in tokens per second.
    It measures each B once, so it is run `repetitions` times (rows carry "rep")."""
    ctx = max(batches) * (prompt_len + gen_len) + 64
    cmd = [str(bin_dir / "llama-batched-bench"), "-m", str(gguf), "-c", str(ctx), "-b", "2048", "-ub", "512",
           "-npp", str(prompt_len), "-ntg", str(gen_len), "-npl", ",".join(map(str, batches)),
           "-t", str(threads), "-tb", str(threads), "--output-format", "jsonl"]
    if not repack_works(bin_dir, gguf, threads):
        cmd.append("--no-repack")
    rows = [r | {"rep": i} for i in range(repetitions) for r in parse_batched_bench(_run(cmd, timeout_s))]
    return PeerRun(cmd, rows)


_MD_ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|" + r"\s*([\d.]+)\s*\|" * 6)


def parse_batched_bench(stdout: str) -> list[dict]:
    """Rows from either --output-format jsonl or the default markdown table."""
    rows: list[dict] = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            rows.append({"pp": r["pp"], "tg": r["tg"], "pl": r["pl"], "speed_pp": r["speed_pp"],
                         "speed_tg": r["speed_tg"], "t_pp": r["t_pp"], "t_tg": r["t_tg"]})
        elif m := _MD_ROW.match(line):
            pp, tg, pl, _nkv, t_pp, s_pp, t_tg, s_tg, _t, _s = m.groups()
            rows.append({"pp": int(pp), "tg": int(tg), "pl": int(pl), "speed_pp": float(s_pp),
                         "speed_tg": float(s_tg), "t_pp": float(t_pp), "t_tg": float(t_tg)})
    if not rows:
        raise ValueError("no result rows in llama-batched-bench output")
    return rows
