"""Policy label selectors on the real plane: namespace labels come from meshsigner's namespace watch, and a
relabelled namespace changes the decision without a restart."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
from kubernetes import client

from tests.e2e.calls import create
from tests.support.csr_builder import make_csr
from tests.support.processes import start_server

TIER = "mesh.example.org/tier"
POLICIES = {
    "settings.yaml": f"""apiVersion: meshsigner.io/v1alpha1
kind: PolicySettings
metadata: {{name: settings}}
spec:
  trustDomain: cluster.local
  trustedNamespaceLabelKeys: ["{TIER}"]
""",
    "gold.yaml": f"""apiVersion: meshsigner.io/v1alpha1
kind: IdentityPolicy
metadata: {{name: gold-tier}}
spec:
  subjects:
    namespaceSelector: {{matchLabels: {{{TIER}: gold}}}}
  rules:
    - name: own-identity
      effect: Allow
      identities: ["spiffe://{{trustDomain}}/ns/{{namespace}}/sa/{{serviceAccount}}"]
""",
}


def _request(stub, namespace: str, token: str) -> grpc.StatusCode:
    csr = make_csr([f"spiffe://cluster.local/ns/{namespace}/sa/web"])
    return create(stub, csr, token)[0]


def test_namespace_label_selector_follows_the_live_labels(
    kube_plane, kube_api, make_namespace, make_service_account, mint_token, tmp_path: Path
):
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    for name, text in POLICIES.items():
        (policy_dir / name).write_text(text)
    gold = make_namespace("gold", labels={TIER: "gold"})
    plain = make_namespace("plain")
    for namespace in (gold, plain):
        make_service_account(namespace, "web")
    server = start_server(
        [
            "--signer=local",
            f"--local-ca-dir={tmp_path / 'ca'}",
            "--authenticator=tokenreview",
            f"--kubeconfig={kube_plane.kubeconfig}",
            f"--policy-dir={policy_dir}",
        ],
        tmp_path / "serve.log",
    )
    try:
        stub = server.stub((tmp_path / "ca" / "root-cert.pem").read_bytes())
        assert _request(stub, gold, mint_token(gold, "web")) is grpc.StatusCode.OK
        plain_token = mint_token(plain, "web")
        assert _request(stub, plain, plain_token) is grpc.StatusCode.PERMISSION_DENIED
        client.CoreV1Api(kube_api).patch_namespace(plain, {"metadata": {"labels": {TIER: "gold"}}})
        deadline = time.monotonic() + 15
        while (code := _request(stub, plain, plain_token)) is not grpc.StatusCode.OK:
            assert code is grpc.StatusCode.PERMISSION_DENIED, code
            assert time.monotonic() < deadline, "the relabelled namespace was never seen"
            time.sleep(0.2)
    finally:
        server.stop()
