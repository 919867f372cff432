"""Real Istio processes on the test control plane: istiod (pilot-discovery) and pilot-agent, laid out as in a pod.

Both binaries resolve most of their paths relative to their working directory (``./var/run/secrets/...``,
``./etc/istio/...``): each process gets its own directory that plays the pod's root file system, and the tests
write into it exactly the files the Helm chart and the injector mount. Every listener is on 127.0.0.1 with a free
port, except what Istio cannot bind elsewhere (noted where it happens).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509

from tests.istio.install_values import InstallValues
from tests.support.processes import free_port

HERE = Path(__file__).resolve().parent
ISTIO_NAMESPACE = "istio-system"
ISTIOD_HOST = f"istiod.{ISTIO_NAMESPACE}.svc"
# The identity meshsigner's istiod-certificate controller gives istiod (istio-csr's, for the default revision).
ISTIOD_SPIFFE_ID = "spiffe://cluster.local/ns/" + ISTIO_NAMESPACE + "/sa/istiod-service-account"
CLUSTER_ID = "Kubernetes"
TRUST_DOMAIN = "cluster.local"


def go_env() -> dict[str, str]:
    return {**os.environ, "GOTOOLCHAIN": "local", "GOWORK": "off", "GOFLAGS": "-mod=readonly"}


def istio_module_dir() -> Path:
    """The istio.io/istio module the binaries were built from, in the Go module cache."""
    out = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", "istio.io/istio"],
        cwd=HERE,
        env=go_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return Path(out.stdout.strip())


def istio_crds(module_dir: Path) -> list[dict[str, Any]]:
    text = (module_dir / "manifests" / "charts" / "base" / "files" / "crd-all.gen.yaml").read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc and doc.get("kind") == "CustomResourceDefinition"]


# --- processes -------------------------------------------------------------------------------------------------


def _write(path: Path, data: bytes | str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path


def _stop(process: subprocess.Popen[bytes], timeout: float = 20) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def wait_until(predicate, timeout: float, what: str, *, alive: subprocess.Popen[bytes] | None = None, log=None):
    """Polls ``predicate`` until it returns something truthy; fails with the log tail when time runs out or the
    watched process exits."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"process exited ({alive.returncode}) while waiting for {what}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}:\n{_tail(log)}")
        time.sleep(0.2)


def _tail(log: Path | None, lines: int = 60) -> str:
    if log is None or not log.exists():
        return "(no log)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Istiod:
    process: subprocess.Popen[bytes]
    root: Path
    log_path: Path
    http_port: int
    xds_port: int  # the secure gRPC port (15012 in a cluster): XDS over TLS

    @property
    def discovery_address(self) -> str:
        return f"{ISTIOD_HOST}:{self.xds_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def debug(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/debug/{path}", timeout=10) as response:
            return json.loads(response.read())

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def connected_proxies(self) -> list[dict[str, Any]]:
        return self.debug("connections").get("clients") or []

    def stop(self) -> int:
        return _stop(self.process)


def start_istiod(
    binary: str,
    root: Path,
    *,
    kubeconfig: str,
    values: InstallValues,
    istiod_tls: dict[str, bytes],
    mesh_root_pem: bytes,
) -> Istiod:
    """pilot-discovery as the istiod chart runs it, with ``values``' env, its certificate files where the chart
    mounts the ``istiod-tls`` Secret and the ``istio-ca-root-cert`` ConfigMap, and a mesh config file."""
    _write(root / "var/run/secrets/istiod/tls/tls.crt", istiod_tls["tls.crt"])
    _write(root / "var/run/secrets/istiod/tls/tls.key", istiod_tls["tls.key"], 0o600)
    _write(root / "var/run/secrets/istiod/ca/root-cert.pem", mesh_root_pem)
    _write(
        root / "etc/istio/config/mesh", yaml.safe_dump({"trustDomain": TRUST_DOMAIN, "rootNamespace": ISTIO_NAMESPACE})
    )
    http_port, xds_port = free_port(), free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        # what the chart's deployment.yaml sets for every install
        "REVISION": "default",
        "PILOT_CERT_PROVIDER": values.pilot_cert_provider,
        "POD_NAME": "istiod-test",
        "POD_NAMESPACE": ISTIO_NAMESPACE,
        "SERVICE_ACCOUNT": "istiod",
        "PILOT_ENABLE_ANALYSIS": "false",
        "CLUSTER_ID": CLUSTER_ID,
        "GOMAXPROCS": "2",
        # the install's own settings (docs/istio-install.md), ENABLE_CA_SERVER=false among them
        **values.istiod_env,
    }
    argv = [
        binary,
        "discovery",
        f"--kubeconfig={kubeconfig}",
        "--monitoringAddr=127.0.0.1:" + str(free_port()),
        "--log_output_level=default:info",
        "--domain=cluster.local",
        "--keepaliveMaxServerConnectionAge=30m",
        f"--httpAddr=127.0.0.1:{http_port}",
        f"--httpsAddr=127.0.0.1:{free_port()}",
        f"--grpcAddr=127.0.0.1:{free_port()}",
        f"--secureGRPCAddr=127.0.0.1:{xds_port}",
        "--ctrlz_address=127.0.0.1",
        f"--ctrlz_port={free_port()}",
    ]
    log_path = root / "istiod.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    istiod = Istiod(process, root, log_path, http_port, xds_port)
    try:
        wait_until(istiod.ready, 180, "istiod /ready", alive=process, log=log_path)
    except AssertionError:
        istiod.stop()
        raise
    return istiod


@dataclass
class Workload:
    """The pod a pilot-agent acts for."""

    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{TRUST_DOMAIN}/ns/{self.namespace}/sa/{self.service_account}"


@dataclass
class Agent:
    process: subprocess.Popen[bytes]
    root: Path
    log_path: Path
    workload: Workload
    probes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def cert_dir(self) -> Path:  # OUTPUT_CERTS, the grpc-agent template's /var/lib/istio/data
        return self.root / "var/lib/istio/data"

    @property
    def bootstrap(self) -> Path:
        return self.root / "etc/istio/proxy/grpc-bootstrap.json"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def chain(self) -> list[x509.Certificate]:
        return x509.load_pem_x509_certificates((self.cert_dir / "cert-chain.pem").read_bytes())

    @property
    def token_file(self) -> Path:
        return self.root / "var/run/secrets/tokens/istio-token"

    def has_certificate(self) -> bool:
        return all((self.cert_dir / name).exists() for name in ("cert-chain.pem", "key.pem", "root-cert.pem"))

    def stop(self) -> int:
        for probe in self.probes:
            _stop(probe)
        return _stop(self.process)


def hosts_file(path: Path, values: InstallValues) -> Path:
    """/etc/hosts of the agent's private mount namespace: the Service names it dials, all on loopback."""
    return _write(path, f"127.0.0.1 localhost\n127.0.0.1 {values.ca_host} {ISTIOD_HOST}\n")


def start_agent(
    binary: str,
    root: Path,
    *,
    workload: Workload,
    token: str,
    mesh_root_pem: bytes,
    values: InstallValues,
    ca_port: int,
    istiod: Istiod,
    extra_env: dict[str, str] | None = None,
    provisioned_cert_dir: bool = False,
) -> Agent:
    """pilot-agent as Istio's ``grpc-agent`` injection template runs it (proxyless gRPC: DISABLE_ENVOY=true,
    ISTIO_META_GENERATOR=grpc, certificates written to OUTPUT_CERTS, a gRPC bootstrap for the application).

    It runs in a private mount namespace (``unshare -m``) whose /etc/hosts maps ``values.ca_host`` and
    ``istiod.istio-system.svc`` to 127.0.0.1, so CA_ADDR and the discovery address carry the real Service names and
    the agent checks the real server names.

    ``provisioned_cert_dir``: Istio's VM onboarding layout, PROV_CERT = OUTPUT_CERTS with the root pre-seeded:
    once the agent holds a certificate, it presents it as a TLS client certificate to istiod (and the CA)."""
    _write(root / "var/run/secrets/tokens/istio-token", token, 0o600)  # projected token, audience istio-ca
    _write(root / "var/run/secrets/istio/root-cert.pem", mesh_root_pem)  # the istio-ca-root-cert ConfigMap
    for folder in ("var/lib/istio/data", "etc/istio/proxy", "var/run/secrets/workload-spiffe-uds"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    cert_dir = root / "var/lib/istio/data"
    provisioning = {}
    if provisioned_cert_dir:
        _write(cert_dir / "root-cert.pem", mesh_root_pem)
        provisioning = {"PROV_CERT": str(cert_dir)}
    hosts = hosts_file(root / "hosts", values)
    # The status server (15020 in a pod) must have a valid port; Istio binds it on every interface, not loopback.
    proxy_config = {"discoveryAddress": istiod.discovery_address, "statusPort": free_port()}
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        # the grpc-agent injection template
        "ISTIO_META_GENERATOR": "grpc",
        "OUTPUT_CERTS": str(cert_dir),
        "PILOT_CERT_PROVIDER": values.pilot_cert_provider,
        "CA_ADDR": values.agent_ca_addr(ca_port),
        "POD_NAME": workload.pod_name,
        "POD_NAMESPACE": workload.namespace,
        "INSTANCE_IP": "127.0.0.1",
        "SERVICE_ACCOUNT": workload.service_account,
        "HOST_IP": "127.0.0.1",
        "PROXY_CONFIG": json.dumps(proxy_config),
        "ISTIO_META_POD_PORTS": "[]",
        "ISTIO_META_APP_CONTAINERS": "app",
        "ISTIO_META_CLUSTER_ID": CLUSTER_ID,
        "ISTIO_META_MESH_ID": TRUST_DOMAIN,
        "TRUST_DOMAIN": TRUST_DOMAIN,
        "ISTIO_META_DNS_CAPTURE": "false",
        "DISABLE_ENVOY": "true",
        **provisioning,
        **(extra_env or {}),
    }
    argv = [
        "unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts),
        binary, "proxy", "sidecar",
        f"--domain={workload.namespace}.svc.cluster.local",
        "--log_output_level=default:info,cache:debug",
    ]  # fmt: skip
    log_path = root / "agent.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    return Agent(process, root, log_path, workload)


def start_probe(binary: str, agent: Agent, listeners: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    """The application half of the proxyless workload: asks the agent's XDS socket for ``listeners``."""
    out = agent.root / f"xdsprobe-{len(agent.probes)}.jsonl"
    with out.open("wb") as stdout, (agent.root / f"xdsprobe-{len(agent.probes)}.err").open("wb") as stderr:
        process = subprocess.Popen(
            [binary, f"--bootstrap={agent.bootstrap}", f"--root={agent.root}", f"--listeners={','.join(listeners)}"],
            cwd=agent.root,
            stdout=stdout,
            stderr=stderr,
        )
    agent.probes.append(process)
    return process, out


def probe_responses(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
