"""The OCI image built by image/build.sh is a valid image, carries no build tools, and its entrypoint, started the
way a container runtime starts it (its own mount namespace, the image's root filesystem read-only, /dev, /proc and
a writable /tmp mounted in, the image's user and environment), serves and issues a certificate."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.image.conftest import UnpackedImage
from tests.support.processes import SERVER_NAME, free_port, readyz
from tests.support.tokens import TokenIssuer

# the first test of a session may build the image (6-10 min on 2 cores) in its fixture
pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

# Run as root in a private mount namespace: bind the root filesystem read-only, mount what a runtime mounts, then
# chroot as the image's user with only the image's environment. `exec` all the way: the test's process *is*
# meshsigner, so SIGTERM reaches it as it would from the kubelet.
CONTAINER = r"""
set -eu
root=$1 state=$2 user=$3; shift 3
mount --make-rprivate /
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --bind "$state" "$root/tmp"
exec chroot --userspec="$user" --groups="${user#*:}" "$root" "$@"
"""


def _can_unshare() -> str | None:
    if os.geteuid() != 0:
        return "starting the image needs root (mount namespace, chroot)"
    if shutil.which("unshare") is None or shutil.which("chroot") is None:
        return "unshare or chroot is missing"
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a mount namespace here: {probe.stderr.strip()}"
    return None


def container_command(image: UnpackedImage, state: Path, *args: str) -> list[str]:
    """The image's entrypoint with ``args`` (its Cmd when empty), as its user, in its environment."""
    entrypoint = image.config["Entrypoint"]
    command = [*entrypoint, *(args or image.config.get("Cmd") or [])]
    environment = [f"{key}={value}" for key, value in image.env.items()]
    return [
        "env", "-i", *environment,
        "unshare", "--mount", "--", "sh", "-c", CONTAINER, "container",
        str(image.rootfs), str(state), image.config["User"], *command,
    ]  # fmt: skip


def test_the_archive_is_an_oci_image_for_a_non_root_user(image: UnpackedImage) -> None:
    uid, _, gid = image.config["User"].partition(":")
    assert uid.isdigit() and gid.isdigit(), "numeric, so runAsNonRoot can check it without /etc/passwd"
    assert int(uid) != 0 and int(gid) != 0
    entrypoint = image.rootfs / image.config["Entrypoint"][0].lstrip("/")
    assert entrypoint.is_file() and os.access(entrypoint, os.X_OK)
    assert image.config["Cmd"] == ["serve"]
    skopeo = shutil.which("skopeo")
    if skopeo:  # the same archive, read by the tool docker/podman users reach for
        inspected = subprocess.run(
            [skopeo, "inspect", "--config", f"oci-archive:{image.archive}"], capture_output=True, text=True
        )
        assert inspected.returncode == 0, inspected.stderr
        assert '"User": "' + image.config["User"] + '"' in inspected.stdout


def test_the_image_carries_no_build_tools_or_package_caches(image: UnpackedImage) -> None:
    root = image.rootfs
    for tool in ("gcc", "cc", "c++", "make", "ld", "pip", "pip3", "apt-get", "git"):
        found = [p for p in ("usr/bin", "usr/local/bin", "bin", "opt/meshsigner/bin") if (root / p / tool).exists()]
        assert not found, f"{tool} in {found}"
    site = root / "opt/meshsigner/lib/python3.11/site-packages"
    assert (site / "signer" / "cli.py").is_file()
    assert not (site / "pip").exists() and not (root / "usr/lib/python3/dist-packages/pip").exists()
    assert not list(root.rglob("*.whl"))
    assert not any((root / "dev").iterdir()), "device nodes come from the runtime, not the image"


@pytest.fixture
def container_state(tmp_path: Path, image: UnpackedImage) -> Path:
    """The folder mounted at /tmp in the container, owned by the image's user (like an emptyDir)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    uid, _, gid = image.config["User"].partition(":")
    os.chown(state, int(uid), int(gid))
    return state


@pytest.fixture
def served(image: UnpackedImage, container_state: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    reason = _can_unshare()
    if reason:
        pytest.skip(reason)
    issuer = TokenIssuer()
    uid, gid = (int(part) for part in image.config["User"].split(":"))
    jwks = issuer.write_jwks(container_state / "jwks.json")
    token = container_state / "token"
    token.write_text(issuer.token("orders", "web"))
    for path in (jwks, token):
        os.chown(path, uid, gid)
    grpc_port, readiness_port, metrics_port = free_port(), free_port(), free_port()
    log = (container_state.parent / "serve.log").open("wb")
    process = subprocess.Popen(
        container_command(
            image, container_state,
            "serve",
            f"--serving-address=127.0.0.1:{grpc_port}",
            f"--readiness-probe-port={readiness_port}",
            f"--metrics-port={metrics_port}",
            "--signer=local", "--local-ca-dir=/tmp/ca",
            "--authenticator=jwks", "--jwks-file=/tmp/jwks.json", f"--token-issuer={issuer.issuer}",
        ),
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90  # a cold start under a loaded machine; ready is the event waited on
        while True:
            if process.poll() is not None:
                pytest.fail(f"the container exited with {process.returncode}:\n{_log(container_state)}")
            try:
                if readyz(readiness_port)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the container did not become ready:\n{_log(container_state)}")
            time.sleep(0.1)
        yield process, grpc_port, metrics_port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _log(state: Path) -> str:
    return (state.parent / "serve.log").read_text(errors="replace")[-5000:]


def _uids(pid: int) -> set[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return {int(value) for value in line.split()[1:]}
    raise AssertionError("no Uid line")


def test_the_entrypoint_serves_as_its_user_and_issues_a_certificate(
    image: UnpackedImage, container_state: Path, served: tuple[subprocess.Popen[bytes], int, int]
) -> None:
    process, grpc_port, _ = served
    uid = int(image.config["User"].partition(":")[0])
    assert _uids(process.pid) == {uid}, "the server runs as the image's user, not root"
    ca_files = list((container_state / "ca").iterdir())
    assert ca_files and all(path.stat().st_uid == uid for path in ca_files)
    keys = [path for path in ca_files if "key" in path.name]
    assert keys and all(path.stat().st_mode & 0o777 == 0o600 for path in keys), [p.name for p in ca_files]

    # The image's own client, in a second container sharing the host network, asks like Istio's agent.
    request = subprocess.run(
        container_command(
            image, container_state,
            "request", f"--address=127.0.0.1:{grpc_port}", "--root-cert=/tmp/ca/root-cert.pem",
            f"--server-name={SERVER_NAME}", "--token-file=/tmp/token",
            "--namespace=orders", "--service-account=web", "--out-dir=/tmp/out",
        ),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert request.returncode == 0, request.stdout + request.stderr + _log(container_state)

    out = container_state / "out"
    chain = x509.load_pem_x509_certificates((out / "cert-chain.pem").read_bytes())
    root = x509.load_pem_x509_certificate((container_state / "ca" / "root-cert.pem").read_bytes())
    leaf = chain[0]
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert uris == ["spiffe://cluster.local/ns/orders/sa/web"]
    for certificate, issuer in zip(chain, [*chain[1:], root], strict=True):
        certificate.verify_directly_issued_by(issuer)
    root_pem = (container_state / "ca" / "root-cert.pem").read_bytes()
    assert (out / "root-cert.pem").read_bytes().strip() == root_pem.strip()
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600 and (out / "key.pem").stat().st_uid == uid


def test_sigterm_stops_the_container_cleanly(
    served: tuple[subprocess.Popen[bytes], int, int], container_state: Path
) -> None:
    process, _, _ = served
    process.terminate()
    assert process.wait(30) == 0, _log(container_state)
    assert "meshsigner stopped" in _log(container_state)
