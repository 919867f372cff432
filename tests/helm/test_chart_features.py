"""The chart for today's features: an istio-csr values file installs as is, the schema rejects misspelt keys, what
meshsigner cannot honour is refused with a message, RBAC follows the enabled features (each one off removes its
rules), pods run locked down with probes and a graceful stop, and HPA/PDB/ServiceMonitor render when asked."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from signer.settings import parse_serve_args
from tests.helm.test_chart import CHART, container_args, render

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ISTIO_CSR_VALUES = FIXTURES / "istio-csr-values.yaml"
PINNED_JWKS = (
    "app.server.authenticator=jwks", "app.server.jwks.file=/jwks/jwks.json", "app.server.jwks.issuer=https://i"
)  # fmt: skip
CLUSTER_JWKS = ("app.server.authenticator=jwks",)  # offline, against the cluster's own keys
NON_RESOURCE = "nonResourceURLs"
DISCOVERY = {f"{NON_RESOURCE}//.well-known/openid-configuration", f"{NON_RESOURCE}//openid/v1/jwks"}
CTB_NAME = "example.com:mesh:roots"  # linked to signer example.com/mesh

# The cluster duties' rules (docs/cluster-duties.md), by name wherever Kubernetes can check a name.
LEASE = {("Role", "coordination.k8s.io", "leases", verb, "istio-csr") for verb in ("get", "update")} | {
    ("Role", "coordination.k8s.io", "leases", "create", "*")
}
NAMESPACE_WATCH = {("ClusterRole", "", "namespaces", verb, "*") for verb in ("list", "watch")}
ROOT_CONFIGMAPS = {
    ("ClusterRole", "", "configmaps", verb, "istio-ca-root-cert") for verb in ("get", "list", "watch", "update")
} | {("ClusterRole", "", "configmaps", "create", "*")}
CLUSTER_TRUST_BUNDLE = {
    ("ClusterRole", "certificates.k8s.io", "clustertrustbundles", verb, CTB_NAME)
    for verb in ("get", "list", "watch", "update")
} | {
    ("ClusterRole", "certificates.k8s.io", "clustertrustbundles", "create", "*"),
    ("ClusterRole", "certificates.k8s.io", "signers", "attest", "example.com/mesh"),
}
ISTIOD_CERTIFICATE = {
    ("Role", "cert-manager.io", "certificates", verb, "istiod-dynamic") for verb in ("get", "list", "watch", "update")
} | {("Role", "cert-manager.io", "certificates", "create", "*")}
ISTIOD_SECRET = {("Role", "", "secrets", verb, "istiod-tls") for verb in ("get", "list", "watch", "update")} | {
    ("Role", "", "secrets", "create", "*")
}


def render_error(helm: str, *values: str) -> str:
    command = [helm, "template", "meshsigner", str(CHART), "--namespace", "cert-manager", "--kube-version", "1.36.0"]
    for value in values:
        command += ["--set", value]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, f"rendered although it should not: {values}"
    return result.stderr


def rules(docs: list[dict]) -> set[tuple[str, str, str, str, str]]:
    """(kind of role, group, resource, verb, resourceName or '*') for every rule rendered; a non-resource URL is
    (kind, "nonResourceURLs", url, verb, '*')."""
    found = set()
    for doc in docs:
        if doc["kind"] not in ("Role", "ClusterRole"):
            continue
        for rule in doc.get("rules") or []:
            if "nonResourceURLs" in rule:
                assert doc["kind"] == "ClusterRole" and not rule.get("resources"), rule
                found |= {(doc["kind"], NON_RESOURCE, url, verb, "*") for url in rule["nonResourceURLs"]
                          for verb in rule["verbs"]}  # fmt: skip
                continue
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames") or ["*"]:
                            found.add((doc["kind"], group, resource, verb, name))
    return found


def resources(docs: list[dict]) -> set[str]:
    return {f"{group}/{resource}" for _, group, resource, _, _ in rules(docs)}


def test_an_istio_csr_values_file_installs_as_is(helm):
    docs = render(helm, "image.tag=0.1.0", value_files=(ISTIO_CSR_VALUES,))
    settings = parse_serve_args(container_args(docs))
    assert settings.root_ca_file == "/var/run/secrets/istio-csr/ca.pem"
    assert settings.ca_trusted_node_accounts == ("istio-system/ztunnel",)
    assert settings.runtime_issuance_config_map_name == "istio-issuer"
    assert settings.serving_tls_curve_preferences == ("X25519", "CurveP256")
    assert settings.log_format == "json" and settings.log_level == "1"
    assert settings.configmap_namespace_selector == "maistra.io/member-of=istio-system"
    assert (settings.leader_election_namespace, settings.max_concurrent_reconciles) == ("istio-system", 1)
    assert settings.cluster_duties and not settings.istiod_cert_enabled, "true: the chart's static Certificate"
    kinds = {doc["kind"] for doc in docs}
    assert {"Certificate", "ServiceMonitor", "PodDisruptionBudget", "ConfigMap"} <= kinds
    certificate = next(doc for doc in docs if doc["kind"] == "Certificate")
    assert certificate["spec"]["dnsNames"] == [
        "istiod.istio-system.svc", "istiod-canary.istio-system.svc", "istiod.example.com"
    ]  # fmt: skip
    assert certificate["spec"]["uris"] == ["spiffe://cluster.local/ns/istio-system/sa/istiod-service-account"]
    extra = [doc for doc in docs if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "meshsigner-extra"]
    assert extra, "extraObjects are rendered through tpl"


@pytest.mark.parametrize(
    "typo",
    ["replicaCounts=2", "app.tls.trustDomian=example.org", "app.certmanager.isuer.name=x", "app.server.serving.prot=1"],
)
def test_the_schema_rejects_misspelt_keys(helm, typo):
    assert "additional properties" in render_error(helm, typo)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "app.tls.istiodCertificateEnable=dynamic,app.controller.clusterDuties=false",
            "app.controller.clusterDuties=false turns them off",
        ),
        (
            "app.signer=local,app.server.authenticator=jwks,app.server.jwks.file=/j.json,app.server.jwks.issuer=https://i,"
            "app.tls.istiodCertificateEnable=dynamic",
            "dynamic needs the Kubernetes API",
        ),
        (
            "app.tls.istiodCertificateEnable=dynamic,app.tls.istiodPrivateKeyAlgorithm=ECDSA",
            "istiodPrivateKeySize=2048: ECDSA keys are 256 or 384",
        ),
        ("app.tls.istiodCertificateEnable=dynamic,app.tls.istiodPrivateKeySize=1024", "at least 2048 bits"),
        ("app.tls.istiodCertificateEnable=dynamic,app.tls.istiodCertificateRenewBefore=2h", "must be shorter than"),
        ("app.controller.leaderElectionRenewDeadline=20s", "must exceed leaderElectionRenewDeadline"),
        ("app.controller.maxConcurrentReconciles=0", "maxConcurrentReconciles"),
        ("app.controller.leaderElectionName=Istio_CSR", "leaderElectionName"),
        ("app.server.authenticators.enableClientCert=true", "needs pinned roots to verify client certificates"),
        ("app.signer=kubernetes-csr,app.signerName=example.com/mesh", "kubernetes-csr needs app.tls.rootCAFile"),
        ("image.repository=quay.io/jetstack/cert-manager-istio-csr", "is istio-csr's, not meshsigner's"),
        (
            "app.server.authenticator=jwks,app.server.jwks.file=/j.json",
            "with app.server.jwks.file needs app.server.jwks.issuer",
        ),
        ("terminationGracePeriodSeconds=20", "is shorter than preStopSleepSeconds (5) + app.shutdownGracePeriod (30s)"),
        ("app.shutdownGracePeriod=0s", "use a positive Go duration"),
        ("app.shutdownGracePeriod=30", "shutdownGracePeriod"),
        ("app.controller.kubeApiTokenReviewShare=1", "kubeApiTokenReviewShare"),
        ("extraEnv[0].name=MESHSIGNER_MAX_IN_FLIGHT,extraEnv[0].value=64", "extraEnv/0/value"),
    ],
)
def test_what_meshsigner_cannot_honour_is_refused_with_a_message(helm, value, message):
    assert message in render_error(helm, value)


def test_local_signer_replicas_must_share_one_ca(helm):
    assert "each pod would otherwise create its own CA" in render_error(helm, "app.signer=local", "replicaCount=2")
    docs = render(helm, "app.signer=local", "replicaCount=2", "app.local.caSecretName=istio-cacerts")
    settings = parse_serve_args(container_args(docs))
    assert settings.signer == "local" and settings.local_ca_dir == "/var/run/meshsigner/ca"


ALL_ON = (
    "app.certmanager.approveCertificateRequests=true",
    "app.runtimeConfiguration.name=istio-issuer",
    "app.server.caTrustedNodeAccounts=istio-system/ztunnel",
    "app.policies.a\\.yaml=x",
    "app.tls.istiodCertificateEnable=dynamic",
    f"app.controller.clusterTrustBundleName={CTB_NAME}",
)


def test_everything_on_grants_exactly_what_meshsigner_calls(helm):
    assert rules(render(helm, *ALL_ON)) == {
        ("Role", "cert-manager.io", "certificaterequests", verb, "*")
        for verb in ("get", "list", "watch", "create", "delete", "deletecollection")
    } | {
        ("Role", "cert-manager.io", "certificaterequests/status", "update", "*"),
        ("Role", "cert-manager.io", "certificaterequests/status", "patch", "*"),
        ("ClusterRole", "cert-manager.io", "signers", "approve", "issuers.cert-manager.io/istio-system.istio-ca"),
        ("ClusterRole", "authentication.k8s.io", "tokenreviews", "create", "*"),
        ("ClusterRole", NON_RESOURCE, "/.well-known/openid-configuration", "get", "*"),
        ("ClusterRole", NON_RESOURCE, "/openid/v1/jwks", "get", "*"),
        ("ClusterRole", "", "pods", "list", "*"),
        ("ClusterRole", "", "pods", "watch", "*"),
    } | {
        ("Role", "", "configmaps", verb, "istio-issuer") for verb in ("get", "list", "watch")
    } | {
        ("ClusterRole", group, resource, verb, "*")
        for group, resource in (("cert-manager.io", "issuers"), ("cert-manager.io", "clusterissuers"),
                                ("", "namespaces"))
        for verb in ("get", "list", "watch")
    } | LEASE | ROOT_CONFIGMAPS | CLUSTER_TRUST_BUNDLE | ISTIOD_CERTIFICATE  # fmt: skip


@pytest.mark.parametrize(
    ("feature_off", "removed"),
    [
        ("app.certmanager.approveCertificateRequests=false", {
            ("Role", "cert-manager.io", "certificaterequests/status", "update", "*"),
            ("Role", "cert-manager.io", "certificaterequests/status", "patch", "*"),
            ("ClusterRole", "cert-manager.io", "signers", "approve", "issuers.cert-manager.io/istio-system.istio-ca"),
        }),
        ("app.runtimeConfiguration.name=",
         {("Role", "", "configmaps", v, "istio-issuer") for v in ("get", "list", "watch")}),
        ("app.server.caTrustedNodeAccounts=", {("ClusterRole", "", "pods", v, "*") for v in ("list", "watch")}),
        # the root ConfigMaps still need the namespaces listed and watched
        ("app.policies=null", {("ClusterRole", "", "namespaces", "get", "*")}),
        ("app.controller.clusterTrustBundleName=", CLUSTER_TRUST_BUNDLE),
        ("app.tls.istiodCertificateEnable=true", ISTIOD_CERTIFICATE),
        ("app.tls.istiodCertificateEnable=false", ISTIOD_CERTIFICATE),
    ],
)  # fmt: skip
def test_each_feature_off_removes_exactly_its_rules(helm, feature_off, removed):
    on, off = rules(render(helm, *ALL_ON)), rules(render(helm, *ALL_ON, feature_off))
    assert on - off == removed
    assert off - on == set()


def test_cluster_duties_off_removes_the_lease_root_configmaps_namespaces_and_bundle(helm):
    base = (*ALL_ON, "app.tls.istiodCertificateEnable=true", "app.policies=null")
    on, off = rules(render(helm, *base)), rules(render(helm, *base, "app.controller.clusterDuties=false"))
    assert on - off == LEASE | ROOT_CONFIGMAPS | NAMESPACE_WATCH | CLUSTER_TRUST_BUNDLE
    assert off - on == set()
    off_args = container_args(render(helm, *base, "app.controller.clusterDuties=false"))
    assert parse_serve_args(off_args).cluster_duties is False


def test_the_duties_roles_live_where_their_objects_are(helm):
    docs = render(helm, "app.tls.istiodCertificateEnable=dynamic", "app.controller.leaderElectionNamespace=mesh-leases",
                  "app.controller.leaderElectionName=meshsigner-b", "app.istio.namespace=mesh-istio")  # fmt: skip
    roles = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Role"}
    lease, istiod = roles["cert-manager-istio-csr-leader-election"], roles["cert-manager-istio-csr-istiod-certificate"]
    assert lease["metadata"]["namespace"] == "mesh-leases" and istiod["metadata"]["namespace"] == "mesh-istio"
    assert ("Role", "coordination.k8s.io", "leases", "update", "meshsigner-b") in rules([lease])
    bindings = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "RoleBinding"}
    for role in (lease, istiod):
        name = role["metadata"]["name"]
        assert bindings[name]["metadata"]["namespace"] == role["metadata"]["namespace"]
        assert bindings[name]["roleRef"]["name"] == name
    settings = parse_serve_args(container_args(docs))
    assert (settings.leader_election_namespace, settings.leader_election_name) == ("mesh-leases", "meshsigner-b")
    assert settings.istiod_cert_namespace == "mesh-istio" and settings.istiod_cert_name == "istiod-dynamic"


def test_an_unlinked_cluster_trust_bundle_needs_no_attest(helm):
    found = rules(render(helm, "app.controller.clusterTrustBundleName=mesh-roots"))
    assert ("ClusterRole", "certificates.k8s.io", "clustertrustbundles", "update", "mesh-roots") in found
    assert not any(resource == "signers" for _, _, resource, _, _ in found)


def test_dynamic_istiod_with_the_local_signer_writes_the_secret_instead(helm):
    static, dynamic = (rules(render(helm, "app.signer=local", f"app.tls.istiodCertificateEnable={mode}"))
                       for mode in ("true", "dynamic"))  # fmt: skip
    assert dynamic - static == ISTIOD_SECRET and static - dynamic == set()
    docs = render(helm, "app.signer=local", "app.tls.istiodCertificateEnable=true")
    assert not any(doc["kind"] == "Certificate" for doc in docs), "no cert-manager to keep a static Certificate"
    assert parse_serve_args(container_args(docs)).istiod_cert_enabled is False


def test_istio_csr_istiod_values_become_the_dynamic_flags(helm):
    docs = render(
        helm, "app.tls.istiodCertificateEnable=dynamic", "app.tls.istiodCertificateDuration=2h",
        "app.tls.istiodCertificateRenewBefore=1h", "app.tls.istiodPrivateKeyAlgorithm=ECDSA",
        "app.tls.istiodPrivateKeySize=384", "app.tls.istiodAdditionalDNSNames={istiod.example.com,ca.example.com}",
        "app.istio.revisions={default,canary}", "app.istio.namespace=mesh",
        "app.certmanager.additionalAnnotations[0].name=team", "app.certmanager.additionalAnnotations[0].value=mesh",
        "app.controller.maxConcurrentReconciles=4",
        "app.controller.configmapNamespaceSelector=istio-injection in (enabled\\,on)",
        f"app.controller.clusterTrustBundleName={CTB_NAME}",
    )  # fmt: skip
    assert not any(doc["kind"] == "Certificate" for doc in docs), "meshsigner keeps it, not the chart"
    settings = parse_serve_args(container_args(docs))
    assert settings.istiod_cert_enabled and settings.istiod_cert_namespace == "mesh"
    assert (settings.istiod_cert_duration, settings.istiod_cert_renew_before) == (7200, 3600)
    assert (settings.istiod_cert_key_algorithm, settings.istiod_cert_key_size) == ("ECDSA", 384)
    assert settings.istiod_cert_additional_dns_names == ("istiod.example.com", "ca.example.com")
    assert settings.istiod_cert_istio_revisions == ("default", "canary")
    assert settings.istiod_cert_additional_annotations == (("team", "mesh"),)
    assert settings.max_concurrent_reconciles == 4
    assert settings.configmap_namespace_selector == "istio-injection in (enabled,on)"
    assert settings.cluster_trust_bundle_name == CTB_NAME


def test_cluster_duty_defaults_are_istio_csrs(helm):
    settings = parse_serve_args(container_args(render(helm)))
    assert settings.cluster_duties and not settings.istiod_cert_enabled
    assert (settings.leader_election_namespace, settings.leader_election_name) == ("istio-system", "istio-csr")
    assert (settings.leader_election_lease_duration, settings.leader_election_renew_deadline,
            settings.leader_election_retry_period) == (15, 10, 2)  # fmt: skip
    assert settings.configmap_namespace_selector == "" and settings.max_concurrent_reconciles == 1
    assert settings.cluster_trust_bundle_name == ""


def test_a_pinned_jwks_file_removes_tokenreviews_and_discovery(helm):
    on, off = resources(render(helm, *ALL_ON)), resources(render(helm, *ALL_ON, *PINNED_JWKS))
    assert on - off == {"authentication.k8s.io/tokenreviews"} | DISCOVERY
    assert off - on == set()


@pytest.mark.parametrize("signer", ["cert-manager", "local"])
def test_offline_in_cluster_mode_adds_exactly_its_rules(helm, signer):
    """jwks without a file reads the cluster's keys and watches service accounts and pods, nothing more."""
    base = (f"app.signer={signer}", "app.controller.clusterDuties=false")  # (the local signer gains them: below)
    pinned, cluster = rules(render(helm, *base, *PINNED_JWKS)), rules(render(helm, *base, *CLUSTER_JWKS))
    assert cluster - pinned == {
        ("ClusterRole", NON_RESOURCE, "/.well-known/openid-configuration", "get", "*"),
        ("ClusterRole", NON_RESOURCE, "/openid/v1/jwks", "get", "*"),
    } | {
        ("ClusterRole", "", resource, verb, "*")
        for resource in ("serviceaccounts", "pods")
        for verb in ("list", "watch")
    }
    assert pinned - cluster == set()


def test_the_local_signer_campaigns_once_it_talks_to_the_cluster(helm):
    """The local signer with a pinned JWKS file has no Kubernetes access and so no duties; reading the cluster's keys
    gives it access, and the pod then campaigns and distributes the local roots."""
    pinned = rules(render(helm, "app.signer=local", *PINNED_JWKS))
    cluster = render(helm, "app.signer=local", *CLUSTER_JWKS)
    assert pinned == set() and rules(cluster) >= LEASE | ROOT_CONFIGMAPS | NAMESPACE_WATCH
    assert parse_serve_args(container_args(cluster)).cluster_duties


def test_offline_in_cluster_mode_replaces_tokenreviews_by_its_informers(helm):
    review, cluster = resources(render(helm)), resources(render(helm, *CLUSTER_JWKS))
    assert review - cluster == {"authentication.k8s.io/tokenreviews"}
    assert cluster - review == {"/serviceaccounts", "/pods"}
    settings = parse_serve_args(container_args(render(helm, *CLUSTER_JWKS)))
    assert settings.authenticator == "jwks" and settings.jwks_file == "" and settings.token_issuer == ""


def test_node_accounts_and_offline_mode_share_one_pods_rule(helm):
    docs = render(helm, *CLUSTER_JWKS, "app.server.caTrustedNodeAccounts=istio-system/ztunnel")
    pods = [
        rule
        for doc in docs
        if doc["kind"] == "ClusterRole"
        for rule in doc["rules"]
        if "pods" in rule.get("resources", [])
    ]
    assert pods == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]
    assert "/pods" in resources(render(helm, *CLUSTER_JWKS, "app.server.caTrustedNodeAccounts="))


def test_the_local_signer_drops_every_cert_manager_rule(helm):
    off = render(helm, *ALL_ON, "app.signer=local")
    assert not any(group == "cert-manager.io" for _, group, _, _, _ in rules(off))
    assert not any(kind == "Role" and resource == "configmaps" for kind, _, resource, _, _ in rules(off))
    assert rules(off) >= ISTIOD_SECRET, "dynamic: the local signer writes istiod-tls itself"
    assert not any(doc["kind"] == "Certificate" for doc in off)


def test_local_signer_with_a_pinned_jwks_file_has_no_rights_at_all(helm):
    docs = render(helm, "app.signer=local", *PINNED_JWKS)
    assert {doc["kind"] for doc in docs} & {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"} == set()
    assert any(doc["kind"] == "ServiceAccount" for doc in docs)


def test_pods_are_locked_down_and_stop_gracefully(helm):
    docs = render(helm)
    pod = next(doc for doc in docs if doc["kind"] == "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"] and "add" not in security["capabilities"]
    assert security["seccompProfile"]["type"] == pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp"}, "the only writable place"
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    # preStop, then SIGTERM: the drain (--shutdown-grace-period), then hooks (5 s each at most) and the last deletes.
    grace = parse_serve_args(container_args(docs)).shutdown_grace_period
    assert grace == 30.0
    assert pod["terminationGracePeriodSeconds"] >= sleep + grace + 10


@pytest.mark.parametrize(
    ("grace", "pre_stop", "expected"), [("30s", 5, 45), ("1m30s", 5, 105), ("2m", 0, 130), ("1d", 5, 86415)]
)
def test_the_termination_grace_period_follows_the_shutdown_grace_period(helm, grace, pre_stop, expected):
    docs = render(helm, f"app.shutdownGracePeriod={grace}", f"preStopSleepSeconds={pre_stop}")
    pod = next(doc for doc in docs if doc["kind"] == "Deployment")["spec"]["template"]["spec"]
    settings = parse_serve_args(container_args(docs))
    assert pod["terminationGracePeriodSeconds"] == expected >= pre_stop + settings.shutdown_grace_period + 10
    larger = render(helm, f"app.shutdownGracePeriod={grace}", f"terminationGracePeriodSeconds={expected + 100}")
    spec = next(d for d in larger if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == expected + 100, "a longer period may be set"


def test_istio_csr_client_cert_authenticator_renders_the_flag(helm):
    docs = render(helm, "image.tag=0.1.0", "app.server.authenticators.enableClientCert=true",
                  value_files=(ISTIO_CSR_VALUES,))  # fmt: skip
    settings = parse_serve_args(container_args(docs))
    assert settings.enable_client_cert_authenticator and settings.root_ca_file == "/var/run/secrets/istio-csr/ca.pem"
    local = parse_serve_args(
        container_args(render(helm, "app.signer=local", "app.server.authenticators.enableClientCert=true"))
    )
    assert local.enable_client_cert_authenticator and local.signer == "local"
    assert not parse_serve_args(container_args(render(helm))).enable_client_cert_authenticator


def test_authentication_values_become_their_flags(helm):
    docs = render(
        helm,
        "app.server.tokenPrescreen=false", "app.server.tokenReviewNegativeCacheDuration=0s",
        "app.server.peerAuthFailure.qps=2.5", "app.server.peerAuthFailure.burst=0",
        "app.server.jwks.refreshInterval=10m", "app.server.jwks.minRefreshInterval=30s",
        "app.server.jwks.issuer=https://kubernetes.default.svc", "app.controller.kubeApiTokenReviewShare=0.3",
    )  # fmt: skip
    settings = parse_serve_args(container_args(docs))
    assert settings.token_prescreen is False and settings.token_review_negative_cache_duration == 0
    assert (settings.peer_auth_failure_qps, settings.peer_auth_failure_burst) == (2.5, 0)
    assert (settings.jwks_refresh_interval, settings.jwks_min_refresh_interval) == (600, 30)
    assert settings.token_issuer == "https://kubernetes.default.svc"
    assert settings.kube_api_token_review_share == 0.3
    defaults = parse_serve_args(container_args(render(helm)))
    assert defaults.token_prescreen and defaults.token_review_negative_cache_duration == 10
    assert (defaults.peer_auth_failure_qps, defaults.peer_auth_failure_burst) == (1.0, 20)


def test_autoscaling_replaces_replicas_and_the_pdb_renders(helm):
    docs = render(helm, "autoscaling.enabled=true", "podDisruptionBudget.enabled=true")
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = next(doc for doc in docs if doc["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    pdb = next(doc for doc in docs if doc["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert not {"HorizontalPodAutoscaler", "PodDisruptionBudget"} & {d["kind"] for d in render(helm)}
