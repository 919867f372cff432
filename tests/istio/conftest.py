"""A real Istio control plane and node agent working through meshsigner, on the test control plane.

Every test here gets the ``istio`` and ``cluster`` markers; ``MESHSIGNER_SKIP_CLUSTER_TESTS=1`` skips them. The
binaries come from ``tests/istio/build.sh`` (built into the test-binary cache on first use, several minutes cold).

Session fixtures (stable names):

``istio_binaries``      paths of pilot-discovery, pilot-agent and the xDS probe
``install_values``      the Istio install settings of docs/istio-install.md (the test's environment comes from them)
``istio_crds``          Istio's CRDs from the same module, installed and Established
``mesh_signer``         ``meshsigner serve --authenticator tokenreview`` with tests/istio/policies, once per signer
                        (``--signer local``, ``--signer cert-manager`` with a CA ClusterIssuer); the fixtures below
                        follow it, so every test runs once per signer
``istiod_tls_secret``   STAND-IN for meshsigner's istiod-certificate controller: Secret istio-system/istiod-tls
``publish_mesh_root``   STAND-IN for meshsigner's root distribution: ConfigMap istio-ca-root-cert in a namespace
``istiod``              pilot-discovery with ENABLE_CA_SERVER=false, mounting the two objects above
``start_workload_agent(namespace, service_account, extra_env=None, provisioned_cert_dir=False) -> Agent``
                        a ServiceAccount and Pod on the plane, and pilot-agent acting for them
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.istio import mesh
from tests.istio.install_values import InstallValues, helm_values
from tests.kube.plane_fixtures import SKIP_ENV
from tests.support.processes import ServerProcess, readyz, start_server

HERE = Path(__file__).resolve().parent
POLICIES = HERE / "policies"
ISTIOD_TLS_SECRET = "istiod-tls"
ROOT_CONFIGMAP = "istio-ca-root-cert"
SIGNERS = ["local", "cert-manager"]  # kubernetes-csr once it exists


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = os.environ.get(SKIP_ENV) == "1"
    for item in items:
        if HERE not in Path(str(item.path)).resolve().parents:
            continue
        item.add_marker(pytest.mark.istio)
        item.add_marker(pytest.mark.cluster)
        if skip:
            item.add_marker(pytest.mark.skip(reason=f"{SKIP_ENV}=1: test control plane disabled"))


@dataclass(frozen=True)
class IstioBinaries:
    discovery: str
    agent: str
    xds_probe: str


@pytest.fixture(scope="session")
def istio_binaries() -> IstioBinaries:
    started = time.monotonic()
    result = subprocess.run(["bash", str(HERE / "build.sh")], capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, f"building Istio's binaries failed:\n{result.stderr}"
    if result.stderr:  # a cold build: say how long it took
        print(f"\n{result.stderr}(tests/istio/build.sh: {time.monotonic() - started:.0f}s)")
    discovery, agent, probe = result.stdout.split()
    return IstioBinaries(discovery, agent, probe)


@pytest.fixture(scope="session")
def private_mount_namespace() -> None:
    """The agents run under ``unshare -m`` with their own /etc/hosts (see mesh.start_agent): that needs root or
    CAP_SYS_ADMIN. Fail early and say so rather than with an agent that cannot resolve its CA."""
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.fail(
            "the istio tests run pilot-agent in a private mount namespace (unshare -m) so that the Service names "
            f"resolve to 127.0.0.1; this machine refuses it: {probe.stderr.strip()}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def install_values() -> InstallValues:
    return helm_values()


@pytest.fixture(scope="session")
def istio_crds(kube_api, wait_for) -> list[str]:
    extensions = client.ApiextensionsV1Api(kube_api)
    names = []
    for crd in mesh.istio_crds(mesh.istio_module_dir()):
        names.append(crd["metadata"]["name"])
        try:
            # the client sends a plain manifest dict as it is; the typed model would only be converted back
            extensions.create_custom_resource_definition(crd)  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status != 409:  # already installed by an earlier session on this plane
                raise

    def established(name: str) -> bool:
        status = extensions.read_custom_resource_definition(name).status
        conditions = (status.conditions if status else None) or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    for name in names:
        wait_for(lambda name=name: established(name), timeout=60, what=f"CRD {name} Established")
    return names


@pytest.fixture(scope="session")
def istio_system(kube_api) -> str:
    with contextlib.suppress(ApiException):  # 409: it exists (never deleted: the plane has no namespace controller)
        client.CoreV1Api(kube_api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=mesh.ISTIO_NAMESPACE))
        )
    return mesh.ISTIO_NAMESPACE


@dataclass
class MeshSigner:
    mode: str  # --signer
    server: ServerProcess
    base: Path
    ca_cert_pem: bytes  # the CA that signs (the mesh root here: no intermediates in these tests)
    ca_key_pem: bytes

    @property
    def root_pem(self) -> bytes:
        return self.ca_cert_pem

    def decisions(self) -> list[dict]:
        path = self.base / "decisions.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def decisions_for(self, namespace: str, service_account: str, at_least: int = 1) -> list[dict]:
        """The caller's decision records, once at least ``at_least`` are in the file (a writer thread appends them
        after the answer went out, so a test that just saw a certificate waits a moment for its record)."""
        deadline = time.monotonic() + 15
        while True:
            records = [
                d
                for d in self.decisions()
                if (d["caller"]["namespace"], d["caller"]["serviceAccount"]) == (namespace, service_account)
            ]
            if len(records) >= at_least or time.monotonic() > deadline:
                return records
            time.sleep(0.05)


def _ready(server: ServerProcess) -> bool:
    try:
        return readyz(server.readiness_port)[0] == 200
    except OSError:
        return False


def _signer_flags(mode: str, base: Path, request: pytest.FixtureRequest, istio_system: str) -> tuple[list[str], Path]:
    """Backend flags for ``mode`` and the folder or file holding the CA (cert + key) it signs with."""
    if mode == "local":
        return [f"--local-ca-dir={base / 'ca'}"], base / "ca"
    issuer = request.getfixturevalue("ca_cluster_issuer")
    (base / "ca").mkdir()
    (base / "ca" / "root-cert.pem").write_bytes(issuer.ca_cert_pem)
    (base / "ca" / "ca-key.pem").write_bytes(issuer.ca_key_pem)
    flags = [
        f"--certificate-namespace={istio_system}",
        f"--issuer-name={issuer.name}",
        f"--issuer-kind={issuer.kind}",
        f"--issuer-group={issuer.group}",
        f"--root-ca-file={base / 'ca' / 'root-cert.pem'}",
        "--approve-certificate-requests",  # the plane runs cert-manager without its auto-approver
    ]
    return flags, base / "ca"


@pytest.fixture(scope="session", params=SIGNERS)
def mesh_signer(
    request: pytest.FixtureRequest,
    kube_plane,
    install_values: InstallValues,
    istio_system: str,
    tmp_path_factory,
) -> Iterator[MeshSigner]:
    mode = request.param
    base = tmp_path_factory.mktemp(f"meshsigner-{mode}")
    backend_flags, ca_dir = _signer_flags(mode, base, request, istio_system)
    server = start_server(
        [
            f"--signer={mode}",
            *backend_flags,
            "--authenticator=tokenreview",
            f"--kubeconfig={kube_plane.kubeconfig}",
            # the agents check this name: the host of global.caAddress
            f"--serving-certificate-dns-names={install_values.ca_host}",
            f"--policy-dir={POLICIES}",
            f"--decision-log={base / 'decisions.jsonl'}",
            "--log-format=json",
        ],
        base / "serve.log",
        wait=False,  # start_server's own 20 s wait is too short on this loaded machine; wait longer here
    )
    mesh.wait_until(lambda: _ready(server), 120, "meshsigner /readyz", alive=server.process, log=server.log_path)
    signer = MeshSigner(
        mode, server, base, (ca_dir / "root-cert.pem").read_bytes(), (ca_dir / "ca-key.pem").read_bytes()
    )
    yield signer
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="session")
def istiod_tls_secret(kube_api, istio_system: str, mesh_signer: MeshSigner) -> dict[str, bytes]:
    """STAND-IN for meshsigner's istiod-certificate controller, which does not exist yet: the ``istiod-tls``
    Secret, signed by the CA meshsigner signs with, in the shape istio-csr gives it. Replace the body with "wait
    for the controller's Secret" when the controller lands; istiod reads the Secret from the plane either way."""
    data = mesh.istiod_tls_signed_by(mesh_signer.ca_cert_pem, mesh_signer.ca_key_pem)
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(name=ISTIOD_TLS_SECRET),
        type="kubernetes.io/tls",
        data={key: base64.b64encode(value).decode() for key, value in data.items()},
    )
    core = client.CoreV1Api(kube_api)
    try:
        core.create_namespaced_secret(istio_system, secret)
    except ApiException as exc:
        if exc.status != 409:
            raise
        core.replace_namespaced_secret(ISTIOD_TLS_SECRET, istio_system, secret)
    return data


@pytest.fixture(scope="session")
def publish_mesh_root(kube_api, mesh_signer: MeshSigner) -> Callable[[str], None]:
    """STAND-IN for meshsigner's root distribution (the ``istio-ca-root-cert`` ConfigMap in every namespace), which
    does not exist yet: publishes meshsigner's local CA root into one namespace."""
    core = client.CoreV1Api(kube_api)

    def publish(namespace: str) -> None:
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=ROOT_CONFIGMAP), data={"root-cert.pem": mesh_signer.root_pem.decode()}
        )
        try:
            core.create_namespaced_config_map(namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            core.replace_namespaced_config_map(ROOT_CONFIGMAP, namespace, body)

    return publish


def mounted_root(kube_api, namespace: str) -> bytes:
    """``root-cert.pem`` of the namespace's istio-ca-root-cert ConfigMap, as the chart and injector mount it."""
    configmap = client.CoreV1Api(kube_api).read_namespaced_config_map(ROOT_CONFIGMAP, namespace)
    return (configmap.data or {})["root-cert.pem"].encode()


@pytest.fixture(scope="session")
def istiod(
    kube_plane,
    kube_api,
    istio_binaries: IstioBinaries,
    istio_crds: list[str],
    install_values: InstallValues,
    istio_system: str,
    istiod_tls_secret: dict[str, bytes],
    publish_mesh_root: Callable[[str], None],
    tmp_path_factory,
) -> Iterator[mesh.Istiod]:
    publish_mesh_root(istio_system)
    secret = client.CoreV1Api(kube_api).read_namespaced_secret(ISTIOD_TLS_SECRET, istio_system)
    started = time.monotonic()
    process = mesh.start_istiod(
        istio_binaries.discovery,
        tmp_path_factory.mktemp("istiod"),
        kubeconfig=kube_plane.kubeconfig,
        values=install_values,
        istiod_tls={key: base64.b64decode(value) for key, value in (secret.data or {}).items()},
        mesh_root_pem=mounted_root(kube_api, istio_system),
    )
    print(f"\nistiod ready in {time.monotonic() - started:.1f}s")
    yield process
    process.stop()


@pytest.fixture(scope="session")
def make_workload(kube_api, make_service_account) -> Callable[[str, str], mesh.Workload]:
    core = client.CoreV1Api(kube_api)

    def make(namespace: str, service_account: str) -> mesh.Workload:
        make_service_account(namespace, service_account)
        pod = core.create_namespaced_pod(
            namespace,
            client.V1Pod(
                metadata=client.V1ObjectMeta(
                    name=f"{service_account}-{secrets.token_hex(3)}", labels={"app": service_account}
                ),
                spec=client.V1PodSpec(
                    service_account_name=service_account,
                    automount_service_account_token=False,
                    containers=[client.V1Container(name="app", image="example.invalid/app:test")],
                ),
            ),
        )
        assert pod.metadata and pod.metadata.name and pod.metadata.uid
        return mesh.Workload(namespace, service_account, pod.metadata.name, pod.metadata.uid)

    return make


@pytest.fixture
def start_workload_agent(
    kube_api,
    mint_token,
    make_workload,
    istio_binaries: IstioBinaries,
    install_values: InstallValues,
    mesh_signer: MeshSigner,
    publish_mesh_root: Callable[[str], None],
    istiod: mesh.Istiod,
    private_mount_namespace: None,
    tmp_path: Path,
) -> Iterator[Callable[..., mesh.Agent]]:
    agents: list[mesh.Agent] = []

    def start(
        namespace: str,
        service_account: str,
        extra_env: dict[str, str] | None = None,
        *,
        provisioned_cert_dir: bool = False,
    ) -> mesh.Agent:
        workload = make_workload(namespace, service_account)
        publish_mesh_root(namespace)
        token = mint_token(
            namespace,
            service_account,
            audience="istio-ca",
            seconds=43200,  # the injector's projected token lifetime
            bound_object={"kind": "Pod", "name": workload.pod_name, "uid": workload.pod_uid},
        )
        agent = mesh.start_agent(
            istio_binaries.agent,
            tmp_path / f"agent-{service_account}",
            workload=workload,
            token=token,
            mesh_root_pem=mounted_root(kube_api, namespace),
            values=install_values,
            ca_port=mesh_signer.server.grpc_port,
            istiod=istiod,
            extra_env=extra_env,
            provisioned_cert_dir=provisioned_cert_dir,
        )
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()
