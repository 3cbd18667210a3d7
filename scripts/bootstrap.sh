#!/usr/bin/env bash
# One-time set-up shared by `make test` and `make demo`: uv, and (for tests) the
# Debian packages of the real servers the tests start (mosquitto, an RTSP server, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

ensure_uv() {
    if ! command -v uv >/dev/null 2>&1; then
        if [ -x "$HOME/.local/bin/uv" ]; then export PATH="$HOME/.local/bin:$PATH"; return; fi
        echo "bootstrap: installing uv with pip" >&2
        python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
        export PATH="$HOME/.local/bin:$PATH"
    fi
}

ensure_apt_packages() {
    local wanted missing=()
    wanted=$(cat .ci/apt-packages*.txt 2>/dev/null | sed 's/#.*//' | tr -s ' \n' '\n' | sort -u)
    for pkg in $wanted; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return
    if [ "$(id -u)" -ne 0 ]; then
        echo "bootstrap: missing Debian packages (install them as root): ${missing[*]}" >&2
        exit 1
    fi
    echo "bootstrap: apt-get install ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_bytecode() {
    # The locked environment, with every module compiled to bytecode once per lock: where
    # PYTHONDONTWRITEBYTECODE is set (as on this workplace's machines) Python would otherwise
    # recompile torch's sources at every start (14 s instead of 5 s to import the model stack).
    local marker=".venv/.bytecode-$(sha256sum uv.lock | cut -c1-16)"
    [ -f "$marker" ] && return
    echo "bootstrap: installing the locked environment and compiling it to bytecode (once)" >&2
    uv sync --frozen --compile-bytecode --quiet
    rm -f .venv/.bytecode-*
    touch "$marker"
}

ensure_demo_clip() {
    uv run --frozen --quiet python -m stream.demo_media >/dev/null  # built once, then cached
}

case "${1:-}" in
    test) ensure_uv; ensure_apt_packages; ensure_bytecode ;;
    demo) ensure_uv; ensure_bytecode; ensure_demo_clip ;;
    *) ensure_uv; ensure_bytecode ;;
esac
