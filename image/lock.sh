#!/usr/bin/env bash
# Re-resolves image/requirements.lock from pyproject.toml's runtime dependencies with pip-tools' pip-compile:
# exact versions and the sha256 of every distribution file, for CPython 3.11 on Linux (the image's interpreter).
# pip-tools lives in its own venv in the cache, not in the project's dependencies.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${XDG_CACHE_HOME:-$HOME/.cache}/meshsigner/tools/pip-tools"
if [ ! -x "$tools/bin/pip-compile" ]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q "pip-tools==7.5.*"
fi
cd "$repo"
"$tools/bin/pip-compile" --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
  --output-file image/requirements.lock pyproject.toml "$@"
