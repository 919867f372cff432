#!/usr/bin/env bash
# Builds meshsigner's container image without a container engine and prints the archive's path.
#
#   1. a minimal Debian root filesystem from Debian's own packages (mmdebstrap, essential variant + python3);
#   2. a virtual environment at /opt/meshsigner holding the pinned dependencies of image/requirements.lock, every
#      file checked against its sha256, binary wheels only (nothing is compiled), and meshsigner's own wheel;
#   3. a non-root user (65532), no pip, no compiler, no package caches or docs;
#   4. one layer packed with umoci into an OCI image archive (docker load, podman load, skopeo copy oci-archive:).
#
# Needs root (mmdebstrap's root mode and chroot), mmdebstrap and umoci (apt-get install mmdebstrap umoci), network
# access to a Debian mirror and to PyPI. The work tree lives in the cache folder, never in the checkout.
# Environment: MESHSIGNER_IMAGE_OUT (archive path), MESHSIGNER_IMAGE_CACHE (work folder), DEBIAN_SUITE,
# DEBIAN_MIRROR, SOURCE_DATE_EPOCH (timestamps; default: the last commit's time).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/pyproject.toml" | head -n1)"
suite="${DEBIAN_SUITE:-bookworm}"          # bookworm's python3 is 3.11, the version the lock file was resolved for
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
cache="${MESHSIGNER_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshsigner/image}"
out="${MESHSIGNER_IMAGE_OUT:-$cache/meshsigner-$version.oci.tar}"
uid=65532
venv=/opt/meshsigner
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}"

case "$(dpkg --print-architecture)" in
  amd64) wheel_platform=x86_64 ;;
  arm64) wheel_platform=aarch64 ;;
  *) echo "unsupported architecture $(dpkg --print-architecture)" >&2; exit 1 ;;
esac
for tool in mmdebstrap umoci; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install mmdebstrap umoci" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "image/build.sh needs root (mmdebstrap root mode, chroot)" >&2; exit 1; }

work="$cache/work"
rm -rf "$work"
mkdir -p "$work/wheel" "$(dirname "$out")"
rootfs="$work/rootfs"
start=$(date +%s)
source_digest="$(bash "$repo/image/source-digest.sh")"

echo "== meshsigner wheel" >&2
# from a clean copy of the tracked files: a stale build/ of setuptools would put deleted modules in the wheel
git -C "$repo" ls-files -z --cached --others --exclude-standard | (cd "$repo" && tar --null -T - -cf -) | (mkdir -p "$work/src" && tar -xf - -C "$work/src")
python3 -m pip wheel -q --no-deps --wheel-dir "$work/wheel" "$work/src" >&2
wheel="$(ls "$work"/wheel/meshsigner-*.whl)"

echo "== Debian $suite root filesystem" >&2
# essential: dpkg, the shell and coreutils only; python3 brings the interpreter and its standard library,
# libstdc++6 the C++ runtime grpcio's wheel links against.
mmdebstrap --quiet --mode=root --variant=essential --include=python3,libstdc++6 \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  "$suite" "$rootfs" "$mirror" >&2

echo "== dependencies from image/requirements.lock (hash-checked wheels) and meshsigner" >&2
site="$rootfs$venv/lib/python3.11/site-packages"
chroot "$rootfs" python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' >&2
chroot "$rootfs" python3 -m venv --without-pip "$venv"
# The host's pip installs into the image's site-packages for the image's interpreter (CPython 3.11, glibc of
# bookworm); the image never contains pip. meshsigner's own wheel joins the lock with its hash, so every file
# installed is pinned by a sha256.
{
  cat "$repo/image/requirements.lock"
  echo "meshsigner @ file://$wheel --hash=sha256:$(sha256sum "$wheel" | cut -d' ' -f1)"
} >"$work/requirements.txt"
# Every manylinux tag bookworm's glibc (2.36) can run, spelt out: older pips do not expand manylinux_2_36 downwards.
platforms=()
for minor in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${minor}_$wheel_platform"); done
platforms+=(--platform "manylinux2014_$wheel_platform")
python3 -m pip install -q --root-user-action=ignore --no-deps --require-hashes --only-binary=:all: --no-compile \
  "${platforms[@]}" --implementation cp --python-version 3.11 --abi cp311 --abi abi3 --abi none \
  --target "$site" -r "$work/requirements.txt" >&2
rm -rf "$site/bin"   # console scripts written for the host's interpreter; the entrypoint is written below
# The kubernetes distribution carries a second, asyncio copy of its generated client (about 70 MB of the image's
# 360); nothing meshsigner loads imports it (bridge/kube.py uses the threaded client; checked below).
rm -rf "$site/kubernetes/aio"
cat >"$rootfs$venv/bin/meshsigner" <<EOF
#!$venv/bin/python3
import sys

from signer.cli import main

sys.exit(main())
EOF
chmod 0755 "$rootfs$venv/bin/meshsigner"
# Bytecode now: the root filesystem is read-only at run time.
chroot "$rootfs" "$venv/bin/python3" -m compileall -q --invalidation-mode unchecked-hash "$venv/lib" >&2
chroot "$rootfs" "$venv/bin/meshsigner" --help >/dev/null
chroot "$rootfs" "$venv/bin/python3" -c 'import bridge.kube, signer.serve_in_cluster, signer.serve, policies.commands'

echo "== user and clean-up" >&2
echo "meshsigner:x:$uid:$uid:meshsigner:/nonexistent:/usr/sbin/nologin" >>"$rootfs/etc/passwd"
echo "meshsigner:x:$uid:" >>"$rootfs/etc/group"
rm -rf "$rootfs"/var/cache/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs"/tmp/* \
  "$rootfs"/usr/share/man "$rootfs"/usr/share/info "$rootfs"/usr/share/locale
find "$rootfs" -name '*.whl' -delete
find "$rootfs/dev" -mindepth 1 -delete   # the runtime provides /dev; an image carries no device nodes
chmod 1777 "$rootfs/tmp"

echo "== OCI image" >&2
tar --sort=name --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" --clamp-mtime \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$rootfs" -cf "$work/layer.tar" .
layout="$work/oci"
umoci init --layout "$layout"
umoci new --image "$layout:$version"
umoci raw add-layer --image "$layout:$version" --history.created "$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)" --history.created_by "image/build.sh (Debian $suite + meshsigner)" \
  "$work/layer.tar"
created="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
umoci config --image "$layout:$version" --created "$created" --history.created "$created" \
  --config.user "$uid:$uid" \
  --config.entrypoint "$venv/bin/meshsigner" --config.cmd serve \
  --config.env "PATH=$venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --config.env PYTHONDONTWRITEBYTECODE=1 --config.env PYTHONUNBUFFERED=1 \
  --config.workingdir / \
  --config.exposedports 6443/tcp --config.exposedports 6060/tcp --config.exposedports 9402/tcp \
  --config.label "org.opencontainers.image.title=meshsigner" \
  --config.label "org.opencontainers.image.version=$version" \
  --config.label "org.opencontainers.image.base.name=debian:$suite (mmdebstrap)" \
  --config.label "io.meshsigner.source-digest=$source_digest"
umoci gc --layout "$layout"
# docker load names the image from this annotation (podman and skopeo read org.opencontainers.image.ref.name).
python3 - "$layout/index.json" "meshsigner:$version" <<'EOF'
import json, sys
path, name = sys.argv[1], sys.argv[2]
index = json.load(open(path))
for manifest in index["manifests"]:
    manifest.setdefault("annotations", {})["io.containerd.image.name"] = f"docker.io/library/{name}"
json.dump(index, open(path, "w"))
EOF
tar --sort=name --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" -C "$layout" -cf "$out.partial" .
mv "$out.partial" "$out"
rm -rf "$work"

echo "== $out: $(du -m "$out" | cut -f1) MB archive, built in $(($(date +%s) - start)) s" >&2
echo "$out"
