"""Protobuf wire bytes written by hand, for requests the protobuf library refuses to build (a Struct nested past
the parser's recursion limit), independent of the product's own wire reader (signer/request_checks.py)."""

from __future__ import annotations


def length_delimited(number: int, body: bytes) -> bytes:
    """Field ``number`` with wire type 2 (bytes, string, embedded message)."""
    size, varint = len(body), bytearray()
    while True:
        varint.append((size & 0x7F) | (0x80 if size > 0x7F else 0))
        size >>= 7
        if not size:
            return bytes([(number << 3) | 2]) + bytes(varint) + body


def deeply_nested_request(csr: bytes, levels: int) -> bytes:
    """An IstioCertificateRequest (csr = 1, metadata = 4) whose metadata is
    Struct{fields{"a": Value{struct_value: ...}}} nested ``levels`` deep."""
    struct = b""
    for _ in range(levels):  # Struct.fields = 1 (map entry: key = 1, value = 2); Value.struct_value = 5
        struct = length_delimited(1, length_delimited(1, b"a") + length_delimited(2, length_delimited(5, struct)))
    return length_delimited(1, csr) + length_delimited(4, struct)
