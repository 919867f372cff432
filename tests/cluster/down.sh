#!/usr/bin/env bash
# Stops the test control plane started by up.sh and removes its state (.cluster/).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
py="$repo/.venv/bin/python"
[[ -x "$py" ]] || py=python3
exec "$py" "$here/plane.py" down
