"""The chart for ``--policy-source kubernetes``: the CRDs behind a switch (the generated files, kept on uninstall),
the flags, RBAC to read the policy objects (and, for the leader, write their status), and refusals."""

from __future__ import annotations

from policies import crd_gen
from signer.settings import parse_serve_args
from tests.helm.test_chart import container_args, render
from tests.helm.test_chart_features import render_error, rules

OBJECTS = ("identitypolicies", "policysettings")
READ = {("ClusterRole", "meshsigner.io", kind, verb, "*") for kind in OBJECTS for verb in ("get", "list", "watch")}
WRITE_STATUS = {("ClusterRole", "meshsigner.io", f"{kind}/status", "update", "*") for kind in OBJECTS} | {
    ("ClusterRole", "events.k8s.io", "events", "create", "*")
}
KUBERNETES = ("app.policySource=kubernetes",)


def test_the_chart_carries_the_generated_crds() -> None:
    assert crd_gen.main(["--check", str(crd_gen.CHART_DIRECTORY)]) == 0


def test_the_crds_install_only_when_switched_on_and_are_kept_on_uninstall(helm: str) -> None:
    assert not [d for d in render(helm) if d["kind"] == "CustomResourceDefinition"]
    crds = [d for d in render(helm, "crds.install=true") if d["kind"] == "CustomResourceDefinition"]
    assert sorted(d["metadata"]["name"] for d in crds) == [f"{kind}.meshsigner.io" for kind in OBJECTS]
    generated = {name.removesuffix(".yaml") for name in crd_gen.rendered()}
    for crd in crds:
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert crd["metadata"]["name"] in generated
        assert crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_the_kubernetes_source_becomes_flags_meshsigner_accepts(helm: str) -> None:
    settings = parse_serve_args(
        container_args(render(helm, *KUBERNETES, "app.policyRootNamespace=mesh-root", "app.policyLabelSelector=a=b"))
    )
    assert (settings.policy_source, settings.policy_root_namespace, settings.policy_label_selector) == (
        "kubernetes",
        "mesh-root",
        "a=b",
    )
    assert not settings.policy_dir
    default = parse_serve_args(container_args(render(helm)))
    assert default.policy_source == "directory"


def test_rbac_reads_the_policy_objects_and_the_leader_writes_their_status(helm: str) -> None:
    found = rules(render(helm, *KUBERNETES))
    assert found >= READ | WRITE_STATUS
    assert ("ClusterRole", "", "namespaces", "watch", "*") in found  # namespace label selectors
    without_duties = rules(render(helm, *KUBERNETES, "app.controller.clusterDuties=false"))
    assert without_duties >= READ and not WRITE_STATUS & without_duties
    assert not (READ | WRITE_STATUS) & rules(render(helm))


def test_policies_files_with_the_kubernetes_source_are_refused(helm: str) -> None:
    error = render_error(helm, *KUBERNETES, "app.policies.a\\.yaml=x")
    assert "app.policies is for app.policySource=directory" in error


def test_the_schema_refuses_an_unknown_source(helm: str) -> None:
    assert "policySource" in render_error(helm, "app.policySource=configmap")
