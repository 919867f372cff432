"""The Helm chart renders, lints, passes its arguments through meshsigner's own flag parser, and its policies
pass `meshsigner policy lint`. (Applying the manifests to the real API server is in tests/kube.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from signer.settings import parse_serve_args
from tests.support.processes import REPO

CHART = REPO / "helm" / "meshsigner"
POLICIES = REPO / "tests" / "policies" / "fixtures" / "policies"


def render(
    helm: str,
    *values: str,
    files: dict[str, Path] | None = None,
    namespace: str = "cert-manager",
    value_files: tuple[Path, ...] = (),
) -> list[dict]:
    command = [helm, "template", "meshsigner", str(CHART), "--namespace", namespace, "--kube-version", "1.36.0"]
    for path in value_files:
        command += ["--values", str(path)]
    for value in values:
        command += ["--set", value]
    for key, path in (files or {}).items():
        command += ["--set-file", f"{key}={path}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def container_args(docs: list[dict]) -> list[str]:
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "serve"
    return args[1:]


def test_chart_lints(helm):
    result = subprocess.run([helm, "lint", str(CHART)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_install_speaks_istio_csr_flags(helm):
    docs = render(helm)
    settings = parse_serve_args(container_args(docs))
    assert settings.signer == "cert-manager" and settings.authenticator == "tokenreview"
    assert settings.serving_certificate_dns_names == ("cert-manager-istio-csr.cert-manager.svc",)
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["metadata"]["name"] == "cert-manager-istio-csr"
    assert {p["port"] for p in service["spec"]["ports"]} >= {443}


def lint_policy_dir(directory: Path) -> subprocess.CompletedProcess[str]:
    """``meshsigner policy lint DIR`` as a user runs it, on the chart's policy files written into ``directory``."""
    return subprocess.run(
        [sys.executable, "-m", "signer.cli", "policy", "lint", str(directory)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_policies_become_a_mounted_policy_dir(helm, tmp_path):
    files = {f"app.policies.{p.stem}\\.yaml": p for p in POLICIES.glob("*.yaml")}
    docs = render(helm, files=files)
    settings = parse_serve_args(container_args(docs))
    assert settings.policy_dir == "/etc/meshsigner/policies"
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    for name, content in configmap["data"].items():
        (tmp_path / name).write_text(content)
    result = lint_policy_dir(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
