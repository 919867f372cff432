"""Fixtures for tests against the real test control plane (etcd + kube-apiserver + cert-manager).

A pytest plugin that ``tests/conftest.py`` registers once for the whole session (``pytest_plugins``), so that
``tests/kube/`` and ``tests/istio/`` share one ``kube_plane`` and one set of session fixtures; importing these
fixtures into another conftest would define them a second time and start them twice. Every test under
``tests/kube/`` gets the ``cluster`` marker automatically (``tests/kube/conftest.py``). The plane is the one
described in ``docs/test-control-plane.md``: a running plane recorded in ``.cluster/`` (``make cluster``) is reused;
otherwise the first fixture that needs it starts one with ``tests/cluster/up.sh --for-tests`` and the last
pytest session using it stops it again (``MESHSIGNER_KEEP_CLUSTER=1`` keeps it running). The binaries must be
built already (``bash tests/cluster/build.sh``; ``make test`` does that).

If the plane cannot start, the tests FAIL (with the reason). ``MESHSIGNER_SKIP_CLUSTER_TESTS=1`` skips them.
``MESHSIGNER_TEST_KUBECONFIG=/path/to/kubeconfig`` runs them against an existing cluster instead (cert-manager
with the CA issuer and, for the CSR tests, ExperimentalCertificateSigningRequestControllers must run there;
its cluster resource namespace is ``MESHSIGNER_CM_CLUSTER_RESOURCE_NAMESPACE``, default ``cert-manager``).
A plain ``KUBECONFIG`` is deliberately ignored so that tests never touch a cluster by accident.

Session-scoped fixtures (stable names; later tests build on them):

``kube_plane``
    Object with ``.kubeconfig`` (admin kubeconfig path), ``.api_server_url``, ``.ca_cert_path``,
    ``.admin_cert_path``/``.admin_key_path`` (client cert in ``system:masters``), ``.service_account_issuer``,
    ``.cluster_resource_namespace`` (where ClusterIssuer secrets live), ``.versions`` and ``.external``.
    For fault tests on the local plane: ``.stop_apiserver()``, ``.start_apiserver()``,
    ``.restart_apiserver()``, ``.stop_cm_controller()``, ``.start_cm_controller()`` (same flags, port and keys;
    other sessions sharing the plane see the outage too).
``kube_api``
    ``kubernetes.client.ApiClient`` for the admin kubeconfig.
``make_namespace(prefix="t", labels=None) -> str``
    Creates a uniquely named namespace; deleted at session end (without kube-controller-manager deleted
    namespaces stay ``Terminating``: always use fresh names).
``make_service_account(namespace, name=None) -> str``
    Creates a ServiceAccount (no controller creates ``default`` ones here).
``mint_token(namespace, sa, audience="istio-ca", seconds=3600, bound_object=None) -> str``
    A token from the TokenRequest API. ``audience`` is a string, a list, or None (= the API server's own
    audience, usable as a bearer token against the API). ``bound_object`` is an optional
    ``{"kind": "Pod", "name": ..., "uid": ...}`` (``V1BoundObjectReference`` fields). ``seconds`` >= 600.
``ca_cluster_issuer``
    A Ready CA ``ClusterIssuer`` backed by a CA the fixture made with ``cryptography``: a :class:`CAIssuer`
    with ``.name``, ``.kind``, ``.group``, ``.namespace`` (None), ``.signer_name``
    (``clusterissuers.cert-manager.io/<name>``), ``.ca_cert_pem``, ``.ca_key_pem``, ``.ca`` (pki.KeyPair),
    ``.secret_name``, ``.issuer_ref`` (dict for a CertificateRequest's ``spec.issuerRef``).
``make_ca_issuer(namespace, name=None) -> CAIssuer``
    The same for a namespaced CA ``Issuer`` (signer name ``issuers.cert-manager.io/<namespace>.<name>``).
``approve_certificate_request(namespace, name, approve=True, reason=..., message=...)``
    Sets the ``Approved`` (or ``Denied``) condition through the CertificateRequest ``status`` subresource,
    acting as the approver (cert-manager's auto-approver is off on this plane).
``approve_csr(name, approve=True, reason=..., message=...)``
    Same for a ``certificates.k8s.io/v1`` CSR through its ``approval`` subresource.
``wait_for(predicate, timeout=60, interval=0.25, what="...")``
    Polls until ``predicate()`` returns a truthy value and returns it; fails the test on timeout.
``pki``
    The helper module ``tests/cluster/pki.py`` (``make_ca``, ``issue``, ``make_csr``, ...).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import importlib.util
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "tests" / "cluster"

CM_GROUP, CM_VERSION = "cert-manager.io", "v1"
SKIP_ENV = "MESHSIGNER_SKIP_CLUSTER_TESTS"


def _load(name: str, path: Path) -> Any:
    """tests/ is not a package: import the plane helpers by path under unique module names."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


plane_mod = _load("meshsigner_testplane", CLUSTER / "plane.py")
pki_mod = plane_mod.pki


@dataclass
class ExternalPlane:
    """An existing cluster given by MESHSIGNER_TEST_KUBECONFIG (no process control)."""

    kubeconfig: str
    api_server_url: str
    ca_cert_path: str | None
    cluster_resource_namespace: str
    service_account_issuer: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    external: bool = True


def _external_plane(path: str) -> ExternalPlane:
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=path, client_configuration=cfg)
    return ExternalPlane(
        kubeconfig=path,
        api_server_url=cfg.host,
        ca_cert_path=cfg.ssl_ca_cert,
        cluster_resource_namespace=os.environ.get("MESHSIGNER_CM_CLUSTER_RESOURCE_NAMESPACE", "cert-manager"),
    )


@pytest.fixture(scope="session")
def kube_plane():
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: test control plane disabled")
    ext = os.environ.get("MESHSIGNER_TEST_KUBECONFIG")
    if ext:
        yield _external_plane(ext)
        return
    env = plane_mod.binaries()
    missing = plane_mod.missing_binaries(env)
    if missing:
        pytest.fail(
            "test control plane binaries are not built (" + ", ".join(missing) + "): run "
            "`bash tests/cluster/build.sh` first (`make test` does; the first build is long), or set "
            f"{SKIP_ENV}=1 to skip the cluster tests",
            pytrace=False,
        )
    proc = subprocess.run(
        ["bash", str(CLUSTER / "up.sh"), "--for-tests", f"--register-pid={os.getpid()}"],
        env={**os.environ, "MESHSIGNER_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=280,
    )
    sys.stderr.write(proc.stderr)
    plane = plane_mod.load()
    if proc.returncode != 0 or plane is None:
        pytest.fail(
            f"the test control plane did not start (up.sh exit {proc.returncode}); "
            f"set {SKIP_ENV}=1 to skip the cluster tests.\n--- up.sh output ---\n{proc.stdout}{proc.stderr}",
            pytrace=False,
        )
    if "--auto-approve" in plane.procs["cm-controller"].argv:
        plane_mod.release_user(stop_if_last=False)
        pytest.fail(
            "the running test plane has cert-manager's auto-approver on (MESHSIGNER_CM_AUTO_APPROVE=1); the tests "
            "need to decide approval themselves: restart it with `make cluster-down && make cluster`",
            pytrace=False,
        )
    try:
        yield plane
    finally:
        keep = os.environ.get("MESHSIGNER_KEEP_CLUSTER") == "1"
        current = plane_mod.load()
        plane_mod.release_user(stop_if_last=bool(current and current.auto_started and not keep))


@pytest.fixture(scope="session")
def kube_api(kube_plane):
    from kubernetes import config

    api = config.new_client_from_config(config_file=kube_plane.kubeconfig)
    yield api
    api.close()


@pytest.fixture(scope="session")
def pki():
    return pki_mod


def _wait_for(predicate, timeout: float = 60, interval: float = 0.25, what: str = "condition"):
    import urllib3  # the kubernetes client is imported on first use: unit-only sessions load this plugin too
    from kubernetes.client.rest import ApiException

    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (ApiException, OSError, urllib3.exceptions.HTTPError) as e:  # a transient API error is "not yet"
            last_exc = e
        if time.monotonic() > deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            pytest.fail(f"timed out after {timeout}s waiting for {what}{extra}", pytrace=False)
        time.sleep(interval)


@pytest.fixture(scope="session")
def wait_for():
    return _wait_for


@pytest.fixture(scope="session")
def make_namespace(kube_api):
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    created: list[str] = []

    def make(prefix: str = "t", labels: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{secrets.token_hex(4)}"
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
        created.append(name)
        return name

    yield make
    for name in created:
        with contextlib.suppress(Exception):
            core.delete_namespace(name)


@pytest.fixture(scope="session")
def make_service_account(kube_api):
    from kubernetes import client

    core = client.CoreV1Api(kube_api)

    def make(namespace: str, name: str | None = None) -> str:
        name = name or f"sa-{secrets.token_hex(3)}"
        core.create_namespaced_service_account(
            namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
        )
        return name

    return make


@pytest.fixture(scope="session")
def mint_token(kube_api):
    from kubernetes import client

    core = client.CoreV1Api(kube_api)

    def mint(
        namespace: str,
        sa: str,
        audience: str | list[str] | None = "istio-ca",
        seconds: int = 3600,
        bound_object: dict | None = None,
    ) -> str:
        audiences = [audience] if isinstance(audience, str) else audience
        bound = client.V1BoundObjectReference(**{"api_version": "v1", **bound_object}) if bound_object else None
        spec = client.V1TokenRequestSpec(audiences=audiences or [], expiration_seconds=seconds, bound_object_ref=bound)
        tr = core.create_namespaced_service_account_token(sa, namespace, client.AuthenticationV1TokenRequest(spec=spec))
        return tr.status.token

    return mint


@dataclass
class CAIssuer:
    name: str
    kind: str
    namespace: str | None
    secret_name: str
    ca: Any  # pki.KeyPair (loaded by path, so not importable as a type)
    group: str = CM_GROUP

    @property
    def ca_cert_pem(self) -> bytes:
        return self.ca.cert_pem

    @property
    def ca_key_pem(self) -> bytes:
        return self.ca.key_pem

    @property
    def signer_name(self) -> str:
        if self.kind == "ClusterIssuer":
            return f"clusterissuers.cert-manager.io/{self.name}"
        return f"issuers.cert-manager.io/{self.namespace}.{self.name}"

    @property
    def issuer_ref(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind, "group": self.group}

    def roots_file(self, directory: Path, name: str = "roots.pem") -> Path:
        """Writes this issuer's CA certificate into ``directory`` (for ``--root-ca-file``); returns the file."""
        path = directory / name
        path.write_bytes(self.ca_cert_pem)
        return path

    def replace_key_pair(self, kube_api: Any, key_pair: Any) -> None:
        """Puts another CA (a pki.KeyPair) into this issuer's Secret, as someone with write access to it would;
        cert-manager signs with it from its next read. Only a namespaced Issuer's Secret is in a known namespace."""
        from kubernetes import client

        assert self.namespace is not None, "a ClusterIssuer's Secret lives in the cluster resource namespace"
        core = client.CoreV1Api(kube_api)
        secret = core.read_namespaced_secret(self.secret_name, self.namespace)
        secret.data = {
            "tls.crt": base64.b64encode(key_pair.cert_pem).decode(),
            "tls.key": base64.b64encode(key_pair.key_pem).decode(),
        }
        core.replace_namespaced_secret(self.secret_name, self.namespace, secret)


def _ready(obj: Any) -> bool:
    conds = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def _create_ca_issuer(kube_api, *, kind: str, name: str, secret_ns: str, issuer_ns: str | None) -> CAIssuer:
    from kubernetes import client

    ca = pki_mod.make_ca(f"meshsigner-test-{name}", days=365)
    secret_name = f"{name}-ca"
    client.CoreV1Api(kube_api).create_namespaced_secret(
        secret_ns,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=secret_name),
            type="kubernetes.io/tls",
            data={
                "tls.crt": base64.b64encode(ca.cert_pem).decode(),
                "tls.key": base64.b64encode(ca.key_pem).decode(),
            },
        ),
    )
    body = {
        "apiVersion": f"{CM_GROUP}/{CM_VERSION}",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {"ca": {"secretName": secret_name}},
    }
    co = client.CustomObjectsApi(kube_api)
    if kind == "ClusterIssuer":
        co.create_cluster_custom_object(CM_GROUP, CM_VERSION, "clusterissuers", body)
        _wait_for(
            lambda: _ready(co.get_cluster_custom_object(CM_GROUP, CM_VERSION, "clusterissuers", name)),
            timeout=90,
            what=f"ClusterIssuer {name} Ready",
        )
    else:
        assert issuer_ns is not None, "a namespaced Issuer needs its namespace"
        co.create_namespaced_custom_object(CM_GROUP, CM_VERSION, issuer_ns, "issuers", body)
        _wait_for(
            lambda: _ready(co.get_namespaced_custom_object(CM_GROUP, CM_VERSION, issuer_ns, "issuers", name)),
            timeout=90,
            what=f"Issuer {issuer_ns}/{name} Ready",
        )
    return CAIssuer(name=name, kind=kind, namespace=issuer_ns, secret_name=secret_name, ca=ca)


@pytest.fixture(scope="session")
def ca_cluster_issuer(kube_plane, kube_api):
    from kubernetes import client

    name = f"meshsigner-test-ca-{secrets.token_hex(3)}"
    issuer = _create_ca_issuer(
        kube_api,
        kind="ClusterIssuer",
        name=name,
        secret_ns=kube_plane.cluster_resource_namespace,
        issuer_ns=None,
    )
    yield issuer
    with contextlib.suppress(Exception):
        client.CustomObjectsApi(kube_api).delete_cluster_custom_object(CM_GROUP, CM_VERSION, "clusterissuers", name)
    with contextlib.suppress(Exception):
        client.CoreV1Api(kube_api).delete_namespaced_secret(issuer.secret_name, kube_plane.cluster_resource_namespace)


@pytest.fixture(scope="session")
def make_ca_issuer(kube_api):
    def make(namespace: str, name: str | None = None) -> CAIssuer:
        return _create_ca_issuer(
            kube_api,
            kind="Issuer",
            name=name or f"ca-{secrets.token_hex(3)}",
            secret_ns=namespace,
            issuer_ns=namespace,
        )

    return make


def _cr_condition(ctype: str, reason: str, message: str) -> dict:
    return {
        "type": ctype,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


@pytest.fixture(scope="session")
def approve_certificate_request(kube_api):
    from kubernetes import client

    co = client.CustomObjectsApi(kube_api)

    def approve(
        namespace: str,
        name: str,
        approve: bool = True,
        reason: str = "meshsigner-tests",
        message: str = "approved by the test",
    ) -> dict:
        cr = co.get_namespaced_custom_object(CM_GROUP, CM_VERSION, namespace, "certificaterequests", name)
        status = cr.setdefault("status", {})
        cond = _cr_condition("Approved" if approve else "Denied", reason, message)
        status["conditions"] = [*(status.get("conditions") or []), cond]
        return co.replace_namespaced_custom_object_status(
            CM_GROUP, CM_VERSION, namespace, "certificaterequests", name, cr
        )

    return approve


@pytest.fixture(scope="session")
def approve_csr(kube_api):
    from kubernetes import client

    certs = client.CertificatesV1Api(kube_api)

    def approve(
        name: str, approve: bool = True, reason: str = "MeshsignerTests", message: str = "approved by the test"
    ):
        csr = certs.read_certificate_signing_request(name)
        cond = client.V1CertificateSigningRequestCondition(
            type="Approved" if approve else "Denied",
            status="True",
            reason=reason,
            message=message,
            last_update_time=dt.datetime.now(dt.UTC),
        )
        csr.status = csr.status or client.V1CertificateSigningRequestStatus()
        csr.status.conditions = [*(csr.status.conditions or []), cond]
        return certs.replace_certificate_signing_request_approval(name, csr)

    return approve
