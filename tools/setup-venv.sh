#!/usr/bin/env bash
# Create or refresh .venv in the repository root: Python 3.11, the project
# installed editable with its test extras.  Idempotent: the install is redone
# only when setup.cfg or pyproject.toml changed (their hash is kept in a stamp
# file inside .venv).  Prints one line saying what it did.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

python=$(command -v python3.11) || {
    echo "setup-venv: python3.11 not found on PATH; install Python 3.11 first" >&2
    exit 1
}

# The dashboard's browser test drives Debian's Chromium headless.  Installed
# when missing and we may (root with apt-get); without it that test skips.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
        >"${TMPDIR:-/tmp}/dae-chromium-install.log" 2>&1 ||
        echo "setup-venv: could not install chromium; the browser test will be skipped" >&2
fi

# Two runs at once (several people share a work tree) would trample one venv:
# take a lock on this script itself, which needs no extra file.
exec 9<"$root/tools/setup-venv.sh"
flock 9

venv=.venv
stamp=$venv/.dae-install-stamp
log=$venv/setup-venv.log
want=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)

if ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    did="created .venv and installed dae_service[test] (editable)"
elif [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    echo "setup-venv: .venv is up to date"
    exit 0
else
    did="setup.cfg/pyproject.toml changed; reinstalled dae_service[test] (editable)"
fi

rm -f "$stamp"
if ! {
    "$venv/bin/python" -m pip install --quiet --upgrade pip &&
        "$venv/bin/python" -m pip install --quiet --editable '.[test]'
} >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup-venv: pip install failed (log above, also in $log)" >&2
    exit 1
fi
echo "$want" >"$stamp"
echo "setup-venv: $did"
