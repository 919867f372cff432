"""Reading certificate bundles and writing private keys safely (mode 0600 from the first byte)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature


def write_private(path: Path, data: bytes) -> None:
    """Write a secret atomically; the file never exists with wider permissions than 0600."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_bundle(data: bytes, *, what: str) -> list[x509.Certificate]:
    """All certificates of a PEM bundle; raises ValueError if there are none or one does not parse."""
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"{what}: not a PEM certificate bundle ({exc})") from None
    if not certificates:
        raise ValueError(f"{what}: no certificate found")
    return certificates


def is_self_signed(certificate: x509.Certificate) -> bool:
    if certificate.issuer != certificate.subject:
        return False
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
