"""A strict, minimal DER reader: definite minimal lengths, low tag numbers, nothing left over.

It reads only what meshsigner must see for itself (the outer shape of a CSR) so that no decision depends on
which occurrence a library happens to read. Every malformed input raises ``DerError``; nothing here recurses
without a bound: the callers walk a fixed shape.
"""

from __future__ import annotations

from typing import NamedTuple

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OBJECT_IDENTIFIER = 0x06
BOOLEAN = 0x01


class DerError(ValueError):
    """The bytes are not the strict DER this reader expects."""


class Element(NamedTuple):  # a tuple: built tens of times per CSR, on the request path
    tag: int
    content: bytes

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)

    @property
    def tag_class(self) -> int:
        """0 universal, 1 application, 2 context-specific, 3 private."""
        return self.tag >> 6

    @property
    def tag_number(self) -> int:
        return self.tag & 0x1F

    def children(self) -> list[Element]:
        if not self.constructed:
            raise DerError(f"tag 0x{self.tag:02x} is primitive, expected a constructed element")
        return read_all(self.content)

    def expect(self, tag: int, what: str) -> Element:
        if self.tag != tag:
            raise DerError(f"{what}: expected tag 0x{tag:02x}, got 0x{self.tag:02x}")
        return self


def read_one(data: bytes, offset: int = 0) -> tuple[Element, int]:
    """The element starting at ``offset`` and the offset just after it."""
    if offset + 2 > len(data):
        raise DerError("truncated element header")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise DerError("high tag numbers are not used here")
    first = data[offset + 1]
    position = offset + 2
    if first < 0x80:
        size = first
    elif first == 0x80:
        raise DerError("indefinite length is not DER")
    else:
        count = first & 0x7F
        if count > 4 or position + count > len(data):
            raise DerError("length field too long or truncated")
        size = int.from_bytes(data[position : position + count], "big")
        if data[position] == 0 or size < 0x80:
            raise DerError("length not minimally encoded")
        position += count
    end = position + size
    if end > len(data):
        raise DerError("element runs past its container")
    return Element(tag, data[position:end]), end


def read_all(data: bytes) -> list[Element]:
    elements: list[Element] = []
    offset = 0
    while offset < len(data):
        element, offset = read_one(data, offset)
        elements.append(element)
    return elements


def read_single(data: bytes, what: str) -> Element:
    """Exactly one element, with nothing after it."""
    element, end = read_one(data)
    if end != len(data):
        raise DerError(f"{what}: {len(data) - end} bytes after the element")
    return element


def encode_oid(dotted: str) -> bytes:
    """The DER content octets of an object identifier (the minimal encoding, the only one DER allows)."""
    first, second, *rest = (int(arc) for arc in dotted.split("."))
    body = bytearray()
    for arc in (40 * first + second, *rest):
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return bytes(body)


def known_oids(*dotted: str) -> dict[bytes, str]:
    """Encodings to names for ``decode_oid``'s fast path: a known encoding is minimal, so it needs no walk."""
    return {encode_oid(name): name for name in dotted}


def decode_oid(element: Element, known: dict[bytes, str] | None = None) -> str:
    """The dotted form of an OBJECT IDENTIFIER; refuses non-minimal or overlong arcs. Content octets found in
    ``known`` (see ``known_oids``) are answered from it."""
    element.expect(OBJECT_IDENTIFIER, "object identifier")
    body = element.content
    if known is not None:
        name = known.get(body)
        if name is not None:
            return name
    if not body or body[-1] & 0x80:
        raise DerError("object identifier truncated")
    arcs: list[int] = []
    value = 0
    fresh = True
    for byte in body:
        if fresh and byte == 0x80:
            raise DerError("object identifier arc not minimally encoded")
        value = (value << 7) | (byte & 0x7F)
        fresh = not byte & 0x80
        if fresh:
            arcs.append(value)
            value = 0
        if len(arcs) > 64 or value.bit_length() > 64:
            raise DerError("object identifier too long")
    head = arcs[0]
    first = min(head // 40, 2)
    return ".".join(str(arc) for arc in (first, head - 40 * first, *arcs[1:]))


def decode_small_integer(element: Element) -> int:
    element.expect(INTEGER, "integer")
    body = element.content
    if not body or len(body) > 8:
        raise DerError("integer empty or too large")
    if len(body) > 1 and ((body[0] == 0 and body[1] < 0x80) or (body[0] == 0xFF and body[1] >= 0x80)):
        raise DerError("integer not minimally encoded")
    return int.from_bytes(body, "big", signed=True)


def decode_boolean(element: Element) -> bool:
    element.expect(BOOLEAN, "boolean")
    if element.content == b"\xff":
        return True
    if element.content == b"\x00":
        return False
    raise DerError("boolean must be 0x00 or 0xff")
