"""A real Istio control plane and node agent working through meshsigner, on the test control plane.

Every test here gets the ``istio`` and ``cluster`` markers; ``MESHSIGNER_SKIP_CLUSTER_TESTS=1`` skips them. The
binaries come from ``tests/istio/build.sh`` (built into the test-binary cache on first use, several minutes cold).

Session fixtures (stable names):

``istio_binaries``      paths of pilot-discovery, pilot-agent and the xDS probe
``install_values``      the Istio install settings of docs/istio-install.md (the test's environment comes from them)
``istio_crds``          Istio's CRDs from the same module, installed and Established
``mesh_signer``         ``meshsigner serve --authenticator tokenreview`` with tests/istio/policies and its cluster
                        duties on (docs/istio-install.md's flags; own Lease; root ConfigMaps only in namespaces
                        labelled ``MESH_NAMESPACE_LABEL``), once per signer: ``--signer local``, ``--signer
                        cert-manager`` with a CA ClusterIssuer, ``--signer kubernetes-csr`` with the same issuer's
                        CSR signer; the fixtures below follow it, so every test runs once per signer
``istiod_tls_secret``   the Secret istio-system/istiod-tls as meshsigner's istiod-certificate controller produced it;
                        waited for, never written by the tests
``distributed_root``    ``(namespace) -> bytes``: waits for the ConfigMap istio-ca-root-cert that meshsigner's trust
                        distribution writes into a labelled namespace, and returns its root-cert.pem
``make_mesh_namespace`` a new namespace carrying ``MESH_NAMESPACE_LABEL`` (so meshsigner distributes its root there)
``istiod``              pilot-discovery with ENABLE_CA_SERVER=false, mounting the two objects above
``start_workload_agent(namespace, service_account, extra_env=None, provisioned_cert_dir=False) -> Agent``
                        a ServiceAccount and Pod on the plane, and pilot-agent acting for them
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.istio import mesh
from tests.istio.install_values import InstallValues, helm_values, meshsigner_duty_flags
from tests.kube.plane_fixtures import SKIP_ENV
from tests.support.background import polling_threads
from tests.support.processes import ServerProcess, readyz, start_server

HERE = Path(__file__).resolve().parent
POLICIES = HERE / "policies"
ISTIOD_TLS_SECRET = "istiod-tls"
ISTIOD_CERTIFICATE = "istiod-dynamic"  # meshsigner's cert-manager Certificate for istiod (--istiod-cert-name)
ROOT_CONFIGMAP = "istio-ca-root-cert"
# meshsigner's --configmap-namespace-selector here: only the namespaces these tests make (and istio-system) get its
# root ConfigMap, not every namespace of the shared plane.
MESH_NAMESPACE_LABEL = ("meshsigner-test/istio-mesh", "true")
# The Lease of the istio tests' meshsigner: not the default one, which other tests' servers may campaign for.
LEASE_NAME = "meshsigner-istio-tests"
SIGNERS = ["local", "cert-manager", "kubernetes-csr"]
DUTY_WAIT = 90  # meshsigner leads, then writes; cert-manager issues: seconds on this loaded machine


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
    """istio-system, labelled for meshsigner's root distribution (created once, never deleted: the plane has no
    namespace controller)."""
    core = client.CoreV1Api(kube_api)
    key, value = MESH_NAMESPACE_LABEL
    with contextlib.suppress(ApiException):  # 409: it exists
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=mesh.ISTIO_NAMESPACE)))
    core.patch_namespace(mesh.ISTIO_NAMESPACE, {"metadata": {"labels": {key: value}}})
    return mesh.ISTIO_NAMESPACE


@pytest.fixture
def make_mesh_namespace(make_namespace) -> Callable[[], str]:
    """A new namespace that meshsigner's root distribution selects."""
    key, value = MESH_NAMESPACE_LABEL
    return lambda: make_namespace("mesh", labels={key: value})


@dataclass
class MeshSigner:
    mode: str  # --signer
    server: ServerProcess
    base: Path
    root_pem: bytes  # the CA that signs (the mesh root here: no intermediates in these tests)
    issuer_name: str  # the ClusterIssuer behind cert-manager and kubernetes-csr; "" for the local CA

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


@dataclass(frozen=True)
class _Backend:
    flags: list[str]
    root_file: Path  # the root meshsigner signs under (the local CA creates it at start-up)
    issuer_name: str = ""


def _backend(mode: str, base: Path, request: pytest.FixtureRequest, istio_system: str) -> _Backend:
    """Backend flags for ``mode``: the local CA in ``base/ca``, or a CA ClusterIssuer of the plane's cert-manager
    (its CA pinned as ``--root-ca-file``) reached through CertificateRequests or through the CSR API."""
    if mode == "local":
        return _Backend([f"--local-ca-dir={base / 'ca'}"], base / "ca" / "root-cert.pem")
    issuer = request.getfixturevalue("ca_cluster_issuer")
    root_file = base / "pinned-root.pem"
    root_file.write_bytes(issuer.ca_cert_pem)
    if mode == "kubernetes-csr":
        flags = [
            f"--signer-name={issuer.signer_name}",  # clusterissuers.cert-manager.io/<name>: cert-manager's CSR signer
            "--approve-certificate-signing-requests",
        ]
    else:
        flags = [
            f"--certificate-namespace={istio_system}",
            f"--issuer-name={issuer.name}",
            f"--issuer-kind={issuer.kind}",
            f"--issuer-group={issuer.group}",
            "--approve-certificate-requests",  # the plane runs cert-manager without its auto-approver
        ]
    return _Backend([*flags, f"--root-ca-file={root_file}"], root_file, issuer.name)


def _duty_flags(istio_system: str) -> list[str]:
    """meshsigner's cluster duties as docs/istio-install.md gives them, plus what the shared plane needs: its own
    Lease and root ConfigMaps in the labelled namespaces only. Every signer keeps istiod's certificate."""
    key, value = MESH_NAMESPACE_LABEL
    documented = meshsigner_duty_flags()
    assert f"--istiod-cert-namespace={istio_system}" in documented
    return [
        *documented,
        f"--leader-election-namespace={istio_system}",
        f"--leader-election-name={LEASE_NAME}",
        # short: a Lease left by a killed earlier session expires quickly instead of holding the duties for 60 s
        "--leader-election-lease-duration=15s",
        "--leader-election-renew-deadline=10s",
        "--leader-election-retry-period=2s",
        f"--configmap-namespace-selector={key}={value}",
        f"--istiod-cert-name={ISTIOD_CERTIFICATE}",
    ]


def _clear_istiod_objects(kube_api, istio_system: str) -> None:
    """Removes what an earlier meshsigner (another signer, an earlier session) left in istio-system, so the
    fixtures below can only find objects this meshsigner wrote; a Certificate left behind would also make
    cert-manager fight a local-CA meshsigner over the Secret."""
    core, custom = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api)
    deletes = [
        lambda: custom.delete_namespaced_custom_object(
            "cert-manager.io", "v1", istio_system, "certificates", ISTIOD_CERTIFICATE
        ),
        lambda: core.delete_namespaced_secret(ISTIOD_TLS_SECRET, istio_system),
        lambda: core.delete_namespaced_config_map(ROOT_CONFIGMAP, istio_system),
    ]
    # The plane runs no garbage collector: the requests an earlier istiod Certificate owned stay unless deleted
    # here, and cert-manager names them <certificate>-<revision>, so a new Certificate's first request would
    # collide with the old one's and never be made.
    requests: Any = custom.list_namespaced_custom_object("cert-manager.io", "v1", istio_system, "certificaterequests")
    for item in requests["items"]:
        if (item["metadata"].get("annotations") or {}).get("cert-manager.io/certificate-name") == ISTIOD_CERTIFICATE:
            name = item["metadata"]["name"]
            deletes.append(
                functools.partial(
                    custom.delete_namespaced_custom_object,
                    "cert-manager.io", "v1", istio_system, "certificaterequests", name,
                )
            )  # fmt: skip
    for delete in deletes:
        try:
            delete()
        except ApiException as exc:
            if exc.status != 404:
                raise


def _istiod_certificate_state(kube_api, istio_system: str) -> str:
    """istiod's Certificate and its requests as cert-manager sees them: why an istiod-tls wait timed out."""
    custom = client.CustomObjectsApi(kube_api)
    lines = []
    with contextlib.suppress(ApiException):
        certificate: Any = custom.get_namespaced_custom_object(
            "cert-manager.io", "v1", istio_system, "certificates", ISTIOD_CERTIFICATE
        )
        lines.append(f"Certificate {ISTIOD_CERTIFICATE}: {json.dumps(certificate.get('status'))}")
    found: Any = custom.list_namespaced_custom_object("cert-manager.io", "v1", istio_system, "certificaterequests")
    for item in found["items"]:
        conditions = (item.get("status") or {}).get("conditions") or []
        lines.append(
            f"CertificateRequest {item['metadata']['name']} "
            f"({(item['metadata'].get('annotations') or {}).get('cert-manager.io/certificate-name')}): "
            + ", ".join(f"{c['type']}={c['status']} {c.get('reason')}: {c.get('message')}" for c in conditions)
        )
    return "\n".join(lines) or "(no Certificate, no CertificateRequests)"


def _approve_istiod_requests(kube_api, approve_certificate_request, istio_system: str, stop: threading.Event) -> None:
    """Approves the CertificateRequests cert-manager makes for meshsigner's istiod Certificate, as cert-manager's
    default approver (or an approver-policy rule for istiod) does in a cluster: the plane's cert-manager runs
    without its approver, and meshsigner's --approve-certificate-requests covers only its own workload requests."""
    custom = client.CustomObjectsApi(kube_api)
    while not stop.wait(0.2):
        try:
            found: Any = custom.list_namespaced_custom_object(
                "cert-manager.io", "v1", istio_system, "certificaterequests", _request_timeout=5
            )
        except (ApiException, OSError):  # the API server is busy: next round
            continue
        for request in found["items"]:
            annotations = request["metadata"].get("annotations") or {}
            conditions = (request.get("status") or {}).get("conditions") or []
            if annotations.get("cert-manager.io/certificate-name") != ISTIOD_CERTIFICATE or any(
                c["type"] in ("Approved", "Denied") for c in conditions
            ):
                continue
            with contextlib.suppress(ApiException):  # 409: changed meanwhile, next round
                approve_certificate_request(
                    istio_system,
                    request["metadata"]["name"],
                    reason="TestApprover",
                    message="istiod's certificate, approved as cert-manager's default approver would",
                )


@pytest.fixture(scope="session", params=SIGNERS)
def mesh_signer(
    request: pytest.FixtureRequest,
    kube_plane,
    kube_api,
    approve_certificate_request,
    install_values: InstallValues,
    istio_system: str,
    tmp_path_factory,
) -> Iterator[MeshSigner]:
    mode = request.param
    base = tmp_path_factory.mktemp(f"meshsigner-{mode}")
    backend = _backend(mode, base, request, istio_system)
    _clear_istiod_objects(kube_api, istio_system)
    server = start_server(
        [
            f"--signer={mode}",
            *backend.flags,
            "--authenticator=tokenreview",
            f"--kubeconfig={kube_plane.kubeconfig}",
            # the agents check this name: the host of global.caAddress
            f"--serving-certificate-dns-names={install_values.ca_host}",
            f"--policy-dir={POLICIES}",
            f"--decision-log={base / 'decisions.jsonl'}",
            "--log-format=json",
            *_duty_flags(istio_system),
        ],
        base / "serve.log",
        wait=False,  # start_server's own 20 s wait is too short on this loaded machine; wait longer here
    )
    try:
        mesh.wait_until(lambda: _ready(server), 120, "meshsigner /readyz", alive=server.process, log=server.log_path)
        signer = MeshSigner(mode, server, base, backend.root_file.read_bytes(), backend.issuer_name)
        with polling_threads() as start_thread:
            if mode == "cert-manager":  # cert-manager issues istiod's certificate for meshsigner's Certificate
                start_thread(
                    functools.partial(_approve_istiod_requests, kube_api, approve_certificate_request, istio_system)
                )
            yield signer
    finally:
        exit_code = server.stop()  # releases the Lease
        _clear_istiod_objects(kube_api, istio_system)
    assert exit_code == 0, server.log()


def _secret_data(secret: client.V1Secret | None) -> dict[str, bytes]:
    return {key: base64.b64decode(value) for key, value in ((secret.data if secret else None) or {}).items()}


def _read_or_none(read: Callable[[], object]) -> object | None:
    try:
        return read()
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _roots_are(pem: bytes, root_pem: bytes) -> bool:
    try:
        return x509.load_pem_x509_certificates(pem) == [x509.load_pem_x509_certificate(root_pem)]
    except ValueError:
        return False


@pytest.fixture(scope="session")
def istiod_tls_secret(kube_api, istio_system: str, mesh_signer: MeshSigner) -> client.V1Secret:
    """The ``istiod-tls`` Secret meshsigner's istiod-certificate controller produced: written by meshsigner itself
    (``--signer local``; ``--signer kubernetes-csr``, through a CertificateSigningRequest it approves) or by
    cert-manager for meshsigner's Certificate (``--signer cert-manager``). Waited for until it is complete
    and issued under this meshsigner's root (the stale one was deleted before meshsigner started)."""
    core = client.CoreV1Api(kube_api)

    def issued() -> client.V1Secret | None:
        secret = _read_or_none(lambda: core.read_namespaced_secret(ISTIOD_TLS_SECRET, istio_system))
        assert secret is None or isinstance(secret, client.V1Secret)
        data = _secret_data(secret)
        if data.get("tls.crt") and data.get("tls.key") and _roots_are(data.get("ca.crt", b""), mesh_signer.root_pem):
            return secret
        return None

    server = mesh_signer.server
    try:
        return mesh.wait_until(issued, DUTY_WAIT, "istiod-tls", alive=server.process, log=server.log_path)
    except AssertionError as exc:
        state = _istiod_certificate_state(kube_api, istio_system)
        raise AssertionError(f"{exc}\n--- cert-manager's view ---\n{state}") from None


@pytest.fixture(scope="session")
def distributed_root(kube_api, mesh_signer: MeshSigner) -> Callable[[str], bytes]:
    """Waits for meshsigner's trust distribution to write ``istio-ca-root-cert`` into a namespace (which must carry
    ``MESH_NAMESPACE_LABEL``) with meshsigner's root, and returns its ``root-cert.pem``."""
    core = client.CoreV1Api(kube_api)

    def wait(namespace: str) -> bytes:
        metadata = core.read_namespace(namespace).metadata
        labels = (metadata.labels if metadata else None) or {}
        key, value = MESH_NAMESPACE_LABEL
        assert labels.get(key) == value, f"{namespace} is not selected by meshsigner's root distribution"

        def written() -> bytes | None:
            found = _read_or_none(lambda: core.read_namespaced_config_map(ROOT_CONFIGMAP, namespace))
            assert found is None or isinstance(found, client.V1ConfigMap)
            pem = ((found.data if found else None) or {}).get("root-cert.pem", "").encode()
            return pem if _roots_are(pem, mesh_signer.root_pem) else None

        server = mesh_signer.server
        return mesh.wait_until(
            written, DUTY_WAIT, f"meshsigner's {ROOT_CONFIGMAP} in {namespace}", alive=server.process,
            log=server.log_path,
        )  # fmt: skip

    return wait


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
    istiod_tls_secret: client.V1Secret,
    distributed_root: Callable[[str], bytes],
    tmp_path_factory,
) -> Iterator[mesh.Istiod]:
    """istiod started only once meshsigner's two objects exist (as in a cluster, where it must start after them),
    reading both from the plane as the chart mounts them."""
    distributed_root(istio_system)
    started = time.monotonic()
    process = mesh.start_istiod(
        istio_binaries.discovery,
        tmp_path_factory.mktemp("istiod"),
        kubeconfig=kube_plane.kubeconfig,
        values=install_values,
        istiod_tls=_secret_data(client.CoreV1Api(kube_api).read_namespaced_secret(ISTIOD_TLS_SECRET, istio_system)),
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
    distributed_root: Callable[[str], bytes],
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
        distributed_root(namespace)  # the injector mounts it: a pod in a namespace without it does not start
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
