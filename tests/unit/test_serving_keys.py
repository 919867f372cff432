"""Serving keys (bridge/signing.py): generated off the event loop, and assembled the same way by every backend."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bridge.local_ca import LocalCA
from bridge.signing import new_private_key, new_serving_key


@pytest.fixture
def key_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The threads RSA and EC keys are generated on."""
    threads: list[int] = []
    for module in (rsa, ec):
        original = module.generate_private_key

        def record(*args, _original=original, **kwargs):
            threads.append(threading.get_ident())
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, "generate_private_key", record)
    return threads


@pytest.mark.parametrize(("algorithm", "size"), [("RSA", 2048), ("ECDSA", 256)])
async def test_local_ca_generates_serving_keys_off_the_event_loop(
    tmp_path: Path, key_threads: list[int], algorithm: str, size: int
) -> None:
    ca = LocalCA.open(tmp_path / "ca")
    key_threads.clear()  # the root's own key (start-up, before any loop work) does not count
    material = await ca.issue_serving_certificate(("meshsigner.test",), 3600, algorithm, size)
    assert key_threads, "no key was generated"
    assert threading.get_ident() not in key_threads, "the serving key was generated on the event loop's thread"
    key = serialization.load_pem_private_key(material.key_pem, password=None)
    leaf, *rest = x509.load_pem_x509_certificates(material.chain_pem)
    assert rest == []  # a root CA: no intermediates
    assert leaf.public_key() == key.public_key()
    assert (material.not_before, material.not_after) == (leaf.not_valid_before_utc, leaf.not_valid_after_utc)
    assert isinstance(key, rsa.RSAPrivateKey if algorithm == "RSA" else ec.EllipticCurvePrivateKey)
    assert key.key_size == size


async def test_new_serving_key_runs_in_a_worker_thread(key_threads: list[int]) -> None:
    key = await new_serving_key("ECDSA", 384)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.key_size == 384
    assert key_threads and threading.get_ident() not in key_threads


def test_new_private_key_kinds() -> None:
    assert new_private_key("ecdsa", 256).key_size == 256
    assert new_private_key("RSA", 2048).key_size == 2048
