"""bench/startup.py's log parsing and summary, on made-up stamped lines (the
timing itself is the benchmark's job, never a test's)."""
from __future__ import annotations

import argparse
import os

from jevons.bench import startup

LINES = [
    (2.10, "2026-11-30 20:06:09,012 INFO jevons.server: loading /m.gguf; /health answers 503 until it is ready"),
    (2.11, "INFO:     Uvicorn running on http://127.0.0.1:1 (Press CTRL+C to quit)"),
    (3.80, "2026-11-30 20:06:10,748 INFO jevons: built 112 linear layers and 0 MoE layers' experts straight"),
    (3.84, "2026-11-30 20:06:10,758 INFO jevons: model m loaded in 1.7s; KV cache: 2340 blocks"),
    (3.85, "2026-11-30 20:06:10,762 INFO jevons.server: serving m as ['m'] (reasoning parser: off)"),
]


def test_phases_end_at_each_markers_first_line() -> None:
    got = startup.phases_from(LINES, startup.JEVONS_MARKERS, answered=4.10)
    assert list(got) == ["imports + app", "socket open", "checkpoint + model", "rest of build_model", "engine",
                         "first answer"]
    assert abs(sum(got.values()) - 4.10) < 1e-9 and abs(got["checkpoint + model"] - 1.69) < 1e-9
    assert startup.loaded_in(LINES) == 1.7


def test_a_missing_marker_folds_into_the_next_phase() -> None:
    lines = [LINES[0], LINES[2], LINES[4]]  # no socket line, no "loaded in"
    got = startup.phases_from(lines, startup.JEVONS_MARKERS, answered=5.0)
    assert "socket open" not in got and abs(sum(got.values()) - 5.0) < 1e-9
    assert startup.loaded_in(lines) is None


def test_summary_pairs_the_engines_run_by_run() -> None:
    runs = [startup.Run("jevons", 4.0, {"first answer": 0.3}, 6.0, 1.8, 0.5),
            startup.Run("llama-server", 2.0, {"first answer": 0.1}, 1.7, None, 0.5),
            startup.Run("jevons", 5.0, {"first answer": 0.4}, 6.5, 1.9, 0.7),
            startup.Run("llama-server", 2.0, {"first answer": 0.1}, 1.8, None, 0.7)]
    text = startup.summarize(runs)
    assert "jevons / llama-server, run by run: 2.00x 2.50x" in text
    assert "best / best 2.00x" in text and "CPU seconds by then   6.00 6.50" in text


def test_own_cpu_seconds_and_arguments() -> None:
    assert startup.cpu_seconds(os.getpid()) >= 0
    p = argparse.ArgumentParser()
    startup.add_arguments(p)
    a = p.parse_args(["m.gguf", "--compare", "--serve-flags", "-q int8 --max-model-len 4096"])
    assert a.compare and a.serve_flags.split() == ["-q", "int8", "--max-model-len", "4096"]
    assert startup.llama_cmd(__import__("pathlib").Path("/b"), "m.gguf", 9, 2, 2048)[-4:] == ["-c", "2048", "-np", "1"]
