from __future__ import annotations

import asyncio
import os
import stat
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.local_ca import LocalCA
from tests.support.signing_request import signing_request

OWN = "spiffe://cluster.local/ns/orders/sa/web"


def _ca_cert(subject: str, key, issuer_cert=None, issuer_key=None, lifetime=timedelta(days=30)):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(issuer_key or key, hashes.SHA256())
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_empty_folder_gets_a_root_with_a_private_key(tmp_path):
    ca = LocalCA.open(tmp_path / "ca", key_type="ecdsa")
    assert stat.S_IMODE(os.stat(tmp_path / "ca" / "ca-key.pem").st_mode) == 0o600
    again = LocalCA.open(tmp_path / "ca")
    assert again.roots_pem == ca.roots_pem, "a second start reuses the root"


def test_rsa_root_on_request(tmp_path):
    LocalCA.open(tmp_path, key_type="rsa")
    root = x509.load_pem_x509_certificate((tmp_path / "root-cert.pem").read_bytes())
    assert root.public_key().key_size == 3072


def test_istio_cacerts_layout_signs_with_the_intermediate(tmp_path):
    root_key, intermediate_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = _ca_cert("root", root_key)
    intermediate = _ca_cert("intermediate", intermediate_key, root, root_key)
    (tmp_path / "ca-cert.pem").write_bytes(_pem(intermediate))
    (tmp_path / "ca-key.pem").write_bytes(_key_pem(intermediate_key))
    (tmp_path / "cert-chain.pem").write_bytes(_pem(intermediate) + _pem(root))
    (tmp_path / "root-cert.pem").write_bytes(_pem(root))
    ca = LocalCA.open(tmp_path)
    signed = asyncio.run(ca.sign(signing_request(OWN, not_after=datetime.now(UTC) + timedelta(hours=1))))
    assert len(signed.chain_pems) == 2, "leaf then the intermediate; the root travels separately"
    assert signed.chain_pems[1].encode() == _pem(intermediate)
    assert signed.roots_pem.encode() == _pem(root)
    signed.leaf.verify_directly_issued_by(intermediate)
    assert ca.ca_not_after == intermediate.not_valid_after_utc


def test_leaf_never_outlives_the_ca(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    root = _ca_cert("short root", key, lifetime=timedelta(minutes=30))
    (tmp_path / "root-cert.pem").write_bytes(_pem(root))
    (tmp_path / "ca-key.pem").write_bytes(_key_pem(key))
    ca = LocalCA.open(tmp_path)
    signed = ca.sign_now(signing_request(OWN, not_after=datetime.now(UTC) + timedelta(hours=2)))
    assert signed.leaf.not_valid_after_utc <= root.not_valid_after_utc


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"root-cert.pem": b"not pem"}, "incomplete CA folder"),
        ({"ca-cert.pem": b"x", "ca-key.pem": b"x"}, "missing root-cert.pem"),
    ],
)
def test_broken_folders_are_refused_with_a_reason(tmp_path, files, message):
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match=message):
        LocalCA.open(tmp_path)


def test_key_that_does_not_belong_to_the_root_is_refused(tmp_path):
    root = _ca_cert("root", ec.generate_private_key(ec.SECP256R1()))
    (tmp_path / "root-cert.pem").write_bytes(_pem(root))
    (tmp_path / "ca-key.pem").write_bytes(_key_pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(ValueError, match="does not belong"):
        LocalCA.open(tmp_path)
