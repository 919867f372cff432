"""The Istio install settings of docs/istio-install.md, read as test data.

The doc holds YAML blocks, each after an ``<!-- istio-test-data: NAME -->`` marker: the Helm values of the
``istiod`` chart, the same settings as an IstioOperator, meshsigner's cluster-duty flags, and the cert-manager
Certificate for istiod that a ``--signer kubernetes-csr`` install applies itself. The tests run istiod and
pilot-agent with the environment these values produce (as the chart's ``deployment.yaml`` and the ``grpc-agent``
injection template turn them into environment variables), meshsigner with those flags, and apply that Certificate,
so the doc and the test cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DOC = Path(__file__).resolve().parents[2] / "docs" / "istio-install.md"
_BLOCK = re.compile(r"<!-- istio-test-data: (?P<name>[\w-]+) -->\s*```yaml\n(?P<body>.*?)```", re.DOTALL)


def doc_blocks(path: Path = DOC) -> dict[str, Any]:
    return {m["name"]: yaml.safe_load(m["body"]) for m in _BLOCK.finditer(path.read_text())}


@dataclass(frozen=True)
class InstallValues:
    ca_address: str  # global.caAddress, host:port
    pilot_cert_provider: str  # global.pilotCertProvider
    istiod_env: dict[str, str]  # env.* of the istiod chart

    @property
    def ca_host(self) -> str:
        return self.ca_address.rsplit(":", 1)[0]

    def agent_ca_addr(self, port: int) -> str:
        """CA_ADDR as the injector writes it, with the port of the loopback listener standing in for the Service."""
        return f"{self.ca_host}:{port}"


def helm_values(path: Path = DOC) -> InstallValues:
    values = doc_blocks(path)["helm-values"]
    return InstallValues(
        ca_address=values["global"]["caAddress"],
        pilot_cert_provider=values["global"]["pilotCertProvider"],
        istiod_env={key: str(value) for key, value in values["env"].items()},
    )


def istio_operator_values(path: Path = DOC) -> InstallValues:
    values = doc_blocks(path)["istio-operator"]["spec"]["values"]
    return InstallValues(
        ca_address=values["global"]["caAddress"],
        pilot_cert_provider=values["global"]["pilotCertProvider"],
        istiod_env={key: str(value) for key, value in values["pilot"]["env"].items()},
    )


def meshsigner_duty_flags(path: Path = DOC) -> list[str]:
    """meshsigner's flags for the objects istiod and the workloads mount (the istiod-tls Secret, the root
    ConfigMaps), as the doc gives them."""
    return [str(flag) for flag in doc_blocks(path)["meshsigner-flags"]]


def istiod_certificate(issuer_name: str, path: Path = DOC) -> dict[str, Any]:
    """The doc's cert-manager Certificate for istiod (``--signer kubernetes-csr``), issued by ``issuer_name``."""
    certificate: dict[str, Any] = doc_blocks(path)["istiod-certificate"]
    certificate["spec"]["issuerRef"]["name"] = issuer_name
    return certificate
