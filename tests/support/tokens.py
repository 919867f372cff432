"""A test-owned token issuer: RS256 and ES256 keys, their JWKS, and service-account-shaped tokens."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://issuer.meshsigner.test"


@dataclass
class TokenIssuer:
    issuer: str = ISSUER
    rsa_key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    ec_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def jwks(self) -> dict[str, Any]:
        rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa_key.public_key()))
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec_key.public_key()))
        return {"keys": [{**rsa_jwk, "kid": "rsa-1"}, {**ec_jwk, "kid": "ec-1"}]}

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks()))
        return path

    def token(
        self,
        namespace: str = "orders",
        service_account: str = "web",
        *,
        algorithm: str = "ES256",
        audience: str | list[str] = "istio-ca",
        lifetime: int = 3600,
        issued_offset: int = 0,
        issuer: str | None = None,
        kid: str | None = None,
        extra: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
    ) -> str:
        now = int(time.time()) + issued_offset
        claims: dict[str, Any] = {
            "iss": issuer or self.issuer,
            "aud": audience,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": "sa-uid"},
                "pod": {"name": f"{service_account}-pod", "uid": "pod-uid"},
            },
        }
        claims.update(extra or {})
        for name in drop:
            claims.pop(name, None)
        key = self.rsa_key if algorithm.startswith("RS") else self.ec_key
        default_kid = "rsa-1" if algorithm.startswith("RS") else "ec-1"
        return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid or default_kid})
