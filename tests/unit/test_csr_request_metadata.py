"""decode_request never raises; admitted_request bounds the metadata Struct (size, entries, depth)."""

from __future__ import annotations

import time

import pytest

from proto import istio_ca_pb2
from signer.errors import CsrRejected
from signer.request_checks import (
    MAX_METADATA_DEPTH,
    MAX_METADATA_ENTRIES,
    UndecodableRequest,
    admitted_request,
    decode_request,
)
from tests.support.wire import deeply_nested_request


def _request(metadata: dict | None) -> bytes:
    request = istio_ca_pb2.IstioCertificateRequest(csr="csr", validity_duration=3600)
    if metadata is not None:
        request.metadata.update(metadata)
    return request.SerializeToString()


def _refusal(data: bytes) -> str:
    with pytest.raises(CsrRejected) as refused:
        admitted_request(decode_request(data))
    return refused.value.reason


def _nested(levels: int) -> dict:
    value: dict = {"CertSigner": ""}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        {"CertSigner": ""},
        {"ImpersonatedIdentity": "spiffe://cluster.local/ns/a/sa/b"},
        _nested(MAX_METADATA_DEPTH),
        {f"k{i}": "v" for i in range(MAX_METADATA_ENTRIES)},
    ],
    ids=["absent", "pilot-agent", "ztunnel", "at the depth bound", "at the entry bound"],
)
def test_what_istio_sends_and_what_fits_the_bounds_is_admitted(metadata):
    data = _request(metadata)
    assert admitted_request(decode_request(data)) == istio_ca_pb2.IstioCertificateRequest.FromString(data)


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ({f"k{i}": "v" for i in range(MAX_METADATA_ENTRIES + 1)}, "METADATA_TOO_LARGE"),
        ({"list": list(range(MAX_METADATA_ENTRIES + 1))}, "METADATA_TOO_LARGE"),
        ({"big": "x" * 9000}, "METADATA_TOO_LARGE"),
        ({"k" * 300: ""}, "METADATA_TOO_LARGE"),
        (_nested(MAX_METADATA_DEPTH + 1), "METADATA_TOO_DEEP"),
        ({"l": [[[[["deep"]]]]]}, "METADATA_TOO_DEEP"),
    ],
    ids=["entries", "list items", "bytes", "long key", "nested Struct", "nested lists"],
)
def test_metadata_past_a_bound_is_refused(metadata, reason):
    assert _refusal(_request(metadata)) == reason


def test_one_hundred_thousand_keys_are_refused_before_protobuf_builds_them():
    request = istio_ca_pb2.IstioCertificateRequest(csr="csr")
    for index in range(100_000):
        request.metadata.fields[f"{index:x}"].string_value = ""
    data = request.SerializeToString()
    started = time.perf_counter()
    decoded = decode_request(data)
    elapsed = time.perf_counter() - started
    assert isinstance(decoded, UndecodableRequest) and decoded.reason == "METADATA_TOO_LARGE"
    assert elapsed < 0.05  # parsing it would take about 0.2 s; the wire pre-check is microseconds


def test_a_struct_nested_past_the_parser_limit_is_a_refusal_not_an_exception():
    assert _refusal(deeply_nested_request(b"csr", 150)) == "REQUEST_MALFORMED"


@pytest.mark.parametrize(
    "data",
    [b"\xff", b"\x0a\x05ab", b"\x0b\x00", b"\x08" + b"\xff" * 11, b"\x10\x01" * 17, b"\x22\x02\x0a"],
    ids=["bad key", "truncated string", "group wire type", "endless varint", "17 fields", "bad metadata"],
)
def test_undecodable_bytes_are_refused(data):
    assert _refusal(data) == "REQUEST_MALFORMED"
