#!/usr/bin/env bash
# Run the demo tree in the foreground: twistd's dae plugin with
# tap-configs/demo.toml.  Extra arguments go to the dae plugin.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash tools/setup-venv.sh
exec .venv/bin/twistd -n dae --config tap-configs/demo.toml "$@"
