"""The fuzz targets (tests/fuzz/README.md: the CSR, SPIFFE, token, metadata and policy targets).

Each target turns bytes into one call of meshsigner code. The only acceptable outcomes are a valid result that
passes the target's own oracle, or a refusal of meshsigner's own exception types; anything else, or an oracle
violation, is a finding. Each target also has a structure-aware mutator (DER tree, Struct tree, YAML tree, JWS
parts), which atheris uses as its custom mutator and the plain engine uses on its own.
"""

from __future__ import annotations

import base64
import json
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.fuzz import der_tree

Mutate = Callable[[bytes, int], bytes]  # the engine's byte-level mutation (libFuzzer's when atheris runs)


class OracleViolation(AssertionError):
    """A result that is returned without an exception but must not be (an acceptance the rules forbid).

    ``kind`` is fixed text that names the rule (findings are grouped by it); ``detail`` is about this input."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass(frozen=True)
class Target:
    name: str
    one_input: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...]
    mutator: Callable[[bytes, int, random.Random, Mutate], bytes]


CORPUS_ROOT = Path(__file__).parent / "corpus"
DICT_ROOT = Path(__file__).parent / "dicts"
TRUST_DOMAIN = "cluster.local"


def _fallback(data: bytes, max_size: int, rng: random.Random, mutate: Mutate) -> bytes:
    return mutate(data, max_size)


# --- T1: CSR parse and checks -------------------------------------------------------------------------------------

CSR_MODE_DER, CSR_MODE_SIGN_INFO, CSR_MODE_PEM_TEXT = 0, 1, 2


def _harness_keys():
    """Fixed keys, so that committed seeds in sign-the-info mode keep verifying across runs."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    keys = [
        ec.derive_private_key(0x5EED_0001_C0FFEE, ec.SECP256R1()),
        ec.derive_private_key(0x5EED_0002_C0FFEE, ec.SECP384R1()),
        ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))),
    ]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return {key.public_key().public_bytes(*spki): key for key in keys}, keys[0]


def sign_info(info: bytes, keys, default_key) -> bytes:
    """Wrap a CertificationRequestInfo (any bytes) into a CSR signed by the harness key its SPKI names."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    node = der_tree.parse(info)
    signer = default_key
    if node is not None and node.children is not None and len(node.children) >= 3:
        signer = keys.get(der_tree.encode(node.children[2]), default_key)
    if isinstance(signer, ec.EllipticCurvePrivateKey):
        signature = signer.sign(info, ec.ECDSA(hashes.SHA256()))
        algorithm = b"\x30\x0a\x06\x08" + der_tree.encode_oid_content("1.2.840.10045.4.3.2")
    else:
        signature = signer.sign(info)
        algorithm = b"\x30\x05\x06\x03" + der_tree.encode_oid_content("1.3.101.112")
    bits = der_tree.Node(0x03, b"\x00" + signature)
    outer = der_tree.Node(0x30, info + algorithm + der_tree.encode(bits))
    return der_tree.encode(outer)


def _csr_input(data: bytes, keys, default_key) -> str:
    from signer.csr_checks import canonical_pem

    mode, body = (data[0] % 3, data[1:]) if data else (CSR_MODE_DER, b"")
    if mode == CSR_MODE_PEM_TEXT:
        return body.decode("latin-1")
    if mode == CSR_MODE_SIGN_INFO:
        body = sign_info(body, keys, default_key)
    return canonical_pem(body)


def _csr_oracle(pem_in: str, parsed) -> None:
    """An accepted CSR, re-read with the fuzzers' own tree: the rules the product's reader enforces must hold."""
    body = "".join(parsed.pem.splitlines()[1:-1])
    der = base64.b64decode(body)
    root = der_tree.parse(der)
    if root is None or root.children is None or len(root.children) != 3:
        raise OracleViolation("accepted CSR does not re-parse as SEQUENCE of 3")
    info = root.children[0].children or []
    if len(info) != 4:
        raise OracleViolation("accepted CertificationRequestInfo without 4 fields")
    for rdn in info[1].children or []:
        if len(rdn.children or []) != 1:
            raise OracleViolation("accepted a multi-valued RDN")
    algorithm = (info[2].children or [der_tree.Node(0)])[0].children or []
    oid = der_tree.decode_oid(algorithm[0].content) if algorithm else None
    if oid == "1.2.840.10045.2.1":
        curve = der_tree.decode_oid(algorithm[1].content) if len(algorithm) == 2 and algorithm[1].tag == 6 else None
        if curve not in ("1.2.840.10045.3.1.7", "1.3.132.0.34"):
            raise OracleViolation("accepted EC key parameters other than a named P-256/P-384", repr(curve))
    extension_requests = 0
    for attribute in info[3].children or []:
        fields = attribute.children or []
        if not fields or der_tree.decode_oid(fields[0].content) != "1.2.840.113549.1.9.14":
            raise OracleViolation("accepted an attribute other than extensionRequest")
        extension_requests += 1
        if len(fields) != 2 or len(fields[1].children or []) != 1:
            raise OracleViolation("accepted an extensionRequest without exactly one value")
    if extension_requests > 1:
        raise OracleViolation("accepted two extensionRequest attributes")
    if parsed.request.key not in ("ECDSA-P256", "ECDSA-P384", "Ed25519") and not parsed.request.key.startswith("RSA-"):
        raise OracleViolation("accepted a key outside the allow-list", parsed.request.key)


def csr_target() -> Target:
    from policies import Caller
    from policies.precheck import PrecheckSettings, precheck
    from signer.csr_checks import parse_csr
    from signer.errors import CsrRejected

    keys, default_key = _harness_keys()
    caller = Caller(TRUST_DOMAIN, "orders", "web")
    settings = PrecheckSettings(TRUST_DOMAIN)

    def one_input(data: bytes) -> None:
        pem = _csr_input(data, keys, default_key)
        parsed = parse_csr(pem, validity_seconds=3600, impersonated=None, cert_signer=None)
        _csr_oracle(pem, parsed)
        verdict = precheck(caller, parsed.request, settings)
        if isinstance(verdict, tuple) and (parsed.request.is_ca or parsed.request.unknown_extensions):
            raise OracleViolation("step 0 let a CA or an unknown extension through")

    def mutator(data: bytes, max_size: int, rng: random.Random, mutate: Mutate) -> bytes:
        mode = data[0] % 3 if data else CSR_MODE_SIGN_INFO
        if mode == CSR_MODE_PEM_TEXT or rng.random() < 0.15:
            return mutate(data, max_size)
        root = der_tree.parse(data[1:])
        if root is None:
            return mutate(data, max_size)
        for _ in range(1 + int(rng.expovariate(1.0))):
            der_tree.mutate_tree(root, rng)
        return (bytes([mode]) + der_tree.encode(root))[:max_size]

    return Target("csr", one_input, (CsrRejected,), mutator)


# --- T2: SPIFFE ID parser -----------------------------------------------------------------------------------------

_SPIFFE_PIECES = ["spiffe://", "SPIFFE://", "/ns/", "/sa/", "%2F", "..", ".", "\x00", "/", "//", ":", "@", "?", "#"]
_SPIFFE_PIECES += ["cluster.local", "Cluster.Local", "a", "-", "_", "é", "\u202e", " ", "x" * 300, "cluster.local."]


def spiffe_target() -> Target:
    from policies.spiffe import MAX_SPIFFE_ID_BYTES, InvalidSpiffeID, parse_spiffe_id

    def one_input(data: bytes) -> None:
        text = data.decode("utf-8", "surrogateescape")
        parsed = parse_spiffe_id(text)
        if str(parsed) != text:
            raise OracleViolation("accepted ID does not round-trip byte for byte")
        segments = text[len("spiffe://") :].split("/")
        if (
            not text.startswith("spiffe://")
            or len(text.encode()) > MAX_SPIFFE_ID_BYTES
            or not all(0x21 <= ord(c) < 0x7F for c in text)
            or any(s in ("", ".", "..") for s in segments[1:])
            or "%" in text
            or segments[0] != segments[0].lower()
            or segments[0].endswith(".")
        ):
            raise OracleViolation("accepted a non-canonical SPIFFE ID", repr(text[:80]))

    def mutator(data: bytes, max_size: int, rng: random.Random, mutate: Mutate) -> bytes:
        if rng.random() < 0.3:
            return mutate(data, max_size)
        parts = data.decode("utf-8", "surrogateescape").split("/")
        index = rng.randrange(len(parts))
        piece = rng.choice(_SPIFFE_PIECES)
        op = rng.randrange(3)
        if op == 0:
            parts[index] = piece
        elif op == 1:
            parts.insert(index, piece)
        else:
            parts[index] = parts[index] + piece
        return "/".join(parts).encode("utf-8", "surrogateescape")[:max_size]

    return Target("spiffe", one_input, (InvalidSpiffeID,), mutator)


# --- T5: the JWKS authenticator's token front ---------------------------------------------------------------------

JWT_MODE_RAW, JWT_MODE_SIGNED, JWT_MODE_OWN_SIGNATURE = 0, 1, 2
JWT_ISSUER = "https://issuer.fuzz.test"
JWT_SEPARATOR = b"\x00\x00"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwks_target() -> Target:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    from clocks import SystemClock
    from signer.auth.jwks import JwksAuthenticator
    from signer.errors import AuthenticationFailed, TemporarilyUnavailable

    key = ec.derive_private_key(0x5EED_0003_C0FFEE, ec.SECP256R1())
    numbers = key.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "kid": "fuzz-1",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }
    directory = Path(tempfile.mkdtemp(prefix="meshsigner-fuzz-jwks-"))
    jwks_path = directory / "jwks.json"
    jwks_path.write_text(json.dumps({"keys": [jwk]}))

    def token_for(data: bytes) -> tuple[int, str]:
        mode, body = (data[0] % 3, data[1:]) if data else (JWT_MODE_RAW, b"")
        if mode == JWT_MODE_RAW:
            return mode, body.decode("utf-8", "surrogateescape")
        header, _, rest = body.partition(JWT_SEPARATOR)
        claims, _, signature = rest.partition(JWT_SEPARATOR)
        signing_input = f"{_b64url(header)}.{_b64url(claims)}"
        if mode == JWT_MODE_SIGNED:
            r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return mode, f"{signing_input}.{_b64url(signature)}"

    def one_input(data: bytes) -> None:
        mode, token = token_for(data)
        authenticator = JwksAuthenticator(  # fresh cache
            jwks_path, issuer=JWT_ISSUER, audiences=("istio-ca",), clock=SystemClock()
        )
        identity = authenticator.verify(token)
        if mode != JWT_MODE_SIGNED:
            raise OracleViolation("accepted a token not signed by the pinned key", str(identity))
        claims = json.loads(data[1:].partition(JWT_SEPARATOR)[2].partition(JWT_SEPARATOR)[0])
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if claims.get("iss") != JWT_ISSUER or "istio-ca" not in audiences or "exp" not in claims:
            raise OracleViolation("accepted a token with the wrong issuer, audience or no expiry")

    def mutator(data: bytes, max_size: int, rng: random.Random, mutate: Mutate) -> bytes:
        mode = data[0] % 3 if data else JWT_MODE_SIGNED
        if mode == JWT_MODE_RAW or rng.random() < 0.2:
            return mutate(data, max_size)
        parts = [*data[1:].split(JWT_SEPARATOR, 2), b"", b""]
        index = rng.choice((0, 1, 1, 1))
        try:
            document = json.loads(parts[index])
        except (ValueError, UnicodeDecodeError, RecursionError):
            return mutate(data, max_size)
        document = _mutate_json(document, rng, _JWT_VALUES)
        parts[index] = json.dumps(document).encode()
        return (bytes([mode]) + JWT_SEPARATOR.join(parts[:3]))[:max_size]

    allowed: tuple[type[BaseException], ...] = (AuthenticationFailed, TemporarilyUnavailable)
    return Target("jwks", one_input, allowed, mutator)


_JWT_VALUES: list[object] = [
    "ES256",
    "RS256",
    "HS256",
    "none",
    "fuzz-1",
    "istio-ca",
    ["istio-ca", "other"],
    JWT_ISSUER,
    "system:serviceaccount:orders:web",
    "system:serviceaccount:orders",
    4102444800,
    0,
    -1,
    1e400,
    2**70,
    "4102444800",
    None,
    True,
    [],
    {},
    {"namespace": "orders", "serviceaccount": {"name": "web", "uid": "u"}, "pod": {"name": "p", "uid": "u"}},
    {"namespace": "orders", "serviceaccount": "web"},
    {"namespace": "orders", "serviceaccount": {"name": "web"}, "pod": ["p"]},
    "x" * 2000,
]
_JWT_KEYS = ["alg", "kid", "typ", "crit", "iss", "aud", "exp", "nbf", "iat", "sub", "kubernetes.io", "jku", "x5c"]


def _mutate_json(document: object, rng: random.Random, values: list[object]) -> object:
    if not isinstance(document, dict) or rng.random() < 0.05:
        return rng.choice(values)
    containers: list[dict | list] = [document]
    for container in list(containers):
        children = container.values() if isinstance(container, dict) else container
        containers.extend(c for c in children if isinstance(c, dict | list))
    target = rng.choice(containers)
    if isinstance(target, dict):
        key = rng.choice(_JWT_KEYS + list(target)) if target else rng.choice(_JWT_KEYS)
        if rng.random() < 0.2 and key in target:
            del target[key]
        else:
            target[key] = rng.choice(values)
    else:
        target.append(rng.choice(values))
    return document


# --- the request metadata Struct ----------------------------------------------------------------------------------


def metadata_target() -> Target:
    from google.protobuf import struct_pb2
    from google.protobuf.message import DecodeError

    from proto import istio_ca_pb2
    from signer.errors import CsrRejected
    from signer.request_checks import (
        MAX_METADATA_BYTES,
        MAX_METADATA_DEPTH,
        MAX_METADATA_ENTRIES,
        admitted_request,
        decode_request,
    )

    def measure(value: struct_pb2.Struct | struct_pb2.ListValue, depth: int) -> tuple[int, int]:
        """(entries, depth) counted recursively: independent of the product's iterative walk."""
        items = list(value.fields.values()) if isinstance(value, struct_pb2.Struct) else list(value.values)
        entries, deepest = len(items), depth
        for item in items:
            kind = item.WhichOneof("kind")
            if kind in ("struct_value", "list_value"):
                sub_entries, sub_depth = measure(getattr(item, kind), depth + 1)
                entries, deepest = entries + sub_entries, max(deepest, sub_depth)
        return entries, deepest

    def one_input(data: bytes) -> None:
        request = admitted_request(decode_request(data))
        if request.HasField("metadata"):
            entries, depth = measure(request.metadata, 1)
            size = request.metadata.ByteSize()
            if entries > MAX_METADATA_ENTRIES or depth > MAX_METADATA_DEPTH or size > MAX_METADATA_BYTES:
                raise OracleViolation(
                    "admitted metadata past a bound", f"{entries} entries, depth {depth}, {size} bytes"
                )

    def random_value(rng: random.Random, depth: int) -> struct_pb2.Value:
        value = struct_pb2.Value()
        kind = rng.randrange(6 if depth < 8 else 4)
        if kind == 0:
            value.string_value = rng.choice(["", "spiffe://cluster.local/ns/a/sa/b", "x" * rng.randrange(600)])
        elif kind == 1:
            value.number_value = rng.choice([0.0, -1.0, 1e308, float("nan")])
        elif kind == 2:
            value.bool_value = True
        elif kind == 3:
            value.null_value = struct_pb2.NULL_VALUE
        elif kind == 4:
            value.struct_value.fields[rng.choice(["a", "CertSigner", "ImpersonatedIdentity"])].CopyFrom(
                random_value(rng, depth + 1)
            )
        else:
            value.list_value.values.add().CopyFrom(random_value(rng, depth + 1))
        return value

    def mutator(data: bytes, max_size: int, rng: random.Random, mutate: Mutate) -> bytes:
        if rng.random() < 0.2:
            return mutate(data, max_size)
        try:
            request = istio_ca_pb2.IstioCertificateRequest.FromString(data)
        except DecodeError:
            return mutate(data, max_size)
        containers: list[struct_pb2.Struct | struct_pb2.ListValue] = [request.metadata]
        for container in containers:
            items = container.fields.values() if isinstance(container, struct_pb2.Struct) else container.values
            for item in items:
                kind = item.WhichOneof("kind")
                if kind in ("struct_value", "list_value"):
                    containers.append(getattr(item, kind))
        target = rng.choice(containers)
        op = rng.randrange(4)
        if isinstance(target, struct_pb2.Struct):
            if op == 0 and target.fields:
                del target.fields[rng.choice(list(target.fields))]
            elif op == 1:
                for index in range(rng.choice((1, 8, 64, 500))):
                    target.fields[f"k{index}-{rng.randrange(1000)}"].string_value = ""
            else:
                target.fields[rng.choice(["a", "b", "CertSigner", "ImpersonatedIdentity", "k" * 300])].CopyFrom(
                    random_value(rng, 0)
                )
        elif op == 0 and target.values:
            del target.values[rng.randrange(len(target.values))]
        else:
            target.values.add().CopyFrom(random_value(rng, 0))
        return request.SerializeToString()[:max_size]

    return Target("metadata", one_input, (CsrRejected,), mutator)


# --- T7: the policy loader ----------------------------------------------------------------------------------------

_YAML_VALUES: list[object] = [
    "",
    "x",
    "*",
    "spiffe://cluster.local/ns/{namespace}/sa/{serviceAccount}",
    "{unknown}",
    "1h",
    "-1s",
    "99999999999d",
    "0s",
    0,
    -1,
    2**64,
    1.5,
    True,
    None,
    [],
    {},
    ["a", "b"],
    {"matchLabels": {"a": "b"}},
    "IdentityPolicy",
    "PolicySettings",
    "meshsigner.io/v1alpha1",
    "ECDSA-P256",
    "Deny",
    "Allow",
    "Audit",
]
_YAML_KEYS = ["apiVersion", "kind", "metadata", "spec", "name", "rules", "match", "allow", "deny", "maxDuration"]


def policy_target() -> Target:
    import yaml

    from policies.loader import build_policy_set
    from policies.policy_set import PolicySet
    from policies.problems import PolicySetInvalid

    def one_input(data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        result = build_policy_set([("fuzz.yaml", text)], trust_domain=TRUST_DOMAIN)
        if not isinstance(result, PolicySet):
            raise OracleViolation("loader returned something else than a PolicySet", type(result).__name__)

    def mutator(data: bytes, max_size: int, rng: random.Random, mutate: Mutate) -> bytes:
        if rng.random() < 0.25:
            return mutate(data, max_size)
        try:
            documents = list(yaml.safe_load_all(data.decode("utf-8")))
        except (yaml.YAMLError, UnicodeDecodeError, RecursionError):
            return mutate(data, max_size)
        if not documents:
            return mutate(data, max_size)
        index = rng.randrange(len(documents))
        values = _YAML_VALUES + [{k: v} for k, v in zip(_YAML_KEYS, _YAML_VALUES, strict=False)]
        documents[index] = _mutate_json(documents[index], random.Random(rng.random()), values)
        if rng.random() < 0.1:
            documents.append(documents[index])
        try:
            return yaml.safe_dump_all(documents, sort_keys=False).encode()[:max_size]
        except (yaml.YAMLError, RecursionError):
            return mutate(data, max_size)

    return Target("policy", one_input, (PolicySetInvalid,), mutator)


TARGETS: dict[str, Callable[[], Target]] = {
    "csr": csr_target,
    "spiffe": spiffe_target,
    "jwks": jwks_target,
    "metadata": metadata_target,
    "policy": policy_target,
}
# the packages atheris instruments for coverage feedback (our code, not the libraries)
INSTRUMENTED = ("signer", "policies", "proto")
