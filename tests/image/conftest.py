"""The OCI image of image/build.sh, built once per session (or reused from the cache while it matches the checkout)
and unpacked the way a container runtime would, with every digest checked."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import REPO

SOURCE_DIGEST_LABEL = "io.meshsigner.source-digest"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class UnpackedImage:
    archive: Path
    rootfs: Path
    config: dict[str, Any]  # the image configuration's "config" object (User, Entrypoint, Cmd, Env, Labels)
    manifest: dict[str, Any]

    @property
    def env(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.config.get("Env") or [])


def _blob(layout: Path, descriptor: dict[str, Any]) -> bytes:
    algorithm, _, digest = descriptor["digest"].partition(":")
    data = (layout / "blobs" / algorithm / digest).read_bytes()
    assert len(data) == descriptor["size"], f"{descriptor['digest']}: size differs from its descriptor"
    assert _sha256(data) == descriptor["digest"], f"{descriptor['digest']}: content does not match its digest"
    return data


def unpack(archive: Path, into: Path) -> UnpackedImage:
    """Open the archive as an OCI layout, verify every blob against its descriptor, and extract the layers."""
    layout = into / "layout"
    layout.mkdir(parents=True)
    subprocess.run(["tar", "-xf", str(archive), "-C", str(layout)], check=True)
    assert json.loads((layout / "oci-layout").read_text())["imageLayoutVersion"] == "1.0.0"
    index = json.loads((layout / "index.json").read_text())
    (descriptor,) = index["manifests"]
    manifest = json.loads(_blob(layout, descriptor))
    image_config = json.loads(_blob(layout, manifest["config"]))
    rootfs = into / "rootfs"
    rootfs.mkdir()
    diff_ids = image_config["rootfs"]["diff_ids"]
    assert len(diff_ids) == len(manifest["layers"])
    for layer, diff_id in zip(manifest["layers"], diff_ids, strict=True):
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        tar = gzip.decompress(_blob(layout, layer))
        assert _sha256(tar) == diff_id, "the uncompressed layer does not match the config's diff_id"
        subprocess.run(["tar", "--numeric-owner", "--same-permissions", "-x", "-C", str(rootfs)], input=tar, check=True)
    shutil.rmtree(layout)
    return UnpackedImage(archive, rootfs, image_config["config"], manifest)


def _label(archive: Path, tmp: Path) -> str:
    """The source digest recorded in an existing archive ('' when it has none)."""
    subprocess.run(["tar", "-xf", str(archive), "-C", str(tmp)], check=True)
    index = json.loads((tmp / "index.json").read_text())
    manifest = json.loads(_blob(tmp, index["manifests"][0]))
    config = json.loads(_blob(tmp, manifest["config"]))
    return str((config["config"].get("Labels") or {}).get(SOURCE_DIGEST_LABEL, ""))


@pytest.fixture(scope="session")
def image_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$MESHSIGNER_IMAGE if set; else the cached `make image` output when built from this checkout; else a build."""
    given = os.environ.get("MESHSIGNER_IMAGE")
    if given:
        return Path(given)
    if os.geteuid() != 0:
        pytest.skip("building the image needs root (mmdebstrap root mode and chroot)")
    for tool in ("mmdebstrap", "umoci"):
        if shutil.which(tool) is None:
            pytest.skip(f"building the image needs {tool} (apt-get install mmdebstrap umoci)")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "meshsigner" / "image"
    version = subprocess.run(
        ["sed", "-n", 's/^version = "\\(.*\\)"/\\1/p', str(REPO / "pyproject.toml")], capture_output=True, text=True
    ).stdout.split()[0]
    archive = cache / f"meshsigner-{version}.oci.tar"
    wanted = subprocess.run(
        ["bash", str(REPO / "image" / "source-digest.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    if archive.exists() and _label(archive, tmp_path_factory.mktemp("label")) == wanted:
        return archive
    result = subprocess.run(["bash", str(REPO / "image" / "build.sh")], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"image/build.sh failed:\n{result.stderr[-5000:]}"
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def image(image_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> UnpackedImage:
    return unpack(image_archive, tmp_path_factory.mktemp("image"))
