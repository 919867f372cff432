"""Decoding the request ourselves and bounding its ``metadata`` Struct.

The bounds are in docs/robustness.md §Defensive principles, Transport.

gRPC's own deserializer turns a protobuf parse failure (a Struct nested past the parser's recursion limit, say)
into UNKNOWN with the parser's message. ``decode_request`` never raises: it hands the handler either the request
or an ``UndecodableRequest``, and ``admitted_request`` turns the latter, and any over-sized metadata, into
INVALID_ARGUMENT through the normal refusal path (counted, log rate-limited, opaque to the client).

Istio's clients send a flat Struct with one or two string fields (``CertSigner``, ``ImpersonatedIdentity``); the
bounds are far above that and far below what could cost us anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError

from proto import istio_ca_pb2
from signer.errors import CsrRejected

MAX_METADATA_BYTES = 8 * 1024  # serialized size of the Struct
MAX_METADATA_ENTRIES = 64  # Struct fields plus list items, counted over every level
MAX_METADATA_DEPTH = 4  # a flat Struct is depth 1; each nested Struct or list adds one
MAX_METADATA_KEY_BYTES = 256
MAX_TOP_LEVEL_FIELDS = 16  # a real request has at most three (csr, validity_duration, metadata)
_METADATA_FIELD_NUMBER = 4


@dataclass(frozen=True, slots=True)
class UndecodableRequest:
    """What the deserializer hands on instead of raising; only the size is kept, never the bytes."""

    size: int
    reason: str
    error: str


class _WireError(ValueError):
    pass


def decode_request(data: bytes) -> istio_ca_pb2.IstioCertificateRequest | UndecodableRequest:
    """The request deserializer registered with gRPC; it does not raise for any input.

    A cheap look at the top-level wire fields comes first so that an over-sized metadata Struct (100 000 small
    keys fit in 1 MiB and take a quarter of a second to parse) is refused before protobuf builds it.
    """
    try:
        metadata_bytes = _top_level_metadata_bytes(data)
    except _WireError as exc:
        return UndecodableRequest(size=len(data), reason="REQUEST_MALFORMED", error=str(exc))
    if metadata_bytes > MAX_METADATA_BYTES:
        return UndecodableRequest(
            size=len(data), reason="METADATA_TOO_LARGE", error=f"metadata is {metadata_bytes} bytes"
        )
    try:
        return istio_ca_pb2.IstioCertificateRequest.FromString(data)
    except (DecodeError, RecursionError, ValueError) as exc:
        return UndecodableRequest(size=len(data), reason="REQUEST_MALFORMED", error=type(exc).__name__)


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if offset >= len(data):
            raise _WireError("truncated varint")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
    raise _WireError("varint too long")


def _top_level_metadata_bytes(data: bytes) -> int:
    """Total length of the top-level ``metadata`` occurrences (protobuf merges repeats), reading at most
    MAX_TOP_LEVEL_FIELDS field headers so the cost does not grow with the input."""
    offset = 0
    total = 0
    for _ in range(MAX_TOP_LEVEL_FIELDS):
        if offset == len(data):
            return total
        key, offset = _read_varint(data, offset)
        wire_type = key & 0x7
        if wire_type == 0:
            _, offset = _read_varint(data, offset)
        elif wire_type == 1:
            offset += 8
        elif wire_type == 5:
            offset += 4
        elif wire_type == 2:
            size, offset = _read_varint(data, offset)
            offset += size
            if key >> 3 == _METADATA_FIELD_NUMBER:
                total += size
        else:
            raise _WireError(f"wire type {wire_type} not used by this message")
        if offset > len(data):
            raise _WireError("field runs past the end")
    if offset != len(data):
        raise _WireError(f"more than {MAX_TOP_LEVEL_FIELDS} top-level fields")
    return total


def admitted_request(
    request: istio_ca_pb2.IstioCertificateRequest | UndecodableRequest,
) -> istio_ca_pb2.IstioCertificateRequest:
    """The request if it decoded and its metadata is within bounds; otherwise CsrRejected (INVALID_ARGUMENT)."""
    if isinstance(request, UndecodableRequest):
        raise CsrRejected(request.reason, f"{request.size}-byte request refused before decoding: {request.error}")
    if request.HasField("metadata"):
        check_metadata_bounds(request.metadata)
    return request


def check_metadata_bounds(metadata: struct_pb2.Struct) -> None:
    """Walks the Struct without recursion, stopping at the first bound it crosses."""
    size = metadata.ByteSize()
    if size > MAX_METADATA_BYTES:
        raise CsrRejected("METADATA_TOO_LARGE", f"metadata is {size} bytes, at most {MAX_METADATA_BYTES}")
    entries = 0
    pending: list[tuple[struct_pb2.Struct | struct_pb2.ListValue, int]] = [(metadata, 1)]
    while pending:
        container, depth = pending.pop()
        if depth > MAX_METADATA_DEPTH:
            raise CsrRejected("METADATA_TOO_DEEP", f"metadata nested deeper than {MAX_METADATA_DEPTH}")
        if isinstance(container, struct_pb2.Struct):
            entries += len(container.fields)
            if entries > MAX_METADATA_ENTRIES:
                break
            for key, value in container.fields.items():
                if len(key.encode("utf-8")) > MAX_METADATA_KEY_BYTES:
                    raise CsrRejected("METADATA_TOO_LARGE", f"a metadata key is over {MAX_METADATA_KEY_BYTES} bytes")
                _queue_nested(value, depth, pending)
        else:
            entries += len(container.values)
            if entries > MAX_METADATA_ENTRIES:
                break
            for value in container.values:
                _queue_nested(value, depth, pending)
    if entries > MAX_METADATA_ENTRIES:
        raise CsrRejected("METADATA_TOO_LARGE", f"metadata has more than {MAX_METADATA_ENTRIES} entries")


def _queue_nested(
    value: struct_pb2.Value, depth: int, pending: list[tuple[struct_pb2.Struct | struct_pb2.ListValue, int]]
) -> None:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        pending.append((value.struct_value, depth + 1))
    elif kind == "list_value":
        pending.append((value.list_value, depth + 1))


__all__ = [
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_METADATA_ENTRIES",
    "UndecodableRequest",
    "admitted_request",
    "check_metadata_bounds",
    "decode_request",
]
