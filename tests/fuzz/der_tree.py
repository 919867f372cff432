"""A lenient DER tree for the fuzzers' mutators and oracles; separate from the product's strict reader on purpose.

``parse`` turns bytes into nested nodes (constructed elements become lists of children); ``encode`` writes them
back with correct lengths, so a mutation can change structure (duplicate an attribute, swap an OID, nest a SET)
without breaking the framing around it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Node:
    tag: int
    content: bytes = b""
    children: list[Node] | None = None  # set for constructed elements that parsed as a sequence of elements
    extra: list[Node] = field(default_factory=list)


def _read(data: bytes, offset: int) -> tuple[int, bytes, int] | None:
    if offset + 2 > len(data):
        return None
    tag = data[offset]
    first = data[offset + 1]
    position = offset + 2
    if first < 0x80:
        size = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or position + count > len(data):
            return None
        size = int.from_bytes(data[position : position + count], "big")
        position += count
    if position + size > len(data):
        return None
    return tag, data[position : position + size], position + size


def parse_all(data: bytes, depth: int = 0) -> list[Node] | None:
    nodes: list[Node] = []
    offset = 0
    while offset < len(data):
        read = _read(data, offset)
        if read is None:
            return None
        tag, content, offset = read
        node = Node(tag, content)
        if (tag & 0x20 and depth < 24) or (tag == 0x04 and depth < 24 and content[:1] in (b"\x30", b"\x31")):
            node.children = parse_all(content, depth + 1)
        nodes.append(node)
    return nodes


def parse(data: bytes) -> Node | None:
    nodes = parse_all(data)
    return nodes[0] if nodes and len(nodes) == 1 else None


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def encode(node: Node) -> bytes:
    content = b"".join(encode(child) for child in node.children) if node.children is not None else node.content
    return bytes([node.tag]) + _length(len(content)) + content


def walk(node: Node) -> list[Node]:
    out = [node]
    for child in node.children or ():
        out.extend(walk(child))
    return out


def decode_oid(content: bytes) -> str | None:
    if not content or content[-1] & 0x80:
        return None
    arcs, value = [], 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))


def encode_oid_content(dotted: str) -> bytes:
    arcs = [int(part) for part in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


# OIDs and small elements a mutation may splice in (the dictionary of tests/fuzz/README.md)
OIDS = [
    "2.5.29.17",
    "2.5.29.19",
    "2.5.29.30",
    "2.5.29.15",
    "2.5.29.37",
    "1.2.840.113549.1.9.14",
    "1.2.840.113549.1.9.7",
    "1.2.840.10045.2.1",
    "1.2.840.10045.3.1.7",
    "1.3.132.0.34",
    "1.3.132.0.35",
    "1.3.132.0.10",
    "1.2.840.113549.1.1.1",
    "1.2.840.113549.1.1.10",
    "1.3.101.112",
    "1.3.101.113",
    "1.2.840.10040.4.1",
    "2.5.4.3",
    "2.5.4.10",
    "1.2.840.10045.4.3.2",
    "1.2.840.113549.1.1.11",
    "1.2.840.113549.1.1.5",
]
_SMALL = [
    b"\x05\x00",
    b"\x01\x01\xff",
    b"\x01\x01\x00",
    b"\x02\x01\x00",
    b"\x02\x01\x01",
    b"\x30\x00",
    b"\x31\x00",
    b"\xa0\x00",
    b"\x86\x20spiffe://cluster.local/ns/a/sa/b",
    b"\x82\x0bexample.com",
    b"\x87\x04\x7f\x00\x00\x01",
    b"\x81\x05a@b.c",
    b"\xa3\x00",
    b"\xa5\x00",
    b"\xa4\x00",
    b"\x88\x03\x2a\x03\x04",
    b"\x0c\x00",
    b"\x13\x00",
    b"\x04\x00",
    b"\x03\x01\x00",
]
_TAGS = [0x30, 0x31, 0x02, 0x03, 0x04, 0x05, 0x06, 0x01, 0x0C, 0x13, 0x16, 0xA0, 0x80, 0x81, 0x82, 0x86, 0x87, 0xA3]


def _small_node(rng: random.Random) -> Node:
    if rng.random() < 0.5:
        return Node(0x06, encode_oid_content(rng.choice(OIDS)))
    parsed = parse(rng.choice(_SMALL))
    assert parsed is not None
    return parsed


def mutate_tree(root: Node, rng: random.Random) -> None:
    """One structural change somewhere in the tree."""
    nodes = walk(root)
    containers = [n for n in nodes if n.children is not None]
    choice = rng.randrange(10)
    if choice <= 3 and containers:
        parent = rng.choice(containers)
        kids = parent.children
        assert kids is not None
        op = rng.randrange(5)
        if op == 0 and kids:  # duplicate a child (a second attribute, RDN value, extension, SAN ...)
            index = rng.randrange(len(kids))
            kids.insert(index, _clone(kids[index]))
        elif op == 1 and kids:
            del kids[rng.randrange(len(kids))]
        elif op == 2 and len(kids) > 1:
            i, j = rng.randrange(len(kids)), rng.randrange(len(kids))
            kids[i], kids[j] = kids[j], kids[i]
        elif op == 3:
            kids.insert(rng.randrange(len(kids) + 1), _small_node(rng))
        else:  # graft a copy of another subtree
            kids.insert(rng.randrange(len(kids) + 1), _clone(rng.choice(nodes)))
        return
    target = rng.choice(nodes)
    if choice == 4:
        target.tag = rng.choice(_TAGS) if rng.random() < 0.7 else rng.randrange(256)
        if not target.tag & 0x20 and target.children is not None and target.tag != 0x04:
            target.content, target.children = encode_children(target), None
    elif choice == 5 and target.tag == 0x06:
        target.content = encode_oid_content(rng.choice(OIDS))
    elif choice == 6 and target.children is None and target.content:
        data = bytearray(target.content)
        data[rng.randrange(len(data))] = rng.randrange(256)
        target.content = bytes(data)
    elif choice == 7 and target.children is None:
        target.content = target.content[: rng.randrange(len(target.content) + 1)]
    elif choice == 8 and target.children is not None:
        target.children = [Node(target.tag, children=target.children)]  # wrap: nest one level deeper
        target.tag = rng.choice((0x30, 0x31))
    else:
        replacement = _small_node(rng)
        target.tag, target.content, target.children = replacement.tag, replacement.content, replacement.children


def encode_children(node: Node) -> bytes:
    return b"".join(encode(child) for child in node.children or ())


def _clone(node: Node) -> Node:
    return Node(node.tag, node.content, None if node.children is None else [_clone(c) for c in node.children])
