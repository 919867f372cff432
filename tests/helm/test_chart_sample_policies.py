"""``samplePolicies.enabled``: a small valid IdentityPolicy set (istio-csr's behaviour made explicit), as a file of
the policies ConfigMap with the directory source and as a post-install/post-upgrade hook object with the
kubernetes source; both pass meshsigner's own loader. (The API server's validation of the object: tests/kube.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from policies.evaluator import evaluate
from policies.object_documents import build_object_policy_set
from signer.settings import parse_serve_args
from tests.helm.test_chart import container_args, lint_policy_dir, render
from tests.helm.test_chart_features import render_error
from tests.policies.conftest import CA_NOT_AFTER, NOW, caller, own_id, request

SAMPLE = "samplePolicies.enabled=true"
KUBERNETES = "app.policySource=kubernetes"


def sample_objects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "IdentityPolicy"]


def test_no_sample_unless_enabled(helm: str) -> None:
    for values in ((), (KUBERNETES,)):
        docs = render(helm, *values)
        assert not sample_objects(docs)
        assert not [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-policies")]


def test_the_directory_sample_is_a_policy_file_meshsigner_lints(helm: str, tmp_path: Path) -> None:
    docs = render(helm, SAMPLE)
    assert parse_serve_args(container_args(docs)).policy_dir == "/etc/meshsigner/policies"
    configmap = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-policies"))
    assert list(configmap["data"]) == ["sample-policies.yaml"]
    (tmp_path / "sample-policies.yaml").write_text(configmap["data"]["sample-policies.yaml"])
    result = lint_policy_dir(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "policy set valid: 1 policies, 1 rules" in result.stdout


def test_the_directory_sample_sits_beside_app_policies_and_never_replaces_one(helm: str, tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("apiVersion: meshsigner.io/v1alpha1\nkind: PolicySettings\nmetadata: {name: settings}\nspec: {}\n")
    docs = render(helm, SAMPLE, files={"app.policies.mine\\.yaml": mine})
    configmap = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-policies"))
    assert sorted(configmap["data"]) == ["mine.yaml", "sample-policies.yaml"]
    error = render_error(helm, SAMPLE, "app.policies.sample-policies\\.yaml=x")
    assert "app.policies[sample-policies.yaml] is the file samplePolicies.enabled writes" in error


def test_the_kubernetes_sample_is_a_hook_object_the_loader_accepts_and_that_grants_own_identity(helm: str) -> None:
    docs = render(helm, SAMPLE, KUBERNETES, "app.policyRootNamespace=mesh-root", "samplePolicies.labels.team=a")
    assert not [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-policies")]
    (sample,) = sample_objects(docs)
    metadata = sample["metadata"]
    assert metadata["namespace"] == "mesh-root" and metadata["labels"]["team"] == "a"
    # created after the release's objects (the CRDs) exist; the previous one replaced on upgrade
    assert metadata["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert metadata["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation"
    policy_set = build_object_policy_set([sample], trust_domain="cluster.local", root_namespace="mesh-root")

    def decide(uri: str, validity: int) -> Any:
        asked = request(uri, validity=validity)
        return evaluate(policy_set, caller("orders", "web"), asked, now=NOW, ca_not_after=CA_NOT_AFTER)

    own = decide(own_id("orders", "web"), 7 * 86400)
    assert own.allowed and own.duration_seconds == 86400  # clamped to 24h
    assert not decide(own_id("orders", "admin"), 3600).allowed
