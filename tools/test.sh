#!/usr/bin/env bash
# Run the test suite with Trial in .venv and close with one plain line:
# "N passed, N failed" (", N skipped" when anything was skipped).
#
#   tools/test.sh                     the whole suite (tests)
#   tools/test.sh tests.test_wire     only what is named
#   tools/test.sh --reporter=verbose  options alone still run the whole suite
#
# Exits non-zero when Trial fails, when anything counted as failed, or when
# Trial's summary cannot be found.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash tools/setup-venv.sh

# Trial locks its temporary directory, and only one named _trial_temp makes
# a concurrent run move on to _trial_temp-1, -2, ... instead of failing.
# Under /tmp: short paths for UNIX sockets; kept after the run for its test.log.
tmp=${TMPDIR:-/tmp}/dae-$(id -u)/_trial_temp
args=("$@")
for arg in "$@"; do
    # Anything not an option names what to run; with none, run everything.
    [[ $arg == -* ]] || { targets=1; break; }
done
[ -n "${targets-}" ] || args+=(tests)

log=$(mktemp "${TMPDIR:-/tmp}/dae-test-XXXXXX.log")
trap 'rm -f "$log"' EXIT

# No -j2: Twisted 26.10's disttrial crashes while reporting an unexpected
# success and never prints its summary (serial Trial does).  Pass -j2 by hand.
status=0
.venv/bin/python -m twisted.trial --temp-directory="$tmp" "${args[@]}" 2>&1 |
    tee "$log" || status=$?
# The summary line is printed last whatever happened; Trial's own status wins.
counted=0
.venv/bin/python tools/trial_summary.py <"$log" || counted=$?
[ "$status" -ne 0 ] || status=$counted
exit "$status"
