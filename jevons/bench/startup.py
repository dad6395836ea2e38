"""Start-up time: from launching `jevons serve` to its first answered
request, beside llama.cpp's `llama-server` on the same file in the same run.

    jevons bench startup FILE [--compare] [--repeat N] [--threads T]
        [--packed-cache DIR] [--baseline DIR] [--serve-flags "..."]
    (or python -m jevons.bench.startup with the same arguments)

Each repetition starts the server as a subprocess, posts a one-token
/v1/completions request every `--poll` seconds until one is answered with 200,
then stops the server (SIGTERM, then SIGKILL) before the next one starts.
With --compare the engines alternate (jevons, llama-server, jevons, ...), so a
change in the machine's load hits both alike. Every line the server prints is
stamped on arrival, and the first line that matches each of the engine's
markers ends a phase: for jevons, the Python imports and the app (up to
"loading ..."), the listening socket, the weights, the rest of build_model
(up to "loaded in"), the engine and the first request. Timing is a benchmark's
job only: the tests run the log parsing and the summary on made-up lines.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jevons.bench.servers import LOOPBACK, free_port
from jevons.bench.threads import resolve_threads, thread_env

# (phase name, the log line that ends it); phases are reported in this order,
# each from the previous marker found (or the launch) to its own.
JEVONS_MARKERS = (
    ("imports + app", r"jevons\.server: loading "),
    ("socket open", r"Uvicorn running on"),
    ("checkpoint + model", r"jevons: (built \d+ linear|quantized \d+ linear)"),
    ("rest of build_model", r"jevons: model .* loaded in"),
    ("engine", r"jevons\.server: serving "),
)
LLAMA_MARKERS = (
    ("start", r"load_model: loading model"),
    ("weights", r"threadpool init"),
    ("context + slots", r"llama_server: model loaded|listening on"),
)


@dataclass
class Run:
    engine: str
    seconds: float  # launch to the first 200 answer
    phases: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    cpu: float | None = None  # the server's CPU seconds (all threads, user + system) at the answer
    loaded_in: float | None = None  # jevons's own "loaded in" figure
    load_avg: float = 0.0  # the 1-minute load average when the run began
    log: str = ""


def phases_from(lines: list[tuple[float, str]], markers: tuple[tuple[str, str], ...],
                answered: float) -> dict[str, float]:
    """lines: (seconds since launch, text). Each marker's first match after
    the previous one's ends its phase; the answer ends a last "first answer"."""
    out: dict[str, float] = {}
    prev, i = 0.0, 0
    for name, pattern in markers:
        rx = re.compile(pattern)
        for j in range(i, len(lines)):
            if rx.search(lines[j][1]):
                out[name] = lines[j][0] - prev
                prev, i = lines[j][0], j + 1
                break
    out["first answer"] = answered - prev
    return out


def loaded_in(lines: list[tuple[float, str]]) -> float | None:
    for _, text in lines:
        m = re.search(r"loaded in ([\d.]+)s", text)
        if m:
            return float(m.group(1))
    return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy


def _answered(port: int, path: str, body: dict | None) -> bool:
    """A 200 to a POST of `body` (a GET without one)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{LOOPBACK}:{port}{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with _OPENER.open(req, timeout=600) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def time_server(engine: str, cmd: list[str], port: int, env: dict[str, str] | None,
                markers: tuple[tuple[str, str], ...], timeout_s: float, poll_s: float, cwd: str | None = None) -> Run:
    """Launch, poll until the first answer, stop; the lines stamped on arrival."""
    load_avg = os.getloadavg()[0]
    lines: list[tuple[float, str]] = []
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, cwd=cwd)

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append((time.monotonic() - t0, raw.decode(errors="replace").rstrip()))
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    body = {"prompt": "Hello", "max_tokens": 1, "temperature": 0}
    try:
        while not _answered(port, "/v1/completions", body):
            if proc.poll() is not None:
                raise RuntimeError(f"{engine} exited with {proc.returncode}:\n" +
                                   "\n".join(t for _, t in lines[-30:]))
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"{engine}: no answer after {timeout_s:.0f} s")
            time.sleep(poll_s)
        seconds = time.monotonic() - t0
        cpu = cpu_seconds(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        reader.join(5)
    text = "\n".join(f"{t:8.3f} {s}" for t, s in lines if "POST /v1/completions" not in s)
    return Run(engine, seconds, phases_from(lines, markers, seconds), cpu, loaded_in(lines), load_avg, text)


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process from /proc (Linux), None elsewhere: on a
    shared machine the steadier figure beside the wall time."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def prime_cache(model: str, extra: list[str], env: dict[str, str], timeout_s: float) -> None:
    """One untimed start that leaves a complete cache entry: the server
    writes it in the background after loading; wait for its log line."""
    port = free_port()
    proc = subprocess.Popen(jevons_cmd(model, port, extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env)
    done = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            if re.search(rb"packed-weight cache: (wrote|not)|packed weights of \d+ layers mapped", raw):
                done.set()
        done.set()  # it exited
    threading.Thread(target=read, daemon=True).start()
    try:
        done.wait(timeout_s)
    finally:
        proc.terminate()
        proc.wait(30)


def jevons_cmd(model: str, port: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "jevons.cli", "serve", "--model", model, "--host", LOOPBACK, "--port", str(port),
            *extra]


def llama_cmd(bin_dir: Path, model: str, port: int, threads: int, ctx: int) -> list[str]:
    return [str(bin_dir / "llama-server"), "-m", model, "--host", LOOPBACK, "--port", str(port), "-t", str(threads),
            "-tb", str(threads), "-c", str(ctx), "-np", "1"]


def summarize(runs: list[Run]) -> str:
    out = []
    by: dict[str, list[Run]] = {}
    for r in runs:
        by.setdefault(r.engine, []).append(r)
    for engine, rs in by.items():
        secs = sorted(r.seconds for r in rs)
        cpus = sorted(r.cpu for r in rs if r.cpu is not None)
        out.append(f"{engine}: launch to first answer {' '.join(f'{s:.2f}' for s in secs)} s "
                   f"(min {secs[0]:.2f}, median {secs[len(secs) // 2]:.2f}; load {min(r.load_avg for r in rs):.1f}-"
                   f"{max(r.load_avg for r in rs):.1f})")
        if cpus:
            out.append(f"    CPU seconds by then   {' '.join(f'{c:.2f}' for c in cpus)} "
                       f"(median {cpus[len(cpus) // 2]:.2f})")
        names = list(dict.fromkeys(n for r in rs for n in r.phases))
        for n in names:
            vals = sorted(r.phases[n] for r in rs if n in r.phases)
            out.append(f"    {n:<22} {vals[len(vals) // 2]:6.2f} s  (min {vals[0]:.2f}, max {vals[-1]:.2f})")
        li = sorted(r.loaded_in for r in rs if r.loaded_in is not None)
        if li:
            out.append(f"    ('loaded in' {li[len(li) // 2]:.2f} s)")
    for num, den in (("jevons", "llama-server"), ("jevons+cache", "llama-server"), ("baseline", "llama-server"),
                     ("jevons", "baseline")):
        if num in by and den in by:
            ratios = sorted(a.seconds / b.seconds for a, b in zip(by[num], by[den]))
            best = min(r.seconds for r in by[num]) / min(r.seconds for r in by[den])
            out.append(f"{num} / {den}, run by run: {' '.join(f'{x:.2f}x' for x in ratios)} "
                       f"(median {ratios[len(ratios) // 2]:.2f}x; best / best {best:.2f}x)")
    return "\n".join(out)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a GGUF file (or anything `jevons serve --model` takes; --compare needs a GGUF)")
    p.add_argument("--compare", action="store_true", help="llama-server on the same file, alternating")
    p.add_argument("--repeat", type=int, default=3, help="repetitions per engine (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="threads for both (default: every available core)")
    p.add_argument("--llama-cpp-dir", default=None, help="llama.cpp's bin folder (default: jevons.bench.peers)")
    p.add_argument("--llama-ctx", type=int, default=2048, help="llama-server -c, one slot (default: %(default)s)")
    p.add_argument("--poll", type=float, default=0.05, help="seconds between requests while it starts")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one start may take")
    p.add_argument("--baseline", default=None, metavar="DIR",
                   help="also time `jevons serve` from another source tree (DIR holds its jevons/ package, e.g. "
                        "`git archive COMMIT jevons | tar -x -C DIR`), as engine 'baseline', in the same rotation")
    p.add_argument("--packed-cache", default=None, metavar="DIR",
                   help="also time jevons with its packed-weight cache in DIR (JEVONS_PACKED_CACHE), as engine "
                        "'jevons+cache', after one untimed start that writes it; 'jevons' runs without it")
    p.add_argument("--json", default=None, metavar="PATH", help="write every run (with its log) as JSON")
    p.add_argument("--show-log", action="store_true", help="print each jevons run's stamped log")
    p.add_argument("--serve-flags", default="", metavar="FLAGS",
                   help="extra `jevons serve` flags, one string, e.g. \"-q int8 --max-model-len 4096\"")


def add_startup_parser(bsub: argparse._SubParsersAction) -> None:
    """`jevons bench startup` (bench/cli.py registers it)."""
    p = bsub.add_parser("startup", help="launch to first answered request, beside llama-server on the same GGUF")
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jevons.bench.startup", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


def run(a: argparse.Namespace) -> int:
    extra = shlex.split(a.serve_flags)
    threads = resolve_threads(a.threads)
    bin_dir = None
    if a.compare:
        from jevons.bench.peers import find_llama_cpp

        bin_dir = find_llama_cpp(a.llama_cpp_dir, build=False, tools=("llama-server",))
    # (name, working directory, environment): `python -m` finds jevons/ in its working directory first.
    cold = {k: v for k, v in thread_env(threads).items() if k != "JEVONS_PACKED_CACHE"}
    jevons = [("jevons", None, cold)] + ([("baseline", str(Path(a.baseline).resolve()), cold)] if a.baseline else [])
    model = str(Path(a.model).resolve()) if Path(a.model).exists() else a.model
    if a.packed_cache:
        cached = {**cold, "JEVONS_PACKED_CACHE": str(Path(a.packed_cache).resolve())}
        jevons.insert(1, ("jevons+cache", None, cached))
        prime_cache(model, extra, cached, a.timeout)
    runs: list[Run] = []
    for i in range(a.repeat):
        for name, cwd, env in jevons:
            port = free_port()
            runs.append(time_server(name, jevons_cmd(model, port, extra), port, env, JEVONS_MARKERS, a.timeout,
                                    a.poll, cwd))
            print(f"[{i + 1}/{a.repeat}] {name} {runs[-1].seconds:.2f} s (load {runs[-1].load_avg:.1f})", flush=True)
            if a.show_log:
                print(runs[-1].log, flush=True)
        if bin_dir is not None:
            port = free_port()
            runs.append(time_server("llama-server", llama_cmd(bin_dir, model, port, threads, a.llama_ctx), port,
                                    None, LLAMA_MARKERS, a.timeout, a.poll))
            print(f"[{i + 1}/{a.repeat}] llama-server {runs[-1].seconds:.2f} s (load {runs[-1].load_avg:.1f})",
                  flush=True)
    print(f"threads {threads}; {a.model}")
    print(summarize(runs))
    if a.json:
        Path(a.json).write_text(json.dumps([asdict(r) for r in runs], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
