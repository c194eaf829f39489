#!/usr/bin/env bash
# Runs the compatibility suite: the official Azure IoT SDKs (Python and Node) against a real
# `fleethub serve`. Idempotent: creates tests/compat/.venv and tests/compat/node_modules when
# missing or stale, builds the hub unless FLEETHUB_BIN points at one, then runs pytest.
#
#   tests/compat/run.sh                 # whole suite, stops at the first failure
#   tests/compat/run.sh -k node         # extra arguments go to pytest
#
# Needs python3 (3.11), node (20) and npm; binds 127.0.0.1:8883 and 127.0.0.1:443 (root or
# CAP_NET_BIND_SERVICE).
set -euo pipefail

COMPAT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$COMPAT_DIR/../.." && pwd)"
VENV="$COMPAT_DIR/.venv"

log() { printf 'compat: %s\n' "$*" >&2; }

fingerprint() { sha256sum "$@" | sha256sum | cut -d' ' -f1; }

# --- Python: the venv is stale when requirements.txt or the interpreter changed -------------
python_stamp="$(fingerprint "$COMPAT_DIR/requirements.txt")-$(python3 -c 'import sys; print(sys.version.split()[0])')"
if [[ ! -x "$VENV/bin/python" || "$(cat "$VENV/.fleethub-stamp" 2>/dev/null)" != "$python_stamp" ]]; then
    log "creating $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$COMPAT_DIR/requirements.txt"
    echo "$python_stamp" > "$VENV/.fleethub-stamp"
fi

# --- Node: node_modules is stale when package.json or package-lock.json changed --------------
node_stamp="$(fingerprint "$COMPAT_DIR/package.json" "$COMPAT_DIR/package-lock.json")"
if [[ ! -d "$COMPAT_DIR/node_modules" || "$(cat "$COMPAT_DIR/node_modules/.fleethub-stamp" 2>/dev/null)" != "$node_stamp" ]]; then
    log "npm ci in $COMPAT_DIR"
    (cd "$COMPAT_DIR" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$node_stamp" > "$COMPAT_DIR/node_modules/.fleethub-stamp"
fi

# --- the hub under test -------------------------------------------------------------------
if [[ -z "${FLEETHUB_BIN:-}" ]]; then
    log "cargo build -p fleethub"
    (cd "$REPO_ROOT" && cargo build -p fleethub)
fi

# The suite sets REQUESTS_CA_BUNDLE / NODE_EXTRA_CA_CERTS per case to the hub's own CA; keep
# proxies out of loopback traffic and bytecode out of the work tree.
export NO_PROXY="localhost,127.0.0.1${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"
export PYTHONDONTWRITEBYTECODE=1

cd "$REPO_ROOT"
if [[ $# -eq 0 ]]; then
    set -- -x -v
fi
exec "$VENV/bin/python" -m pytest -p no:cacheprovider tests/compat "$@"
