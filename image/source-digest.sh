#!/usr/bin/env bash
# sha256 over the files an image is built from (tracked and new, not ignored): the image carries it as the label
# io.meshsigner.source-digest, and the image tests rebuild when the checkout no longer matches.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
git ls-files -z --cached --others --exclude-standard -- pyproject.toml README.md image signer policies bridge proto clocks \
  | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
