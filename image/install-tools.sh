#!/usr/bin/env bash
# Installs what image/build.sh and tests/image need (mmdebstrap, umoci, skopeo) from Debian's packages when missing.
# Run by `make test` and `make image`, so a fresh machine needs no manual step. Without root it only reports.
set -euo pipefail
missing=()
for tool in mmdebstrap umoci skopeo; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "image tools missing (${missing[*]}) and not root: the image tests will be skipped" >&2
  exit 0
fi
echo "installing ${missing[*]} from Debian's packages" >&2
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
